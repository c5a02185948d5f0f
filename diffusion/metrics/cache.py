"""Where evaluation results that are expensive to recompute live on disk, and their keys.

The directory is the package's cache (``$DDPM_CACHE`` when set, else ``<repository>/cache``, see
:func:`diffusion.data.resolve_cache_dir`). A key covers everything that determines the stored result: the
caller's parts (dataset name and content digest, split size, ...), its parameters (hyper-parameters,
the Inception weights' SHA-256), the source digest of the modules that compute it (with everything they
import from the package, :func:`diffusion.report.cache.source_digest`) and the torch version. A changed
dataset, setting, weights file or line of code therefore never reuses a stale entry.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from ..data import resolve_cache_dir


def cache_dir(kind: str) -> Path:
    """The cache sub-directory ``kind`` (created if needed)."""
    path = resolve_cache_dir() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(*parts, modules: Sequence[str], params: dict | None = None) -> str:
    """A file-name-safe key: the given parts joined by ``-`` plus a short hash of ``params``, the source
    digest of ``modules`` (``"diffusion.metrics.fid"``: the code that computes the entry) and the torch
    version."""
    import torch

    from ..report.cache import source_digest

    if isinstance(modules, str) or not modules:
        raise ValueError(f"modules must name the modules that compute the entry, got {modules!r}")
    key = "-".join(str(p).replace("/", "_").replace(" ", "_") for p in parts)
    blob = json.dumps({"params": params or {}, "sources": source_digest(list(modules)),
                       "torch": str(torch.__version__)}, sort_keys=True, default=str).encode()
    return key + "-" + hashlib.sha256(blob).hexdigest()[:16]

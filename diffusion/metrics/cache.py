"""Where evaluation results that are expensive to recompute live on disk.

The directory is the package's cache (``$DDPM_CACHE`` when set, else ``<repository>/cache``, see
:func:`diffusion.data.resolve_cache_dir`). Entries are keyed by the dataset's name and content digest
(and hyper-parameters where they matter), so a changed dataset never reuses a stale entry.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..data import resolve_cache_dir


def cache_dir(kind: str) -> Path:
    """The cache sub-directory ``kind`` (created if needed)."""
    path = resolve_cache_dir() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(*parts, params: dict | None = None) -> str:
    """A file-name-safe key: the given parts joined by ``-`` plus a short hash of ``params``."""
    key = "-".join(str(p).replace("/", "_").replace(" ", "_") for p in parts)
    if params:
        blob = json.dumps(params, sort_keys=True, default=str).encode()
        key += "-" + hashlib.sha256(blob).hexdigest()[:12]
    return key

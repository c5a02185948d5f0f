"""Where evaluation results that are expensive to recompute live on disk.

The directory is ``$DDPM_CACHE`` when set, else ``<repository>/cache``. Entries are keyed by the
dataset's name and content digest (and hyper-parameters where they matter), so a changed dataset
never reuses a stale entry.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir(kind: str) -> Path:
    """The cache sub-directory ``kind`` (created if needed) under ``$DDPM_CACHE`` or ``<repo>/cache``."""
    root = Path(os.environ.get("DDPM_CACHE") or REPO_ROOT / "cache")
    path = root / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_digest(data) -> str:
    """Content digest of an ``ImageData``: its ``digest`` field, else sha256 of its pixels and labels."""
    digest = getattr(data, "digest", None)
    if digest:
        return str(digest)
    h = hashlib.sha256()
    h.update(data.images.contiguous().numpy().tobytes())
    h.update(data.labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(*parts, params: dict | None = None) -> str:
    """A file-name-safe key: the given parts joined by ``-`` plus a short hash of ``params``."""
    key = "-".join(str(p).replace("/", "_") for p in parts)
    if params:
        blob = json.dumps(params, sort_keys=True, default=str).encode()
        key += "-" + hashlib.sha256(blob).hexdigest()[:12]
    return key

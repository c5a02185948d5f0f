"""The content-keyed cache of expensive notebook work (training, sampling, feature statistics).

A result is stored under ``cache/<profile>/<kind>/<key>/``, where the key is a SHA-256 of the producing
notebook's name, the code of the ``diffusion`` modules the work depends on (with everything they import
from the package), the torch version, the configuration and the data digest. Trained models are keyed
instead on what their training computes (``fingerprint``: ``diffusion.fingerprint.training_fingerprint``),
not on the source text, so a refactor of the training code keeps them while a change of what it computes
does not. A changed input gives a new key,
so an entry is never reused for inputs it was not computed from. The code is hashed as its syntax tree
without docstrings: comments, docstrings and layout never change a result, so editing them keeps every
entry (and the committed weights) valid, while any change to a statement, name or constant gives a new key.

Committed weights: an entry exported by ``tools/export_weights.py`` to ``weights/<profile>/<kind>/<key>/``
(trained models without their optimiser state) is copied into the cache when its key is asked for and the
cache lacks it, so a reader samples from the profile's trained models instead of training them again. The key
is the same hash, so this happens only for exactly the code, configuration, data and torch version the
weights were trained with. ``DDPM_RETRAIN=1`` ignores them (a reproduction from scratch);
``DDPM_WEIGHTS_DIR`` moves the folder.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffusion.report.paths import PACKAGE_DIR, check_profile, repo_root
from diffusion.report.provenance import jsonable, torch_version


def _is_report(path: Path) -> bool:
    """Whether ``path`` belongs to ``diffusion.report`` (style, writers, cache mechanics: never hashed)."""
    return path.resolve().is_relative_to((PACKAGE_DIR / "report").resolve())


def _module_path(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "diffusion":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path) -> set[str]:
    """``diffusion`` modules imported anywhere in the file (including relative imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = "diffusion" + "".join("." + p for p in path.relative_to(PACKAGE_DIR).parent.parts)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "diffusion")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "diffusion":
                continue
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # "from diffusion import unet"
    return found


def code_of(path: Path) -> bytes:
    """The code of a module as hashed: its syntax tree (``ast.dump``, no line numbers) without the docstrings
    of the module, its classes and functions. Comments and layout are not in the tree. The dump's format
    belongs to the Python version, which therefore is part of every key as well."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                node.body = node.body[1:]
    return ast.dump(tree, include_attributes=False).encode()


def source_digest(modules: Sequence[str] | None = None) -> str:
    """SHA-256 of the code (:func:`code_of`) the cached work depends on.

    The ``diffusion.report`` package is never hashed: it holds only the style, writers and cache
    mechanics, which never change a cached result. ``modules=None`` hashes every other ``diffusion/**/*.py``.
    Otherwise the named modules (``"diffusion.train"``) and, transitively, every ``diffusion`` module they
    import are hashed, so an edit to an unrelated module (say, the metrics) leaves a training entry valid.
    """
    if modules is None:
        files = sorted(p for p in PACKAGE_DIR.rglob("*.py") if not _is_report(p))
    else:
        for name in modules:
            if _module_path(name) is None:
                raise ValueError(f"modules: no source for {name!r} under {PACKAGE_DIR}")
        todo = list(modules)
        seen: dict[str, Path] = {}
        while todo:
            name = todo.pop()
            path = _module_path(name)
            if name in seen or path is None:  # None: "from diffusion.x import function" names no module
                continue
            if _is_report(path):  # writers only; never changes a result
                continue
            seen[name] = path
            todo.append(name.rsplit(".", 1)[0])  # the parent package runs on import too
            todo.extend(_imports(path))
        files = sorted(set(seen.values()))
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + code_of(path) + b"\0")
    return h.hexdigest()


def data_digest(images: Any, labels: Any = None, name: str = "") -> str:
    """SHA-256 of a dataset's pixels (and labels, and name): the data part of a cache key."""
    h = hashlib.sha256(name.encode() + b"\0")
    for arr in (images, labels):
        if arr is None:
            continue
        a = arr.detach().cpu().numpy() if hasattr(arr, "detach") else np.asarray(arr)
        h.update(str(a.dtype).encode() + str(a.shape).encode() + np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


PROGRESS = "progress"
"""The sub-folder of a ``.partial`` entry where the work keeps what it has finished so far, to resume from it after
an interruption; :func:`cached` removes it once the result is stored, so a finished entry holds the result only."""


@dataclass
class CacheEntry:
    """A finished cache entry: its folder, its key, the stored result, whether it was reused, and where it
    came from: ``computed`` now, the ``cache``, or committed ``weights``."""

    path: Path
    key: str
    result: dict
    hit: bool
    source: str = "cache"


def weights_root() -> Path:
    """The folder of committed weights: ``$DDPM_WEIGHTS_DIR``, else ``<repo>/weights``."""
    return Path(os.environ.get("DDPM_WEIGHTS_DIR") or repo_root() / "weights")


def committed_entry(profile: str, kind: str, key: str) -> Path | None:
    """The committed copy of entry ``<profile>/<kind>/<key>``, or None (none, or ``DDPM_RETRAIN=1``)."""
    if os.environ.get("DDPM_RETRAIN", "") not in ("", "0"):
        return None
    path = weights_root() / profile / kind / key
    return path if (path / "result.json").is_file() else None


def committed_partial(profile: str, kind: str, key: str) -> Path | None:
    """The committed copy of an unfinished entry ``<profile>/<kind>/<key>.partial`` (a training to be resumed,
    ``tools/export_weights.py --partial``), or None (none, or ``DDPM_RETRAIN=1``)."""
    if os.environ.get("DDPM_RETRAIN", "") not in ("", "0"):
        return None
    path = weights_root() / profile / kind / f"{key}.partial"
    return path if (path / "inputs.json").is_file() else None


def _store_result(path: Path, result: Mapping | None) -> None:
    result = dict(result or {})
    arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    rest = {k: v for k, v in result.items() if k not in arrays}
    if arrays:
        np.savez(path / "arrays.npz", **arrays)
    (path / "result.json").write_text(json.dumps(jsonable(rest), indent=1, sort_keys=True))


def _load_result(path: Path) -> dict:
    result = json.loads((path / "result.json").read_text())
    if (path / "arrays.npz").is_file():
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            result.update({k: z[k] for k in z.files})
    return result


def cache_key(key_parts: Mapping[str, Any], notebook: str, modules: Sequence[str] | None = None,
              fingerprint: str | None = None) -> tuple[str, dict]:
    """(key, described inputs): SHA-256 over the notebook name, :func:`source_digest`, the Python (major.minor)
    and torch versions and ``key_parts`` (config, data digest, seeds, ...), serialised as canonical JSON.

    With ``fingerprint`` (a digest of what the code computes, e.g. the training fingerprint) the key holds it
    in place of the source digest and the Python version: the entry stays valid while the code computes the
    same thing, however its text changes. ``modules`` is then not used."""
    if not isinstance(key_parts, Mapping):
        raise ValueError(f"key_parts must be a dict of what determines the work, got {type(key_parts).__name__}")
    if fingerprint is not None:
        if not (isinstance(fingerprint, str) and re.fullmatch(r"[0-9a-f]{8,64}", fingerprint)):
            raise ValueError(f"fingerprint must be a hex digest, got {fingerprint!r}")
        inputs = {"notebook": notebook, "fingerprint": fingerprint, "torch": torch_version(),
                  "parts": jsonable(key_parts)}
    else:
        inputs = {"notebook": notebook, "sources": source_digest(modules),
                  "modules": sorted(modules) if modules is not None else "diffusion/**",
                  "python": "{}.{}".format(*sys.version_info[:2]), "torch": torch_version(),
                  "parts": jsonable(key_parts)}
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24], inputs


def cached(key_parts: Mapping[str, Any], fn: Callable[[Path], Mapping | None], kind: str, *,
           notebook: str, profile: str, cache_root: Path | str | None = None,
           modules: Sequence[str] | None = None, fingerprint: str | None = None) -> CacheEntry:
    """Run ``fn(work_dir)`` once per distinct input and reuse its result afterwards.

    ``fn`` writes files (checkpoints, npz) into ``work_dir`` and returns a dict; numpy arrays in it are
    stored in ``arrays.npz``, everything else as JSON. The entry lives in
    ``<cache_root>/<profile>/<kind>/<key>/`` (``cache_root`` defaults to ``$DDPM_CACHE_DIR`` or
    ``<repo>/cache``). It is built in ``<key>.partial/`` and renamed into place only when ``fn`` returned,
    so an interrupted run never leaves an entry that looks finished; a rerun passes the same ``.partial``
    folder to ``fn`` again, which may resume from what it finds there (trainings do). What ``fn`` keeps only to
    resume (sampled batches, :data:`PROGRESS`) is removed once the result is stored. A committed unfinished
    entry (``weights/<profile>/<kind>/<key>.partial``) seeds that folder when the cache has none.
    """
    check_profile(profile)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", kind or ""):
        raise ValueError(f"kind must be a non-empty name of letters, digits, '-' or '_', got {kind!r}")
    key, inputs = cache_key(key_parts, notebook, modules, fingerprint)
    root = Path(cache_root or os.environ.get("DDPM_CACHE_DIR") or repo_root() / "cache")
    final = root / profile / kind / key
    if (final / "result.json").is_file():
        return CacheEntry(final, key, _load_result(final), True)
    committed = committed_entry(profile, kind, key)
    if committed is not None:
        staging = final.with_name(key + ".weights")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(committed, staging)
        if final.exists():
            shutil.rmtree(staging)
        else:
            os.replace(staging, final)
        return CacheEntry(final, key, _load_result(final), True, "weights")
    partial = final.with_name(key + ".partial")
    carried = committed_partial(profile, kind, key)
    if carried is not None and not partial.exists():  # an unfinished training carried over: resumed by fn
        staging = final.with_name(key + ".carried")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(carried, staging)
        os.replace(staging, partial)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "inputs.json").write_text(json.dumps(inputs, indent=1, sort_keys=True))
    result = fn(partial)
    _store_result(partial, result)
    shutil.rmtree(partial / PROGRESS, ignore_errors=True)
    if final.exists():  # a concurrent run finished first; keep its entry
        shutil.rmtree(partial)
    else:
        os.replace(partial, final)
    return CacheEntry(final, key, _load_result(final), False, "computed")



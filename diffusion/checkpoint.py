"""Training checkpoints: atomic writes, the last N kept, safe loading.

A checkpoint is a plain dictionary of tensors, dicts, lists, strings and numbers (no pickled objects), so
it is read with ``torch.load(..., weights_only=True)`` only: loading a checkpoint can never run code.
Writing is atomic: the file is written to a temporary name in the same folder, flushed and fsync'ed, and
then renamed over the final name with ``os.replace``; a crash mid-write leaves the previous checkpoints
intact. A truncated, foreign or otherwise unreadable file raises :class:`CheckpointError` with a message
saying which file and why, never a pickle traceback.

Layout written by :class:`diffusion.train.Trainer` (``FORMAT`` / ``VERSION`` identify it):
``format``, ``version``, ``step``, ``model``, ``ema``, ``optimizer``, ``train_state`` (on-device running
statistics), ``rank_states`` (per rank: RNG states and data-iterator state), ``world_size``, ``config``
(plain dict), ``data`` (name, label, channels, image_size, num_classes, class_names), ``git`` (``commit``,
``dirty``), ``torch_version``, ``created``.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CheckpointError", "FORMAT", "VERSION", "save_checkpoint", "load_checkpoint", "list_checkpoints",
    "latest_checkpoint", "checkpoint_path", "get_rng_state", "set_rng_state", "git_info",
]

FORMAT = "ddpm-thesis-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, truncated, foreign, or of another architecture."""


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    """``<directory>/ckpt_<step, 7 digits>.pt``."""
    return Path(directory) / f"ckpt_{int(step):07d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files ``ckpt_*.pt`` in ``directory``, oldest step first ([] if none or no folder)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``directory``, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: dict, path: str | os.PathLike, keep_last: int | None = None) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    ``state`` must contain only tensors, dicts, lists, tuples, strings, numbers, booleans and ``None`` (what
    ``torch.load(weights_only=True)`` accepts); ``format`` and ``version`` are added. If ``keep_last`` is
    given, only the newest ``keep_last`` files named ``ckpt_<step>.pt`` in the same folder are kept.
    Returns the final path.
    """
    if keep_last is not None and int(keep_last) < 1:
        raise ValueError(f"keep_last must be a positive integer or None, got {keep_last!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(state, format=FORMAT, version=VERSION)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    if keep_last is not None:
        for old in list_checkpoints(path.parent)[: -int(keep_last)]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    ``path`` may be a file or a folder (then its newest ``ckpt_*.pt``, also looking in ``<folder>/checkpoints``).
    Raises :class:`CheckpointError` for a missing, truncated, unreadable or foreign file.
    """
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path) or latest_checkpoint(path / "checkpoints")
        if found is None:
            raise CheckpointError(f"no checkpoint (ckpt_*.pt) in folder {path} or {path / 'checkpoints'}")
        path = found
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, disallowed globals, ...
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if line.startswith("WeightsUnpickler error")), None)
        first_line = detail or (lines[0] if lines else type(err).__name__)
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt, or not written by this package; "
            f"only weights-only files are accepted): {type(err).__name__}: {first_line}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a checkpoint of this package "
                              f"(expected format {FORMAT!r})")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')!r}; this code reads "
                              f"version {VERSION}")
    return state


def get_rng_state() -> dict:
    """RNG states of python ``random``, numpy's global generator, torch CPU and every CUDA device, as
    tensors and plain types (storable with ``weights_only``)."""
    version, internal, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized()
        else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore the states returned by :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].cpu().tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].cpu().numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        else:
            torch.cuda.set_rng_state(state["cuda"][0].cpu())


def git_info(cwd: str | os.PathLike | None = None) -> dict:
    """``{"commit": <HEAD or "unknown">, "dirty": bool | None}`` of the repository holding this package."""
    cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"commit": commit.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}

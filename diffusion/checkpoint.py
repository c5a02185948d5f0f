"""Training checkpoints: atomic writes, the last N kept, safe loading.

A checkpoint is a plain dictionary of tensors, dicts, lists, strings and numbers (no pickled objects), so
it is read with ``torch.load(..., weights_only=True)`` only: loading a checkpoint can never run code.
Writing is atomic: the file is written to a temporary name in the same folder, flushed and fsync'ed, and
then renamed over the final name with ``os.replace``; a crash mid-write leaves the previous checkpoints
intact (and the hidden temporary ``.ckpt_*.tmp``, which ``diffusion.runs.remove_stale_temporaries`` deletes
when the run starts again). A full disk raises ``diffusion.runs.DiskFullError`` saying so. Files get the
permissions of any new file (``0666`` less the umask), like the rest of the run folder. A truncated,
foreign or otherwise unreadable file raises :class:`CheckpointError` with a message saying which file and
why, never a pickle traceback; given a folder, :func:`load_checkpoint` falls back from a damaged newest
checkpoint to the newest readable one with a :class:`DamagedCheckpointWarning`.

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
import secrets
import subprocess
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CheckpointError", "DamagedCheckpointWarning", "FORMAT", "VERSION", "save_checkpoint", "load_checkpoint",
    "load_newest_readable", "list_checkpoints", "latest_checkpoint", "checkpoint_path", "get_rng_state",
    "set_rng_state", "git_info", "require_entries", "check_weights_fit",
]

FORMAT = "ddpm-thesis-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, truncated, foreign, or of another architecture."""


class DamagedCheckpointWarning(UserWarning):
    """The newest checkpoint of a folder was unreadable; an older one is used instead."""


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


def _write_all(fd: int, data) -> None:
    """``os.write`` until every byte of ``data`` is written (the one place checkpoint bytes reach the disk)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


class _Sink:
    """The file object ``torch.save`` writes to. It remembers the first ``OSError`` of a write, which
    torch's zip writer may replace by ``RuntimeError: ... unexpected pos``."""

    def __init__(self, fd: int):
        self.fd, self.error = fd, None

    def write(self, data) -> int:
        try:
            _write_all(self.fd, data)
        except OSError as err:
            self.error = self.error or err
            raise
        return len(data)

    def flush(self) -> None:
        pass


def _disk_full(path: Path, err: BaseException):
    from diffusion.runs import DiskFullError

    intact = [p.name for p in list_checkpoints(path.parent)]
    kept = (f"the previous checkpoints are intact ({', '.join(intact)} in {path.parent})" if intact
            else "no earlier checkpoint exists in " + str(path.parent))
    return DiskFullError(f"the disk is full: writing checkpoint {path} failed ({err}); the partial file was "
                         f"removed and {kept}. Free some space, then resume the run (train --resume)")


def save_checkpoint(state: dict, path: str | os.PathLike, keep_last: int | None = None) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    ``state`` must contain only tensors, dicts, lists, tuples, strings, numbers, booleans and ``None`` (what
    ``torch.load(weights_only=True)`` accepts); ``format`` and ``version`` are added. If ``keep_last`` is
    given, only the newest ``keep_last`` files named ``ckpt_<step>.pt`` in the same folder are kept.
    A full disk raises ``diffusion.runs.DiskFullError`` (the partial file removed, the previous checkpoints
    untouched). Returns the final path.
    """
    from diffusion.runs import is_disk_full

    if keep_last is not None and int(keep_last) < 1:
        raise ValueError(f"keep_last must be a positive integer or None, got {keep_last!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(state, format=FORMAT, version=VERSION)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    # 0666 less the umask, as for any new file (tempfile.mkstemp would make it 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    sink = _Sink(fd)
    try:
        try:
            torch.save(payload, sink)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if is_disk_full(sink.error) or is_disk_full(err):
            raise _disk_full(path, sink.error or err) from None
        raise
    _fsync_dir(path.parent)
    if keep_last is not None:
        for old in list_checkpoints(path.parent)[: -int(keep_last)]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    ``path`` may be a file or a folder (then its newest readable ``ckpt_*.pt``, also looking in
    ``<folder>/checkpoints``; damaged newer ones are skipped with a :class:`DamagedCheckpointWarning`).
    Raises :class:`CheckpointError` for a missing, truncated, unreadable or foreign file.
    """
    path = Path(path)
    if path.is_dir():
        folder = path if list_checkpoints(path) else path / "checkpoints"
        if not list_checkpoints(folder):
            raise CheckpointError(f"no checkpoint (ckpt_*.pt) in folder {path} or {path / 'checkpoints'}")
        state, _, _ = load_newest_readable(folder, map_location=map_location)
        return state
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


def load_newest_readable(folder: str | os.PathLike, map_location="cpu", required=()) -> tuple[dict, Path, list]:
    """The newest checkpoint of ``folder`` that loads and has the entries ``required``:
    ``(state, path, skipped)`` with ``skipped`` the newer ``(path, reason)`` pairs passed over, each
    announced by a :class:`DamagedCheckpointWarning`. Raises :class:`CheckpointError` listing every
    reason when none is usable."""
    found = list_checkpoints(folder)
    if not found:
        raise CheckpointError(f"no checkpoint (ckpt_*.pt) in folder {folder}")
    skipped = []
    for path in reversed(found):
        try:
            state = load_checkpoint(path, map_location=map_location)
            require_entries(state, path, required)
        except CheckpointError as err:
            skipped.append((path, str(err)))
            continue
        for bad, reason in skipped:
            warnings.warn(f"skipped the damaged checkpoint {bad} ({reason}); using {path} (step "
                          f"{state.get('step', '?')}) instead", DamagedCheckpointWarning, stacklevel=2)
        return state, path, skipped
    raise CheckpointError(f"no readable checkpoint in {folder}: "
                          + "; ".join(f"{p.name}: {reason}" for p, reason in skipped))


def require_entries(state: dict, path, names=("config",), purpose: str = "") -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless ``state`` has every entry of ``names``."""
    missing = [n for n in names if n not in state]
    if missing:
        raise CheckpointError(
            f"{path} has no {', '.join(repr(n) for n in missing)} "
            f"entr{'y' if len(missing) == 1 else 'ies'}{purpose}; it was not written by diffusion.train.Trainer "
            "or was edited (entries present: " + ", ".join(sorted(map(str, state))) + ")")


def check_weights_fit(module: torch.nn.Module, weights, path, what: str = "weights") -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless ``weights`` (a state dict) has exactly the
    keys and shapes of ``module.state_dict()``; the message lists the differences (at most 5 of each
    kind, with how many more)."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: the {what} are a {type(weights).__name__}, not a state dict")
    mine = module.state_dict()
    missing = [k for k in mine if k not in weights]
    unexpected = [k for k in weights if k not in mine]
    shapes = [f"{k} {list(weights[k].shape)} in the checkpoint vs {list(v.shape)} in the model"
              for k, v in mine.items() if k in weights and hasattr(weights[k], "shape")
              and tuple(weights[k].shape) != tuple(v.shape)]

    def some(items):
        more = f" and {len(items) - 5} more" if len(items) > 5 else ""
        return ", ".join(items[:5]) + more

    parts = [f"{len(items)} {kind}: {some(items)}" for kind, items in
             (("shape mismatches", shapes), ("missing keys", missing), ("unexpected keys", unexpected)) if items]
    if parts:
        raise CheckpointError(f"the {what} of {path} do not fit this model ({'; '.join(parts)}); the checkpoint "
                              "was trained with another architecture or dataset (channels, image size, classes)")


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

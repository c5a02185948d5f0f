"""The run folder and the user's mistakes: one exclusive lock per run, output paths checked before any work,
the run's history of starts and configuration changes, crash leftovers, and one-paragraph failure messages.

- :class:`RunLock`: ``fcntl.flock`` on ``<run>/run.lock``, which also records the holder (pid, host, start
  time, command). The operating system drops the lock when its process ends in any way (``kill -9``
  included), so a lock left by a dead process is free; its record is then reported and overwritten.
- :func:`prepare_output_file` / :func:`prepare_run_folder`: an output path is checked (suffix, a folder
  that exists or can be created, writable) before a command computes anything.
- :func:`resume_config_changes`: what a resumed run would change in the saved configuration; only the keys
  of :data:`RESUME_ALLOWED` (run length, logging, checkpoint and sample intervals, the data location) may
  change unless the caller allows more; the model and the diffusion never.
- :func:`append_history`: ``<run>/history.jsonl``, one JSON line per start of the run.
- :func:`describe_failure`: the one paragraph (and exit status) the command line prints for a failure
  the user can fix.
- :func:`deferred_interrupt`: Ctrl-C held back while the command line starts up (torch's C extension
  aborts or marks the interpreter for death by SIGINT when a ``KeyboardInterrupt`` lands inside it).
- :func:`settle_interrupt`: a caught ``KeyboardInterrupt`` marked as handled, so that the exit status the
  command line chose (130) is the one the process ends with.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

__all__ = [
    "DiskFullError", "LOCK_NAME", "RESUME_ALLOWED", "RunLock", "RunLockedError", "UserError", "append_history",
    "deferred_interrupt", "describe_failure", "format_warning", "is_disk_full", "prepare_output_file",
    "prepare_run_folder", "remove_stale_temporaries", "resume_config_changes", "settle_interrupt", "write_text_atomic",
]

LOCK_NAME = "run.lock"
HISTORY_NAME = "history.jsonl"
# Keys that may differ between a run's saved configuration and the one it is resumed with: they decide
# how long the run goes on, how often it logs, checkpoints and samples, and where the data lie, but not
# what one training step computes.
RESUME_ALLOWED = frozenset({"train.total_steps", "train.log_every", "train.ckpt_every", "train.keep_last",
                            "train.sample_every", "data.root"})
# Sections whose change makes a checkpoint a different model: never accepted on resume.
RESUME_FIXED_SECTIONS = ("model", "diffusion")
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class UserError(ValueError):
    """A mistake in the input or the environment that the user can fix; the command line prints its message
    as one paragraph and exits with status 2."""


class RunLockedError(UserError):
    """The run folder is locked by another live process."""


class DiskFullError(UserError):
    """The disk filled up while writing; the message says which file and what is still intact."""


# ---------------------------------------------------------------------------------------------------- paths
def _os_reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def prepare_run_folder(folder: str | os.PathLike, what: str = "out_dir") -> Path:
    """Create the run folder ``folder`` if needed and check that it is a writable folder; raises
    :class:`UserError` naming ``what`` (e.g. ``--out``) when it is a file, cannot be created or is read-only."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder; give a folder for the run")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{what} {folder}: cannot create the folder ({_os_reason(err)})") from None
    _probe_writable(folder, what, folder)
    return folder


def _probe_writable(folder: Path, what: str, target: Path) -> None:
    probe = folder / f".write-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        raise UserError(f"{what} {target}: the folder {folder} is not writable ({_os_reason(err)})") from None
    os.close(fd)
    probe.unlink(missing_ok=True)


def prepare_output_file(path: str | os.PathLike, what: str = "--out", suffixes: tuple[str, ...] | None = None,
                        ) -> Path:
    """Check an output file before the work that produces it: the suffix (one of ``suffixes``, case
    ignored), not a folder, its folder a folder (created if missing) that is writable, and the file itself
    writable if it exists. Raises :class:`UserError` naming ``what``; returns the path."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise UserError(f"{what} must end in {' or '.join(suffixes)}, got {str(path)!r}")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file path inside it")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{what} {path}: {parent} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{what} {path}: cannot create the folder {parent} ({_os_reason(err)})") from None
    _probe_writable(parent, what, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path} exists and is read-only")
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``: a crash
    leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.*.tmp``) that an interrupted writer left in ``folder`` and its
    ``checkpoints`` subfolder; call it only while holding the run's lock. Returns what was removed."""
    removed = []
    for where in (Path(folder), Path(folder) / "checkpoints"):
        if not where.is_dir():
            continue
        for p in where.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------------- lock
def _holder_record() -> dict:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program == "__main__.py":
        program = "python -m diffusion"
    command = " ".join([program, *sys.argv[1:]])
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command if len(command) <= 200 else command[:197] + "..."}


def _read_record(fd: int) -> dict | None:
    try:
        raw = os.pread(fd, 65536, 0)
    except OSError:
        return None
    if not raw.strip():
        return None
    try:
        record = json.loads(raw.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "started": "?", "command": raw[:200].decode("utf-8", "replace")}
    return record if isinstance(record, dict) else None


def _pid_alive(pid) -> bool | None:
    """Whether ``pid`` runs on this host (``None``: cannot tell)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return None
    return True


def _describe_holder(record: dict | None) -> str:
    if not record:
        return "a process that has not yet recorded itself"
    text = f"pid {record.get('pid', '?')} on host {record.get('host', '?')}"
    if record.get("started"):
        text += f" (started {record['started']}"
        text += f": {record['command']})" if record.get("command") else ")"
    return text


class RunLock:
    """An exclusive lock on a run folder, held from :meth:`acquire` to :meth:`release` (or the end of the
    process, however it ends). ``fcntl.flock`` on ``<folder>/run.lock``, which records the holder as JSON
    (``pid``, ``host``, ``started``, ``command``). A second process gets :class:`RunLockedError` naming the
    holder. A record left by a process that died holding the lock (``kill -9``, power loss) is detected
    when the lock is taken and kept in :attr:`stale` for a warning.

    The lock file is never deleted (deleting a flock'ed file lets two processes lock two different files);
    :meth:`release` empties it. On file systems without ``flock`` the lock degrades to the record alone,
    refused when it names a live process on this host.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "out_dir"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.stale: dict | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock (a no-op while held); raises :class:`RunLockedError` if another process holds it
        and :class:`UserError` if the folder cannot be created or written."""
        if self._fd is not None:
            return self
        prepare_run_folder(self.folder, self.what)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o664)
        except OSError as err:
            raise UserError(f"{self.what} {self.folder}: cannot open the lock file {self.path} "
                            f"({_os_reason(err)})") from None
        try:
            self._lock(fd)
            self.stale = _read_record(fd)
            record = json.dumps(_holder_record()).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record + b"\n", 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _lock(self, fd: int) -> None:
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                self._refuse(fd)
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
        # No flock here: the record alone, refused when it names a live process of this host.
        record = _read_record(fd)
        if record and record.get("host") == socket.gethostname() and _pid_alive(record.get("pid")) \
                and int(record.get("pid", -1)) != os.getpid():
            self._refuse(fd, record)

    def _refuse(self, fd: int, record: dict | None = None) -> None:
        if record is None:
            for _ in range(20):  # the holder may be between taking the lock and writing its record
                record = _read_record(fd)
                if record:
                    break
                time.sleep(0.05)
        note = ""
        if record and record.get("host") == socket.gethostname() and _pid_alive(record.get("pid")) is False:
            note = (" That process is no longer running, so a process it started still holds the lock; "
                    "stop that one.")
        raise RunLockedError(
            f"{self.what} {self.folder} is in use by another run: {_describe_holder(record)} holds its lock "
            f"{self.path}. Two runs writing one folder would corrupt it; wait for that run to finish or stop it, "
            f"or choose another {self.what}.{note}")

    def release(self) -> None:
        """Empty the record and drop the lock (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the last descriptor drops the flock

    def describe_stale(self) -> str | None:
        """A warning about the record of a dead holder found by :meth:`acquire`, or ``None``."""
        if not self.stale:
            return None
        return (f"took over the lock of {self.folder} left by {_describe_holder(self.stale)}, which ended "
                "without releasing it (killed or crashed)")

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown: the descriptor closes with the process anyway
            pass


# ---------------------------------------------------------------------------------------------------- resume
def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def resume_config_changes(saved: dict, requested: dict, allow_change: bool = False,
                          source: str = "the checkpoint", fixed_error: type[ValueError] = UserError,
                          ) -> dict[str, tuple]:
    """Compare the full configuration a run was saved with (``saved``, a plain dict as stored in its
    checkpoint) with the one it is resumed with (``requested``). Returns ``{"section.key": (saved, requested)}``
    of every difference. Raises ``fixed_error`` for a difference in ``model.*`` or ``diffusion.*`` (always),
    :class:`UserError` for one outside :data:`RESUME_ALLOWED` unless ``allow_change``; the message lists
    each difference."""
    old, new = _flatten(saved), _flatten(requested)
    changes = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}

    def listing(keys):
        return "; ".join(f"{k}: {changes[k][0]!r} → {changes[k][1]!r}" for k in keys)

    fixed = [k for k in changes if k.split(".")[0] in RESUME_FIXED_SECTIONS]
    if fixed:
        sections = sorted({k.split(".")[0] for k in fixed})
        raise fixed_error(f"{source} was trained with another {' and '.join(sections)} configuration "
                        f"({listing(fixed)}); it cannot be resumed with this config. Resume with the run's own "
                        "config (its config.json) or start a new run in another folder")
    refused = [k for k in changes if k not in RESUME_ALLOWED]
    if refused and not allow_change:
        raise UserError(f"the requested configuration differs from the one {source} was trained with "
                        f"({listing(refused)}). Resuming may change only {', '.join(sorted(RESUME_ALLOWED))}; "
                        "use the run's own config (its config.json), or pass allow_config_change=True "
                        "(--allow-config-change) to continue with the new values, which the run's "
                        "history.jsonl then records")
    return changes


def append_history(folder: str | os.PathLike, record: dict) -> Path:
    """Append one JSON line to ``<folder>/history.jsonl`` (adds ``time``, ``pid`` and ``host``)."""
    path = Path(folder) / HISTORY_NAME
    line = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "pid": os.getpid(),
            "host": socket.gethostname(), **record}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, default=str) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------- failures
def is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` (or an exception it was raised from or during) is a full disk or quota."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DiskFullError) or (isinstance(err, OSError) and err.errno in _DISK_FULL):
            return True
        err = err.__cause__ or err.__context__
    return False


def describe_failure(err: BaseException) -> tuple[str, int] | None:
    """``(one-paragraph message, exit status)`` for a failure the user can fix, ``None`` for anything else
    (a bug, which deserves its traceback). An exception with an ``exit_status`` attribute keeps it."""
    status = getattr(err, "exit_status", None)
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        if is_disk_full(err):
            text = (f"the disk is full{where}: {_os_reason(err)}. Files written before this point, earlier "
                    "checkpoints included, are intact; free some space and run the command again (a training "
                    "run continues with --resume)")
        else:
            text = f"{_os_reason(err)}{where}" if err.strerror else str(err)
        return " ".join(text.split()), status or 2
    if isinstance(err, ValueError) or status is not None:
        text = str(err) or type(err).__name__
        return " ".join(text.split()), status or 2
    return None


def format_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` for the command line: ``warning: <message>`` on one line."""
    return f"warning: {' '.join(str(message).split())}\n"


class _Interrupt:
    requested = False


@contextlib.contextmanager
def deferred_interrupt():
    """Hold back Ctrl-C for the duration of the block; ``.requested`` says afterwards whether one came.

    A ``KeyboardInterrupt`` raised while a C extension initialises (``import torch``) cannot be handled:
    torch's pybind11 code turns it into ``std::terminate`` (exit by SIGABRT), or CPython notes it as
    unhandled and kills the process with SIGINT at exit although Python code caught it. Start-up is
    therefore run with a handler that only records the signal. Outside the main thread, or where SIGINT
    is not Python's default handler (ignored in a background job, or a caller's own handler), nothing is
    changed."""
    state = _Interrupt()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield state
        return

    def record(signum, frame):
        state.requested = True

    signal.signal(signal.SIGINT, record)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def settle_interrupt() -> None:
    """Mark a ``KeyboardInterrupt`` that the caller caught as handled, for the interpreter's exit status.

    CPython evaluates a string given to ``exec`` (``dataclasses`` builds every ``__init__`` that way, and
    torch imports many dataclasses lazily, on its first use) through the routine that also runs a
    script. When a ``KeyboardInterrupt`` leaves such an evaluation, that routine records it as unhandled,
    and a program started with ``python -m`` then ends by SIGINT at exit, whatever status ``sys.exit``
    asked for, even though Python code caught the exception further up. The record is cleared at the start
    of every such evaluation, so evaluating an empty string clears it."""
    exec("pass", {})

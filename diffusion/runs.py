"""The run folder and the user's mistakes: one exclusive lock per run, the run folder's life from lock to
release, output paths checked before any work, the configuration compared on resume, and one-paragraph
failure messages.

- :class:`RunFolder`: the folder of one training run, owned by one process (rank 0 under DDP) from
  :meth:`RunFolder.acquire` to :meth:`RunFolder.release`: its lock, the leftovers of interrupted writers,
  the decision where a start begins (a checkpoint, or step 0), the outputs of an attempt that never wrote a
  checkpoint and damaged checkpoints kept aside (never deleted), ``metrics.jsonl`` cut back to the step a
  start begins from, ``config.json`` written atomically and ``history.jsonl``, one line per start.
- :class:`RunLock`: ``fcntl.flock`` on ``<run>/run.lock``, which also records the holder (pid, host, start
  time, command). The operating system drops the lock when its process ends in any way (``kill -9``
  included), so a lock left by a dead process is free; its record is then reported and overwritten.
- :func:`prepare_output_file` / :func:`prepare_run_folder`: an output path is checked (suffix, a folder
  that exists or can be created, writable) before a command computes anything.
- :func:`resume_config_changes`: what a resumed run would change in the saved configuration; only the keys
  of :data:`RESUME_ALLOWED` (run length, logging, checkpoint and sample intervals, the data location) may
  change unless the caller allows more; the model and the diffusion never.
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
    "DiskFullError", "LOCK_NAME", "RESUME_ALLOWED", "RunFolder", "RunLock", "RunLockedError", "UserError",
    "append_history", "deferred_interrupt", "describe_failure", "format_warning", "is_disk_full",
    "prepare_output_file", "prepare_run_folder", "remove_stale_temporaries", "resume_config_changes",
    "settle_interrupt", "write_text_atomic",
]

LOCK_NAME = "run.lock"
HISTORY_NAME = "history.jsonl"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
# What a run writes besides its lock: an attempt that never wrote a checkpoint leaves some of these behind.
OUTPUT_FILES = (METRICS_NAME, CONFIG_NAME, HISTORY_NAME)
OUTPUT_FOLDERS = ("samples", "checkpoints")
ABORTED_PREFIX = "aborted-"
DAMAGED_FOLDER = "damaged"
# Keys that may differ between a run's saved configuration and the one it is resumed with: they decide
# how long the run goes on, how often it logs, checkpoints and samples, and where the data lie, but not
# what one training step computes.
RESUME_ALLOWED = frozenset({"train.total_steps", "train.log_every", "train.ckpt_every", "train.ckpt_every_minutes",
                            "train.keep_last", "train.sample_every", "data.root"})
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


# ---------------------------------------------------------------------------------------------------- run folder
def append_history(folder: str | os.PathLike, record: dict) -> Path:
    """Append one JSON line to ``<folder>/history.jsonl`` (adds ``time``, ``pid`` and ``host``). A line that a
    killed writer left unfinished is ended first, so that it never swallows the new one."""
    path = Path(folder) / HISTORY_NAME
    line = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "pid": os.getpid(),
            "host": socket.gethostname(), **record}
    with open(path, "a+b") as f:
        torn = False
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        f.write((b"\n" if torn else b"") + json.dumps(line, default=str).encode("utf-8") + b"\n")
    return path


def _free_name(path: Path) -> Path:
    """``path`` if nothing is there, else the first free ``<stem>-2<suffix>``, ``<stem>-3<suffix>``, …"""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _start_record(event: str) -> dict:
    return {"event": event, "step": None, "checkpoint": None, "config_changes": {}, "skipped_checkpoints": [],
            "set_aside": []}


class RunFolder:
    """The folder of one training run, owned from :meth:`acquire` to :meth:`release`.

    Layout: ``run.lock`` (:class:`RunLock`), ``config.json`` (the configuration the run uses, rewritten
    atomically at every start), ``history.jsonl`` (one line per start), ``metrics.jsonl`` (the training log),
    ``checkpoints/ckpt_<step>.pt``, ``checkpoints/damaged/`` (unreadable checkpoints kept aside, where the
    retention of the last ``keep_last`` checkpoints never looks), ``samples/``, and ``aborted-<UTC time>/``
    (the outputs of an attempt that ended before its first checkpoint).

    A start goes :meth:`acquire` (the lock; hidden temporaries of interrupted writes removed; a lock left by a
    dead process announced) → :meth:`choose_start` (the checkpoint to continue from, or step 0) →
    :meth:`set_aside_damaged` and :meth:`resumed` when continuing → :meth:`truncate_metrics` → :meth:`begin`
    (``config.json`` and the history line) → :meth:`log` … → :meth:`release`. Nothing a run wrote is ever
    deleted, except those temporaries and the log lines beyond the step a start begins from (the resumed
    run writes them again).

    Under DDP every rank holds a ``RunFolder``, but only the ``owner`` (rank 0) locks the folder, looks at
    its outputs and writes; for the other ranks those calls do nothing.
    """

    def __init__(self, path: str | os.PathLike, owner: bool = True, what: str = "out_dir"):
        self.path = Path(path)
        self.owner = bool(owner)
        self.what = what
        self.checkpoints = self.path / "checkpoints"
        self.metrics = self.path / METRICS_NAME
        self._lock = RunLock(self.path, what) if self.owner else None
        self._record = _start_record("start")

    def acquire(self) -> RunFolder:
        """Lock the folder (a no-op while held, and for a rank that does not own it), remove the hidden
        temporaries of interrupted writes and warn about a lock taken over from a dead process. Raises
        :class:`RunLockedError` or :class:`UserError` like :meth:`RunLock.acquire`."""
        if self._lock is None or self._lock.held:
            return self
        self._lock.acquire()
        stale = self._lock.describe_stale()
        if stale:
            _say(f"warning: {stale}")
        remove_stale_temporaries(self.path)
        return self

    def release(self) -> None:
        """Drop the lock (a no-op when not held)."""
        if self._lock is not None:
            self._lock.release()

    def leftovers(self) -> list[str]:
        """The outputs of an earlier run in the folder: non-empty ``metrics.jsonl``, ``config.json``,
        ``history.jsonl`` and non-empty ``samples/``, ``checkpoints/`` (folders with a trailing ``/``)."""
        found = [name for name in OUTPUT_FILES
                 if (self.path / name).is_file() and (self.path / name).stat().st_size > 0]
        found += [f"{name}/" for name in OUTPUT_FOLDERS
                  if (self.path / name).is_dir() and any((self.path / name).iterdir())]
        return found

    def choose_start(self, resume: bool | str) -> Path | None:
        """Where a start begins: the newest checkpoint file to continue from, or ``None`` for step 0.

        ``resume=False`` (a fresh run) raises :class:`UserError` when the folder holds checkpoints or the
        outputs of an earlier run: it never mixes with them nor deletes them. ``resume=True`` or ``"auto"``
        without a checkpoint starts from step 0; the outputs of the earlier attempt (one that ended before
        its first checkpoint) are first moved into ``aborted-<UTC time>/``, which one line on stderr and the
        next history line tell; ``True`` (the command line's ``--resume``) also says when there was nothing."""
        from diffusion.checkpoint import latest_checkpoint

        existing = latest_checkpoint(self.checkpoints)
        if existing is not None:
            if resume is False:
                raise UserError(f"{self.what} {self.path} already holds checkpoints ({existing.name}); pass "
                                f"resume=True (--resume) to continue that run or choose another {self.what}")
            return existing
        if not self.owner:
            return None
        found = self.leftovers()
        if found and resume is False:
            raise UserError(
                f"{self.what} {self.path} holds the outputs of an earlier run that has no usable checkpoint "
                f"({', '.join(found)}); a fresh run neither mixes with them nor deletes them. Continue with --resume "
                f"(resume=True), which moves them into {self.path / ABORTED_PREFIX}<time>/ and starts that run again "
                f"from step 0, or choose another {self.what} (--out)")
        if found:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            aborted = _free_name(self.path / f"{ABORTED_PREFIX}{stamp}")
            aborted.mkdir()
            for name in found:
                os.replace(self.path / name.rstrip("/"), aborted / name.rstrip("/"))
            self._record["set_aside"].append(str(aborted))
            _say(f"note: {self.path} held the outputs of an attempt that ended before its first checkpoint "
                 f"({', '.join(found)}); moved them to {aborted}; the run starts again from step 0")
        elif resume is True:
            _say(f"note: {self.what} {self.path} holds no checkpoint yet; --resume starts the run from step 0")
        return None

    def set_aside_damaged(self, paths) -> list[Path]:
        """Move the checkpoint files ``paths`` (passed over as unreadable) into ``checkpoints/damaged/`` under
        a name not yet taken there, out of the way of the retention of the last ``keep_last`` checkpoints and
        of the checkpoints the run writes again; one line on stderr. Returns where they went."""
        paths = [Path(p) for p in paths]
        if not self.owner or not paths:
            return []
        folder = self.checkpoints / DAMAGED_FOLDER
        folder.mkdir(exist_ok=True)
        moved = []
        for bad in paths:
            moved.append(_free_name(folder / bad.name))
            os.replace(bad, moved[-1])
        self._record["set_aside"] += [str(p) for p in moved]
        _say(f"note: kept the damaged checkpoint{'s' if len(paths) > 1 else ''} "
             f"{', '.join(p.name for p in paths)} aside in {folder}")
        return moved

    def resumed(self, checkpoint: Path, config_changes: dict, skipped) -> None:
        """The next history line records a start from ``checkpoint``, the accepted ``config_changes``
        (``{"section.key": (saved, new)}``) and the ``skipped`` damaged checkpoints."""
        self._record.update(event="resume", checkpoint=str(checkpoint),
                            config_changes={k: list(v) for k, v in config_changes.items()},
                            skipped_checkpoints=[str(p) for p in skipped])

    def truncate_metrics(self, step: int) -> None:
        """Drop the lines of ``metrics.jsonl`` beyond ``step`` (written after its checkpoint by an interrupted
        run; all of them for a start from step 0) and lines cut short by an interruption."""
        if not self.owner or not self.metrics.exists():
            return
        kept = []
        for line in self.metrics.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        write_text_atomic(self.metrics, "".join(line + "\n" for line in kept))

    def begin(self, step: int, total_steps: int, config: dict) -> None:
        """A training call starts at ``step``: ``config.json`` (``config``, a plain dict) rewritten atomically
        and one line in ``history.jsonl``: ``event`` (``start``, ``resume``, or ``continue`` for a later call
        in the same process), ``step``, ``checkpoint``, ``config_changes``, ``skipped_checkpoints``,
        ``set_aside`` (what this start moved aside), ``total_steps``."""
        if not self.owner:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        append_history(self.path, {**self._record, "step": int(step), "total_steps": int(total_steps)})
        self._record = _start_record("continue")

    def log(self, record: dict) -> None:
        """Append ``record`` as one line to ``metrics.jsonl``."""
        if self.owner:
            with open(self.metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


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

"""Crash-only training: after a kill at any instant, one command (``train ... --resume``) continues, and the run
ends with the weights, EMA and optimiser state of an uninterrupted run, bit for bit, with nothing deleted.

Real processes are killed at start-up, before the first checkpoint, while a checkpoint is written, at random steps
and at random instants, each followed by the same resumed command; then in-process: a stop signal right after the
first step, an interrupted start-up, the outputs of an attempt without a checkpoint kept aside (``aborted-<time>/``),
damaged checkpoints kept aside (``checkpoints/damaged/``, out of the retention's way), the time-based checkpoint
interval (``train.ckpt_every_minutes``), which changes nothing that is trained, and a history line torn by a kill.
Tiny U-Nets, a few steps."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffusion.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
from diffusion.cli import main
from diffusion.config import config_from_dict, config_to_dict
from diffusion.runs import RESUME_ALLOWED, UserError, append_history
from diffusion.train import Trainer
from tests.messages import exact
from tests.test_cli import TINY
from tests.test_train import read_metrics, tiny_cfg, tiny_data, train_with_signal
from tests.test_train_helpers import _clocked

ROOT = Path(__file__).resolve().parents[1]
STEPS = 24
TRAIN = ["train", "--config", "configs/mnist5k.yaml", *TINY, "--set", "train.ckpt_every=4", "--set",
         "train.keep_last=2", "--steps", str(STEPS), "--device", "cpu", "--no-progress"]

# `python -m crash_hooks ARGS` is `python -m diffusion ARGS` slowed down where the test kills it: CRASH_STEP_SLEEP
# seconds after every training step; the CRASH_STALL_SAVE-th checkpoint write of the process stalls after its first
# bytes. Only the timing changes, never what is computed.
HOOKS = '''
import os, sys, time
import diffusion.checkpoint as checkpoint
import diffusion.train as train
from diffusion.cli import main

step_sleep, stall_save = float(os.environ.get("CRASH_STEP_SLEEP", "0")), int(os.environ.get("CRASH_STALL_SAVE", "0"))
real_make, real_save, real_write = train.make_train_step, train.save_checkpoint, checkpoint._write_all
saves = []


def make_train_step(*args, **kwargs):
    step = real_make(*args, **kwargs)

    def slowed(x0, y=None):
        out = step(x0, y)
        time.sleep(step_sleep)
        return out
    return slowed


def stalled_write(fd, data):
    real_write(fd, memoryview(data).cast("B")[:64])
    time.sleep(600)


def save_checkpoint(state, path, keep_last=None):
    saves.append(path)
    if len(saves) == stall_save:
        checkpoint._write_all = stalled_write
    return real_save(state, path, keep_last)


train.make_train_step, train.save_checkpoint = make_train_step, save_checkpoint
sys.exit(main(sys.argv[1:]))
'''


class Crashes:
    """Launches of the training command on one run folder, killed on a condition; counts kills and restarts."""

    def __init__(self, tmp_path):
        self.run = tmp_path / "run"
        (tmp_path / "crash_hooks.py").write_text(HOOKS)
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT}:{tmp_path}", "OMP_NUM_THREADS": "1"}
        self.kills = self.restarts = 0
        self.launched = []

    def launch(self, resume=True, hooks=None, out=None) -> subprocess.Popen:
        """``python -m diffusion train ... --out <run> [--resume]`` (``crash_hooks`` with ``hooks``)."""
        module = "diffusion" if hooks is None else "crash_hooks"
        self.restarts += out is None and resume
        self.launched.append(subprocess.Popen(
            [sys.executable, "-m", module, *TRAIN, "--out", str(out or self.run), *(["--resume"] if resume else [])],
            cwd=ROOT, env={**self.env, **(hooks or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return self.launched[-1]

    def kill_when(self, proc, condition, sig=signal.SIGKILL, timeout=120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition() and proc.poll() is None:
            assert time.monotonic() < deadline, "the condition to kill on never came"
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[1]  # killed while still at work
        self.kill(proc, sig)

    def kill(self, proc, sig=signal.SIGKILL) -> None:
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        self.kills += 1

    def steps_logged(self) -> int:
        path = self.run / "metrics.jsonl"
        return path.read_text().count("\n") if path.exists() else 0

    def checkpoint_steps(self) -> list[int]:
        return [int(p.stem.split("_")[1]) for p in list_checkpoints(self.run / "checkpoints")]

    def writing_checkpoint(self, step: int) -> bool:
        """Whether the temporary file of checkpoint ``step`` holds some bytes."""
        prefix = f".{checkpoint_path('', step).name}."
        try:
            return any(p.name.startswith(prefix) and p.stat().st_size > 0 for p in (self.run / "checkpoints").iterdir())
        except FileNotFoundError:  # the folder, or the file between listing and stat
            return False


@pytest.fixture
def crashes(tmp_path):
    c = Crashes(tmp_path)
    yield c
    for proc in c.launched:  # a failed test leaves no process behind
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _same_training(a, b) -> bool:
    """Whether two checkpoints hold the same training state: every tensor equal bit for bit, the rest equal."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_training(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_training(x, y) for x, y in zip(a, b))
    return a == b


def _logged(rows):
    return [(r["step"], r["loss"], r["ema_loss"], r["grad_norm"], r["lr"]) for r in rows]


def test_killed_anywhere_the_resumed_command_ends_with_the_uninterrupted_run(tmp_path, crashes, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    c = crashes
    uninterrupted = c.launch(resume=False, out=tmp_path / "reference")  # alongside, on the other core
    rng = random.Random(20261205)

    # start-up: SIGTERM while Python still imports torch (the first, plain command)
    proc = c.launch(resume=False)
    time.sleep(0.5)
    c.kill(proc, signal.SIGTERM)
    assert not c.checkpoint_steps()
    # before the first checkpoint: SIGKILL after two logged steps (steps slowed to 0.2 s; the checkpoint is at 4)
    proc = c.launch(hooks={"CRASH_STEP_SLEEP": "0.2"})
    c.kill_when(proc, lambda: c.steps_logged() >= 2)
    assert not c.checkpoint_steps() and c.steps_logged() >= 2
    # the plain command is refused and names the way on
    capsys.readouterr()
    assert main([*TRAIN, "--out", str(c.run)]) == 2
    [err] = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning: took over")]
    assert "no usable checkpoint" in err and "Continue with --resume" in err
    # while the first checkpoint is written, then while a later one is
    for stall, steps in ((1, []), (2, [4])):
        proc = c.launch(hooks={"CRASH_STALL_SAVE": str(stall)})
        c.kill_when(proc, lambda: c.writing_checkpoint(4 * stall))
        assert c.checkpoint_steps() == steps
    # at random steps (beyond what the killed process logged: the resumed one logs those steps again)
    for _ in range(2):
        target = c.steps_logged() + rng.randint(2, 4)
        proc = c.launch()
        c.kill_when(proc, lambda: c.steps_logged() >= target)
    # at random instants (most of them in the start-up; a process that finished first is not killed)
    for _ in range(2):
        proc = c.launch()
        time.sleep(rng.uniform(0.3, 4.0))
        if proc.poll() is None:
            c.kill(proc)
        else:
            proc.communicate()
    # and the newest checkpoint torn by the storage
    newest = list_checkpoints(c.run / "checkpoints")[-1]
    torn = newest.read_bytes()[:2000]
    newest.write_bytes(torn)
    for _ in range(3):  # the same command until it finishes (once is enough unless it is killed)
        proc = c.launch()
        out, err = proc.communicate(timeout=300)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["step"] == STEPS
    assert c.kills >= 6 and c.restarts >= 7
    print(f"{c.kills} kills, {c.restarts} restarts with --resume")
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.communicate()[1]
    reference = load_checkpoint(checkpoint_path(tmp_path / "reference" / "checkpoints", STEPS))

    assert _logged(read_metrics(c.run)) == _logged(read_metrics(tmp_path / "reference"))
    final = load_checkpoint(checkpoint_path(c.run / "checkpoints", STEPS))
    for key in ("model", "ema", "optimizer"):  # weights, EMA weights, Adam moments
        assert _same_training(final[key], reference[key]), key
    assert _same_training(final["train_state"]["stats"], reference["train_state"]["stats"])
    for mine, theirs in zip(final["rank_states"], reference["rank_states"]):  # the data order and the torch and
        assert _same_training(mine["data"], theirs["data"])  # numpy randomness (Python's is never used)
        assert all(_same_training(mine["rng"][k], theirs["rng"][k]) for k in ("torch", "numpy", "cuda"))
    # nothing deleted: the attempts without a checkpoint kept aside (what they logged is the run's own log), the
    # damaged checkpoint kept aside, no temporaries left, the lock released
    aborted = sorted(c.run.glob("aborted-*"))
    assert len(aborted) == 2
    for folder in aborted:
        rows = read_metrics(folder)
        assert rows and _logged(rows) == _logged(read_metrics(tmp_path / "reference"))[:len(rows)]
    assert (c.run / "checkpoints" / "damaged" / newest.name).read_bytes() == torn
    assert not [p for p in c.run.rglob("*.tmp")] and (c.run / "run.lock").read_text() == ""
    last = json.loads((c.run / "history.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "resume" and last["skipped_checkpoints"] == [str(newest)]
    assert last["set_aside"] == [str(c.run / "checkpoints" / "damaged" / newest.name)]


# ---------------------------------------------------------------------------------------------------- signals
def _uninterrupted(folder, **train):
    tr = Trainer(tiny_cfg(**train), data=tiny_data(), out_dir=folder, device="cpu", progress=False)
    tr.train()
    return tr


def _same_trainers(a: Trainer, b: Trainer) -> bool:
    return _same_training({"model": a.model.state_dict(), "ema": a.ema.state_dict(), "opt": a.optimizer.state_dict()},
                          {"model": b.model.state_dict(), "ema": b.ema.state_dict(), "opt": b.optimizer.state_dict()})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_a_stop_signal_after_the_first_step_writes_the_first_checkpoint(tmp_path, sig):
    full = _uninterrupted(tmp_path / "full", total_steps=4, ckpt_every=100)
    tr = Trainer(tiny_cfg(total_steps=4, ckpt_every=100), data=tiny_data(), out_dir=tmp_path / "run", device="cpu",
                 progress=False)
    result = train_with_signal(tr, after_step=1, sig=sig)
    assert (result["step"], result["interrupted"]) == (1, sig.name)
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["ckpt_0000001.pt"]
    resumed = Trainer(tiny_cfg(total_steps=4, ckpt_every=100), data=tiny_data(), out_dir=tmp_path / "run",
                      device="cpu", progress=False, resume=True)
    assert resumed.step == 1
    resumed.train()
    assert _same_trainers(resumed, full)


def test_an_interrupted_start_up_leaves_a_folder_that_resume_continues(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    real = Trainer._setup

    def interrupted(self, *args):
        raise KeyboardInterrupt  # Ctrl-C while the data load: the lock is taken, nothing else written

    monkeypatch.setattr(Trainer, "_setup", interrupted)
    assert main([*TRAIN, "--steps", "2", "--out", str(run)]) == 130
    monkeypatch.setattr(Trainer, "_setup", real)
    assert [p.name for p in run.iterdir()] == ["run.lock"]
    capsys.readouterr()
    assert main([*TRAIN, "--steps", "2", "--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert err == f"note: out_dir {run} holds no checkpoint yet; --resume starts the run from step 0\n"
    assert [m["step"] for m in read_metrics(run)] == [1, 2]


# ---------------------------------------------------------------------------------------------------- kept aside
def _attempt_without_checkpoint(folder, stop_at=3):
    """A run that ends (as if killed) after ``stop_at - 1`` steps, before its first checkpoint, with a sample grid."""
    tr = Trainer(tiny_cfg(total_steps=4, ckpt_every=100, sample_every=[1]), data=tiny_data(), out_dir=folder,
                 device="cpu", progress=False, sample_num=2, sample_steps=2)
    inner = tr.train_step

    def killed(x, y):
        if tr.step + 1 == stop_at:
            raise KeyboardInterrupt
        return inner(x, y)

    tr.train_step = killed
    with pytest.raises(KeyboardInterrupt):
        tr.train()
    outputs = [p.relative_to(folder) for p in sorted(folder.rglob("*")) if p.is_file()]
    return {p: (folder / p).read_bytes() for p in outputs
            if p.name != "run.lock" and not p.parts[0].startswith("aborted-")}


@pytest.mark.parametrize("resume", [True, "auto"])
def test_resume_keeps_the_outputs_of_an_attempt_without_checkpoint_aside(tmp_path, capsys, resume):
    full = _uninterrupted(tmp_path / "full", total_steps=4, ckpt_every=100)
    run = tmp_path / "run"
    first = _attempt_without_checkpoint(run)
    assert {str(p) for p in first} == {"config.json", "history.jsonl", "metrics.jsonl", "samples/step_000001.png",
                                       "samples/step_000001.npz"}
    with pytest.raises(UserError, match="Continue with --resume"):
        Trainer(tiny_cfg(total_steps=4, ckpt_every=100), data=tiny_data(), out_dir=run, device="cpu", progress=False)
    capsys.readouterr()
    tr = Trainer(tiny_cfg(total_steps=4, ckpt_every=100), data=tiny_data(), out_dir=run, device="cpu",
                 progress=False, resume=resume)
    [aborted] = run.glob("aborted-*")
    assert capsys.readouterr().err == (
        f"note: {run} held the outputs of an attempt that ended before its first checkpoint (metrics.jsonl, "
        f"config.json, history.jsonl, samples/); moved them to {aborted}; the run starts again from step 0\n")
    assert {p: (aborted / p).read_bytes() for p in first} == first  # every byte kept
    assert tr.step == 0 and sorted(p.name for p in run.iterdir()) == [aborted.name, "run.lock"]
    tr.train()
    assert _same_trainers(tr, full)
    [record] = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert (record["event"], record["step"], record["set_aside"]) == ("start", 0, [str(aborted)])
    # two such attempts in one folder, within a second or not: each kept in its own folder
    twice, attempts = tmp_path / "twice", []
    for _ in range(2):
        attempts.append(_attempt_without_checkpoint(twice))
        Trainer(tiny_cfg(total_steps=4, ckpt_every=100), data=tiny_data(), out_dir=twice, device="cpu",
                progress=False, resume=resume).close()
    folders = sorted(twice.glob("aborted-*"))  # aborted-<time>, then aborted-<time>-2 within the same second
    assert [{p: (f / p).read_bytes() for p in a} for f, a in zip(folders, attempts)] == attempts


class _Payload:
    """Runs ``os.mkdir(marker)`` when unpickled by a loader that executes code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_damaged_checkpoints_are_kept_aside_out_of_the_retentions_way(tmp_path, capsys):
    full = _uninterrupted(tmp_path / "full", total_steps=6, ckpt_every=1, keep_last=2)
    run, marker = tmp_path / "run", tmp_path / "executed"
    _uninterrupted(run, total_steps=4, ckpt_every=1, keep_last=2)
    damaged = run / "checkpoints" / "damaged"
    header_only = tmp_path / "header_only.pt"
    save_checkpoint({"step": 4}, header_only)  # format and version, no fields
    damages = [  # (what, the step it hits, the name it is kept under)
        (lambda p: torch.save({"weights": _Payload(marker)}, p), 4, "ckpt_0000004.pt"),
        (lambda p: p.write_bytes(header_only.read_bytes()), 4, "ckpt_0000004-2.pt"),
        (lambda p: p.write_bytes(p.read_bytes()[:1500]), 5, "ckpt_0000005.pt"),
    ]
    kept = {}
    for total, (damage, step, name) in enumerate(damages, start=4):
        path = checkpoint_path(run / "checkpoints", step)
        damage(path)
        kept[name] = path.read_bytes()
        capsys.readouterr()
        with pytest.warns(UserWarning, match=re.escape(f"skipped the damaged checkpoint {path}")):
            tr = Trainer(tiny_cfg(total_steps=total, ckpt_every=1, keep_last=2), data=tiny_data(), out_dir=run,
                         device="cpu", progress=False, resume=True)
        assert capsys.readouterr().err == f"note: kept the damaged checkpoint {path.name} aside in {damaged}\n"
        assert tr.step == step - 1
        tr.train()
        record = json.loads((run / "history.jsonl").read_text().splitlines()[-1])
        assert record["skipped_checkpoints"] == [str(path)] and record["set_aside"] == [str(damaged / name)]
    assert not marker.exists()  # the pickle was refused, never run
    # the last keep_last checkpoints rotated past them; every damaged file is intact beside them
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["ckpt_0000005.pt", "ckpt_0000006.pt"]
    assert {p.name: p.read_bytes() for p in damaged.iterdir()} == kept
    assert _same_trainers(tr, full)
    save_checkpoint({"step": 7}, checkpoint_path(run / "checkpoints", 7), keep_last=1)
    assert sorted(p.name for p in damaged.iterdir()) == sorted(kept)


# ---------------------------------------------------------------------------------------------------- the clock
def test_a_checkpoint_every_few_minutes_changes_nothing_that_is_trained(tmp_path, monkeypatch):
    """Steps of 0.5 s on a controlled clock, a checkpoint costing 20 s: with ``ckpt_every_minutes`` = 1.2 s one is
    written at step 3 (1.5 s after the start) and at the end; the trained state equals that of the run without."""
    runs = {}
    for minutes in (None, 0.02):
        tr = Trainer(tiny_cfg(total_steps=6, ckpt_every=100, ckpt_every_minutes=minutes), data=tiny_data(),
                     out_dir=tmp_path / str(minutes), device="cpu", progress=False)
        _clocked(tr, monkeypatch)
        tr.train()
        runs[minutes] = tr
    assert [p.name for p in list_checkpoints(tmp_path / "0.02" / "checkpoints")] == ["ckpt_0000003.pt",
                                                                                   "ckpt_0000006.pt"]
    assert [p.name for p in list_checkpoints(tmp_path / "None" / "checkpoints")] == ["ckpt_0000006.pt"]
    assert _same_trainers(runs[None], runs[0.02])
    assert _logged(read_metrics(tmp_path / "None")) == _logged(read_metrics(tmp_path / "0.02"))
    # changeable on resume, without --allow-config-change; recorded
    assert "train.ckpt_every_minutes" in RESUME_ALLOWED
    Trainer(tiny_cfg(total_steps=7, ckpt_every=100, ckpt_every_minutes=5), data=tiny_data(),
            out_dir=tmp_path / "0.02", device="cpu", progress=False, resume=True).train()
    record = json.loads((tmp_path / "0.02" / "history.jsonl").read_text().splitlines()[-1])
    assert record["config_changes"]["train.ckpt_every_minutes"] == [0.02, 5.0]


@pytest.mark.parametrize("value, shown", [(0, "0.0"), (-1.5, "-1.5"), (float("nan"), "nan")])
def test_the_time_interval_is_checked(value, shown, capsys, monkeypatch):
    raw = config_to_dict(tiny_cfg())
    raw["train"]["ckpt_every_minutes"] = value
    with pytest.raises(ValueError, match=exact(f"train.ckpt_every_minutes must be a positive number of minutes or "
                                               f"null, got {shown}")):
        config_from_dict(raw)
    monkeypatch.chdir(ROOT)
    assert main([*TRAIN, "--set", f"train.ckpt_every_minutes={value}"]) == 2
    assert "train.ckpt_every_minutes must be a positive number of minutes or null" in capsys.readouterr().err
    assert tiny_cfg().train.ckpt_every_minutes is None
    assert tiny_cfg(ckpt_every_minutes=2).train.ckpt_every_minutes == 2.0


def test_a_history_line_torn_by_a_kill_does_not_swallow_the_next(tmp_path):
    (tmp_path / "history.jsonl").write_text(json.dumps({"event": "start"}) + "\n" + '{"event": "res')
    append_history(tmp_path, {"event": "resume"})
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert lines[1] == '{"event": "res' and json.loads(lines[2])["event"] == "resume"

"""Runs that can be trusted for days: the run-folder lock (two real processes, a lock left by kill -9),
output paths checked before any work, the full configuration compared on resume, one-paragraph failures
(malformed YAML, unwritable paths, a full disk by fault injection, checkpoints without a config or of
another shape, Ctrl-C at start-up), crash leftovers, the fall-back from a damaged newest checkpoint, and the
permissions of checkpoint files. Tiny U-Nets, a few steps."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from diffusion import checkpoint as checkpoint_module
from diffusion.checkpoint import (
    CheckpointError, DamagedCheckpointWarning, checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint,
)
from diffusion.cli import main
from diffusion.runs import (
    DiskFullError, RunLock, RunLockedError, UserError, describe_failure, prepare_output_file, resume_config_changes,
)
from diffusion.train import Trainer
from tests.test_cli import TINY
from tests.test_train import read_metrics, tiny_cfg, tiny_data

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ["--config", "configs/mnist5k.yaml"]
CPU = ["--device", "cpu", "--no-progress"]


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _trained(folder, steps=4, **train):
    """A tiny run of ``steps`` steps in ``folder`` with a checkpoint every 2 steps."""
    cfg = tiny_cfg(total_steps=steps, ckpt_every=2, **train)
    Trainer(cfg, data=tiny_data(), out_dir=folder, device="cpu", progress=False).train()
    return cfg


def _read_only_folder(tmp_path) -> Path:
    """A folder this process cannot write: a chmod 0555 folder, or /sys when running as root."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder
    folder.chmod(0o755)
    try:
        (Path("/sys") / f".probe-{os.getpid()}").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no read-only folder available")


def _run_main(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_paragraph(err: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, err


# ---------------------------------------------------------------------------------------------------- the lock
def test_lock_two_real_processes_and_takeover_after_kill_9(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-m", "diffusion", "train", *CONFIG, *TINY, "--set",
                               "train.ckpt_every=2", "--steps", "100000", "--out", str(run), *CPU],
                              cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and holder.poll() is None and not list_checkpoints(run / "checkpoints"):
            time.sleep(0.2)
        assert holder.poll() is None and list_checkpoints(run / "checkpoints"), holder.communicate()[1]
        # a second real process on the same folder: refused at once, naming the holder
        second = subprocess.run([sys.executable, "-m", "diffusion", "train", *CONFIG, *TINY, "--set",
                                 "train.ckpt_every=2", "--steps", "100000", "--out", str(run), "--resume", *CPU],
                                cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"pid {holder.pid} on host {socket.gethostname()}" in second.stderr
        assert "in use by another run" in second.stderr
        _one_paragraph(second.stderr)
        assert holder.poll() is None  # the holder was not disturbed
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    assert json.loads((run / "run.lock").read_text())["pid"] == holder.pid  # the dead holder's record
    stopped = load_checkpoint(run / "checkpoints")["step"]
    code, out, err = _run_main(["train", *CONFIG, *TINY, "--set", "train.ckpt_every=2", "--steps", str(stopped + 1),
                                "--out", str(run), "--resume", *CPU], capsys)
    assert code == 0, err
    assert f"took over the lock of {run} left by pid {holder.pid}" in err
    assert json.loads(out.strip().splitlines()[-1])["step"] == stopped + 1
    assert (run / "run.lock").read_text() == ""  # released at the end
    assert [m["step"] for m in read_metrics(run)] == list(range(1, stopped + 2))
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_lock_in_process_release_and_stale_record(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunLockedError, match=rf"pid {os.getpid()} on host"):
        RunLock(tmp_path).acquire()
    first.release()
    with RunLock(tmp_path) as again:
        assert again.held and again.stale is None
    # a record without a live flock: what a process killed while holding the lock leaves behind
    (tmp_path / "run.lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "then"}))
    lock = RunLock(tmp_path).acquire()
    assert lock.stale["pid"] == 999999 and "pid 999999 on host elsewhere" in lock.describe_stale()
    lock.release()


def test_trainer_holds_the_lock_until_train_ends(tmp_path):
    tr = Trainer(tiny_cfg(total_steps=2), data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False)
    with pytest.raises(RunLockedError):
        RunLock(tmp_path).acquire()
    tr.train()
    RunLock(tmp_path).acquire().release()  # free again after train()
    with pytest.raises(ValueError, match="already holds checkpoints"):  # a failed start releases the lock too
        Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False)
    RunLock(tmp_path).acquire().release()


# ---------------------------------------------------------------------------------------------------- output paths
def test_output_paths_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    read_only = _read_only_folder(tmp_path)
    # --ckpt does not exist: an error about --out proves that nothing was loaded or computed first
    cases = [
        (["evaluate", "--ckpt", "nowhere", "--out", str(a_file / "r.json")], "is a file, not a folder"),
        (["evaluate", "--ckpt", "nowhere", "--out", str(read_only / "r.json")], "is not writable"),
        (["evaluate", "--ckpt", "nowhere", "--out", str(tmp_path)], "is a folder"),
        (["sample", "--ckpt", "nowhere", "--out", str(tmp_path / "grid.jpg")], "--out must end in .png"),
        (["sample", "--ckpt", "nowhere", "--out", str(tmp_path / "grid")], "--out must end in .png"),
        (["sample", "--ckpt", "nowhere", "--out", str(read_only / "g.png")], "is not writable"),
        (["train", *CONFIG, "--out", str(a_file), "--device", "cpu"], "is a file, not a folder"),
        (["train", *CONFIG, "--out", str(read_only / "run"), "--device", "cpu"], "cannot create the folder"),
    ]
    for argv, message in cases:
        code, _, err = _run_main(argv, capsys)
        assert code == 2 and message in err, (argv, err)
        _one_paragraph(err)
    missing_parent = prepare_output_file(tmp_path / "new" / "deeper" / "r.json")
    assert missing_parent.parent.is_dir()  # a missing folder is created up front


def test_evaluate_prints_results_before_writing_them(tmp_path, capsys, monkeypatch):
    _trained(tmp_path / "run", steps=2)
    import diffusion.metrics.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a, **k: {"metrics": {"nn": {"value": 1.5}}})
    out_path = tmp_path / "eval.json"
    real_write = Path.write_text

    def disk_full_for_the_report(self, *args, **kwargs):
        if self == out_path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full_for_the_report)
    code, out, err = _run_main(["evaluate", "--ckpt", str(tmp_path / "run"), "--metrics", "nn", "--out",
                                str(out_path), "--device", "cpu"], capsys)
    assert code == 2 and "printed on stdout above" in err and "No space left" in err
    assert json.loads(out)["metrics"]["nn"]["value"] == 1.5
    _one_paragraph(err)


# ---------------------------------------------------------------------------------------------------- resume config
def test_resume_refuses_changed_settings_unless_allowed_and_records_them(tmp_path):
    run = tmp_path / "run"
    cfg = _trained(run, steps=2)
    changed = tiny_cfg(total_steps=4, ckpt_every=2, ema_decay=0.5, adam_betas=[0.8, 0.99])
    with pytest.raises(UserError, match=r"train\.adam_betas.*train\.ema_decay: 0\.9 → 0\.5.*allow-config-change"):
        Trainer(changed, data=tiny_data(), out_dir=run, device="cpu", resume=True, progress=False)
    assert json.loads((run / "config.json").read_text())["train"]["ema_decay"] == 0.9  # untouched
    tr = Trainer(changed, data=tiny_data(), out_dir=run, device="cpu", resume=True, progress=False,
                 allow_config_change=True)
    assert tr.ema.decay == 0.5  # the run uses the new values ...
    assert all(g["betas"] == (0.8, 0.99) for g in tr.optimizer.param_groups)
    tr.train()
    used = json.loads((run / "config.json").read_text())
    assert used["train"]["ema_decay"] == 0.5 and used["train"]["adam_betas"] == [0.8, 0.99]  # ... and says so
    assert load_checkpoint(run / "checkpoints")["config"]["train"]["ema_decay"] == 0.5
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"] and history[1]["step"] == 2
    assert history[1]["config_changes"]["train.ema_decay"] == [0.9, 0.5]
    assert history[1]["config_changes"]["train.total_steps"] == [2, 4]
    # the allow-list (run length, logging, checkpoint/sample intervals) needs no flag
    longer = tiny_cfg(total_steps=6, ckpt_every=3, log_every=2, ema_decay=0.5, adam_betas=[0.8, 0.99])
    Trainer(longer, data=tiny_data(), out_dir=run, device="cpu", resume=True, progress=False).train()
    last = json.loads((run / "history.jsonl").read_text().splitlines()[-1])
    assert set(last["config_changes"]) == {"train.total_steps", "train.ckpt_every", "train.log_every"}
    assert cfg.train.total_steps == 2


def test_resume_config_changes_model_and_diffusion_never():
    saved = {"model": {"ch": 32}, "diffusion": {"num_timesteps": 20}, "train": {"lr": 1e-3, "total_steps": 5}}
    assert resume_config_changes(saved, {**saved, "train": {"lr": 1e-3, "total_steps": 9}}) == {
        "train.total_steps": (5, 9)}
    with pytest.raises(UserError, match=r"diffusion\.num_timesteps: 20 → 50"):
        resume_config_changes(saved, {**saved, "diffusion": {"num_timesteps": 50}}, allow_change=True)
    with pytest.raises(UserError, match=r"train\.lr: 0\.001 → 0\.002"):
        resume_config_changes(saved, {**saved, "train": {"lr": 2e-3, "total_steps": 5}})


def test_cli_resume_with_changed_lr_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    assert main(["train", *CONFIG, *TINY, "--steps", "1", "--out", str(run), *CPU]) == 0
    capsys.readouterr()
    code, _, err = _run_main(["train", *CONFIG, *TINY, "--set", "train.lr=0.5", "--steps", "2", "--out", str(run),
                              "--resume", *CPU], capsys)
    assert code == 2 and "train.lr: 0.001 → 0.5" in err and "--allow-config-change" in err
    _one_paragraph(err)


# ---------------------------------------------------------------------------------------------------- failures
def test_malformed_yaml_and_debug_flag(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel:\n  ch: [1, 2\ntrain:\n  lr: 1\n")
    code, _, err = _run_main(["train", "--config", str(bad)], capsys)
    assert code == 2 and "is not valid YAML" in err and "line 4, column 6" in err
    _one_paragraph(err)
    code, _, err = _run_main(["train", "--config", str(bad), "--debug"], capsys)
    assert code == 2 and "Traceback" in err and "is not valid YAML" in err
    monkeypatch.setenv("DDPM_DEBUG", "1")
    code, _, err = _run_main(["info", "--config", str(bad)], capsys)
    assert code == 2 and "Traceback" in err


def _fill_disk_after(limit):
    """A replacement of ``checkpoint._write_all`` that writes ``limit`` bytes, then fails like a full disk."""
    real = checkpoint_module._write_all
    written = {"n": 0}

    def write_all(fd, data):
        n = memoryview(data).nbytes
        if written["n"] + n > limit:
            real(fd, memoryview(data).cast("B")[: max(0, limit - written["n"])])
            written["n"] = limit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written["n"] += n
        real(fd, data)

    return write_all


@pytest.mark.parametrize("limit", [100, 20_000])  # inside the zip header; inside a tensor record
def test_disk_full_while_checkpointing_is_named_and_keeps_previous_checkpoints(tmp_path, monkeypatch, limit):
    tr = Trainer(tiny_cfg(total_steps=4, ckpt_every=2), data=tiny_data(), out_dir=tmp_path, device="cpu",
                 progress=False)
    real_save = checkpoint_module.save_checkpoint

    def save(state, path, keep_last=None):
        if state["step"] == 4:
            monkeypatch.setattr(checkpoint_module, "_write_all", _fill_disk_after(limit))
        return real_save(state, path, keep_last)

    monkeypatch.setattr("diffusion.train.save_checkpoint", save)
    with pytest.raises(DiskFullError) as info:
        tr.train()
    message = str(info.value)
    assert "the disk is full" in message and "ckpt_0000004.pt" in message
    assert "previous checkpoints are intact (ckpt_0000002.pt" in message and "--resume" in message
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["ckpt_0000002.pt"]  # no partial file left
    assert load_checkpoint(tmp_path / "checkpoints")["step"] == 2
    assert describe_failure(info.value)[1] == 2
    RunLock(tmp_path).acquire().release()  # the failed run released its lock


def test_disk_full_through_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(checkpoint_module, "_write_all", _fill_disk_after(5_000))
    code, _, err = _run_main(["train", *CONFIG, *TINY, "--steps", "1", "--out", str(tmp_path / "run"), *CPU], capsys)
    assert code == 2 and "the disk is full" in err and "no earlier checkpoint exists" in err
    assert "inline_container" not in err
    _one_paragraph(err)


def _tiny_state(tmp_path):
    _trained(tmp_path / "run", steps=2)
    return load_checkpoint(tmp_path / "run" / "checkpoints")


def test_checkpoint_without_config_and_with_wrong_shapes(tmp_path, capsys):
    state = _tiny_state(tmp_path)
    no_config = save_checkpoint({k: v for k, v in state.items() if k != "config"}, tmp_path / "a" / "no_config.pt")
    code, _, err = _run_main(["sample", "--ckpt", str(no_config), "--out", str(tmp_path / "g.png"), "--device",
                              "cpu"], capsys)
    assert code == 2 and "has no 'config' entry" in err
    _one_paragraph(err)
    wide = dict(state, config={**state["config"], "model": {**state["config"]["model"], "ch": 64}})
    wrong = save_checkpoint(wide, tmp_path / "b" / "wrong.pt")
    code, _, err = _run_main(["sample", "--ckpt", str(wrong), "--out", str(tmp_path / "g.png"), "--device", "cpu"],
                             capsys)
    assert code == 2 and "74 shape mismatches" in err and "and 69 more" in err
    assert "time_mlp.0.weight [128, 32] in the checkpoint vs [256, 64] in the model" in err
    _one_paragraph(err)


def test_ctrl_c_during_start_up(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("diffusion.data.load_dataset", interrupted)
    monkeypatch.setattr("diffusion.train.load_dataset", interrupted)
    code, _, err = _run_main(["train", *CONFIG, *TINY, "--out", str(tmp_path / "run"), *CPU], capsys)
    assert code == 130 and "interrupted (Ctrl-C)" in err
    _one_paragraph(err)
    RunLock(tmp_path / "run").acquire().release()  # the lock was released
    # real processes, SIGINT at instants spread over start-up (torch's import, the data, the first steps):
    # a KeyboardInterrupt inside torch's C extension used to abort (SIGABRT) or die by SIGINT at exit
    for i, delay in enumerate((0.3, 0.55, 0.8, 1.05, 1.3, 1.8)):
        proc = subprocess.Popen([sys.executable, "-m", "diffusion", "train", *CONFIG, *TINY, "--out",
                                 str(tmp_path / f"run{i}"), *CPU], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err, (delay, err)


_EXEC_INTERRUPT = """
import sys
import diffusion.data, diffusion.train
from diffusion.cli import main


def interrupted(*args, **kwargs):  # a Ctrl-C inside an exec'd string, as while torch builds a dataclass
    exec("raise KeyboardInterrupt")


diffusion.data.load_dataset = diffusion.train.load_dataset = interrupted
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_inside_an_exec_string_exits_130_not_by_sigint(tmp_path):
    # CPython marks a KeyboardInterrupt leaving an exec'd string as unhandled and then ends the process by
    # SIGINT (status -2) although the command line caught it; lazy imports in torch hit this at start-up
    # (run with -m as the real command is: a script's sys.exit takes a path that skips the check)
    (tmp_path / "interrupted.py").write_text(_EXEC_INTERRUPT)
    proc = subprocess.run([sys.executable, "-m", "interrupted", "train", *CONFIG, *TINY, "--out",
                           str(tmp_path / "run"), *CPU], cwd=ROOT, env=_env(PYTHONPATH=f"{ROOT}:{tmp_path}"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130 and proc.stderr == "python -m diffusion train: interrupted (Ctrl-C)\n", proc.stderr
    RunLock(tmp_path / "run").acquire().release()


@pytest.mark.parametrize("settle", [False, True])
def test_settle_interrupt_clears_the_unhandled_mark(tmp_path, settle):
    (tmp_path / "settle.py").write_text("import sys\nfrom diffusion.runs import settle_interrupt\ntry:\n"
                                        "    exec('raise KeyboardInterrupt')\nexcept KeyboardInterrupt:\n"
                                        f"    {'settle_interrupt()' if settle else 'pass'}\nsys.exit(130)\n")
    proc = subprocess.run([sys.executable, "-m", "settle"], cwd=ROOT, env=_env(PYTHONPATH=f"{ROOT}:{tmp_path}"),
                          capture_output=True, timeout=60)
    assert proc.returncode == (130 if settle else -signal.SIGINT)


# ---------------------------------------------------------------------------------------------------- leftovers
def test_leftovers_tmp_files_removed_and_metrics_truncated(tmp_path):
    run = tmp_path / "run"
    _trained(run, steps=4)
    tmp = run / "checkpoints" / ".ckpt_0000006.pt.dead.tmp"
    tmp.write_bytes(b"partial")
    (run / ".config.json.123.tmp").write_text("{")
    with open(run / "metrics.jsonl", "a") as f:  # lines an interrupted run wrote after its last checkpoint
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n" + '{"step": 6, "lo')
    tr = Trainer(tiny_cfg(total_steps=4, ckpt_every=2), data=tiny_data(), out_dir=run, device="cpu", resume=True,
                 progress=False)
    assert not tmp.exists() and not (run / ".config.json.123.tmp").exists()
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4]
    tr.close()


def test_fresh_run_refuses_a_folder_with_an_old_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    with pytest.raises(UserError, match=r"outputs of an earlier run .*metrics\.jsonl.*Continue with --resume"):
        Trainer(tiny_cfg(), data=tiny_data(), out_dir=run, device="cpu", progress=False)
    assert (run / "metrics.jsonl").read_text().count("\n") == 1  # nothing deleted
    # resume="auto" without a checkpoint starts from step 0: the stale lines are kept aside
    Trainer(tiny_cfg(total_steps=2), data=tiny_data(), out_dir=run, device="cpu", resume="auto",
            progress=False).train()
    assert [m["step"] for m in read_metrics(run)] == [1, 2] and read_metrics(run)[0]["loss"] != 1.0
    [aborted] = run.glob("aborted-*")
    assert read_metrics(aborted) == [{"step": 1, "loss": 1.0}]


# ---------------------------------------------------------------------------------------------------- damaged, mode
def test_damaged_newest_checkpoint_falls_back_and_resumes_exactly(tmp_path, capsys):
    full = tmp_path / "full"
    _trained(full, steps=4)
    part = tmp_path / "part"
    _trained(part, steps=4)
    newest = checkpoint_path(part / "checkpoints", 4)
    torn = newest.read_bytes()[:1000]
    newest.write_bytes(torn)  # torn by a crash of the storage
    with pytest.warns(DamagedCheckpointWarning, match="ckpt_0000004.pt"):
        tr = Trainer(tiny_cfg(total_steps=4, ckpt_every=2), data=tiny_data(), out_dir=part, device="cpu",
                     resume=True, progress=False)
    assert tr.step == 2
    kept = part / "checkpoints" / "damaged" / "ckpt_0000004.pt"
    assert kept.read_bytes() == torn
    tr.train()
    a, b = read_metrics(full), read_metrics(part)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    assert [(m["loss"], m["grad_norm"]) for m in a] == [(m["loss"], m["grad_norm"]) for m in b]  # bitwise
    history = json.loads((part / "history.jsonl").read_text().splitlines()[-1])
    assert history["skipped_checkpoints"] == [str(newest)] and history["step"] == 2
    assert history["set_aside"] == [str(kept)] and kept.read_bytes() == torn  # the new ckpt_0000004.pt beside it
    # sample/evaluate from a folder fall back as well, with a warning
    newest.write_bytes(b"not a zip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_checkpoint(part)["step"] == 2
    assert any(issubclass(w.category, DamagedCheckpointWarning) for w in caught)
    for p in list_checkpoints(part / "checkpoints"):
        p.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        load_checkpoint(part / "checkpoints")


def test_checkpoint_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint({"step": 1, "w": torch.zeros(3)}, checkpoint_path(tmp_path, 1))
        assert path.stat().st_mode & 0o777 == 0o644  # group- and world-readable, like the other files
        os.umask(0o007)
        path = save_checkpoint({"step": 2, "w": torch.zeros(3)}, checkpoint_path(tmp_path, 2))
        assert path.stat().st_mode & 0o777 == 0o660
    finally:
        os.umask(old)

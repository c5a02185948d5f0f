"""Command line: --help, exit status 2 with a message on bad input, train → SIGTERM → resume → sample, info."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diffusion.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.ch=32", "--set", "model.ch_mult=[1]", "--set", "model.num_res_blocks=1",
        "--set", "model.attn_resolutions=[]", "--set", "diffusion.num_timesteps=20", "--set", "train.batch_size=4",
        "--set", "train.log_every=1", "--set", "train.ckpt_every=1000", "--set", "train.sample_every=[]",
        "--set", "train.warmup_steps=2"]


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["evaluate"], ["info"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "no/such.yaml"], "does not exist"),
    (["train", "--config", "configs/mnist5k.yaml", "--set", "model.width=3"], "model.width"),
    (["train", "--config", "configs/mnist5k.yaml", "--set", "train.lr=fast"], "train.lr"),
    (["train", "--config", "configs/mnist5k.yaml", "--steps", "0"], "positive integer"),
    (["sample", "--ckpt", "nowhere", "--sampler", "euler"], "invalid choice"),
    (["sample", "--ckpt", "nowhere"], "does not exist"),
    (["sample", "--ckpt", "x", "--classes", "a,b"], "class indices"),
    (["info", "--config", "configs/mnist5k.yaml", "--set", "model.ch=33"], "ch must be divisible"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_exits_2_with_a_message(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_info_prints_stages_params_and_flops(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["info", "--config", "configs/mnist5k.yaml"]) == 0
    out = capsys.readouterr().out
    assert "mid.attn" in out and "parameters without class embedding" in out and "FLOPs per image" in out


def test_info_cifar10_parameter_count(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["info", "--config", "configs/cifar10.yaml", "--no-flops"]) == 0
    out = capsys.readouterr().out
    assert "parameters without class embedding: 35,746,307" in out
    with_class = int(out.split("parameters with class embedding")[1].split(":")[1].split()[0].replace(",", ""))
    assert with_class > 35_746_307


def test_train_sigterm_resume_and_sample(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "diffusion", "train", "--config", "configs/mnist5k.yaml",
                             *TINY, "--steps", "100000", "--out", str(run), "--device", "cpu", "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:  # a run that ignored the signal (or a failed check) must not keep training for 100,000 steps
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "SIGTERM" in err
    result = json.loads(out.strip().splitlines()[-1])
    stopped = result["step"]
    assert result["interrupted"] == "SIGTERM" and Path(result["checkpoint"]).is_file()

    assert main(["train", "--config", "configs/mnist5k.yaml", *TINY, "--steps", str(stopped + 2), "--out", str(run),
                 "--device", "cpu", "--no-progress", "--resume"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["step"] == stopped + 2 and done["interrupted"] is None
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, stopped + 3))

    grid = tmp_path / "grid.png"
    assert main(["sample", "--ckpt", str(run), "--sampler", "ddim", "--steps", "5", "--classes", "0,3,7",
                 "--num", "6", "--guidance-scale", "2", "--seed", "1", "--out", str(grid), "--device", "cpu"]) == 0
    with np.load(tmp_path / "grid.npz") as z:
        assert z["images"].shape == (6, 1, 16, 16) and z["labels"].tolist() == [0, 3, 7, 0, 3, 7]
        assert str(z["sampler"]) == "ddim" and float(z["guidance_scale"]) == 2.0
    assert grid.stat().st_size > 0
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--ckpt", str(run), "--metrics", "nn", "--num-samples", "4", "--steps", "2",
                 "--out", str(report), "--device", "cpu", "--no-compile"]) == 0
    evaluated = json.loads(report.read_text())
    assert evaluated["checkpoint_step"] == stopped + 2 and "nn" in evaluated["metrics"]
    assert main(["evaluate", "--ckpt", str(run), "--metrics", "fid,bogus", "--device", "cpu"]) == 2
    # an existing run without --resume, and --classes beyond the null token: exit 2
    assert main(["train", "--config", "configs/mnist5k.yaml", *TINY, "--out", str(run), "--device", "cpu"]) == 2
    assert main(["sample", "--ckpt", str(run), "--classes", "11", "--steps", "2", "--out",
                 str(tmp_path / "g.png"), "--device", "cpu"]) == 2
    assert "--classes must lie in [0, 10]" in capsys.readouterr().err

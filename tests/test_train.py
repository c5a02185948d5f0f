"""Trainer: exact resume, metrics log, sample grids, label dropout, gradient accumulation, warm-up,
non-finite loss and SIGTERM handling — all on a tiny U-Net (ch 32, one level, T = 20, 8×8 images)."""
import json
import os
import signal

import pytest
import torch
from torch import nn

from diffusion.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from diffusion.config import config_from_dict, config_to_dict
from diffusion.ema import EMA
from diffusion.train import NonFiniteLossError, Trainer
from diffusion.train_step import TrainStats, make_train_step, warmup_lr
from tests.tiny import tiny_cfg, tiny_data

torch.set_num_threads(1)


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_gives_identical_losses_step_for_step(tmp_path):
    full = Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path / "full", device="cpu", progress=False)
    res_full = full.train()
    assert res_full["step"] == 6 and res_full["interrupted"] is None

    part = Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path / "part", device="cpu", progress=False)
    assert part.train(total_steps=3)["step"] == 3
    del part
    resumed = Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path / "part", device="cpu", resume=True,
                      progress=False)
    assert resumed.step == 3
    resumed.train()

    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    for ma, mb in zip(a, b):
        assert ma["loss"] == mb["loss"] and ma["ema_loss"] == mb["ema_loss"] and ma["lr"] == mb["lr"]
        assert ma["grad_norm"] == mb["grad_norm"]
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(full.ema.module.parameters(), resumed.ema.module.parameters()):
        assert torch.equal(p, q)


def test_metrics_checkpoint_contents_and_samples(tmp_path):
    cfg = tiny_cfg(total_steps=4, log_every=2, ckpt_every=2, keep_last=1, sample_every=[2, 4])
    tr = Trainer(cfg, data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False, sample_num=6,
                 sample_steps=3)
    res = tr.train()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [2, 4]
    assert set(rows[0]) == {"step", "loss", "ema_loss", "lr", "grad_norm", "images_per_s", "elapsed_s"}
    assert rows[0]["lr"] == pytest.approx(2e-3 * 2 / 2)  # warm-up over 2 steps, then constant
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 for r in rows)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["ckpt_0000004.pt"]  # keep_last=1
    state = load_checkpoint(tmp_path / "checkpoints")
    assert state["step"] == 4 and state["config"]["train"]["total_steps"] == 4
    assert state["data"] == {"name": "tiny", "label": "tiny random", "channels": 1, "image_size": 8,
                             "num_classes": 3, "class_names": ["a", "b", "c"]}
    assert set(state["git"]) == {"commit", "dirty"} and len(state["rank_states"]) == 1
    assert (tmp_path / "samples" / "step_000002.png").is_file()
    import numpy as np
    with np.load(tmp_path / "samples" / "step_000004.npz") as z:
        assert z["images"].shape == (6, 1, 8, 8) and z["images"].dtype == np.uint8
        assert z["labels"].tolist() == [0, 1, 2, 0, 1, 2]
    assert len(res["samples"]) == 4 and res["checkpoint"].endswith("ckpt_0000004.pt")
    with pytest.raises(ValueError, match="already holds checkpoints"):
        Trainer(cfg, data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    tr = Trainer(tiny_cfg(total_steps=8, log_every=4, ckpt_every=2), data=tiny_data(), out_dir=tmp_path,
                 device="cpu", progress=False)
    real = tr.diffusion.training_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] == 3:
            out = dict(out, loss=out["loss"] * float("nan"))
        return out

    tr.diffusion.training_losses = poisoned
    with pytest.raises(NonFiniteLossError, match=r"step 3\b.*ckpt_0000002\.pt"):
        tr.train()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["ckpt_0000002.pt"]


def train_with_signal(tr: Trainer, after_step: int, sig=signal.SIGTERM) -> dict:
    """``tr.train()`` with a real ``sig`` delivered to this process during step ``after_step`` (1-based)."""
    inner = tr.train_step

    def step_then_signal(x, y):
        out = inner(x, y)
        if tr.step == after_step - 1:
            os.kill(os.getpid(), sig)
        return out

    tr.train_step = step_then_signal
    try:
        return tr.train()
    except KeyboardInterrupt:  # caught here: pytest would take it for the user stopping the run
        pytest.fail(f"one {sig.name} interrupted the run instead of ending it after the step")


def test_sigterm_saves_checkpoint_and_stops(tmp_path):
    tr = Trainer(tiny_cfg(total_steps=50, ckpt_every=100, log_every=10), data=tiny_data(), out_dir=tmp_path,
                 device="cpu", progress=False)
    res = train_with_signal(tr, after_step=3)
    assert res["interrupted"] == "SIGTERM" and res["step"] == 3
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["ckpt_0000003.pt"]
    assert read_metrics(tmp_path)[-1]["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_resume_rejects_other_architecture(tmp_path):
    Trainer(tiny_cfg(total_steps=1), data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False).train()
    other = config_from_dict({**config_to_dict(tiny_cfg()),
                              "model": {"ch": 64, "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": [],
                                        "class_cond": True}})
    with pytest.raises(CheckpointError, match="model.ch"):
        Trainer(other, data=tiny_data(), out_dir=tmp_path, device="cpu", resume=True, progress=False)
    # without a checkpoint there is nothing to compare: the run starts from step 0 (tests/test_crash_only.py)
    assert Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path / "empty", device="cpu", resume=True,
                   progress=False).step == 0


def test_batch_must_divide_into_accumulation():
    with pytest.raises(ValueError, match="divisible"):
        Trainer(tiny_cfg(batch_size=6, grad_accum=4), data=tiny_data(), device="cpu", progress=False)


def test_unknown_stage_sampler_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="sample_sampler"):
        Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False, sample_sampler="euler")
    assert not (tmp_path / "checkpoints").exists()


class _Recorder(nn.Module):
    """ε_θ = a·x_t; records the labels it sees."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.5))
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append(y)
        return self.a * x


class _FixedLoss:
    """A stand-in diffusion whose loss ignores t and noise: ‖model(x0) − x0‖² per example."""

    num_timesteps = 20

    def training_losses(self, model, x0, t, model_kwargs=None, noise=None):
        out = model(x0, t, **(model_kwargs or {}))
        return {"loss": ((out - x0) ** 2).mean(dim=(1, 2, 3))}


def test_gradient_accumulation_matches_one_big_batch():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 4, 4)
    results = []
    for accum in (1, 4):
        model = _Recorder()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        step = make_train_step(model, _FixedLoss(), opt, None, grad_clip=None, grad_accum=accum)
        loss = step(x, None)
        results.append((loss.item(), model.a.item()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-6)


def test_label_dropout_rate_and_null_token():
    torch.manual_seed(0)
    model = _Recorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    step = make_train_step(model, _FixedLoss(), opt, EMA(model, 0.5), p_uncond=0.3, null_class=10)
    x, y = torch.zeros(500, 1, 2, 2), torch.randint(0, 10, (500,))
    for _ in range(4):
        step(x, y)
    seen = torch.cat(model.seen)
    dropped = (seen == 10).float().mean().item()
    assert abs(dropped - 0.3) < 4 * (0.3 * 0.7 / 2000) ** 0.5
    kept = seen != 10
    assert torch.equal(seen[kept], y.repeat(4)[kept])  # the others keep their labels
    model.seen.clear()
    make_train_step(model, _FixedLoss(), opt, None, p_uncond=0.0, null_class=10)(x, y)
    assert torch.equal(model.seen[0], y)


def test_clipping_and_stats():
    """grad_norm is measured before clipping; the update uses the clipped gradient."""
    model = _Recorder()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    stats = TrainStats(torch.device("cpu"))
    x = torch.ones(4, 1, 2, 2)
    step = make_train_step(model, _FixedLoss(), opt, None, grad_clip=0.1, stats=stats)
    step(x, None)
    # loss = (a−1)², dloss/da = 2(a−1) = −1 at a = 0.5 → clipped to −0.1 → a = 0.6
    assert model.a.item() == pytest.approx(0.6)
    out = stats.read()
    assert out["grad_norm"] == pytest.approx(1.0) and out["loss"] == pytest.approx(0.25)
    assert out["ema_loss"] == pytest.approx(0.25) and out["first_nonfinite_step"] is None


def test_warmup_lr():
    assert warmup_lr(0, 1e-3, 4) == pytest.approx(2.5e-4)
    assert warmup_lr(3, 1e-3, 4) == pytest.approx(1e-3)
    assert warmup_lr(100, 1e-3, 4) == pytest.approx(1e-3)
    assert warmup_lr(0, 1e-3, 0) == pytest.approx(1e-3)


def test_make_train_step_validation():
    model = _Recorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="compile"):
        make_train_step(model, _FixedLoss(), opt, None, compile="fast")
    with pytest.raises(ValueError, match="p_uncond"):
        make_train_step(model, _FixedLoss(), opt, None, p_uncond=1.0)
    step = make_train_step(model, _FixedLoss(), opt, None, grad_accum=3)
    with pytest.raises(ValueError, match="grad_accum"):
        step(torch.zeros(4, 1, 2, 2), None)

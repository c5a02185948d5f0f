"""Checkpoints: atomic write, last-N retention, weights-only loading, clear errors; EMA update rule."""
import copy
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from diffusion.checkpoint import (
    CheckpointError, checkpoint_path, get_rng_state, latest_checkpoint, list_checkpoints, load_checkpoint,
    save_checkpoint, set_rng_state,
)
from diffusion.ema import EMA


def _state(step):
    net = nn.Linear(3, 2)
    return {"step": step, "model": net.state_dict(), "config": {"name": "x", "train": {"lr": 1e-3}},
            "rng": get_rng_state()}


def test_roundtrip_and_retention(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(_state(step), checkpoint_path(tmp_path, step), keep_last=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["ckpt_0000030.pt", "ckpt_0000040.pt"]
    assert latest_checkpoint(tmp_path).name == "ckpt_0000040.pt"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    state = load_checkpoint(tmp_path)  # a folder → its newest checkpoint
    assert state["step"] == 40 and state["config"]["train"]["lr"] == 1e-3
    assert set(state["model"]) == {"weight", "bias"}


def test_truncated_file_gives_checkpoint_error(tmp_path):
    path = save_checkpoint(_state(1), checkpoint_path(tmp_path, 1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)
    assert issubclass(CheckpointError, ValueError)


def test_foreign_files_are_rejected_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": "ddpm-thesis-checkpoint", "x": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()  # weights_only: the payload never ran

    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this package"):
        load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(empty)


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    path = save_checkpoint(_state(5), checkpoint_path(tmp_path, 5))
    with pytest.raises(Exception):
        save_checkpoint({"bad": lambda: 0}, path)  # cannot be serialised
    assert load_checkpoint(path)["step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_rng_state_roundtrip_through_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.randn(), torch.randn(1)
    save_checkpoint({"rng": get_rng_state()}, tmp_path / "ckpt_0000001.pt")
    expected = (random.random(), np.random.randn(), torch.randn(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "ckpt_0000001.pt")["rng"])
    got = (random.random(), np.random.randn(), torch.randn(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_keep_last_validation(tmp_path):
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint({}, tmp_path / "ckpt_0000001.pt", keep_last=0)


def test_ema_matches_closed_form():
    """After n updates towards fixed weights θ, θ_EMA = d^n θ_0 + (1 − d^n) θ (geometric sum)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = EMA(net, decay=0.9)
    theta0 = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.fill_(5.0)
    for _ in range(7):
        ema.update(net)
    for p0, p_ema, p in zip(theta0, ema.module.parameters(), net.parameters()):
        torch.testing.assert_close(p_ema, 0.9**7 * p0 + (1 - 0.9**7) * p.detach())
    assert torch.equal(ema.module[1].running_mean, torch.full((3,), 5.0))  # buffers are copied
    assert ema.num_updates == 7 and not any(p.requires_grad for p in ema.module.parameters())
    other = EMA(net, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and other.num_updates == 7
    for a, b in zip(other.module.parameters(), ema.module.parameters()):
        assert torch.equal(a, b)


def test_ema_warmup_matches_reference_recursion():
    """With warm-up, d_n = min(decay, (1+n)/(10+n)): a float64 scalar recursion over moving targets, the
    decay cap reached, and an EMA restored from its state after 5 updates identical to an uninterrupted one."""
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    decay = 0.6
    targets = [[torch.randn_like(p) for p in net.parameters()] for _ in range(12)]
    ema = EMA(net, decay=decay, warmup=True)
    assert [ema.current_decay(n) for n in (0, 1, 2, 5)] == [0.1, 2 / 11, 0.25, 0.4] and ema.current_decay(50) == decay
    ref = [p.detach().double().clone() for p in ema.module.parameters()]
    saved = None
    for n, target in enumerate(targets):
        with torch.no_grad():
            for p, v in zip(net.parameters(), target):
                p.copy_(v)
        d = min(decay, (1 + n) / (10 + n))
        ref = [d * r + (1 - d) * v.double() for r, v in zip(ref, target)]
        ema.update(net)
        if n == 4:
            saved = copy.deepcopy(ema.state_dict())
        for r, q in zip(ref, ema.module.parameters()):
            torch.testing.assert_close(q.double(), r, rtol=1e-6, atol=1e-6)
    resumed = EMA(nn.Linear(3, 2), decay=0.9)
    resumed.load_state_dict(saved)
    assert resumed.warmup and resumed.num_updates == 5 and resumed.current_decay() == 0.4
    for target in targets[5:]:
        with torch.no_grad():
            for p, v in zip(net.parameters(), target):
                p.copy_(v)
        resumed.update(net)
    for a, b in zip(resumed.module.parameters(), ema.module.parameters()):
        torch.testing.assert_close(a, b)
    constant = EMA(net, decay=decay)  # without warm-up the first update already uses the full decay
    assert constant.current_decay(0) == decay


def test_ema_validation():
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(2, 2), decay=1.0)
    with pytest.raises(ValueError, match="model"):
        EMA("not a module")


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_update_compiles_once(warmup):
    """Nothing in update() is a Python value that changes per step: a compiled update (Dynamo, eager backend)
    never recompiles, and it matches the eager update."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    eager, compiled = EMA(net, decay=0.9, warmup=warmup), EMA(net, decay=0.9, warmup=warmup)
    fn = torch.compile(compiled.update, backend="eager", fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(6):
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(torch.randn_like(p))
            eager.update(net)
            fn(net)
    assert compiled.num_updates == eager.num_updates == 6
    for a, b in zip(compiled.module.parameters(), eager.module.parameters()):
        torch.testing.assert_close(a, b)

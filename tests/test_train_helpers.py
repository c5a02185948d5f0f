"""The training loop's helpers, written out: the device names it accepts, the warm-up of the learning
rate, setting it (plain and tensor), and the running statistics (interval means, the bias-corrected EMA
of the loss, the first non-finite step, reset on read, state round trip)."""
import math

import pytest
import torch

from diffusion.train import TrainStats, resolve_device, set_lr, warmup_lr


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"^device must be 'cpu', 'cuda' or 'cuda:<index>', got 'gpu'$"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match=r"^device must be 'cpu', 'cuda' or 'cuda:<index>', got 'meta'$"):
        resolve_device("meta")
    with pytest.raises(ValueError, match=r"^device must be 'cpu', 'cuda' or 'cuda:<index>', got 3.5$"):
        resolve_device(3.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device 'cuda' was requested but no CUDA GPU is available; "
                                             r"use device='cpu'$"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("step, expected", [(0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0), (4, 1.0), (50, 1.0)])
def test_warmup_is_linear_then_constant(step, expected):
    assert warmup_lr(step, 2e-4, 4) == pytest.approx(2e-4 * expected, rel=1e-12)
    assert isinstance(warmup_lr(step, 2, 4), float)


@pytest.mark.parametrize("warmup", [0, -3])
def test_no_warmup_is_the_base_rate(warmup):
    assert warmup_lr(0, 3, warmup) == 3.0 and isinstance(warmup_lr(0, 3, warmup), float)


def test_set_lr_plain_and_tensor_groups():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": torch.tensor(0.5)}], lr=0.1)
    lr_tensor = opt.param_groups[1]["lr"]
    set_lr(opt, 0.02)
    assert opt.param_groups[0]["lr"] == 0.02
    assert opt.param_groups[1]["lr"] is lr_tensor and lr_tensor.item() == pytest.approx(0.02)  # filled in place


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5, 1.5])
def test_stats_beta_outside_zero_one_is_named(beta):
    with pytest.raises(ValueError, match=rf"^beta must be in \(0, 1\), got {beta!r}$"):
        TrainStats(torch.device("cpu"), beta=beta)


def test_stats_means_ema_first_bad_step_and_reset():
    stats = TrainStats(torch.device("cpu"), beta=0.5)
    losses, norms = [4.0, 2.0, float("nan"), 1.0, float("inf")], [1.0, 3.0, 5.0, 7.0, 9.0]
    for loss, norm in zip(losses[:2], norms[:2]):
        stats.update(torch.tensor(loss, dtype=torch.float64), torch.tensor(norm))
    out = stats.read()
    # EMA with bias correction: (β(1−β)ℓ1 + (1−β)ℓ2) / (β(1−β) + (1−β)) = (0.25·4 + 0.5·2) / 0.75
    assert out == {"loss": 3.0, "grad_norm": 2.0, "ema_loss": pytest.approx(2.0 / 0.75, rel=1e-6),
                   "first_nonfinite_step": None}
    empty = stats.read()  # the interval sums were reset, the EMA was not
    assert math.isnan(empty["loss"]) and math.isnan(empty["grad_norm"])
    assert empty["ema_loss"] == pytest.approx(2.0 / 0.75, rel=1e-6)
    state = stats.state_dict()
    for loss, norm in zip(losses[2:], norms[2:]):
        stats.update(torch.tensor(loss), torch.tensor(norm))
    out = stats.read()
    assert out["first_nonfinite_step"] == 2 and out["grad_norm"] == 7.0 and math.isnan(out["loss"])
    fresh = TrainStats(torch.device("cpu"), beta=0.5)
    fresh.load_state_dict(state)
    assert fresh.read()["ema_loss"] == pytest.approx(2.0 / 0.75, rel=1e-6)
    assert set(state) == {"loss_sum", "grad_norm_sum", "count", "ema_num", "ema_den", "steps_done", "first_bad"}
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())


def test_stats_keep_the_first_of_several_bad_steps():
    stats = TrainStats(torch.device("cpu"))
    for loss in (1.0, float("inf"), 2.0, float("nan")):
        stats.update(torch.tensor(loss), torch.tensor(1.0))
    assert stats.read()["first_nonfinite_step"] == 1

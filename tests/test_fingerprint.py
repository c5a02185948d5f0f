"""The training fingerprint (diffusion/fingerprint.py): the same on every CPU and thread count, different as soon
as training computes something else, and without side effects on the caller."""
import numpy as np
import pytest
import torch

import diffusion.data
import diffusion.ema
import diffusion.gaussian_diffusion
import diffusion.train
from diffusion import fingerprint


@pytest.fixture
def fresh():
    """The digest recomputed (not the process's cached one), and the cache cleared again afterwards."""
    fingerprint.training_fingerprint.cache_clear()
    yield lambda: (fingerprint.training_fingerprint.cache_clear(), fingerprint.training_fingerprint())[1]
    fingerprint.training_fingerprint.cache_clear()


def test_values_are_rounded_and_cover_both_models():
    values = fingerprint.fingerprint_values()
    assert set(values) == {"cond", "uncond"}
    for which in values.values():
        assert set(which) == {"loss", "grad_norm", "weights", "ema", "samples"}
        assert len(which["loss"]) == len(which["grad_norm"]) == 3  # three steps logged one by one
        for v in which["loss"] + which["weights"]:
            assert len(v.replace(".", "").replace("-", "").lstrip("0").split("e")[0]) <= fingerprint.SIGNIFICANT
    # label dropout, attention and gradient accumulation in one model, not the other: different numbers
    assert values["cond"]["loss"] != values["uncond"]["loss"]


def test_same_digest_under_another_thread_count(fresh, monkeypatch):
    """Another reduction order (the stand-in for another CPU) moves float64 values far below the rounding."""
    first = fresh()
    monkeypatch.setattr(fingerprint, "THREADS", 2)
    assert fresh() == first


_WARMUP, _EMA_UPDATE = diffusion.train.warmup_lr, diffusion.ema.EMA.update


def _shifted_warmup(step, base_lr, warmup_steps):
    return _WARMUP(step + 1, base_lr, warmup_steps)


def _ema_update_twice(self, model):
    _EMA_UPDATE(self, model)
    _EMA_UPDATE(self, model)


CHANGES = {
    "learning-rate warm-up one step late": (diffusion.train, "warmup_lr", _shifted_warmup),
    "EMA updated twice per step": (diffusion.ema.EMA, "update", _ema_update_twice),
    "no horizontal flips": (diffusion.data, "random_hflip", lambda x, generator=None: x),
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_a_change_of_what_training_computes_changes_the_digest(fresh, monkeypatch, name):
    reference = fresh()
    owner, attr, replacement = CHANGES[name]
    monkeypatch.setattr(owner, attr, replacement)
    assert fresh() != reference, name


def test_a_change_of_the_loss_or_the_sampler_changes_the_digest(fresh, monkeypatch):
    reference = fresh()
    losses = diffusion.gaussian_diffusion.GaussianDiffusion.training_losses

    def weighted(self, *args, **kwargs):
        out = losses(self, *args, **kwargs)
        return {**out, "loss": out["loss"] * 1.001}

    monkeypatch.setattr(diffusion.gaussian_diffusion.GaussianDiffusion, "training_losses", weighted)
    assert fresh() != reference
    monkeypatch.undo()
    assert fresh() == reference
    sample = diffusion.train.sample
    monkeypatch.setattr(diffusion.train, "sample", lambda *a, **k: sample(*a, **{**k, "steps": k["steps"] + 1}))
    assert fresh() != reference  # the stage samples belong to a trained model's entry too


def test_leaves_the_caller_state_alone():
    torch.manual_seed(123)
    np.random.seed(5)
    expected_torch, expected_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(5)
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    fingerprint.fingerprint_values()
    assert torch.equal(torch.rand(3), expected_torch) and np.array_equal(np.random.rand(3), expected_np)
    assert torch.get_num_threads() == threads and torch.get_default_dtype() == dtype
    assert not torch.are_deterministic_algorithms_enabled()


def test_draws_nothing_that_depends_on_the_cpu_vendor():
    """Every random draw of the tiny runs comes from torch's own generator: not bernoulli_ (dropout's masks),
    which takes MKL's generator on Intel CPUs and torch's elsewhere, so that the digest is the same on both."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.add(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        fingerprint.fingerprint_values()
    assert "aten.randn.generator" in ops  # the recording sees the draws
    assert not [op for op in ops if "bernoulli" in op or "dropout" in op]


def test_float_noise_far_above_another_cpus_keeps_the_digest(fresh, monkeypatch):
    """Weights perturbed by 1e-11 (another CPU's reduction order moves float64 values by about 1e-15) give the
    same digest: what the rounding keeps is the computation, not its last bits."""
    reference = fresh()
    build = diffusion.train.build_model

    def perturbed(cfg, data):
        model = build(cfg, data)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 1e-11 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        return model

    monkeypatch.setattr(diffusion.train, "build_model", perturbed)
    assert fresh() == reference

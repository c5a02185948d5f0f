"""Which weights sample: the EMA weights everywhere (section 3.3.2), the raw ones only when asked.

EMA and raw weights are made to differ deliberately (a few optimiser steps with a fast decay, then a
perturbation of the raw weights), and every place that samples is checked by which weights reach the
sampler: the trainer's stage samples, ``python -m diffusion sample`` (and ``--raw``),
``python -m diffusion evaluate``, and the notebooks' ``experiments.trained_model`` / ``generate``.
The sampler (or the evaluation) is replaced by a spy that records the network's parameters and then
runs the real thing (or returns a stand-in result).
"""
import types

import numpy as np
import pytest
import torch

import diffusion.metrics.evaluate
import diffusion.samplers
import diffusion.train
from diffusion import experiments
from diffusion.checkpoint import load_checkpoint, save_checkpoint
from diffusion.cli import main
from tests import tiny


def tiny_cfg(**train):
    """The shared tiny run, shortened to three steps with a fast EMA and no dropout or flips, so that EMA and raw
    weights differ clearly and deterministically."""
    return tiny.tiny_cfg(dropout=0.0, hflip=False, num_timesteps=10,
                         **{**dict(lr=5e-3, warmup_steps=1, total_steps=3, keep_last=2, ema_decay=0.5), **train})


def tiny_data(n=24):
    return tiny.tiny_data(n)


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in params])


def same(a, b) -> bool:
    return torch.equal(flat(a), flat(b))


class Spy:
    """Stands in for ``sample``: records the parameters of the network it is given, then samples."""

    def __init__(self, real):
        self.real, self.seen = real, []

    def __call__(self, diffusion, model, *args, **kwargs):
        self.seen.append(flat(model.parameters()))
        return self.real(diffusion, model, *args, **kwargs)


def test_trainer_stage_samples_use_the_ema_weights(tmp_path, monkeypatch):
    spy = Spy(diffusion.train.sample)
    monkeypatch.setattr(diffusion.train, "sample", spy)
    tr = diffusion.train.Trainer(tiny_cfg(sample_every=[3]), data=tiny_data(), out_dir=tmp_path, device="cpu",
                                 progress=False, sample_num=4, sample_steps=2)
    tr.train()
    ema, raw = flat(tr.ema.module.parameters()), flat(tr.model.parameters())
    assert not torch.equal(ema, raw)  # the set-up makes them differ
    assert len(spy.seen) == 1 and torch.equal(spy.seen[0], ema)
    # and what was written is the EMA model's sample with the trainer's fixed noise
    with np.load(tmp_path / "samples" / "step_000003.npz") as z:
        written = z["images"]
    y = torch.arange(4) % 3
    for weights, expect in ((tr.ema.module, True), (tr.model, False)):
        x = diffusion.samplers.sample(tr.diffusion, weights, (4, 1, 8, 8), sampler=tr.sample_sampler, steps=2, y=y,
                                      null_class=3, generator=torch.Generator().manual_seed(0))
        as_uint8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        assert np.array_equal(as_uint8, written) is expect


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder whose newest checkpoint has clearly different EMA and raw weights."""
    out = tmp_path_factory.mktemp("run")
    diffusion.train.Trainer(tiny_cfg(), data=tiny_data(), out_dir=out, device="cpu", progress=False).train()
    ckpt = sorted((out / "checkpoints").glob("*.pt"))[-1]
    state = load_checkpoint(ckpt)
    for k, v in state["model"].items():  # push the raw weights further away from the EMA ones
        if v.is_floating_point():
            state["model"][k] = v + 0.05
    ckpt.unlink()
    save_checkpoint(state, ckpt)
    return out


def checkpoint_weights(run):
    state = load_checkpoint(run / "checkpoints")
    return flat(state["ema"]["module"].values()), flat(state["model"].values())


def params_as_state_order(model):
    return flat(model.state_dict().values())


class StateSpy(Spy):
    def __call__(self, diffusion, model, *args, **kwargs):
        self.seen.append(params_as_state_order(model))
        return self.real(diffusion, model, *args, **kwargs)


@pytest.mark.parametrize("raw", [False, True])
def test_cli_sample_uses_ema_weights_unless_raw(run_dir, tmp_path, monkeypatch, raw):
    ema, raw_w = checkpoint_weights(run_dir)
    assert not torch.equal(ema, raw_w)
    spy = StateSpy(diffusion.samplers.sample)
    monkeypatch.setattr(diffusion.samplers, "sample", spy)
    argv = ["sample", "--ckpt", str(run_dir), "--steps", "2", "--num", "2", "--out", str(tmp_path / "g.png"),
            "--device", "cpu", "--no-compile"] + (["--raw"] if raw else [])
    assert main(argv) == 0
    assert spy.seen and all(torch.equal(s, raw_w if raw else ema) for s in spy.seen)


def test_cli_evaluate_uses_ema_weights(run_dir, tmp_path, monkeypatch):
    ema, _ = checkpoint_weights(run_dir)
    seen = []

    def fake_evaluate(model, *args, **kwargs):
        seen.append(params_as_state_order(model))
        return {"metrics": {}}

    monkeypatch.setattr(diffusion.metrics.evaluate, "evaluate", fake_evaluate)
    assert main(["evaluate", "--ckpt", str(run_dir), "--metrics", "nn", "--num-samples", "2", "--steps", "2",
                 "--device", "cpu", "--no-compile", "--out", str(tmp_path / "e.json")]) == 0
    assert len(seen) == 1 and torch.equal(seen[0], ema)


def test_experiments_trained_model_and_generate_use_ema_weights(run_dir, tmp_path, monkeypatch):
    """``trained_model`` loads EMA weights into ``model`` and raw ones into ``raw_model``; ``generate``
    samples ``model`` unless ``use_ema=False``. The cache is replaced by one that runs nothing (the run
    folder already exists) and the profile's config and data by the tiny ones."""
    ema, raw_w = checkpoint_weights(run_dir)
    monkeypatch.setattr(experiments, "load_run_config", lambda spec: tiny_cfg())
    monkeypatch.setattr(experiments, "load_data", lambda spec, split="train", cfg=None: tiny_data())

    entry = tmp_path / "entry"  # a cache entry whose "run" sub-folder is the run folder
    entry.mkdir()
    (entry / "run").symlink_to(run_dir, target_is_directory=True)

    class FakeArt:
        def cached(self, key, work, kind=None, producer=None, modules=None, fingerprint=None):
            if kind.startswith("train"):
                return types.SimpleNamespace(path=entry, key="k", result={})
            folder = tmp_path / kind
            folder.mkdir()
            return types.SimpleNamespace(path=folder, key=kind, result=work(folder))

    art = FakeArt()
    tm = experiments.trained_model(art, {}, "cond", dev=torch.device("cpu"))
    assert torch.equal(params_as_state_order(tm.model), ema)
    assert torch.equal(params_as_state_order(tm.raw_model), raw_w)

    spy = StateSpy(diffusion.samplers.sample)
    monkeypatch.setattr(diffusion.samplers, "sample", spy)
    experiments.generate(art, tm, 2, steps=2, tag="ema")
    experiments.generate(art, tm, 2, steps=2, use_ema=False, tag="raw")
    assert len(spy.seen) == 2
    assert torch.equal(spy.seen[0], ema) and torch.equal(spy.seen[1], raw_w)


def test_generate_samples_through_the_compiled_network_when_the_spec_asks(run_dir, tmp_path, monkeypatch):
    """``sampling: {compile: true}``: generate() samples with torch.compile of the EMA (or raw) network, once per
    network, and keys its samples apart from eager ones; without it nothing is compiled."""
    monkeypatch.setattr(experiments, "load_run_config", lambda spec: tiny_cfg())
    monkeypatch.setattr(experiments, "load_data", lambda spec, split="train", cfg=None: tiny_data())
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "run").symlink_to(run_dir, target_is_directory=True)
    compiled, keys = [], []

    def fake_compile(net, **kwargs):
        compiled.append((net, kwargs))
        return net

    monkeypatch.setattr(torch, "compile", fake_compile)

    class FakeArt:
        def cached(self, key, work, kind=None, producer=None, modules=None, fingerprint=None):
            if kind.startswith("train"):
                return types.SimpleNamespace(path=entry, key="k", result={})
            keys.append(key)
            folder = tmp_path / f"{kind}{len(keys)}"
            folder.mkdir()
            return types.SimpleNamespace(path=folder, key=kind, result=work(folder))

    eager = experiments.trained_model(FakeArt(), {}, "cond", dev=torch.device("cpu"))
    experiments.generate(FakeArt(), eager, 2, steps=2)
    assert compiled == [] and "compiled" not in keys[-1]
    tm = experiments.trained_model(FakeArt(), {"sampling": {"compile": True}}, "cond", dev=torch.device("cpu"))
    experiments.generate(FakeArt(), tm, 2, steps=2)
    experiments.generate(FakeArt(), tm, 2, steps=2, seed=1)
    experiments.generate(FakeArt(), tm, 2, steps=2, use_ema=False)
    assert [net for net, _ in compiled] == [tm.model, tm.raw_model] and compiled[0][1] == {"dynamic": False}
    assert keys[-1]["compiled"] is True and {k: v for k, v in keys[1].items() if k != "compiled"} == keys[0]

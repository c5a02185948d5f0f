"""Crash-only sampling: ``experiments.generate`` keeps every finished batch with the generator's state after it, so
a call interrupted in its third batch resumes there and returns the images of an uninterrupted call, bit for bit;
the kept batches are removed once the entry is stored. A tiny conditional U-Net, ancestral sampling (fresh noise
at every step, so a wrongly restored generator changes the images)."""
import types

import numpy as np
import pytest
import torch

import diffusion.samplers
import diffusion.train
from diffusion import experiments
from diffusion.report import PROGRESS
from diffusion.report import cache as report_cache
from tests import tiny

N, BATCH = 5, 2  # three batches: 2, 2, 1
SAMPLE = diffusion.samplers.sample


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    diffusion.train.Trainer(tiny.tiny_cfg(total_steps=2, num_timesteps=10), data=tiny.tiny_data(), out_dir=out,
                            device="cpu", progress=False).train()
    return out


class Art:
    """The trained model from ``run_dir``; samples through the real cache under ``root``."""

    def __init__(self, run_dir, entry, root):
        self.run_dir, self.entry, self.root = run_dir, entry, root

    def cached(self, key, work, kind=None, producer=None, modules=None, fingerprint=None):
        if kind.startswith("train"):
            if not self.entry.exists():
                self.entry.mkdir()
                (self.entry / "run").symlink_to(self.run_dir, target_is_directory=True)
            return types.SimpleNamespace(path=self.entry, key="k", result={})
        return report_cache.cached(key, work, kind, notebook="05_guidance", profile="quick", cache_root=self.root,
                                   modules=modules)


class CountingSampler:
    """``diffusion.samplers.sample`` that counts its calls and raises KeyboardInterrupt on call ``stop_at``."""

    def __init__(self, stop_at=None):
        self.calls, self.stop_at = 0, stop_at

    def __call__(self, *args, **kwargs):
        if self.calls == self.stop_at:
            raise KeyboardInterrupt("stopped in a batch")
        self.calls += 1
        return SAMPLE(*args, **kwargs)


@pytest.fixture
def model(run_dir, tmp_path, monkeypatch):
    """(trained model, the sampling arguments, the images of an uninterrupted call)."""
    monkeypatch.setattr(experiments, "load_run_config", lambda spec: tiny.tiny_cfg(num_timesteps=10))
    monkeypatch.setattr(experiments, "load_data", lambda spec, split="train", cfg=None: tiny.tiny_data())
    args = dict(sampler="ancestral", steps=None, y=[0, 1, 2, 0, 1], seed=3, batch_size=BATCH, tag="steps")
    whole_art = Art(run_dir, tmp_path / "entry", tmp_path / "whole")
    tm = experiments.trained_model(whole_art, {}, "cond", dev=torch.device("cpu"))
    return tm, args, experiments.generate(whole_art, tm, N, **args)


def test_an_interrupted_generate_resumes_after_its_last_finished_batch(model, run_dir, tmp_path, monkeypatch):
    tm, args, whole = model

    art = Art(run_dir, tmp_path / "entry", tmp_path / "resumed")
    stopped = CountingSampler(stop_at=2)
    monkeypatch.setattr(diffusion.samplers, "sample", stopped)
    with pytest.raises(KeyboardInterrupt):
        experiments.generate(art, tm, N, **args)
    (partial,) = (tmp_path / "resumed").rglob("*.partial")
    assert sorted(p.name for p in (partial / PROGRESS).iterdir()) == ["batch_0000000.pt", "batch_0000002.pt"]

    resumed_sampler = CountingSampler()
    monkeypatch.setattr(diffusion.samplers, "sample", resumed_sampler)
    resumed = experiments.generate(art, tm, N, **args)
    assert resumed_sampler.calls == 1  # only the third batch was sampled again
    assert np.array_equal(resumed["images"], whole["images"]) and np.array_equal(resumed["labels"], whole["labels"])
    assert resumed["seconds_per_image"] > 0
    (final,) = [p for p in (tmp_path / "resumed").rglob("*") if (p / "result.json").is_file()]
    assert not (final / PROGRESS).exists() and not list((tmp_path / "resumed").rglob("*.partial"))

    # the batches matter: another batch size is another key (and other images)
    other = experiments.generate(art, tm, N, **{**args, "batch_size": 3})
    assert not np.array_equal(other["images"], whole["images"])


def test_a_damaged_kept_batch_is_sampled_again(model, run_dir, tmp_path, monkeypatch):
    tm, args, whole = model
    art = Art(run_dir, tmp_path / "entry", tmp_path / "cache")

    monkeypatch.setattr(diffusion.samplers, "sample", CountingSampler(stop_at=2))
    with pytest.raises(KeyboardInterrupt):
        experiments.generate(art, tm, N, **args)
    (partial,) = (tmp_path / "cache").rglob("*.partial")
    (partial / PROGRESS / "batch_0000002.pt").write_bytes(b"torn")
    again = CountingSampler()
    monkeypatch.setattr(diffusion.samplers, "sample", again)
    resumed = experiments.generate(art, tm, N, **args)
    assert again.calls == 2 and np.array_equal(resumed["images"], whole["images"])


@pytest.mark.parametrize("batch_size", [0, 2.0, True])
def test_generate_checks_its_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        experiments.generate(None, None, 4, batch_size=batch_size)

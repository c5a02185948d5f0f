"""How ``experiments.generate`` splits a set into batches: the fewest batches of one size (two sizes one apart where
it must), at most the profile's ``sampling.batch`` network inputs per call, so half as many images per batch under
classifier-free guidance (both predictions in one pass). A compiled network compiles once per batch shape."""
import numpy as np
import pytest
import torch

import diffusion.samplers
from diffusion import experiments
from tests import tiny
from tests.test_sampling_resume import Art, run_dir  # noqa: F401  (the fixture of a tiny trained model)

SAMPLE = diffusion.samplers.sample


@pytest.mark.parametrize("n, at_most, sizes", [(500, 128, [125] * 4), (200, 50, [50] * 4), (1000, 25, [25] * 40),
                                               (5, 2, [2, 2, 1]), (116, 128, [116]), (129, 128, [65, 64]),
                                               (1, 7, [1]), (7, 1, [1] * 7)])
def test_batch_sizes_examples(n, at_most, sizes):
    assert experiments.batch_sizes(n, at_most) == sizes


def test_batch_sizes_are_the_fewest_of_at_most_two_sizes_one_apart():
    for n in range(1, 300):
        for at_most in (1, 2, 3, 25, 50, 64, 128):
            sizes = experiments.batch_sizes(n, at_most)
            assert sum(sizes) == n and max(sizes) <= at_most
            assert len(sizes) == -(-n // at_most)  # no more batches than the plain split
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("bad", [(0, 4), (4, 0), (4.0, 2), (4, None)])
def test_batch_sizes_refuses_non_positive_integers(bad):
    with pytest.raises(ValueError, match="positive integers"):
        experiments.batch_sizes(*bad)


class Recording:
    """``diffusion.samplers.sample`` that records the batch of every call and the network inputs per call."""

    def __init__(self):
        self.batches, self.inputs = [], []

    def __call__(self, diffusion, model, shape, **kwargs):
        self.batches.append(shape[0])

        def counted(x, t, **kw):
            self.inputs.append(x.shape[0])
            return model(x, t, **kw)

        return SAMPLE(diffusion, counted, shape, **kwargs)


def tiny_model(run_dir, tmp_path, monkeypatch, spec):  # noqa: F811
    monkeypatch.setattr(experiments, "load_run_config", lambda spec: tiny.tiny_cfg(num_timesteps=10))
    monkeypatch.setattr(experiments, "load_data", lambda spec, split="train", cfg=None: tiny.tiny_data())
    art = Art(run_dir, tmp_path / "entry", tmp_path / "cache")
    return art, experiments.trained_model(art, spec, "cond", dev=torch.device("cpu"))


@pytest.mark.parametrize("w, batches, inputs", [(None, [4, 3, 3], {4, 3}), (1.0, [4, 3, 3], {4, 3}),
                                                (0.0, [4, 3, 3], {4, 3}), (3.0, [2] * 5, {4})])
def test_generate_keeps_each_call_within_the_profiles_batch(run_dir, tmp_path, monkeypatch, w, batches,  # noqa: F811
                                                            inputs):
    art, tm = tiny_model(run_dir, tmp_path, monkeypatch, {"sampling": {"batch": 4}})
    assert tm.sampling_batch == 4
    rec = Recording()
    monkeypatch.setattr(diffusion.samplers, "sample", rec)
    out = experiments.generate(art, tm, 10, sampler="ddim", steps=2, guidance_scale=w, y=np.arange(10) % 3, seed=1)
    assert rec.batches == batches and set(rec.inputs) == inputs
    assert out["images"].shape[0] == 10


def test_an_explicit_batch_size_overrides_the_profiles(run_dir, tmp_path, monkeypatch):  # noqa: F811
    art, tm = tiny_model(run_dir, tmp_path, monkeypatch, {"sampling": {"batch": 4}})
    rec = Recording()
    monkeypatch.setattr(diffusion.samplers, "sample", rec)
    experiments.generate(art, tm, 10, sampler="ddim", steps=2, guidance_scale=2.0, y=np.arange(10) % 3, batch_size=8)
    assert rec.batches == [4, 3, 3] and set(rec.inputs) == {8, 6}


def test_without_a_sampling_batch_the_default_holds(run_dir, tmp_path, monkeypatch):  # noqa: F811
    _, tm = tiny_model(run_dir, tmp_path, monkeypatch, {})
    assert tm.sampling_batch == experiments.SAMPLING_BATCH
    assert tm.images_per_batch() == experiments.SAMPLING_BATCH
    assert tm.images_per_batch(3.0) == experiments.SAMPLING_BATCH // 2


@pytest.mark.parametrize("batch", [0, -2, 2.5, "50", True])
def test_a_bad_sampling_batch_is_refused_by_name(run_dir, tmp_path, monkeypatch, batch):  # noqa: F811
    with pytest.raises(ValueError, match="sampling.batch of the cond model must be a positive integer"):
        tiny_model(run_dir, tmp_path, monkeypatch, {"sampling": {"batch": batch}})

"""Nearest neighbours on a toy set with a known answer; timing returns positive medians."""
from __future__ import annotations

import time

import pytest
import torch

from diffusion.metrics.neighbours import nearest_neighbours
from diffusion.metrics.timing import time_per_image


def test_nearest_neighbours_known_answer():
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (50, 1, 4, 4), generator=g, dtype=torch.uint8)
    picks = torch.tensor([7, 31, 0, 49])
    samples = train[picks].clone()
    samples[1, 0, 0, 0] = samples[1, 0, 0, 0] ^ 1  # one grey level off: distance 1/255
    idx, dist = nearest_neighbours(samples, train, k=3, chunk_size=7, progress=False)
    assert idx[:, 0].tolist() == picks.tolist()
    assert dist[0, 0] == pytest.approx(0.0, abs=1e-6) and dist[1, 0] == pytest.approx(1 / 255, rel=1e-6)
    # brute force over the whole set in [0, 1] pixel units
    full = torch.cdist(samples.flatten(1).double() / 255, train.flatten(1).double() / 255)
    ref_d, ref_i = full.topk(3, dim=1, largest=False)
    torch.testing.assert_close(dist, ref_d)
    assert torch.equal(idx, ref_i)
    assert (dist[:, 1:] >= dist[:, :-1]).all()


def test_nearest_neighbours_float_samples_are_quantised():
    train = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    train[1] = 255
    x = torch.full((1, 1, 2, 2), 0.999)  # -> 255 after quantisation
    idx, dist = nearest_neighbours(x, train, progress=False)
    assert idx.item() == 1 and dist.item() == pytest.approx(0.0)


def test_nearest_neighbours_rejects_bad_input():
    with pytest.raises(ValueError, match="C×H×W"):
        nearest_neighbours(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="k must"):
        nearest_neighbours(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, 1, 2, 2, dtype=torch.uint8), k=3)
    with pytest.raises(ValueError, match="2 NaN"):
        nearest_neighbours(torch.tensor([[[[float("nan"), 0.0], [0.0, float("nan")]]]]),
                           torch.zeros(2, 1, 2, 2, dtype=torch.uint8))


def test_time_per_image_positive_median():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    out = time_per_image(fn, num_images=4, warmup=2, repeats=3)
    assert len(calls) == 5 and len(out["seconds_per_call"]) == 3
    assert out["seconds_per_image"] > 0
    assert out["seconds_per_image"] == pytest.approx(sorted(out["seconds_per_call"])[1] / 4)
    assert out["seconds_per_image"] >= 0.01 / 4


def test_time_per_image_rejects_bad_counts():
    with pytest.raises(ValueError, match="num_images"):
        time_per_image(lambda: None, num_images=0)
    with pytest.raises(ValueError, match="repeats"):
        time_per_image(lambda: None, num_images=1, repeats=0)

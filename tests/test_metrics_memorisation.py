"""The memorisation check (diffusion/metrics/memorisation.py): a model that generalises is indistinguishable
from held-out data, a copying one is caught, and the pieces are what they claim."""
import numpy as np
import pytest
import torch

from diffusion.metrics.intervals import wilson_interval
from diffusion.metrics.memorisation import memorisation_check
from diffusion.metrics.neighbours import nearest_neighbours


def faces(n, seed):
    """Images of one distribution: a smooth random field per image (so distances vary), uint8 3×8×8."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 2, 2, generator=g)
    x = torch.nn.functional.interpolate(low, size=8, mode="bilinear", align_corners=False)
    x = x + 0.15 * torch.rand(n, 3, 8, 8, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


TRAIN = faces(600, 0)


def test_samples_from_the_data_distribution_look_like_held_out_images():
    """Fresh draws from the distribution (a model that generalises perfectly): about 1 % fall below the
    held-out 1st percentile and the medians do not differ."""
    out = memorisation_check(faces(400, 1), TRAIN, faces(400, 2), num_resamples=300, progress=False)
    assert out["n"] == 400 and out["percentile"] == 1.0
    f = out["fraction_below"]
    assert f["low"] <= 0.01 <= f["high"] and f["estimate"] < 0.04
    assert out["median_difference"]["low"] <= 0 <= out["median_difference"]["high"]
    assert out["heldout_fraction_below"] == pytest.approx(0.01, abs=0.0051)  # by construction: 4 of 400
    assert out["threshold"] == pytest.approx(np.percentile(out["heldout_distances"], 1.0))


def test_copies_of_training_images_are_caught():
    g = torch.Generator().manual_seed(3)
    picked = torch.randperm(len(TRAIN), generator=g)[:200]
    copies = TRAIN[picked].clone()
    copies[:, :, 0, 0] ^= 1  # a one-level change of one pixel: still a copy
    out = memorisation_check(copies, TRAIN, faces(300, 4), num_resamples=200, progress=False)
    assert out["fraction_below"]["estimate"] == 1.0 and out["fraction_below"]["low"] > 0.9
    assert out["median_difference"]["high"] < 0
    np.testing.assert_array_equal(out["sample_nearest"], picked.numpy())
    np.testing.assert_allclose(out["sample_distances"], np.sqrt(3) / 255, rtol=1e-6)  # one level, 3 channels
    pairs = out["closest_pairs"]
    assert pairs.shape == (16, 2) and (pairs[:, 1] == picked.numpy()[pairs[:, 0]]).all()


def test_no_sample_below_the_threshold_still_has_an_interval():
    """Samples far from every training image: a count of 0, whose bootstrap is all zeros; the interval keeps the
    binomial error of the count (Wilson: 0 of n is compatible with rates up to z²/(n + z²))."""
    far = (255 - TRAIN[:64]).flip(-1)  # no longer near any training image
    out = memorisation_check(far, TRAIN, faces(64, 10), num_resamples=100, progress=False)
    f = out["fraction_below"]
    assert f["estimate"] == 0.0 and f["low"] == 0.0
    assert f["high"] == pytest.approx(1.959964 ** 2 / (64 + 1.959964 ** 2), rel=1e-5)


def test_wilson_interval_against_closed_form_and_coverage():
    """k = 0: [0, z²/(n + z²)]; symmetric in k ↔ n − k; and its coverage of a binomial rate is near 95 %."""
    assert wilson_interval(0, 100, 0.95) == pytest.approx((0.0, 3.8415 / 103.8415), abs=1e-4)
    lo, hi = wilson_interval(3, 40, 0.95)
    lo2, hi2 = wilson_interval(37, 40, 0.95)
    assert (lo, hi) == pytest.approx((1 - hi2, 1 - lo2))
    rng = np.random.default_rng(0)
    ks = rng.binomial(200, 0.02, size=4000)
    covered = np.mean([lo <= 0.02 <= hi for lo, hi in (wilson_interval(int(k), 200, 0.95) for k in ks)])
    assert 0.92 < covered < 0.99


def test_distances_are_the_nearest_neighbour_distances_and_equal_n():
    samples, held = faces(50, 5), faces(80, 6)
    out = memorisation_check(samples, TRAIN, held, num_resamples=50, closest=5, progress=False)
    _, d_s = nearest_neighbours(samples, TRAIN, progress=False)
    _, d_h = nearest_neighbours(held[:50], TRAIN, progress=False)  # the first n held-out images: equal n
    np.testing.assert_array_equal(out["sample_distances"], d_s[:, 0].numpy())
    np.testing.assert_array_equal(out["heldout_distances"], d_h[:, 0].numpy())
    assert list(out["closest_pairs"][:, 0]) == list(np.argsort(d_s[:, 0].numpy(), kind="stable")[:5])
    assert out["median_sample"]["estimate"] == pytest.approx(np.median(d_s.numpy()))
    assert out["median_difference"]["estimate"] == pytest.approx(np.median(d_s.numpy()) - np.median(d_h.numpy()))


def test_same_seed_same_intervals_other_seed_other_intervals():
    a = memorisation_check(faces(60, 7), TRAIN, faces(60, 8), num_resamples=100, seed=1, progress=False)
    b = memorisation_check(faces(60, 7), TRAIN, faces(60, 8), num_resamples=100, seed=1, progress=False)
    c = memorisation_check(faces(60, 7), TRAIN, faces(60, 8), num_resamples=100, seed=2, progress=False)
    assert a["median_difference"] == b["median_difference"] != c["median_difference"]


@pytest.mark.parametrize("kwargs, message", [
    ({"heldout_images": faces(10, 9)}, "at least as many images as samples"),
    ({"percentile": 0}, "percentile must lie in"),
    ({"percentile": 60}, "percentile must lie in"),
    ({"num_resamples": 5}, "num_resamples must be an integer >= 10"),
    ({"level": 1.0}, "level must lie in"),
    ({"heldout_images": faces(30, 9)[:, :1]}, "same C×H×W"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = {"samples": faces(20, 10), "train_images": TRAIN, "heldout_images": faces(30, 9), "progress": False}
    with pytest.raises(ValueError, match=message):
        memorisation_check(**{**args, **kwargs})

"""Memorisation, measured: are generated samples closer to the training set than unseen images are?

A model that copies its training images produces samples whose nearest training image is unusually near. The
yardstick is the same distance for held-out images of the same distribution, which the model never saw: for
each of n samples and each of n held-out images (equal n), the L2 pixel distance to the nearest training image
(``diffusion.metrics.neighbours``, values in [0, 1]). Reported:

- the fraction of samples nearer to a training image than the ``percentile``-th percentile (default the 1st)
  of the held-out distances; a model that generalises gives about ``percentile`` %, a copying one far more;
- the medians of both distance sets and their difference (samples − held-out);
- the indices of the closest sample–training pairs, to be looked at.

Intervals are two-sample percentile bootstraps: every resample redraws the samples *and* the held-out images
(so the threshold's own sampling error is in the interval of the fraction), seeded, ``num_resamples`` times.
The fraction's interval also contains the Wilson score interval of its count: a bootstrap of a count of 0 (or
of n) resamples only zeros (or ones) and would claim an exact fraction, while 0 of 1,000 is compatible with a
true rate up to about 0.4 %.
"""
from __future__ import annotations

import numpy as np
import torch

from .images import to_uint8
from .intervals import wilson_interval
from .neighbours import nearest_neighbours

__all__ = ["memorisation_check"]


def _two_sample_bootstrap(a: np.ndarray, b: np.ndarray, statistic, num_resamples: int, level: float,
                          seed: int) -> dict:
    rng = np.random.default_rng(seed)
    reps = np.array([statistic(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
                     for _ in range(num_resamples)])
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return {"estimate": float(statistic(a, b)), "low": float(low), "high": float(high), "level": float(level),
            "num_resamples": int(num_resamples), "n": int(len(a))}


def memorisation_check(samples, train_images, heldout_images, *, percentile: float = 1.0, level: float = 0.95,
                       num_resamples: int = 1000, seed: int = 0, closest: int = 16, progress: bool = True) -> dict:
    """Nearest-training-image distances of ``samples`` against those of ``heldout_images`` (its first
    len(samples) images: equal n; shuffle them beforehand if they are ordered).

    Args:
        samples, train_images, heldout_images: uint8 N×C×H×W (or floats in [-1, 1]) of one shape C×H×W.
        percentile: the held-out percentile that defines "unusually near", in (0, 50].
        level, num_resamples, seed: of the bootstrap intervals.
        closest: how many of the closest sample–training pairs to return.

    Returns:
        ``n``, ``percentile``, ``threshold`` (the held-out percentile distance), ``fraction_below`` (interval
        dict of the fraction of samples nearer than the threshold), ``heldout_fraction_below`` (the same
        fraction among the held-out images, about ``percentile``/100 by construction), ``median_sample``,
        ``median_heldout``, ``median_difference`` (interval dicts), ``sample_distances`` and
        ``heldout_distances`` (arrays, n), ``sample_nearest`` (training index of each sample's nearest image)
        and ``closest_pairs`` (array (closest, 2): sample index, training index; nearest first).
    """
    if not 0.0 < float(percentile) <= 50.0:
        raise ValueError(f"percentile must lie in (0, 50], got {percentile!r}")
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, int) or num_resamples < 10:
        raise ValueError(f"num_resamples must be an integer >= 10, got {num_resamples!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    samples = to_uint8(torch.as_tensor(samples), "samples")
    heldout = to_uint8(torch.as_tensor(heldout_images), "heldout_images")
    n = len(samples)
    if n < 2:
        raise ValueError(f"samples must hold at least two images, got {n}")
    if len(heldout) < n:
        raise ValueError(f"heldout_images must hold at least as many images as samples (equal n): "
                         f"{len(heldout)} < {n}")
    heldout = heldout[:n]
    if heldout.shape[1:] != samples.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape[1:])} and heldout_images {tuple(heldout.shape[1:])} "
                         "must have the same C×H×W")
    sample_idx, sample_d = nearest_neighbours(samples, train_images, k=1, progress=progress)
    _, heldout_d = nearest_neighbours(heldout, train_images, k=1, progress=progress)
    gen, held = sample_d[:, 0].numpy(), heldout_d[:, 0].numpy()
    q = float(percentile)

    def fraction(a, b):
        return float(np.mean(a < np.percentile(b, q)))

    def median_difference(a, b):
        return float(np.median(a) - np.median(b))

    boot = dict(num_resamples=num_resamples, level=level, seed=seed)
    order = np.argsort(gen, kind="stable")[:closest]
    below = _two_sample_bootstrap(gen, held, fraction, **boot)
    w_low, w_high = wilson_interval(round(below["estimate"] * n), n, level)
    below.update(low=min(below["low"], w_low), high=max(below["high"], w_high))
    return {
        "n": n, "percentile": q, "threshold": float(np.percentile(held, q)),
        "fraction_below": below,
        "heldout_fraction_below": fraction(held, held),
        "median_sample": _two_sample_bootstrap(gen, held, lambda a, b: float(np.median(a)), **boot),
        "median_heldout": _two_sample_bootstrap(held, gen, lambda a, b: float(np.median(a)), **boot),
        "median_difference": _two_sample_bootstrap(gen, held, median_difference, **boot),
        "sample_distances": gen, "heldout_distances": held, "sample_nearest": sample_idx[:, 0].numpy(),
        "closest_pairs": np.stack([order, sample_idx[order, 0].numpy()], axis=1),
    }

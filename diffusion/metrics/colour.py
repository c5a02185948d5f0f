"""Colour casts of a set of images: how far each image's mean colour strays, and how many pixels are clipped.

A network that predicts ε poorly at large t gets each image's mean colour wrong there, and the error is
amplified √((1−ᾱ_t)/ᾱ_t)-fold in x̂_0 (``diffusion.metrics.eps_error``): samples then come out with
whole-image casts and saturated pixels. Two statistics measure that on the samples themselves, beside the
same statistics of held-out images:

- ``spread``: the per-image channel means m_ic (the mean of channel c over the pixels of image i, on the
  [−1, 1] scale), their standard deviation across the images for each channel (unbiased variance), pooled
  over the channels as √(mean_c var_i m_ic). Data with natural colours have a typical spread; casts widen it.
- ``saturated``: the fraction of pixel values at the ends of the range (0 or 255 once quantised), the mean
  over images of each image's fraction.

Both carry a delete-one jackknife interval over the images (``diffusion.metrics.intervals``); two independent
sets are compared through ``colour_difference``.
"""
from __future__ import annotations

import numpy as np

from diffusion.metrics.intervals import jackknife_ci, jackknife_difference_ci

__all__ = ["channel_means", "colour_difference", "colour_spread", "colour_statistics", "saturated_fractions"]


def _as_unit(images) -> np.ndarray:
    """Images (N, C, H, W) as float64 on [−1, 1]: uint8 in {0..255}, or floats already on [−1, 1]."""
    x = np.asarray(images)
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"images must be a non-empty batch (N, C, H, W), got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 127.5 - 1.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be uint8 (0..255) or floats on [-1, 1], got dtype {x.dtype}")
    return np.clip(x.astype(np.float64), -1.0, 1.0)


def channel_means(images) -> np.ndarray:
    """(N, C): each image's mean of each channel over its pixels, on [−1, 1]."""
    return _as_unit(images).mean(axis=(2, 3))


def colour_spread(means: np.ndarray) -> float:
    """√(mean over channels of the unbiased variance across images) of per-image channel means (N, C), N ≥ 2."""
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2 or len(means) < 2:
        raise ValueError(f"means must be (N, C) with N >= 2, got shape {means.shape}")
    return float(np.sqrt(means.var(axis=0, ddof=1).mean()))


def saturated_fractions(images) -> np.ndarray:
    """(N,): each image's fraction of values at the ends of the range (0 or 255 after quantising to uint8)."""
    x = np.asarray(images)
    q = x if x.dtype == np.uint8 else np.round((_as_unit(x) + 1.0) * 127.5)
    return ((q == 0) | (q == 255)).reshape(len(q), -1).mean(axis=1)


def colour_statistics(images, *, level: float = 0.95) -> dict:
    """``{"spread": ci, "saturated": ci, "n": N}`` for a set of images (N ≥ 3), each ci a jackknife interval
    (``jackknife_ci``); ``saturated`` as a fraction (not %)."""
    means = channel_means(images)
    return {"spread": jackknife_ci(means, colour_spread, level=level),
            "saturated": jackknife_ci(saturated_fractions(images), np.mean, level=level), "n": len(means)}


def colour_difference(images_a, images_b, statistic: str = "spread", *, level: float = 0.95) -> dict:
    """Interval of statistic(a) − statistic(b) for two independent sets of images (``jackknife_difference_ci``);
    ``statistic`` is ``"spread"`` or ``"saturated"``."""
    if statistic == "spread":
        return jackknife_difference_ci(channel_means(images_a), channel_means(images_b), colour_spread, level=level)
    if statistic == "saturated":
        return jackknife_difference_ci(saturated_fractions(images_a), saturated_fractions(images_b), np.mean,
                                       level=level)
    raise ValueError(f"statistic must be 'spread' or 'saturated', got {statistic!r}")

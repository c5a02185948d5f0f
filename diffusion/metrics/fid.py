"""Fréchet distances between Gaussian fits of feature sets, and FID (section 4.1.3).

FID fits a Gaussian N(μ, Σ) to the Inception pool features of real and of generated images and
reports the Fréchet (2-Wasserstein) distance between the two fits,

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}),

computed with the numerics of ``pytorch_fid.fid_score.calculate_frechet_distance`` (matrix square
root of the product by ``scipy.linalg.sqrtm``; a small ``eps`` added to both diagonals if that square
root is not finite; a negligible imaginary part dropped). The same function gives the offline
"classifier FD" of :mod:`.classifier` on other features.

Reference statistics of a dataset split are cached on disk keyed by dataset name and content digest,
the Inception weights' SHA-256 and the source digest of the code computing them (:mod:`.cache`).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import linalg

from .cache import cache_dir, cache_key
from .inception import FEATURE_DIM, FIDInception, inception_features_and_logits

MIN_UNBIASED_SAMPLES = 2048


def activation_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), float64, of features (N, D) — the Gaussian fit of FID."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be an (N, D) array with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance d² = ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}) between N(μ₁, Σ₁) and N(μ₂, Σ₂).

    Numerically as pytorch-fid: if ``sqrtm(Σ₁Σ₂)`` is not finite, ``eps·I`` is added to both
    covariances; an imaginary part is dropped if its diagonal is within 1e-3 of zero, otherwise
    ``ValueError``.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must have the same shape, got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"sigma1 and sigma2 must both be ({mu1.shape[0]}, {mu1.shape[0]}), "
                         f"got {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular products are handled below
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            warnings.warn(f"Fréchet distance: singular covariance product; adding {eps} to the diagonals",
                          RuntimeWarning, stacklevel=2)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: matrix square root has an imaginary component of "
                             f"{np.max(np.abs(covmean.imag)):.3g}; the covariances are not valid")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def warn_if_few_samples(n: int, what: str = "FID") -> None:
    """Warn that a Fréchet distance from fewer than 2048 samples is biased (upwards)."""
    if n < MIN_UNBIASED_SAMPLES:
        warnings.warn(f"{what} from {n} < {MIN_UNBIASED_SAMPLES} samples is biased (upwards) and not "
                      "comparable with values computed from more samples", UserWarning, stacklevel=3)


def cached_statistics(key: str, compute: Callable[[], tuple[np.ndarray, np.ndarray]],
                      kind: str = "fid_stats") -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) from ``<cache>/<kind>/<key>.npz`` if present, else ``compute()`` and store them there."""
    path = Path(cache_dir(kind)) / f"{key}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["mu"], f["sigma"]
    mu, sigma = compute()
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma)
    tmp.replace(path)
    return mu, sigma


def reference_statistics(data, net: FIDInception, batch_size: int = 50, progress: bool = True,
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Inception statistics (μ, Σ) of a dataset split (an ``ImageData``), cached under a key of its name,
    split, size and content digest, the weights file's SHA-256 (``net.weights_sha256``) and the sources of
    this module and what it imports (the network, the pixel conversion)."""
    key = cache_key(data.name, data.split, len(data.images), data.digest, f"inception{FEATURE_DIM}",
                    params={"weights_sha256": net.weights_sha256}, modules=["diffusion.metrics.fid"])
    return cached_statistics(key, lambda: activation_statistics(
        inception_features_and_logits(data.images, net, batch_size, progress)[0]))


def fid_from_images(samples: torch.Tensor, reference, net: FIDInception, batch_size: int = 50,
                    progress: bool = True) -> float:
    """FID (section 4.1.3) of ``samples`` (NCHW, uint8 or float in [-1, 1]) against ``reference``:
    an ``ImageData`` (its statistics are cached) or a tuple ``(mu, sigma)``.

    Warns when fewer than 2048 samples are given (the estimate is then biased).
    """
    warn_if_few_samples(len(samples))
    mu_ref, sigma_ref = (reference if isinstance(reference, tuple)
                         else reference_statistics(reference, net, batch_size, progress))
    mu, sigma = activation_statistics(inception_features_and_logits(samples, net, batch_size, progress)[0])
    return frechet_distance(mu, sigma, mu_ref, sigma_ref)

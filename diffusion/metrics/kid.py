"""Kernel Inception Distance (KID) on the proxy classifier's features: the **classifier KID**.

KID (Bińkowski et al., 2018) is the squared maximum mean discrepancy between two feature distributions
under the cubic polynomial kernel

    k(x, y) = (xᵀy / d + 1)³,   d = feature dimension,

estimated without bias (the U-statistic of MMD²):

    KID = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i, y_j) − 2/(mn) Σ_{i,j} k(x_i, y_j).

Unlike the Fréchet distance, whose estimate is biased upwards by an amount that depends on the number of
samples, this estimate has expectation exactly MMD² for every m, n ≥ 2 — zero when both sets come from the
same distribution (single estimates can then be negative). Here it is computed on the penultimate features
of the proxy classifier (:mod:`.classifier`), so it is a *classifier KID*, not Inception's KID.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KidToReference", "classifier_kid", "kid_from_features", "polynomial_kernel"]


def _features(name: str, value) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"{name} must be an (N, D) array of features with N >= 2, got shape {arr.shape}")
    return arr


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gram matrix k(x_i, y_j) = (x_iᵀy_j / d + 1)³ of features x (M, D) and y (N, D), float64 (M, N)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (M, D) and (N, D) with the same D, got {x.shape} and {y.shape}")
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid_from_features(features_x, features_y) -> float:
    """The unbiased MMD² estimate with the cubic polynomial kernel (module docstring) between features
    (M, D) and (N, D), M, N >= 2."""
    x, y = _features("features_x", features_x), _features("features_y", features_y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"features_x and features_y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


class KidToReference:
    """:func:`kid_from_features` against fixed reference features (N, D), with the reference's within-set
    term computed once (for the bootstrap, which recomputes KID on many resamples of the samples)."""

    def __init__(self, reference_features):
        self.reference = _features("reference_features", reference_features)
        n = len(self.reference)
        kyy = polynomial_kernel(self.reference, self.reference)
        self.within_reference = float((kyy.sum() - np.trace(kyy)) / (n * (n - 1)))

    def __call__(self, features) -> float:
        x = _features("features", features)
        if x.shape[1] != self.reference.shape[1]:
            raise ValueError(f"features must have dimension {self.reference.shape[1]}, got {x.shape[1]}")
        m = len(x)
        kxx = polynomial_kernel(x, x)
        within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        return float(within_x + self.within_reference - 2.0 * polynomial_kernel(x, self.reference).mean())

    def on_indices(self, features):
        """A function ``idx -> self(features[idx])`` for integer index arrays (with repeats, as a bootstrap
        resample has), computed from the samples' Gram matrix and their mean kernel value against the
        reference, both evaluated once: O(len(idx)²) per call instead of a kernel against the reference."""
        x = _features("features", features)
        if x.shape[1] != self.reference.shape[1]:
            raise ValueError(f"features must have dimension {self.reference.shape[1]}, got {x.shape[1]}")
        gram, cross = polynomial_kernel(x, x), polynomial_kernel(x, self.reference).mean(axis=1)

        def kid_of(idx) -> float:
            idx = np.asarray(idx)
            m = len(idx)
            if m < 2:
                raise ValueError(f"idx must select at least two samples, got {m}")
            sub = gram[np.ix_(idx, idx)]
            return float((sub.sum() - np.trace(sub)) / (m * (m - 1)) + self.within_reference - 2.0 * cross[idx].mean())

        return kid_of


def classifier_kid(clf, samples, reference) -> dict:
    """Classifier KID between ``samples`` and ``reference`` (NCHW images, uint8 or float in [−1, 1], or
    precomputed (N, 128) feature arrays) on the proxy classifier's penultimate features.

    Returns ``{"kid", "num_samples", "num_reference", "classifier_accuracy", "classifier_dataset"}``.
    """
    from .classifier import classifier_features

    def feats(value):
        return value if isinstance(value, np.ndarray) and value.ndim == 2 else classifier_features(clf, value)

    fx, fy = feats(samples), feats(reference)
    return {"kid": kid_from_features(fx, fy), "num_samples": len(fx), "num_reference": len(fy), **clf.info()}

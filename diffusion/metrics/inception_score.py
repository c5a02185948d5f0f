"""Inception Score from the FID Inception network's 1008-way logits (section 4.1.3).

IS = exp( E_x KL( p(y|x) ‖ p(y) ) ), with p(y|x) the softmax of the logits and p(y) its mean over
the images of a part; the images are cut into ``splits`` consecutive parts with boundaries
``i·N // splits`` (as the original TensorFlow code; 10 parts by convention)
and the mean and standard deviation of the per-part scores are reported.
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_softmax


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over ``splits`` parts of exp(mean_x KL(p(y|x) ‖ p(y))) from logits (N, K)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {logits.shape}")
    if not isinstance(splits, int) or splits < 1 or splits > len(logits):
        raise ValueError(f"splits must be an integer in [1, N={len(logits)}], got {splits}")
    log_p = log_softmax(logits, axis=1)
    scores = []
    n = len(log_p)
    for i in range(splits):
        part = log_p[i * n // splits:(i + 1) * n // splits]
        log_py = np.log(np.exp(part).mean(axis=0))
        kl = (np.exp(part) * (part - log_py)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))

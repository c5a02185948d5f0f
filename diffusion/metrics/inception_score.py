"""Inception Score (Salimans et al., 2016; section 4.1.3) as openai/improved-gan and torch-fidelity compute it.

    IS = exp( E_x KL( p(y|x) ‖ p(y) ) ),

with p(y|x) the softmax of the FID Inception network's 1008 logits taken **without** the ``fc`` bias
(:mod:`.inception`) and p(y) the mean of p(y|x) over the images of one part. The N images are cut, in the
order given and without shuffling, into ``splits`` consecutive parts with boundaries ``i·N // splits``
(10 parts by convention); the score is computed per part and the mean and (population, ddof = 0)
standard deviation of the part scores are reported.

The score of a part of m images is biased and its spread large when m is small, so a part must hold at
least 2 images (``ValueError`` otherwise), and a score from fewer than :data:`MIN_REPORTABLE_SAMPLES`
= 5,000 images (this project's threshold, 500 images per split; published values use 50,000) is computed
but flagged: a ``UserWarning`` and ``reportable: False`` in :func:`inception_score_record`.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.special import log_softmax

DEFAULT_SPLITS = 10
MIN_REPORTABLE_SAMPLES = 5000
"""Below this many images an IS is flagged as not reportable (warning, ``reportable: False``)."""


def check_splits(n: int, splits: int = DEFAULT_SPLITS) -> None:
    """``ValueError`` unless ``splits`` is a positive integer and each of the parts holds at least 2 of the n images."""
    if isinstance(splits, bool) or not isinstance(splits, (int, np.integer)) or splits < 1:
        raise ValueError(f"splits must be a positive integer, got {splits!r}")
    if n < splits or n // splits < 2:
        raise ValueError(f"the Inception Score needs at least 2 images per split: got N={n} images for "
                         f"splits={splits} (N must be >= {2 * splits})")


def inception_score(logits: np.ndarray, splits: int = DEFAULT_SPLITS) -> tuple[float, float]:
    """(mean, std) over ``splits`` consecutive parts of exp(mean_x KL(p(y|x) ‖ p(y))) from logits (N, K).

    ``logits`` must be the bias-free logits (:func:`.inception.inception_features_and_logits` gives them).
    Warns (``UserWarning``) when N < :data:`MIN_REPORTABLE_SAMPLES`.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, K) with K >= 2 classes, got shape {logits.shape}")
    n = len(logits)
    check_splits(n, splits)
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinite values")
    if n < MIN_REPORTABLE_SAMPLES:
        warnings.warn(f"Inception Score from N={n} < {MIN_REPORTABLE_SAMPLES} images is not reportable "
                      "(small-sample bias; not comparable with published values from 50,000 images)",
                      UserWarning, stacklevel=2)
    log_p = log_softmax(logits, axis=1)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits:(i + 1) * n // splits]
        p = np.exp(part)
        log_py = np.log(p.mean(axis=0))
        kl = (p * (part - log_py)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def inception_score_record(logits: np.ndarray, splits: int = DEFAULT_SPLITS) -> dict:
    """The IS with what a reader needs to judge it: ``mean``, ``std``, ``n`` (images), ``splits``,
    ``reportable`` (N >= :data:`MIN_REPORTABLE_SAMPLES`), ``min_reportable_n`` and ``logits``
    (``"fc without bias"``). Warns as :func:`inception_score` does when N is below the minimum."""
    n = len(np.asarray(logits))
    mean, std = inception_score(logits, splits)
    return {"mean": mean, "std": std, "n": n, "splits": int(splits), "reportable": n >= MIN_REPORTABLE_SAMPLES,
            "min_reportable_n": MIN_REPORTABLE_SAMPLES, "logits": "fc without bias"}

"""Inception Score against a direct numpy implementation and known extreme cases."""
from __future__ import annotations

import numpy as np
import pytest

from diffusion.metrics.inception_score import inception_score


def _numpy_is(logits, splits):
    scores = []
    n = len(logits)
    for i in range(splits):
        part = logits[i * n // splits:(i + 1) * n // splits]
        p = np.exp(part - part.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        py = p.mean(0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(py)), axis=1))))
    return np.mean(scores), np.std(scores)


@pytest.mark.parametrize("n", [1000, 1003])
def test_inception_score_matches_numpy(n):
    logits = np.random.default_rng(n).normal(scale=3.0, size=(n, 1008))
    mean, std = inception_score(logits, splits=10)
    ref_mean, ref_std = _numpy_is(logits, 10)
    assert mean == pytest.approx(ref_mean, rel=1e-10)
    assert std == pytest.approx(ref_std, rel=1e-8)


def test_inception_score_extremes():
    k = 10
    # confident and uniformly spread over k classes: IS = k; identical predictions: IS = 1
    confident = np.full((100 * k, k), -50.0)
    confident[np.arange(100 * k), np.arange(100 * k) % k] = 50.0
    assert inception_score(confident, splits=10)[0] == pytest.approx(k, rel=1e-6)
    same = np.tile(np.random.default_rng(0).normal(size=(1, k)), (200, 1))
    assert inception_score(same, splits=10)[0] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_rejects_bad_splits():
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.zeros((5, 3)), splits=10)

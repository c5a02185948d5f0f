"""Inception Score as openai/improved-gan computes it: an independent NumPy reference, known extremes,
the bias-free logits, split order, refusals and the reportability flag."""
from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest

from diffusion.metrics.inception_score import (MIN_REPORTABLE_SAMPLES, inception_score,
                                               inception_score_record)
from tests.messages import assert_points_at


def _salimans_is(logits, splits):
    """Salimans et al. (2016) written out with plain loops over images and classes: p(y|x) by a softmax
    shifted by the row maximum, p(y) the part's mean, KL summed class by class, exp of the part's mean."""
    logits = np.asarray(logits, dtype=np.float64)
    n, k = logits.shape
    scores = []
    for i in range(splits):
        rows = range(i * n // splits, (i + 1) * n // splits)
        probs = []
        for r in rows:
            e = [math.exp(v - max(logits[r])) for v in logits[r]]
            s = sum(e)
            probs.append([v / s for v in e])
        marginal = [sum(p[c] for p in probs) / len(probs) for c in range(k)]
        kls = [sum(p[c] * (math.log(p[c]) - math.log(marginal[c])) for c in range(k) if p[c] > 0) for p in probs]
        scores.append(math.exp(sum(kls) / len(kls)))
    mean = sum(scores) / splits
    return mean, math.sqrt(sum((s - mean) ** 2 for s in scores) / splits)  # np.std: ddof = 0


@pytest.mark.parametrize("n", [200, 203])  # equal and unequal parts (boundaries i*N // splits)
def test_inception_score_matches_independent_reference(n):
    logits = np.random.default_rng(n).normal(scale=3.0, size=(n, 12))
    with pytest.warns(UserWarning, match="not reportable"):
        mean, std = inception_score(logits, splits=10)
    ref_mean, ref_std = _salimans_is(logits, 10)
    assert mean == pytest.approx(ref_mean, rel=1e-10)
    assert std == pytest.approx(ref_std, rel=1e-8)
    assert std > 0


def test_splits_are_consecutive_and_unshuffled():
    """Part i is rows i*N//10 .. (i+1)*N//10 - 1 in the given order: reordering rows changes the score."""
    rng = np.random.default_rng(0)
    # first half confident and spread over 10 classes (part score 10), second half all alike (part score 1)
    confident = np.full((100, 10), -30.0)
    confident[np.arange(100), np.arange(100) % 10] = 30.0
    alike = np.tile(rng.normal(size=(1, 10)), (100, 1))
    logits = np.concatenate([confident, alike])
    with pytest.warns(UserWarning):
        mean, std = inception_score(logits, splits=10)
        shuffled = inception_score(logits[rng.permutation(200)], splits=10)
    assert mean == pytest.approx(5.5, rel=1e-6) and std == pytest.approx(4.5, rel=1e-6)
    assert shuffled[0] != pytest.approx(mean, rel=1e-3)


def test_inception_score_extremes():
    k = 10
    # confident and uniformly spread over k classes: IS = k; identical predictions: IS = 1
    confident = np.full((100 * k, k), -50.0)
    confident[np.arange(100 * k), np.arange(100 * k) % k] = 50.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert inception_score(confident, splits=10)[0] == pytest.approx(k, rel=1e-6)
        same = np.tile(np.random.default_rng(0).normal(size=(1, k)), (200, 1))
        assert inception_score(same, splits=10)[0] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n, splits", [(5, 10), (19, 10), (10, 10), (3, 2)])
def test_inception_score_refuses_parts_below_two_images(n, splits):
    with pytest.raises(ValueError, match="at least 2 images per split"):
        inception_score(np.zeros((n, 3)), splits=splits)


@pytest.mark.parametrize("splits", [0, -1, 2.5, True])
def test_inception_score_rejects_bad_splits(splits):
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.zeros((100, 3)), splits=splits)


def test_record_flags_small_samples_and_shows_n():
    rng = np.random.default_rng(1)
    with pytest.warns(UserWarning, match=f"N=20 < {MIN_REPORTABLE_SAMPLES}.*not reportable"):
        small = inception_score_record(rng.normal(size=(20, 5)))
    assert small["n"] == 20 and small["splits"] == 10 and small["reportable"] is False
    assert small["min_reportable_n"] == 5000 and small["logits"] == "fc without bias"
    logits = rng.normal(size=(MIN_REPORTABLE_SAMPLES, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at the minimum
        big = inception_score_record(logits)
        assert (big["mean"], big["std"]) == inception_score(logits)
    assert big["reportable"] is True and big["n"] == MIN_REPORTABLE_SAMPLES


def test_record_passes_its_splits_on():
    logits = np.random.default_rng(4).normal(size=(MIN_REPORTABLE_SAMPLES, 5))
    record = inception_score_record(logits, splits=4)
    assert (record["mean"], record["std"], record["splits"]) == (*inception_score(logits, splits=4), 4)
    assert record["std"] != inception_score(logits)[1]


def test_small_sample_warning_in_full_at_the_callers_line_and_float64_throughout():
    logits = np.random.default_rng(6).normal(scale=3.0, size=(40, 7)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"^Inception Score from N=40 < 5000 images is not reportable \(small-sample "
                                         r"bias; not comparable with published values from 50,000 images\)$") as rec:
        from_f32 = inception_score(logits, splits=4)
    assert rec[0].category is UserWarning
    assert_points_at(rec[0], __file__, sys._getframe().f_lineno - 2)
    with pytest.warns(UserWarning):
        from_f64 = inception_score(logits.astype(np.float64), splits=4)
    assert from_f32 == pytest.approx(from_f64, rel=1e-13, abs=0)


def test_splits_boundaries():
    from diffusion.metrics.inception_score import check_splits

    check_splits(20, 10)  # two images per split
    check_splits(21, 10)
    with pytest.raises(ValueError, match=r"^the Inception Score needs at least 2 images per split: got N=19 images for "
                                         r"splits=10 \(N must be >= 20\)$"):
        check_splits(19, 10)
    with pytest.raises(ValueError, match=r"N=3 images for splits=2 \(N must be >= 4\)$"):
        check_splits(3, 2)  # 1.5 images per split

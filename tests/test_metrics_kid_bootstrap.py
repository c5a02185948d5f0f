"""Classifier KID (unbiased MMD², cubic kernel) and the intervals of the proxy metrics (jackknife, bootstrap)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from diffusion.metrics.intervals import (FrechetToReference, bootstrap_ci, diversity_ci, format_ci,
                                         independent_difference_ci, jackknife_ci, jackknife_difference_ci,
                                         proxy_metrics_ci)
from diffusion.metrics.fid import activation_statistics, frechet_distance
from diffusion.metrics.kid import KidToReference, classifier_kid, kid_from_features, polynomial_kernel
from tests.messages import exact


def _kid_double_loop(x, y):
    """The U-statistic of MMD² written out element by element (reference implementation)."""
    d = x.shape[1]
    k = lambda a, b: (sum(a[i] * b[i] for i in range(d)) / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.3, 1.2, size=(9, 5))
    assert kid_from_features(x, y) == pytest.approx(_kid_double_loop(x, y), rel=1e-12)
    assert KidToReference(y)(x) == pytest.approx(_kid_double_loop(x, y), rel=1e-12)
    assert polynomial_kernel(x, y)[2, 3] == pytest.approx((x[2] @ y[3] / 5 + 1) ** 3)


def test_kid_unbiased_for_same_distribution():
    """E[KID] = 0 for two samples of one distribution at small n (the V-statistic, with the diagonal, is not)."""
    rng = np.random.default_rng(1)
    vals, vstats = [], []
    for _ in range(3000):
        x, y = rng.normal(size=(8, 4)), rng.normal(size=(8, 4))
        vals.append(kid_from_features(x, y))
        vstats.append(polynomial_kernel(x, x).mean() + polynomial_kernel(y, y).mean() - 2 * polynomial_kernel(x, y).mean())
    vals, vstats = np.array(vals), np.array(vstats)
    se = vals.std() / np.sqrt(len(vals))
    assert abs(vals.mean()) < 4 * se
    assert vstats.mean() > 10 * vstats.std() / np.sqrt(len(vstats))  # the biased estimator is detectably > 0
    # and a real difference of distributions is detected
    shifted = [kid_from_features(rng.normal(size=(8, 4)), rng.normal(1.0, 1.0, size=(8, 4))) for _ in range(300)]
    assert np.mean(shifted) > 10 * np.std(shifted) / np.sqrt(300)


def test_classifier_kid_accepts_features():
    class Clf:
        def info(self):
            return {"classifier_accuracy": 0.9, "classifier_dataset": "toy"}

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(10, 3))
    out = classifier_kid(Clf(), x, y)
    assert out["kid"] == pytest.approx(kid_from_features(x, y)) and (out["num_samples"], out["num_reference"]) == (6, 10)


def test_kid_rejects_bad_input():
    with pytest.raises(ValueError, match="features_x"):
        kid_from_features(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="same dimension"):
        kid_from_features(np.zeros((4, 2)), np.zeros((4, 3)))


@pytest.mark.parametrize("n", [12, 60])  # fewer and more samples than dimensions
def test_frechet_to_reference_matches_frechet_distance(n):
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(200, 20)) @ rng.normal(size=(20, 20)) * 0.3
    feats = rng.normal(0.2, 1.1, size=(n, 20))
    expected = frechet_distance(*activation_statistics(feats), *activation_statistics(ref))
    assert FrechetToReference.from_features(ref)(feats) == pytest.approx(expected, rel=1e-6, abs=1e-8)


def test_bootstrap_is_deterministic_and_seeded():
    x = np.random.default_rng(4).normal(size=40)
    a, b = bootstrap_ci(x, np.mean, seed=5), bootstrap_ci(x, np.mean, seed=5)
    c = bootstrap_ci(x, np.mean, seed=6)
    assert a == b and (a["low"], a["high"]) != (c["low"], c["high"])
    assert a["low"] < a["estimate"] < a["high"] and a["n"] == 40
    assert a["estimate"] == pytest.approx(x.mean())


def test_bootstrap_coverage_of_normal_mean():
    """The 95 % percentile interval of a mean of n = 40 normals covers the true mean in about 95 % of trials
    (percentile intervals undercover slightly at small n: accept 88–99 %), and its width is ≈ 2·1.96·σ/√n."""
    rng = np.random.default_rng(7)
    hits, widths = 0, []
    for trial in range(300):
        x = rng.normal(1.5, 2.0, size=40)
        ci = bootstrap_ci(x, np.mean, num_resamples=400, seed=trial)
        hits += ci["low"] <= 1.5 <= ci["high"]
        widths.append(ci["high"] - ci["low"])
    assert 0.88 <= hits / 300 <= 0.99
    assert np.mean(widths) == pytest.approx(2 * 1.96 * 2.0 / np.sqrt(40), rel=0.1)


def test_proxy_metrics_ci():
    rng = np.random.default_rng(8)
    ref, feats = rng.normal(size=(300, 6)), rng.normal(0.5, 1.0, size=(30, 6))
    correct = rng.random(30) < 0.7
    out = proxy_metrics_ci(feats, ref, correct, num_resamples=50, seed=0)
    assert out["n"] == 30
    assert out["cfd"]["estimate"] == pytest.approx(frechet_distance(*activation_statistics(feats),
                                                                    *activation_statistics(ref)), rel=1e-6)
    assert out["kid"]["estimate"] == pytest.approx(kid_from_features(feats, ref))
    assert out["acc"]["estimate"] == pytest.approx(100 * correct.mean())
    for key in ("kid", "acc"):  # (a resample's repeated points bias the FD upwards, so its estimate may lie below)
        assert out[key]["low"] <= out[key]["estimate"] <= out[key]["high"]
    assert format_ci({"estimate": 36.456, "low": 31.2, "high": 41.94}, "{:.2f}") == "36.46 [31.20, 41.94]"


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="num_resamples"):
        bootstrap_ci(np.zeros(5), np.mean, num_resamples=3)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(np.zeros(5), np.mean, level=95)
    with pytest.raises(ValueError, match="values"):
        bootstrap_ci(np.zeros(1), np.mean)
    with pytest.raises(ValueError, match="correct"):
        proxy_metrics_ci(np.zeros((4, 2)), np.ones((5, 2)), correct=[1, 0])


def test_format_ci_decimals_follow_the_width():
    assert format_ci({"estimate": 36.456, "low": 31.2, "high": 41.94}) == "36.5 [31.2, 41.9]"
    assert format_ci({"estimate": 0.01234, "low": 0.0101, "high": 0.0151}) == "0.01234 [0.01010, 0.01510]"
    assert format_ci({"estimate": 250.0, "low": 180.0, "high": 390.0}) == "250 [180, 390]"
    ci = {"estimate": 36.456, "low": 31.2, "high": 41.94}
    assert (format_ci(ci, part="estimate"), format_ci(ci, part="interval")) == ("36.5", "[31.2, 41.9]")
    with pytest.raises(ValueError, match="part"):
        format_ci(ci, part="low")
    fraction = {"estimate": 0.012, "low": 0.005, "high": 0.02, "n": 400}
    assert format_ci(fraction, "{:.1f}", scale=100) == "1.2 [0.5, 2.0]" and fraction["estimate"] == 0.012


def test_kid_on_indices_equals_kid_of_the_resample():
    rng = np.random.default_rng(10)
    ref, feats = rng.normal(size=(40, 5)), rng.normal(0.2, 1.0, size=(12, 5))
    kid = KidToReference(ref)
    idx = rng.integers(0, 12, 12)  # with repeats, as a bootstrap resample
    assert kid.on_indices(feats)(idx) == pytest.approx(kid(feats[idx]), rel=1e-12)
    assert kid.on_indices(feats)(np.arange(12)) == pytest.approx(kid_from_features(feats, ref), rel=1e-12)


def test_jackknife_of_the_mean_is_the_textbook_standard_error():
    x = np.random.default_rng(3).normal(2.0, 1.5, size=25)
    ci = jackknife_ci(x, np.mean, level=0.95)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert ci["se"] == pytest.approx(se, rel=1e-12)
    assert ci["estimate"] == pytest.approx(x.mean())
    assert ci["high"] - ci["estimate"] == pytest.approx(1.959963984540054 * se, rel=1e-9)
    assert ci["estimate"] - ci["low"] == pytest.approx(ci["high"] - ci["estimate"])
    with pytest.raises(ValueError, match="three"):
        jackknife_ci(x[:2], np.mean)
    with pytest.raises(ValueError, match="level"):
        jackknife_ci(x, np.mean, level=1.5)


def test_jackknife_se_of_fd_matches_its_sampling_spread_where_the_bootstrap_is_biased():
    """Over repeated draws of n samples, the jackknife se of the Fréchet distance is close to the actual
    standard deviation of FD_n, and its interval is centred on the estimate; the bootstrap distribution of
    the same FD lies above the estimate (repeated points shrink the covariance), which is why the proxy
    metrics use the jackknife for FD and KID."""
    rng = np.random.default_rng(0)
    d, n = 16, 40  # the classifier features have more dimensions than a setting has samples
    ref = rng.normal(size=(4000, d))
    fd = FrechetToReference.from_features(ref)
    draws = [rng.normal(0.3, 1.0, size=(n, d)) for _ in range(150)]
    values = np.array([fd(x) for x in draws])
    ses = np.array([jackknife_ci(x, fd)["se"] for x in draws[:40]])
    assert np.median(ses) == pytest.approx(values.std(ddof=1), rel=0.2)
    boot = bootstrap_ci(draws[0], fd, num_resamples=200, seed=1)
    assert boot["low"] > boot["estimate"]  # the bias that rules the bootstrap out here
    jk = jackknife_ci(draws[0], fd)
    assert jk["low"] < jk["estimate"] < jk["high"]


def test_jackknife_difference_combines_independent_standard_errors():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 30), rng.normal(1.0, 2, 50)
    d = jackknife_difference_ci(a, b, np.mean)
    ja, jb = jackknife_ci(a, np.mean), jackknife_ci(b, np.mean)
    assert d["estimate"] == pytest.approx(a.mean() - b.mean())
    assert d["se"] == pytest.approx(np.hypot(ja["se"], jb["se"]))
    assert d["excludes_zero"] == (d["high"] < 0 or d["low"] > 0)
    same = jackknife_difference_ci(a, rng.normal(0, 1, 30), np.mean)
    assert (same["low"] < 0 < same["high"]) == (not same["excludes_zero"])


def test_jackknife_difference_written_out_at_another_level_and_statistic():
    """Every entry at level 0.9 with a different statistic for b; the z of 0.9 is 1.6448536…"""
    rng = np.random.default_rng(6)
    a, b = rng.normal(0, 1, 12), rng.normal(0, 1, 9)
    d = jackknife_difference_ci(a, b, np.mean, statistic_b=np.median, level=0.9)
    ja, jb = jackknife_ci(a, np.mean), jackknife_ci(b, np.median)
    estimate, se = a.mean() - np.median(b), math.hypot(ja["se"], jb["se"])
    z = 1.6448536269514722
    assert d == {"estimate": pytest.approx(estimate, rel=1e-12), "low": pytest.approx(estimate - z * se, rel=1e-12),
                 "high": pytest.approx(estimate + z * se, rel=1e-12), "se": pytest.approx(se, rel=1e-12),
                 "level": 0.9, "n_a": 12, "n_b": 9, "excludes_zero": False, "method": "jackknife"}
    with pytest.raises(ValueError, match=exact("level must lie in (0, 1), got 1.5")):
        jackknife_difference_ci(a, b, np.mean, level=1.5)


@pytest.mark.parametrize("offset, excludes", [(0.0, False), (0.5, True), (-0.5, True)])
def test_jackknife_difference_of_exact_statistics(offset, excludes):
    """A statistic that does not vary has se 0: the interval is the point, which excludes 0 unless it is 0."""
    d = jackknife_difference_ci(np.zeros(4), np.zeros(5), lambda v: offset, statistic_b=lambda v: 0.0)
    assert (d["low"], d["high"], d["se"], d["excludes_zero"]) == (offset, offset, 0.0, excludes)


def test_proxy_metrics_use_the_jackknife_for_distances_and_the_bootstrap_for_accuracy():
    rng = np.random.default_rng(2)
    feats, ref = rng.normal(size=(30, 5)), rng.normal(size=(500, 5))
    out = proxy_metrics_ci(feats, ref, rng.integers(0, 2, 30), seed=0)
    assert out["cfd"]["method"] == out["kid"]["method"] == "jackknife"
    assert out["cfd"]["low"] < out["cfd"]["estimate"] < out["cfd"]["high"]
    assert "method" not in out["acc"] and out["acc"]["num_resamples"] >= 10


def test_proxy_metrics_ci_is_its_intervals_written_out():
    """Level, resamples and seed reach every interval; float32 features and a column of 0/1 values are accepted."""
    rng = np.random.default_rng(11)
    ref, feats = rng.normal(size=(60, 4)), rng.normal(0.3, 1.0, size=(15, 4))
    correct = (rng.random(15) < 0.6).reshape(15, 1)
    out = proxy_metrics_ci(feats.astype(np.float32), ref.astype(np.float32), correct, num_resamples=40, level=0.9,
                           seed=5)
    f32, r32 = feats.astype(np.float32).astype(np.float64), ref.astype(np.float32).astype(np.float64)
    assert out == {
        "n": 15,
        "cfd": jackknife_ci(f32, FrechetToReference.from_features(r32), level=0.9),
        "kid": jackknife_ci(np.arange(15), KidToReference(r32).on_indices(f32), level=0.9),
        "acc": bootstrap_ci(100.0 * correct.reshape(-1), np.mean, num_resamples=40, level=0.9, seed=5)}
    default = proxy_metrics_ci(feats, ref, correct.ravel(), num_resamples=40)
    assert default["acc"] == bootstrap_ci(100.0 * correct.ravel(), np.mean, num_resamples=40, level=0.95, seed=0)
    assert default["cfd"]["level"] == default["kid"]["level"] == 0.95 and "acc" not in proxy_metrics_ci(feats, ref)
    half = np.arange(40) % 2 == 0  # 0/1 values whose interval depends on the seed (the one above does not)
    seeded = {s: bootstrap_ci(100.0 * half, np.mean, num_resamples=40, seed=s) for s in (0, 1)}
    assert seeded[0] != seeded[1]
    assert proxy_metrics_ci(rng.normal(size=(40, 4)), ref, half, num_resamples=40)["acc"] == seeded[0]


@pytest.mark.parametrize("shapes", [((15,), (60, 4)), ((15, 4), (60,)), ((15, 4), (60, 3))])
def test_proxy_metrics_ci_rejects_features_of_other_shapes(shapes):
    a, b = np.zeros(shapes[0]), np.ones(shapes[1])
    with pytest.raises(ValueError, match=exact("features and reference_features must be (n, D) and (N, D) with the "
                                               f"same D, got {shapes[0]} and {shapes[1]}")):
        proxy_metrics_ci(a, b)


def test_kid_on_indices_of_two_samples_and_of_one():
    rng = np.random.default_rng(12)
    ref, feats = rng.normal(size=(20, 3)), rng.normal(size=(6, 3))
    kid = KidToReference(ref)
    assert kid.on_indices(feats)([4, 1]) == pytest.approx(kid(feats[[4, 1]]), rel=1e-12)
    with pytest.raises(ValueError, match=exact("idx must select at least two samples, got 1")):
        kid.on_indices(feats)([3])


def test_jackknife_of_three_values():
    x = np.array([1.0, 4.0, 2.5])
    ci = jackknife_ci(x, np.mean, level=0.95)
    assert (ci["n"], ci["estimate"]) == (3, 2.5)
    assert ci["se"] == pytest.approx(x.std(ddof=1) / np.sqrt(3), rel=1e-12)


def test_frechet_to_reference_in_float64_whatever_the_input():
    """float32 features and a float32 reference covariance give the float64 result; two samples suffice;
    eigenvalues of Σ_ref that rounding made slightly negative count as zero."""
    rng = np.random.default_rng(13)
    d = 5
    feats, ref = rng.normal(size=(9, d)), rng.normal(size=(40, d))
    mu, sigma = activation_statistics(ref)
    exact64 = FrechetToReference(mu, sigma)
    f32 = feats.astype(np.float32)
    s32 = sigma.astype(np.float32)
    from_f32 = FrechetToReference(mu, s32.astype(np.float64))(f32.astype(np.float64))
    assert FrechetToReference(mu, s32)(f32) == pytest.approx(from_f32, rel=1e-12, abs=0)
    assert exact64(feats[:2]) == pytest.approx(frechet_distance(*activation_statistics(feats[:2]), mu, sigma),
                                               rel=1e-6)
    vec = np.linalg.qr(rng.normal(size=(d, d)))[0]
    lam = np.array([2.0, 1.0, 0.5, 0.0, 0.0])
    psd = (vec * lam) @ vec.T
    negative = psd + 1e-9 * np.outer(vec[:, 4], vec[:, 4]) * -1  # one eigenvalue of -1e-9
    value = FrechetToReference(mu, negative)(feats)
    assert np.isfinite(value) and value == pytest.approx(FrechetToReference(mu, psd)(feats), rel=1e-6)


def test_kid_of_two_samples_each():
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    assert kid_from_features(x, y) == pytest.approx(_kid_double_loop(x, y), rel=1e-12)
    assert KidToReference(y)(x) == pytest.approx(_kid_double_loop(x, y), rel=1e-12)
    with pytest.raises(ValueError, match=exact("features_x must be an (N, D) array of features with N >= 2, got "
                                               "shape (1, 3)")):
        kid_from_features(x[:1], y)


def test_bootstrap_written_out():
    """Resamples of n rows drawn with ``numpy.random.default_rng(seed).integers(0, n, n)``, the statistic in float64,
    the percentiles (1 ∓ level)/2; seed 0 by default; two samples and ten resamples are enough."""
    values = np.array([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.5])

    def stat(v):
        return np.float32(v.mean() / 3)  # a float32 statistic is still summarised in float64

    ci = bootstrap_ci(values, stat, num_resamples=10, level=0.8, seed=4)
    rng = np.random.default_rng(4)
    reps = np.array([float(stat(values[rng.integers(0, 7, 7)])) for _ in range(10)])
    low, high = np.quantile(reps, [0.1, 0.9])
    assert ci == {"estimate": float(stat(values)), "low": low, "high": high, "level": 0.8, "num_resamples": 10, "n": 7}
    assert bootstrap_ci(values, np.mean, num_resamples=10) == bootstrap_ci(values, np.mean, num_resamples=10, seed=0)
    assert bootstrap_ci(values[:2], np.mean, num_resamples=10)["n"] == 2


@pytest.mark.parametrize("num_resamples", [9, 50.0, True])
def test_bootstrap_needs_an_integer_number_of_resamples(num_resamples):
    with pytest.raises(ValueError, match=exact(f"num_resamples must be an integer >= 10, got {num_resamples!r}")):
        bootstrap_ci(np.zeros(5), np.mean, num_resamples=num_resamples)


@pytest.mark.parametrize("level", [0.0, 1.0, -0.5])
def test_levels_outside_the_open_unit_interval_are_refused(level):
    for ci in (lambda: bootstrap_ci(np.zeros(5), np.mean, level=level), lambda: jackknife_ci(np.zeros(5), np.mean,
                                                                                            level=level)):
        with pytest.raises(ValueError, match=exact(f"level must lie in (0, 1), got {level!r}")):
            ci()


def test_bootstrap_and_jackknife_work_in_float64_whatever_the_statistic_returns():
    """A statistic that returns float32 scalars gives the same interval as one returning the same values as
    Python floats: the replicates are held (and the quantiles and the standard error computed) in float64."""
    values = np.random.default_rng(12).normal(size=(57, 3))
    as_f32 = lambda v: np.float32(v.mean() * 1.37)  # noqa: E731
    as_float = lambda v: float(np.float32(v.mean() * 1.37))  # noqa: E731
    for ci in (lambda s: bootstrap_ci(values, s, num_resamples=101, level=0.9, seed=2),
               lambda s: jackknife_ci(values, s, level=0.9)):
        assert ci(as_f32) == ci(as_float)


def _diversity(features, labels) -> float:
    """Within-class diversity written out: mean over classes with >= 2 samples of the mean pairwise distance."""
    per_class = []
    for c in np.unique(labels):
        g = features[labels == c]
        if len(g) >= 2:
            per_class.append(np.mean([np.linalg.norm(g[i] - g[j]) for i in range(len(g)) for j in range(len(g))
                                      if i != j]))
    return float(np.mean(per_class))


@pytest.mark.parametrize("counts", [(5, 4, 3), (6, 2, 1), (3, 3)])
def test_diversity_ci_is_the_jackknife_of_class_diversity(counts):
    """Two routes: the closed-form leave-one-out of diversity_ci against jackknife_ci recomputing the written-out
    statistic n times (classes of two samples drop out when one is left; a lone sample changes nothing), and
    its estimate against classifier.class_diversity's formula."""
    from diffusion.metrics.intervals import diversity_ci

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(len(counts)), counts)
    feats = rng.normal(size=(len(labels), 4)) + labels[:, None]
    got = diversity_ci(feats, labels, level=0.9)
    ref = jackknife_ci(np.arange(len(labels)), lambda idx: _diversity(feats[idx], labels[idx]), level=0.9)
    assert got["estimate"] == pytest.approx(_diversity(feats, labels), rel=1e-12)
    for key in ("estimate", "low", "high", "se"):
        assert got[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12)
    assert got["n"] == len(labels) and got["level"] == 0.9


def test_diversity_ci_rejects_what_it_cannot_measure():
    from diffusion.metrics.intervals import diversity_ci

    with pytest.raises(ValueError, match="labels"):
        diversity_ci(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="at least three samples"):
        diversity_ci(np.zeros((3, 2)), np.arange(3))


def test_independent_difference_of_diversities_covers_zero_at_its_level():
    """Two independent sets from one distribution: the 95 % interval of the diversity difference holds 0 in about
    95 % of repetitions (measured 0.963; a variance without the square root gives 0.34, one set's error alone 0.83),
    and its standard error is √(se_a² + se_b²)."""
    rng = np.random.default_rng(11)
    labels = np.repeat(np.arange(3), 20)
    hits = []
    for _ in range(300):
        a = diversity_ci(rng.normal(0, 1, (60, 4)), labels)
        b = diversity_ci(rng.normal(0, 1, (60, 4)), labels)
        d = independent_difference_ci(a, b)
        assert d["estimate"] == pytest.approx(a["estimate"] - b["estimate"])
        assert d["se"] == pytest.approx(math.hypot(a["se"], b["se"]))
        hits.append(d["low"] <= 0 <= d["high"])
    assert 0.90 <= np.mean(hits) <= 0.99


def test_independent_difference_refuses_intervals_it_cannot_combine():
    rng = np.random.default_rng(12)
    a = jackknife_ci(rng.normal(0, 1, 20), np.mean)
    with pytest.raises(ValueError, match="different levels"):
        independent_difference_ci(a, jackknife_ci(rng.normal(0, 1, 20), np.mean, level=0.9))
    with pytest.raises(ValueError, match="standard error"):
        independent_difference_ci(a, bootstrap_ci(rng.normal(0, 1, 20), np.mean))

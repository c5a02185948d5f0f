"""Colour-cast statistics (diffusion.metrics.colour): closed forms, two routes, coverage of the intervals."""
import numpy as np
import pytest

from diffusion.metrics.colour import (channel_means, colour_difference, colour_spread, colour_statistics,
                                      saturated_fractions)


def _images(colours: np.ndarray, size: int = 4, ripple: float = 0.05) -> np.ndarray:
    """Float images whose channel c of image i is colours[i, c] plus a zero-mean checkerboard of ±ripple."""
    board = np.indices((size, size)).sum(axis=0) % 2 * 2 - 1  # ±1, mean exactly 0
    return colours[:, :, None, None] + ripple * board[None, None]


def test_spread_is_the_pooled_standard_deviation_of_the_image_colours():
    rng = np.random.default_rng(0)
    colours = rng.uniform(-0.6, 0.6, size=(40, 3))
    means = channel_means(_images(colours))
    np.testing.assert_allclose(means, colours, atol=1e-12)  # the ripple averages out exactly
    expected = np.sqrt(np.mean([np.var(colours[:, c], ddof=1) for c in range(3)]))
    assert colour_spread(means) == pytest.approx(expected, rel=1e-12)


def test_spread_estimates_the_population_value():
    rng = np.random.default_rng(1)
    s = np.array([0.1, 0.2, 0.3])
    colours = rng.normal(0.0, s, size=(20000, 3))
    assert colour_spread(channel_means(_images(colours, ripple=0.0))) == pytest.approx(np.sqrt(np.mean(s ** 2)),
                                                                                        rel=0.02)


def test_uint8_and_float_routes_agree():
    rng = np.random.default_rng(2)
    u8 = rng.integers(0, 256, size=(6, 3, 5, 5), dtype=np.uint8)
    as_float = u8.astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(channel_means(u8), channel_means(as_float), atol=1e-6)
    np.testing.assert_allclose(saturated_fractions(u8), saturated_fractions(as_float))


def test_saturated_fraction_counts_both_ends():
    x = np.zeros((2, 1, 4, 4))
    x[0, 0, 0, :3] = 1.0    # 3 of 16 at the top
    x[0, 0, 1, :2] = -1.5   # 2 of 16 beyond the bottom (clipped)
    x[1, 0, 2, 0] = 0.999   # rounds to 255 once quantised
    np.testing.assert_allclose(saturated_fractions(x), [5 / 16, 1 / 16])
    stats = colour_statistics(np.concatenate([x, x]))
    assert stats["saturated"]["estimate"] == pytest.approx(6 / 32) and stats["n"] == 4


def test_difference_sees_a_wider_spread_and_covers_no_difference():
    rng = np.random.default_rng(3)
    wide, narrow = (_images(rng.normal(0, s, size=(300, 3))) for s in (0.4, 0.25))
    d = colour_difference(wide, narrow)
    assert d["low"] > 0 and d["estimate"] == pytest.approx(0.15, abs=0.05)
    covered = 0
    for _ in range(200):  # both sets from one distribution: the 95 % interval holds 0 about 95 % of the time
        a, b = (_images(rng.normal(0, 0.3, size=(60, 3))) for _ in range(2))
        d = colour_difference(a, b)
        covered += d["low"] <= 0 <= d["high"]
    assert 0.88 <= covered / 200 <= 0.99


@pytest.mark.parametrize("bad", [np.zeros((3, 4, 4)), np.zeros((0, 3, 4, 4)), np.zeros((2, 3, 4, 4), dtype=np.int64)])
def test_bad_images_are_refused(bad):
    with pytest.raises(ValueError, match="images must be"):
        channel_means(bad)


def test_unknown_statistic_is_refused():
    x = np.zeros((3, 3, 2, 2))
    with pytest.raises(ValueError, match="'spread' or 'saturated'"):
        colour_difference(x, x, "hue")

import math

import numpy as np
import pytest

from diffusion.schedules import get_beta_schedule


def test_linear_endpoints_and_pinned_alpha_bar():
    b = get_beta_schedule("linear", 1000)
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == pytest.approx(1e-4, abs=0) and b[-1] == pytest.approx(0.02, abs=1e-18)
    assert np.allclose(np.diff(b), (0.02 - 1e-4) / 999)
    # ᾱ_T through a different route (sum of logs), and a pinned value for the DDPM schedule
    alpha_bar_T = math.exp(sum(math.log1p(-x) for x in b))
    assert np.cumprod(1 - b)[-1] == pytest.approx(alpha_bar_T, rel=1e-12)
    assert alpha_bar_T == pytest.approx(4.035829e-05, rel=1e-5)


def test_quadratic_is_square_of_linear_sqrt():
    b = get_beta_schedule("quadratic", 10, 1e-4, 0.02)
    assert np.allclose(np.sqrt(b), np.linspace(0.01, math.sqrt(0.02), 10))


def test_cosine_matches_alpha_bar_formula():
    T, s = 1000, 0.008
    b = get_beta_schedule("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    ab = np.cumprod(1 - b)
    for t in (1, 10, 500, 900):
        assert ab[t - 1] == pytest.approx(f(t) / f(0), rel=1e-9)
    assert b.max() <= 0.999 and (b > 0).all()


@pytest.mark.parametrize("bad", [dict(name="sigmoid", num_timesteps=10), dict(name="linear", num_timesteps=0),
                                 dict(name="linear", num_timesteps=10, beta_start=0.1, beta_end=0.01)])
def test_bad_schedule_arguments(bad):
    with pytest.raises(ValueError):
        get_beta_schedule(**bad)

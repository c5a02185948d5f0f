"""Per-timestep ε-error (diffusion.metrics.eps_error) against closed forms for Gaussian data."""
import numpy as np
import pytest
import torch

from diffusion.gaussian_diffusion import create_diffusion
from diffusion.metrics.eps_error import eps_error_by_timestep


def test_matches_closed_forms_for_gaussian_data():
    """x_0 ~ N(0, s²): the optimal predictor E[ε|x_t] = √(1−ᾱ) x_t/(ᾱs² + 1 − ᾱ) has error ᾱs²/(ᾱs² + 1 − ᾱ);
    ε̂ = x_t has error ᾱs² + (1 − √(1−ᾱ))²; x0_mse = mse·(1−ᾱ)/ᾱ."""
    s2, n = 0.3, 40000
    d = create_diffusion("linear", 1000)
    ab_all = torch.tensor(d.alpha_bar, dtype=torch.float32)

    def optimal(x, t):
        a = ab_all[t].view(-1, 1)
        return torch.sqrt(1 - a) * x / (a * s2 + 1 - a)

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 1, generator=g) * s2**0.5
    ts = [0, 10, 200, 600, 999]
    r = eps_error_by_timestep(d, optimal, x0, ts, generator=torch.Generator().manual_seed(1), batch_size=7000)
    ab = d.alpha_bar[ts]
    np.testing.assert_array_equal(r["t"], ts)
    np.testing.assert_allclose(r["mse"], ab * s2 / (ab * s2 + 1 - ab), rtol=0.03, atol=1e-7)
    np.testing.assert_allclose(r["identity_mse"], ab * s2 + (1 - np.sqrt(1 - ab)) ** 2, rtol=0.03)
    np.testing.assert_allclose(r["x0_mse"], r["mse"] * (1 - ab) / ab, rtol=1e-12)
    # the optimal predictor beats ε̂ = x_t everywhere except where they coincide (t → T)
    assert np.all(r["mse"] <= r["identity_mse"] * 1.01)


def test_conditional_kwargs_are_sliced_and_bad_input_rejected():
    d = create_diffusion("linear", 100)
    seen = []

    def model(x, t, y):
        seen.append(y.clone())
        return torch.zeros_like(x)

    x0 = torch.zeros(5, 1, 2, 2)
    r = eps_error_by_timestep(d, model, x0, [3], model_kwargs={"y": torch.arange(5)}, batch_size=2)
    assert [s.tolist() for s in seen] == [[0, 1], [2, 3], [4]]
    assert r["mse"][0] == pytest.approx(1.0, abs=0.6)  # ε̂ = 0: E‖ε‖²/D = 1 (20 draws)
    with pytest.raises(ValueError, match="timesteps"):
        eps_error_by_timestep(d, model, x0, [100])
    with pytest.raises(ValueError, match="x0"):
        eps_error_by_timestep(d, model, torch.zeros(0, 1), [1])


def test_noise_draws_written_out_with_default_batches():
    """The noise is drawn from ``generator`` per batch of 256 in the images' dtype; ε̂ = 0 and ε̂ = x_t written
    out with the same draws agree to rounding, whatever the global seed."""
    d = create_diffusion("linear", 50)
    x0 = torch.rand(300, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ts = [0, 17, 49]
    sizes = []

    def zero(x, t):
        assert x.dtype == torch.float64 and t.dtype == torch.int64
        sizes.append(len(x))
        return torch.zeros_like(x)

    torch.manual_seed(123)
    r = eps_error_by_timestep(d, zero, x0, np.asarray(ts, dtype=np.int32), generator=torch.Generator().manual_seed(7))
    assert sizes == [256, 44] * 3
    assert r["t"].dtype == np.int64 and r["t"].tolist() == ts
    g = torch.Generator().manual_seed(7)
    for k, t in enumerate(ts):
        ab = float(d.alpha_bar[t])
        noise = torch.cat([torch.randn(256, 1, 2, 2, generator=g, dtype=torch.float64),
                           torch.randn(44, 1, 2, 2, generator=g, dtype=torch.float64)])
        x_t = ab**0.5 * x0 + (1 - ab) ** 0.5 * noise
        assert r["mse"][k] == pytest.approx(float((noise**2).mean()), rel=1e-12)
        assert r["identity_mse"][k] == pytest.approx(float(((x_t - noise) ** 2).mean()), rel=1e-12)
    torch.manual_seed(321)
    again = eps_error_by_timestep(d, zero, x0, ts, generator=torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(again["mse"], r["mse"])


@pytest.mark.parametrize("x0", [torch.zeros(5), np.zeros((5, 1)), torch.zeros(0, 1)])
def test_rejects_images_that_are_not_a_batch(x0):
    d = create_diffusion("linear", 10)
    with pytest.raises(ValueError, match=r"^x0 must be a non-empty batch of images \(N, \.\.\.\) in \[-1, 1\]$"):
        eps_error_by_timestep(d, lambda x, t: x, x0, [1])


@pytest.mark.parametrize("ts", [[-1], [], [3, 10]])
def test_rejects_timesteps_out_of_range(ts):
    d = create_diffusion("linear", 10)
    with pytest.raises(ValueError, match=r"^timesteps must be a non-empty list of indices in \[0, 10\)$"):
        eps_error_by_timestep(d, lambda x, t: x, torch.zeros(2, 1), ts)


def test_channel_mean_error_separates_a_colour_cast_from_white_error():
    """Two routes: ε̂ = ε + c (a per-image, per-channel constant, independent of x_t's noise) puts all its error
    in the channel means, c² exactly; ε̂ = ε + white noise of variance v puts v/(H·W) there in expectation."""
    d = create_diffusion("linear", 100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(400, 3, 8, 8, generator=g) * 2 - 1
    cast = torch.randn(400, 3, 1, 1, generator=torch.Generator().manual_seed(5)) * 0.2
    state = {}

    def capture(x, t):  # recover ε from x_t = √ᾱ x0 + √(1−ᾱ) ε
        a = float(d.alpha_bar[int(t[0])])
        lo = state["lo"]
        eps = (x - a**0.5 * x0[lo:lo + len(x)]) / (1 - a) ** 0.5
        return eps

    def colour(x, t):
        lo = state.setdefault("lo", 0)
        out = capture(x, t) + cast[lo:lo + len(x)]
        state["lo"] = lo + len(x)
        return out

    r = eps_error_by_timestep(d, colour, x0, [50], generator=torch.Generator().manual_seed(1), batch_size=100)
    expected = float((cast ** 2).mean())
    assert r["mse"][0] == pytest.approx(expected, rel=1e-4)
    assert r["channel_mean_mse"][0] == pytest.approx(expected, rel=1e-4)

    state.clear()
    white_g = torch.Generator().manual_seed(9)

    def white(x, t):
        lo = state.setdefault("lo", 0)
        out = capture(x, t) + 0.3 * torch.randn(x.shape, generator=white_g)
        state["lo"] = lo + len(x)
        return out

    r = eps_error_by_timestep(d, white, x0, [50], generator=torch.Generator().manual_seed(1), batch_size=100)
    assert r["mse"][0] == pytest.approx(0.09, rel=0.02)
    assert r["channel_mean_mse"][0] == pytest.approx(0.09 / 64, rel=0.1)

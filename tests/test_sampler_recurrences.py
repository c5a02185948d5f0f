"""Step-by-step reference recurrences for the samplers, written independently in NumPy (float64).

A fixed toy ε-model (smooth in x, explicitly dependent on the *original* timestep index) is run through
``diffusion.samplers.sample`` in float64 and through a few lines of NumPy that follow the papers:

- ancestral sampling, eq. (15) / algorithm 2 of DDPM, with σ_t² = β_t or β̃_t;
- DDIM, Song et al. 2021 eq. (12): x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1−ᾱ_{t-1}−σ²) ε̂ + σ z,
  σ = η √((1−ᾱ_{t-1})/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_{t-1}), over a respaced subsequence τ;
- DPM-Solver++(2M), Lu et al. 2022 algorithm 2 (multistep, data prediction), last step to the clean end.

The noise z of the stochastic samplers is the same stream: the reference draws it from an identically
seeded ``torch.Generator`` in the order the sampler consumes it. Tolerance 1e-10 (float64), so a wrong
step-size ratio, a wrong σ, a missing clamp or returning x_t instead of x̂_0 at the end is caught.
"""
import numpy as np
import pytest
import torch

from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.samplers import dpmpp2m_timesteps, sample

T = 50
SHAPE = (3, 2, 4, 4)
TOL = 1e-10


def betas_linear(T_=T):
    return np.linspace(1e-3, 0.2, T_)  # short chain with a clean end (ᾱ_T ≈ 6e-3)


def eps_np(x, t):
    """Toy ε̂(x, t): depends on x non-linearly and on the timestep index t (original schedule)."""
    return np.tanh(0.7 * x + 0.05 * t - 0.4) + 0.01 * t * np.cos(x)


class ToyEps:
    """The same toy ε̂ as a torch model; records the timestep indices it is called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, **kwargs):
        self.calls.append(t.tolist())
        tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.tanh(0.7 * x + 0.05 * tt - 0.4) + 0.01 * tt * torch.cos(x)


def x_T(seed=3):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def noise_stream(seed, n):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=torch.float64).numpy() for _ in range(n)]


def x0_from_eps(x, eps, ab, clip):
    x0 = (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
    return np.clip(x0, -1, 1) if clip else x0


# ------------------------------------------------------------------------------------------- ancestral
@pytest.mark.parametrize("var_type", ["fixed_large", "fixed_small"])
@pytest.mark.parametrize("clip", [False, True])
def test_ancestral_is_eq_15_step_by_step(var_type, clip):
    b = betas_linear()
    a = 1 - b
    ab = np.cumprod(a)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = b * (1 - ab_prev) / (1 - ab)
    sigma2 = b if var_type == "fixed_large" else np.append(post_var[1], post_var[1:])
    d = GaussianDiffusion(b, model_var_type=var_type)
    z = noise_stream(11, T)
    out = sample(d, ToyEps(), SHAPE, sampler="ancestral", noise=x_T(), generator=torch.Generator().manual_seed(11),
                 clip_denoised=clip).numpy()

    x = x_T().numpy()
    for k, t in enumerate(range(T - 1, -1, -1)):
        e = eps_np(x, t)
        if clip:  # μ̃(x̂_0, x_t) of eq. (9) with the clipped x̂_0
            x0 = x0_from_eps(x, e, ab[t], True)
            mean = (b[t] * np.sqrt(ab_prev[t]) * x0 + (1 - ab_prev[t]) * np.sqrt(a[t]) * x) / (1 - ab[t])
        else:  # eq. (12)
            mean = (x - b[t] / np.sqrt(1 - ab[t]) * e) / np.sqrt(a[t])
        x = mean + (np.sqrt(sigma2[t]) * z[k] if t > 0 else 0.0)
    np.testing.assert_allclose(out, np.clip(x, -1, 1) if clip else x, rtol=0, atol=TOL)


# ------------------------------------------------------------------------------------------------- DDIM
def ddim_reference(taus, eta, clip, z=None):
    ab = np.cumprod(1 - betas_linear())
    x = x_T().numpy()
    for k in range(len(taus) - 1, -1, -1):
        t = taus[k]
        a_t, a_prev = ab[t], (ab[taus[k - 1]] if k > 0 else 1.0)
        e = eps_np(x, t)
        x0 = x0_from_eps(x, e, a_t, clip)
        if clip:  # ε̂ re-derived from the clipped x̂_0 (what the sampler continues with)
            e = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(1 - a_t / a_prev)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * e
        if eta > 0:
            x = x + sigma * z[len(taus) - 1 - k]
    return x


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_eta0_is_song_eq_12_over_the_respaced_steps(clip):
    taus = list(range(0, T, 7))  # linspace(0, 49, 8): 0, 7, …, 49 (no rounding ties)
    model = ToyEps()
    out = sample(GaussianDiffusion(betas_linear()), model, SHAPE, sampler="ddim", steps=8, eta=0.0, noise=x_T(),
                 clip_denoised=clip).numpy()
    ref = ddim_reference(taus, 0.0, clip)
    np.testing.assert_allclose(out, np.clip(ref, -1, 1) if clip else ref, rtol=0, atol=TOL)
    assert [c[0] for c in model.calls] == taus[::-1]  # the model sees the original indices τ


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_eta_positive_with_fixed_noise_is_song_eq_12(eta):
    taus = list(range(0, T, 7))
    out = sample(GaussianDiffusion(betas_linear()), ToyEps(), SHAPE, sampler="ddim", steps=8, eta=eta, noise=x_T(),
                 generator=torch.Generator().manual_seed(5), clip_denoised=False).numpy()
    ref = ddim_reference(taus, eta, False, z=noise_stream(5, len(taus)))
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)
    # and η matters: the deterministic path is far away
    assert np.abs(out - ddim_reference(taus, 0.0, False)).max() > 1e-2


# ---------------------------------------------------------------------------------------- DPM-Solver++
def lam_np(ab):
    return 0.5 * np.log(ab / (1 - ab))


def dpm_timesteps_reference(ab, steps):
    lam = lam_np(ab)
    idx = [int(np.argmin(np.abs(lam - target))) for target in np.linspace(lam[-1], lam[0], steps)]
    assert len(set(idx)) == steps, "test set-up: the log-SNR grid must pick distinct indices"
    return sorted(idx, reverse=True)


def dpmpp2m_reference(ab, ts, clip, x=None, states=None):
    """Lu et al. 2022, algorithm 2: x̃_{t_i} = (σ_i/σ_{i-1}) x̃ − α_i (e^{−h_i} − 1) D_i,
    D_1 = x̂_0(t_0), D_i = (1 + 1/(2r_i)) x̂_0(t_{i-1}) − 1/(2r_i) x̂_0(t_{i-2}), r_i = h_{i-1}/h_i;
    the final step goes to ᾱ = 1 (σ = 0), where x̃ = D = x̂_0 of the last evaluation. ``states``, if a list,
    receives (x̃, x̂_0) at each evaluation."""
    alpha, sigma, lam = np.sqrt(ab), np.sqrt(1 - ab), lam_np(ab)
    x = x_T().numpy() if x is None else x
    x0s, hs = [], []
    for i, s in enumerate(ts):
        x0s.append(x0_from_eps(x, eps_np(x, s), ab[s], clip))
        if states is not None:
            states.append((x, x0s[-1]))
        if i == len(ts) - 1:
            return x0s[-1]
        t = ts[i + 1]
        h = lam[t] - lam[s]
        if i == 0:
            D = x0s[-1]
        else:
            r = hs[-1] / h
            D = (1 + 1 / (2 * r)) * x0s[-1] - 1 / (2 * r) * x0s[-2]
        hs.append(h)
        x = sigma[t] / sigma[s] * x - alpha[t] * (np.exp(-h) - 1) * D


@pytest.mark.parametrize("steps", [2, 3, 6])
@pytest.mark.parametrize("clip", [False, True])
def test_dpmpp2m_is_lu_algorithm_2_step_by_step(steps, clip):
    b = betas_linear()
    ab = np.cumprod(1 - b)
    ts = dpm_timesteps_reference(ab, steps)
    assert dpmpp2m_timesteps(ab, steps) == ts
    model = ToyEps()
    out = sample(GaussianDiffusion(b), model, SHAPE, sampler="dpmpp2m", steps=steps, noise=x_T(),
                 clip_denoised=clip).numpy()
    ref = dpmpp2m_reference(ab, ts, clip)
    np.testing.assert_allclose(out, np.clip(ref, -1, 1) if clip else ref, rtol=0, atol=TOL)
    assert [c[0] for c in model.calls] == ts  # one model evaluation per step, at the chosen indices


def test_dpmpp2m_second_order_correction_matters():
    """The 2M correction and its ratio r = h_{i-1}/h_i are visible: the first-order (DDIM-like) solver over
    the same steps, or the inverted ratio, land measurably away from the reference."""
    b = betas_linear()
    ab = np.cumprod(1 - b)
    ts = dpm_timesteps_reference(ab, 6)
    alpha, sigma, lam = np.sqrt(ab), np.sqrt(1 - ab), lam_np(ab)
    out = sample(GaussianDiffusion(b), ToyEps(), SHAPE, sampler="dpmpp2m", steps=6, noise=x_T(),
                 clip_denoised=False).numpy()

    def solve(ratio):
        x, prev, h_prev = x_T().numpy(), None, None
        for i, s in enumerate(ts):
            x0 = x0_from_eps(x, eps_np(x, s), ab[s], False)
            if i == len(ts) - 1:
                return x0
            t = ts[i + 1]
            h = lam[t] - lam[s]
            if ratio is None or prev is None:
                D = x0
            else:
                r = ratio(h_prev, h)
                D = (1 + 1 / (2 * r)) * x0 - prev / (2 * r)
            x = sigma[t] / sigma[s] * x - alpha[t] * np.expm1(-h) * D
            prev, h_prev = x0, h

    np.testing.assert_allclose(out, solve(lambda hp, h: hp / h), rtol=0, atol=TOL)
    assert np.abs(out - solve(None)).max() > 1e-4
    assert np.abs(out - solve(lambda hp, h: h / hp)).max() > 1e-5


def test_dpmpp2m_seeded_start_trajectory_and_defaults():
    """Without ``noise`` the start x_T comes from ``generator``; the trajectory holds x̃ and x̂_0 at every
    evaluation; called directly, the loop clips x̂_0 by default."""
    from diffusion.samplers import dpmpp2m_sample_loop

    b = betas_linear()
    ab = np.cumprod(1 - b)
    ts = dpm_timesteps_reference(ab, 6)
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7)).double().numpy()  # float32 draw
    states = []
    ref = dpmpp2m_reference(ab, ts, False, x=start, states=states)
    x, traj = sample(GaussianDiffusion(b), ToyEps(), SHAPE, sampler="dpmpp2m", steps=6, clip_denoised=False,
                     generator=torch.Generator().manual_seed(7), return_trajectory=True)
    np.testing.assert_allclose(x.double().numpy(), ref, rtol=0, atol=2e-5)
    assert traj["t"] == ts
    np.testing.assert_allclose(traj["x_t"].double().numpy(), np.stack([s[0] for s in states]), rtol=0, atol=2e-5)
    np.testing.assert_allclose(traj["pred_x0"].double().numpy(), np.stack([s[1] for s in states]), rtol=0, atol=2e-5)

    direct = dpmpp2m_sample_loop(GaussianDiffusion(b), ToyEps(), SHAPE, 6, generator=torch.Generator().manual_seed(7))
    np.testing.assert_allclose(direct.double().numpy(), dpmpp2m_reference(ab, ts, True, x=start), rtol=0, atol=2e-5)


def test_dpmpp2m_timesteps_nearest_log_snr_and_collisions():
    """Each step takes the index of nearest log-SNR; on a collision it moves to the next free index, and it
    never leaves too few indices for the steps still to come: exactly ``steps`` network calls."""
    for T_, steps in ((50, 6), (50, 40), (30, 30), (1000, 25), (1000, 50), (1000, 100), (1000, 1000)):
        ab = np.cumprod(1 - betas_linear(T_)) if T_ != 1000 else np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
        lam = lam_np(ab)
        nearest = [int(np.argmin(np.abs(lam - target))) for target in np.linspace(lam[-1], lam[0], steps)]
        got = dpmpp2m_timesteps(ab, steps)
        assert len(got) == steps and len(set(got)) == steps and got == sorted(got, reverse=True)
        assert got[0] == T_ - 1 and got[-1] == 0
        if steps >= 30:
            assert len(set(nearest)) < steps  # the set-up exercises the collision rule
        for k, (i, n) in enumerate(zip(got, nearest)):  # moved only where it had to be
            assert i == n or (k and n >= got[k - 1]) or i == steps - 1 - k
        if steps * 10 <= T_:  # few steps: far from the clean end no target collides, the nearest index stands
            assert got[: steps // 2] == nearest[: steps // 2]


def test_dpmpp2m_timesteps_at_t_1000_requested_50_and_100_give_50_and_100_calls():
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    for steps in (10, 20, 50, 100):
        assert len(dpmpp2m_timesteps(ab, steps)) == steps
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 1000\], got 0"):
        dpmpp2m_timesteps(ab, 0)
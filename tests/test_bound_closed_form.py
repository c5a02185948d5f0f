"""Every term of the variational bound, eq. (7), against closed forms computed here in NumPy/SciPy.

- L_T = KL(q(x_T|x_0) ‖ N(0, I)) = ½ (ᾱ_T x_0² + (1−ᾱ_T) − log(1−ᾱ_T) − 1) per pixel, from ᾱ alone;
- L_{t-1} = KL(N(μ̃_t, β̃_t) ‖ N(μ_θ, σ_t²)) with μ̃_t of eq. (7) of DDPM and μ_θ of eq. (12);
- L_0 = −log of the Gaussian mass N(μ_θ(x_1, 1), σ_1²) over each pixel's bin of width 2/255, edge bins open.
All in bits per dimension (mean over pixels / ln 2), float64, relative tolerance 1e-9 (3e-7 where
``calc_bpd_loop`` stores float32). The decoder variance
σ_1² follows the diffusion's convention (β_1 as in the paper's text, or β̃_2 as in DDPM's code), read from
the object and checked against the allowed values, so the test holds under either.
"""
import inspect
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from diffusion.gaussian_diffusion import GaussianDiffusion, LossType

T = 12
SHAPE = (4, 2, 3, 3)
LN2 = math.log(2.0)


def betas():
    return np.linspace(2e-3, 0.3, T)


def conventions():
    """(var_type, decoder_variance or None) pairs this GaussianDiffusion supports."""
    params = inspect.signature(GaussianDiffusion).parameters
    if "decoder_variance" not in params:
        return [("fixed_large", None), ("fixed_small", None)]
    enum_cls = type(params["decoder_variance"].default)
    return [(v, d.value) for v in ("fixed_large", "fixed_small") for d in enum_cls]


def make(var_type, decoder, **kw):
    extra = {} if decoder is None else {"decoder_variance": decoder}
    return GaussianDiffusion(betas(), model_var_type=var_type, **extra, **kw)


def sigma2_np(var_type, decoder):
    """σ_t² for t = 1 … T (index 0 … T−1) written out from β."""
    b = betas()
    ab = np.cumprod(1 - b)
    ab_prev = np.append(1.0, ab[:-1])
    post = b * (1 - ab_prev) / (1 - ab)  # β̃_t; β̃_1 = 0
    if var_type == "fixed_small":
        return np.append(post[1], post[1:])  # β̃_1 = 0 replaced by β̃_2
    s = b.copy()
    if decoder not in (None, "paper"):
        assert decoder == "ddpm_code", f"unknown decoder-variance convention {decoder!r}: add its closed form here"
        s[0] = post[1]
    return s


def data(seed=0):
    g = np.random.default_rng(seed)
    k = g.integers(0, 256, size=SHAPE)
    k[:, 0, 0, 0], k[:, 0, 0, 1] = 0, 255  # both open edge bins occur
    return k / 127.5 - 1.0


def eps_np(x, t):
    return np.sin(1.3 * x + 0.2 * t) * 0.8 + 0.1 * t / T


def toy_model(x, t, **kwargs):
    tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.sin(1.3 * x + 0.2 * tt) * 0.8 + 0.1 * tt / T


def mean_bits(a):
    return a.reshape(a.shape[0], -1).mean(axis=1) / LN2


def prior_np(x0):
    ab_T = np.prod(1 - betas())
    return mean_bits(0.5 * (ab_T * x0**2 + (1 - ab_T) - np.log(1 - ab_T) - 1.0))


def term_np(x0, noise, t, var_type, decoder):
    """L_{t-1} (t ≥ 1) or L_0 (t = 0) in bits/dim for index t, per example; μ_θ unclipped (eq. 12)."""
    b = betas()
    a = 1 - b
    ab = np.cumprod(a)
    ab_prev = np.append(1.0, ab[:-1])
    x_t = np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * noise
    mu = (x_t - b[t] / np.sqrt(1 - ab[t]) * eps_np(x_t, t)) / np.sqrt(a[t])
    s2 = sigma2_np(var_type, decoder)[t]
    if t == 0:
        sd, half = np.sqrt(s2), 1 / 255
        upper = np.where(x0 > 0.999, 1.0, norm.cdf((x0 + half - mu) / sd))
        lower = np.where(x0 < -0.999, 0.0, norm.cdf((x0 - half - mu) / sd))
        # the upper-tail form keeps the far-above-the-mean bins exact
        tail = (np.where(x0 < -0.999, 1.0, norm.sf((x0 - half - mu) / sd))
                - np.where(x0 > 0.999, 0.0, norm.sf((x0 + half - mu) / sd)))
        p = np.where((x0 - mu) > 0, tail, upper - lower)
        return mean_bits(-np.log(p)), x_t
    mu_tilde = (np.sqrt(ab_prev[t]) * b[t] * x0 + np.sqrt(a[t]) * (1 - ab_prev[t]) * x_t) / (1 - ab[t])
    var_tilde = b[t] * (1 - ab_prev[t]) / (1 - ab[t])
    kl = 0.5 * (np.log(s2 / var_tilde) + var_tilde / s2 + (mu_tilde - mu) ** 2 / s2 - 1.0)
    return mean_bits(kl), x_t


def test_decoder_variance_is_one_of_the_two_conventions():
    for var_type, decoder in conventions():
        d = make(var_type, decoder)
        np.testing.assert_allclose(d.model_variance, sigma2_np(var_type, decoder), rtol=1e-12, atol=0)


def test_prior_term_L_T_is_the_closed_form_kl():
    x0 = data()
    d = GaussianDiffusion(betas())
    got = d.prior_bpd(torch.from_numpy(x0)).numpy()
    np.testing.assert_allclose(got, prior_np(x0), rtol=1e-10, atol=0)
    # L_T is not negligible for this short chain and grows with the image's energy
    assert (got > 1e-3).all() and got[np.argmax((x0**2).sum(axis=(1, 2, 3)))] == got.max()


@pytest.mark.parametrize("var_type, decoder", conventions())
def test_every_term_L_t_minus_1_and_L_0_is_its_closed_form(var_type, decoder):
    x0 = data(1)
    d = make(var_type, decoder)
    noise = np.random.default_rng(2).standard_normal((T,) + SHAPE)
    for t in range(T):
        ref, x_t = term_np(x0, noise[t], t, var_type, decoder)
        tt = torch.full((SHAPE[0],), t, dtype=torch.long)
        got = d.vb_terms_bpd(toy_model, torch.from_numpy(x0), torch.from_numpy(x_t), tt, clip_denoised=False)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9, atol=1e-12, err_msg=f"index {t}")


@pytest.mark.parametrize("var_type, decoder", conventions())
def test_calc_bpd_loop_sums_prior_and_all_terms(var_type, decoder):
    """The whole bound: the loop's noise is the seeded stream it draws (index T−1 first, then down)."""
    x0 = data(3)
    d = make(var_type, decoder)
    g = torch.Generator().manual_seed(4)
    noise = {t: torch.randn(SHAPE, generator=g, dtype=torch.float64).numpy() for t in range(T - 1, -1, -1)}
    out = d.calc_bpd_loop(toy_model, torch.from_numpy(x0), clip_denoised=False,
                          generator=torch.Generator().manual_seed(4))
    terms = np.stack([term_np(x0, noise[t], t, var_type, decoder)[0] for t in range(T)], axis=1)
    # the loop stores the terms in float32
    np.testing.assert_allclose(out["vb"].numpy(), terms, rtol=3e-7, atol=0)
    np.testing.assert_allclose(out["prior_bpd"].numpy(), prior_np(x0), rtol=1e-10)
    np.testing.assert_allclose(out["total_bpd"].numpy(), terms.sum(axis=1) + prior_np(x0), rtol=3e-7)


@pytest.mark.parametrize("var_type, decoder", conventions())
def test_kl_training_loss_is_T_times_the_term(var_type, decoder):
    x0 = data(5)
    d = make(var_type, decoder, loss_type=LossType.KL)
    noise = np.random.default_rng(6).standard_normal(SHAPE)
    t = np.array([0, 1, T // 2, T - 1])
    got = d.training_losses(toy_model, torch.from_numpy(x0), torch.from_numpy(t), noise=torch.from_numpy(noise))
    ref = np.array([term_np(x0[i:i + 1], noise[i:i + 1], int(t[i]), var_type, decoder)[0][0] for i in range(len(t))])
    np.testing.assert_allclose(got["loss"].numpy(), T * ref, rtol=1e-9)


def test_decoder_bins_far_from_the_mean_keep_their_precision():
    """L_0's bin mass Φ(b) − Φ(a) is evaluated on the side of the mean where it does not cancel: bins far
    below and far above the mean both match SciPy's tail-exact values to 1e-9 relative."""
    from diffusion.losses import discretized_gaussian_log_likelihood

    x = torch.tensor([0.0, 0.0, -0.5, 0.5], dtype=torch.float64)
    mean = torch.tensor([0.07, -0.07, -0.42, 0.42], dtype=torch.float64)  # 8σ away (σ = 0.009)
    log_scale = torch.full_like(x, math.log(0.009))
    got = discretized_gaussian_log_likelihood(x, mean, log_scale).numpy()
    a, b = ((x.numpy() - 1 / 255 - mean.numpy()) / 0.009), ((x.numpy() + 1 / 255 - mean.numpy()) / 0.009)
    want = np.log(np.where(a > 0, norm.sf(a) - norm.sf(b), norm.cdf(b) - norm.cdf(a)))
    np.testing.assert_allclose(got, want, rtol=1e-9)
    as_int = discretized_gaussian_log_likelihood(x, mean, torch.zeros(4, dtype=torch.long))  # σ = 1
    assert as_int.dtype == torch.float32
    np.testing.assert_allclose(as_int.numpy(), np.log(norm.cdf(x + 1 / 255 - mean) - norm.cdf(x - 1 / 255 - mean)),
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"x and means must have the same shape, got \(2, 3\) and \(3, 2\)"):
        discretized_gaussian_log_likelihood(torch.zeros(2, 3), torch.zeros(3, 2), torch.zeros(2, 3))

"""Numerical checks of chapter 2, equation by equation."""
import math

import numpy as np
import pytest
import torch

from diffusion.gaussian_diffusion import GaussianDiffusion, LossType, ModelMeanType, ModelVarType, create_diffusion
from diffusion.losses import discretized_gaussian_log_likelihood


def gaussian_eps_model(diffusion, s2):
    """The exact ε-predictor E[ε | x_t] for data x_0 ~ N(0, s2): x_t ~ N(0, ᾱ s2 + 1 − ᾱ)."""
    ab = torch.tensor(diffusion.alpha_bar)

    def model(x, t, **_):
        a = ab.to(x.dtype)[t].reshape(-1, *([1] * (x.ndim - 1)))
        return torch.sqrt(1 - a) * x / (a * s2 + 1 - a)
    return model


def test_closed_form_equals_composed_one_step_transitions(gen):
    d = create_diffusion("linear", 50, 1e-3, 0.2)
    # exact recursion of mean coefficient and variance of eq. (2) composed t times
    m, v = 1.0, 0.0
    for t in range(50):
        m, v = math.sqrt(d.alphas[t]) * m, d.alphas[t] * v + d.betas[t]
        assert m == pytest.approx(d.sqrt_alpha_bar[t], rel=1e-12)
        assert v == pytest.approx(1 - d.alpha_bar[t], rel=1e-12)
    # Monte Carlo: iterate q_step_sample and compare with q_mean_variance (eq. 3)
    x0 = torch.full((200_000, 1), 0.7, dtype=torch.float64)
    x = x0
    for t in range(30):
        x = d.q_step_sample(x, torch.full((len(x),), t), noise=torch.randn(x.shape, generator=gen, dtype=x.dtype))
    mean, var, logvar = d.q_mean_variance(x0[:1], torch.tensor([29]))
    assert abs(x.mean() - mean.item()) < 4 * math.sqrt(var.item() / len(x))
    assert x.var().item() == pytest.approx(var.item(), rel=0.02)
    assert logvar.item() == pytest.approx(math.log(var.item()), rel=1e-6)
    # and q_sample draws from the same marginal
    xs = d.q_sample(x0, torch.full((len(x0),), 29), noise=torch.randn(x0.shape, generator=gen, dtype=x0.dtype))
    assert xs.mean().item() == pytest.approx(mean.item(), abs=0.01)
    assert xs.var().item() == pytest.approx(var.item(), rel=0.02)


def test_posterior_matches_gaussian_conditioning_and_eq_11(gen):
    d = create_diffusion("linear", 100, 1e-4, 0.05)
    for t in (1, 17, 99):
        # route 1: condition the joint Gaussian of (x_{t-1}, x_t) given x_0
        a_prev, a_t, alpha = d.alpha_bar[t - 1], d.alpha_bar[t], d.alphas[t]
        cov, var_t, var_prev = math.sqrt(alpha) * (1 - a_prev), 1 - a_t, 1 - a_prev
        x0, xt = 0.4, -0.9
        cond_mean = math.sqrt(a_prev) * x0 + cov / var_t * (xt - math.sqrt(a_t) * x0)
        cond_var = var_prev - cov**2 / var_t
        mean, var, logvar = d.q_posterior_mean_variance(torch.tensor([[x0]], dtype=torch.float64),
                                                        torch.tensor([[xt]], dtype=torch.float64), torch.tensor([t]))
        assert mean.item() == pytest.approx(cond_mean, rel=1e-6)
        assert var.item() == pytest.approx(cond_var, rel=1e-5)
        assert var.item() == pytest.approx(d.betas[t] * (1 - a_prev) / (1 - a_t), rel=1e-6)  # β̃_t of eq. (9)
        assert logvar.item() == pytest.approx(math.log(cond_var), rel=1e-5)
    # route 2: eq. (9) with x_0 written through ε equals eq. (11)
    x0 = torch.randn(8, 3, 4, 4, generator=gen)
    eps = torch.randn(8, 3, 4, 4, generator=gen)
    t = torch.randint(1, 100, (8,), generator=gen)
    xt = d.q_sample(x0, t, eps)
    mean9, _, _ = d.q_posterior_mean_variance(d.predict_x0_from_eps(xt, t, eps), xt, t)
    b = torch.tensor(d.betas, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    ab = torch.tensor(d.alpha_bar, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    mean11 = (xt - b / torch.sqrt(1 - ab) * eps) / torch.sqrt(1 - b)
    assert torch.allclose(mean9, mean11, atol=1e-5)
    # the clipped log variance at index 0 is β̃ of index 1
    assert d.posterior_variance[0] == 0 and d.posterior_log_variance_clipped[0] == math.log(d.posterior_variance[1])


def test_reverse_mean_is_eq_12_and_ancestral_step_is_eq_15(gen):
    for var_type, sigma2 in [("fixed_large", "betas"), ("fixed_small", "posterior_variance")]:
        d = create_diffusion("linear", 100, 1e-4, 0.05, var_type=var_type)
        model = lambda x, t, **_: torch.sin(3 * x) + 0.1 * t.view(-1, 1, 1, 1)  # noqa: E731  any ε-predictor
        x = torch.randn(6, 1, 3, 3, generator=gen)
        t = torch.tensor([0, 1, 5, 50, 98, 99])
        out = d.p_mean_variance(model, x, t, clip_denoised=False)
        a = torch.tensor(d.alphas, dtype=torch.float32)[t].view(-1, 1, 1, 1)
        ab = torch.tensor(d.alpha_bar, dtype=torch.float32)[t].view(-1, 1, 1, 1)
        eq12 = (x - (1 - a) / torch.sqrt(1 - ab) * model(x, t)) / torch.sqrt(a)
        assert torch.allclose(out["mean"], eq12, atol=1e-5)
        expected_var = torch.tensor(getattr(d, sigma2), dtype=torch.float32)[t].view(-1, 1, 1, 1)
        assert torch.allclose(out["variance"][1:], expected_var[1:], rtol=1e-6)
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        step = d.p_sample(model, x, t, clip_denoised=False, generator=g1)["sample"]
        z = torch.randn(x.shape, generator=g2)
        z[0] = 0  # z = 0 at the last step (index 0)
        assert torch.allclose(step, eq12 + torch.exp(0.5 * out["log_variance"]) * z, atol=1e-5)


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_parameterisations_recover_x0(mean_type, gen):
    d = create_diffusion("cosine", 200, mean_type=mean_type)
    x0 = torch.rand(4, 1, 2, 2, generator=gen) * 2 - 1
    eps = torch.randn(4, 1, 2, 2, generator=gen)
    t = torch.tensor([0, 10, 100, 199])
    xt = d.q_sample(x0, t, eps)
    target = {"eps": eps, "x0": x0, "v": d.velocity(x0, t, eps)}[mean_type]
    out = d.p_mean_variance(lambda x, tt, **_: target, xt, t, clip_denoised=False)
    assert torch.allclose(out["pred_x0"], x0, atol=1e-3)
    assert torch.allclose(out["pred_eps"], eps, atol=2e-3)
    # a perfect prediction has zero training loss
    loss = d.training_losses(lambda x, tt, **_: target, x0, t, noise=eps)["loss"]
    assert loss.abs().max() < 1e-10


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_weighted_loss_eq_13_equals_kl_term(var_type, gen):
    """Eq. (13) is L_{t-1} up to the variance constant C of eq. (10) (zero when σ_t² = β̃_t)."""
    d = create_diffusion("linear", 100, 1e-4, 0.05, var_type=var_type, loss_type="weighted")
    model = lambda x, t, **_: 0.5 * x  # noqa: E731
    x0 = torch.rand(5, 1, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    t = torch.tensor([1, 2, 30, 70, 99])
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    weighted = d.training_losses(model, x0, t, noise=noise)["loss"]
    xt = d.q_sample(x0, t, noise)
    kl_nats = d.vb_terms_bpd(model, x0, xt, t, clip_denoised=False) * math.log(2) * 16
    s2, bt = torch.tensor(d.model_variance)[t], torch.tensor(d.posterior_variance)[t]
    const = 0.5 * (torch.log(s2 / bt) + bt / s2 - 1) * 16
    assert torch.allclose(weighted + const, kl_nats, rtol=1e-5)
    if var_type == "fixed_small":
        assert torch.allclose(const, torch.zeros_like(const), atol=1e-6)
    w = d.weighted_loss_weight()
    s2_50 = d.model_variance[50]
    assert w[50] == pytest.approx(d.betas[50] ** 2 / (2 * s2_50 * d.alphas[50] * (1 - d.alpha_bar[50])))


def test_bound_on_gaussian_data_decomposition_and_inequality(gen):
    """Data: 8-bit values from a discretised N(0, s2) on [-1, 1]; model: the exact E[ε|x_t] of the continuous N(0, s2).

    (a) L_T + Σ L_{t-1} + L_0 (eq. 7, analytic KLs) equals the Monte Carlo ELBO of eq. (6);
    (b) E[bound] ≥ the true NLL (entropy of the discrete data distribution).
    """
    T, s2 = 8, 0.09
    d = GaussianDiffusion(np.linspace(0.05, 0.6, T), ModelMeanType.EPSILON, ModelVarType.FIXED_SMALL)
    model = gaussian_eps_model(d, s2)
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    data_lp = discretized_gaussian_log_likelihood(levels, torch.zeros(256, dtype=torch.float64),
                                                  torch.full((256,), 0.5 * math.log(s2), dtype=torch.float64))
    probs = data_lp.exp()
    entropy = -(probs * data_lp).sum().item()
    n = 200_000
    x0 = levels[torch.multinomial(probs, n, replacement=True, generator=gen)].view(n, 1)
    bpd = d.calc_bpd_loop(model, x0, clip_denoised=False, generator=gen, t_batch=T)
    bound = bpd["total_bpd"] * math.log(2)  # nats (one dimension)
    # (a) eq. (6) by Monte Carlo along forward trajectories
    xs = [x0]
    for t in range(T):
        xs.append(d.q_step_sample(xs[-1], torch.full((n,), t), noise=torch.randn(n, 1, generator=gen, dtype=x0.dtype)))
    logn = lambda x, m, v: -0.5 * (math.log(2 * math.pi) + torch.log(v) + (x - m) ** 2 / v)  # noqa: E731
    elbo = -logn(xs[T], torch.zeros_like(xs[T]), torch.ones_like(xs[T]))  # −log p(x_T)
    for t in range(T):  # index t: the term log p_θ(x_t | x_{t+1}) / q(x_{t+1} | x_t)
        tt = torch.full((n,), t)
        out = d.p_mean_variance(model, xs[t + 1], tt, clip_denoised=False)
        if t == 0:
            log_p = discretized_gaussian_log_likelihood(xs[0], out["mean"], 0.5 * out["log_variance"])
        else:
            log_p = logn(xs[t], out["mean"], out["variance"])
        log_q = logn(xs[t + 1], math.sqrt(d.alphas[t]) * xs[t], torch.full_like(xs[t], d.betas[t]))
        elbo = elbo - (log_p - log_q)
    mc, se = elbo.mean().item(), elbo.std().item() / math.sqrt(n)
    analytic, se_a = bound.mean().item(), bound.std().item() / math.sqrt(n)
    assert abs(mc - analytic) < 4 * math.hypot(se, se_a), (mc, analytic, se, se_a)
    # (b) the bound is an upper bound on the true NLL
    assert analytic - 4 * se_a > entropy, (analytic, entropy)
    # the terms are consistent: prior term is the KL of eq. (7)'s L_T
    assert torch.all(bpd["vb"][:, 1:] >= -1e-9)


def test_training_loss_simple_is_eq_14(gen):
    d = create_diffusion("linear", 50)
    x0 = torch.rand(3, 1, 4, 4, generator=gen) * 2 - 1
    t, noise = torch.tensor([0, 20, 49]), torch.randn(3, 1, 4, 4, generator=gen)
    model = lambda x, tt, **_: torch.tanh(x)  # noqa: E731
    loss = d.training_losses(model, x0, t, noise=noise)["loss"]
    xt = d.q_sample(x0, t, noise)
    assert torch.allclose(loss, ((noise - torch.tanh(xt)) ** 2).mean(dim=(1, 2, 3)))


def test_bad_input_names_the_argument():
    d = create_diffusion("linear", 10)
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="t must lie in"):
        d.q_sample(x, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="t must lie in"):
        d.q_sample(x, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer"):
        d.q_sample(x, torch.tensor([0.5, 1.0]))
    for kw in (dict(schedule="exp"), dict(var_type="learned"), dict(mean_type="score"), dict(loss_type="l1")):
        with pytest.raises(ValueError, match="must be one of"):
            create_diffusion(**kw)
    with pytest.raises(ValueError, match="weighted"):
        create_diffusion(mean_type="x0", loss_type="weighted").training_losses(lambda x, t: x, x, torch.tensor([1, 2]))
    assert LossType("kl") is LossType.KL

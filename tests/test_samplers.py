"""Samplers: respacing, DDIM, DPM-Solver++(2M), guidance (eq. 18)."""
import numpy as np
import pytest
import torch

from diffusion.gaussian_diffusion import create_diffusion
from diffusion.guidance import ClassifierFreeGuidance
from diffusion.respace import SpacedDiffusion, space_timesteps
from diffusion.samplers import sample


def exact_eps_model(d, s2):
    """E[ε | x_t] for data x_0 ~ N(0, s2) (the optimal ε-predictor)."""
    ab = torch.tensor(d.alpha_bar, dtype=torch.float32)

    def model(x, t, **_):
        a = ab[t].view(-1, *([1] * (x.ndim - 1)))
        return torch.sqrt(1 - a) * x / (a * s2 + 1 - a)
    return model


def test_respacing_with_all_steps_reproduces_schedule():
    d = create_diffusion("linear", 1000)
    sp = SpacedDiffusion(d, space_timesteps(1000, 1000))
    assert np.allclose(sp.betas, d.betas, rtol=1e-10, atol=1e-14)
    assert np.allclose(sp.alpha_bar, d.alpha_bar, rtol=1e-10)
    assert np.allclose(sp.posterior_variance, d.posterior_variance, rtol=1e-8, atol=1e-16)


def test_respacing_keeps_alpha_bar_and_maps_timesteps():
    d = create_diffusion("cosine", 1000)
    use = space_timesteps(1000, 50)
    assert len(use) == 50 and use[0] == 0 and use[-1] == 999
    sp = SpacedDiffusion(d, use)
    assert np.allclose(sp.alpha_bar, d.alpha_bar[use], rtol=1e-10)
    seen = []
    sp.p_sample(lambda x, t, **_: seen.append(t.clone()) or torch.zeros_like(x), torch.zeros(2, 1, 2, 2),
                torch.tensor([0, 49]))
    assert seen[0].tolist() == [0, 999]
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    with pytest.raises(ValueError):
        space_timesteps(100, 0)
    with pytest.raises(ValueError):
        space_timesteps(100, "fast")


def test_ddim_eta0_is_deterministic_and_eta1_is_stochastic(gen):
    d = create_diffusion("linear", 100, 1e-4, 0.05)
    model = exact_eps_model(d, 0.25)
    x_T = torch.randn(4, 1, 4, 4, generator=gen)
    a = sample(d, model, x_T.shape, sampler="ddim", steps=20, eta=0.0, noise=x_T.clone(),
               generator=torch.Generator().manual_seed(1))
    b = sample(d, model, x_T.shape, sampler="ddim", steps=20, eta=0.0, noise=x_T.clone(),
               generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = sample(d, model, x_T.shape, sampler="ddim", steps=20, eta=1.0, noise=x_T.clone(),
               generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(a, c)


def test_ddim_with_eta1_over_all_steps_is_ancestral_with_fixed_small():
    """η = 1 over all T steps gives σ² = β̃_t: the same chain as ancestral sampling with fixed-small variance."""
    d = create_diffusion("linear", 50, 1e-3, 0.1, var_type="fixed_small")
    model = exact_eps_model(d, 0.3)
    x_T = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    anc = d.p_sample_loop(model, x_T.shape, noise=x_T, generator=torch.Generator().manual_seed(7))
    ddim = d.ddim_sample_loop(model, x_T.shape, eta=1.0, noise=x_T, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(anc, ddim, atol=1e-4)


@pytest.mark.parametrize("sampler,steps", [("ancestral", None), ("ddim", 200), ("dpmpp2m", 20)])
def test_samplers_reach_the_data_distribution(sampler, steps):
    """With the exact ε-predictor for x_0 ~ N(0, s2), every sampler must produce variance ≈ s2 (no clipping)."""
    s2 = 0.09
    d = create_diffusion("linear", 1000)
    x = sample(d, exact_eps_model(d, s2), (6000, 1), sampler=sampler, steps=steps, clip_denoised=False,
               generator=torch.Generator().manual_seed(3))
    assert abs(x.mean().item()) < 0.02
    assert x.var().item() == pytest.approx(s2, rel=0.06)


MIX_MEANS = torch.tensor([[-0.6, -0.6], [0.5, 0.0], [0.0, 0.7]])
MIX_WEIGHTS = torch.tensor([0.5, 0.3, 0.2])
MIX_STD = 0.1


def exact_mixture_eps_model(d, means=MIX_MEANS, weights=MIX_WEIGHTS, s=MIX_STD):
    """E[ε | x_t] for data x_0 ~ Σ_k π_k N(μ_k, s² I) (a non-Gaussian distribution, computed in float64):
    x_t | k ~ N(√ᾱ μ_k, (ᾱ s² + 1 − ᾱ) I), E[x_0 | x_t, k] = μ_k + √ᾱ s² (x_t − √ᾱ μ_k) / (ᾱ s² + 1 − ᾱ),
    and E[ε | x_t] = (x_t − √ᾱ E[x_0 | x_t]) / √(1 − ᾱ)."""
    ab_all = torch.tensor(d.alpha_bar, dtype=torch.float64)
    mu, logw = means.double(), weights.double().log()

    def model(x, t, **_):
        xd, ab = x.double(), ab_all[t].view(-1, 1, 1)                       # (B, 1, 1)
        var = ab * s**2 + 1 - ab
        diff = xd[:, None, :] - ab.sqrt() * mu[None]                          # (B, K, D)
        resp = torch.softmax(logw - 0.5 * (diff**2).sum(-1) / var[..., 0], dim=1)   # (B, K)
        x0_k = mu[None] + ab.sqrt() * s**2 * diff / var
        x0 = (resp[..., None] * x0_k).sum(1)
        return ((xd - ab[:, 0].sqrt() * x0) / (1 - ab[:, 0]).sqrt()).to(x.dtype)
    return model


@pytest.mark.parametrize("sampler,steps", [("ancestral", None), ("ddim", 100), ("dpmpp2m", 25)])
def test_samplers_recover_a_gaussian_mixture(sampler, steps):
    """With the exact ε-predictor of a three-component mixture, every sampler must put each mode's share of
    the samples near it, with the mode's spread: the non-linear regime the Gaussian test cannot probe."""
    d = create_diffusion("linear", 1000)
    x = sample(d, exact_mixture_eps_model(d), (4000, 2), sampler=sampler, steps=steps, clip_denoised=False,
               generator=torch.Generator().manual_seed(4))
    dist = torch.cdist(x.double(), MIX_MEANS.double())
    nearest = dist.argmin(1)
    shares = torch.bincount(nearest, minlength=3).double() / len(x)
    assert torch.allclose(shares, MIX_WEIGHTS.double(), atol=0.03), shares
    assert dist.min(1).values.max() < 6 * MIX_STD          # nothing stranded between the modes
    for k in range(3):
        spread = (x[nearest == k] - MIX_MEANS[k]).std(0)
        assert torch.allclose(spread, torch.full((2,), MIX_STD), rtol=0.15), (k, spread)


def test_respaced_ancestral_variances_bracket_the_data():
    """With 100 respaced steps, σ² = β̃ (fixed-small) under-disperses and σ² = β (fixed-large) over-disperses."""
    s2, var = 0.09, {}
    for var_type in ("fixed_small", "fixed_large"):
        d = create_diffusion("linear", 1000, var_type=var_type)
        x = sample(d, exact_eps_model(d, s2), (6000, 1), steps=100, clip_denoised=False,
                   generator=torch.Generator().manual_seed(3))
        var[var_type] = x.var().item()
    assert var["fixed_small"] < 0.95 * s2 < 1.05 * s2 < var["fixed_large"]


def test_ancestral_sample_matches_p_sample_loop_and_trajectory():
    d = create_diffusion("linear", 30, 1e-3, 0.2)
    model = exact_eps_model(d, 0.5)
    a = sample(d, model, (4, 1, 2, 2), generator=torch.Generator().manual_seed(4))
    b = d.p_sample_loop(model, (4, 1, 2, 2), generator=torch.Generator().manual_seed(4)).clamp(-1, 1)
    assert torch.equal(a, b)
    x, traj = sample(d, model, (4, 1, 2, 2), generator=torch.Generator().manual_seed(4), return_trajectory=True)
    assert torch.equal(x, a)
    assert traj["t"][0] == 29 and traj["t"][-1] == 0 and traj["x_t"].shape[1:] == (4, 1, 2, 2)


class CondNet(torch.nn.Module):
    """A toy conditional model: output depends on the class through an embedding (null = last row)."""

    def __init__(self, k=3):
        super().__init__()
        self.emb = torch.nn.Embedding(k + 1, 1)
        torch.nn.init.normal_(self.emb.weight)
        self.calls = 0

    def forward(self, x, t, y=None):
        self.calls += 1
        return torch.tanh(x) + self.emb(y).view(-1, 1, 1, 1) * (1 + t.view(-1, 1, 1, 1) / 10)


def test_guidance_eq_18():
    net = CondNet()
    x, t, y = torch.randn(5, 1, 2, 2), torch.arange(5), torch.tensor([0, 1, 2, 0, 1])
    null = torch.full_like(y, 3)
    cond, uncond = net(x, t, y), net(x, t, null)
    assert torch.allclose(ClassifierFreeGuidance(net, 1.0, 3)(x, t, y), cond)
    assert torch.allclose(ClassifierFreeGuidance(net, 0.0, 3)(x, t, y), uncond)
    net.calls = 0
    g = ClassifierFreeGuidance(net, 3.0, 3)(x, t, y)
    assert net.calls == 1  # one batched forward pass for both predictions
    assert torch.allclose(g, uncond + 3.0 * (cond - uncond), atol=1e-6)
    with pytest.raises(ValueError):
        ClassifierFreeGuidance(net, 2.0, 3)(x, t)


def test_sample_bad_input():
    d = create_diffusion("linear", 10)
    net = CondNet()
    with pytest.raises(ValueError, match="sampler"):
        sample(d, net, (2, 1, 2, 2), sampler="euler")
    with pytest.raises(ValueError, match="steps"):
        sample(d, net, (2, 1, 2, 2), steps=11)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        sample(d, net, (2, 1, 2, 2), y=torch.tensor([0, 4]), null_class=3)
    with pytest.raises(ValueError, match="null_class"):
        sample(d, net, (2, 1, 2, 2), guidance_scale=2.0, y=torch.tensor([0, 1]))
    out = sample(d, net, (2, 1, 2, 2), sampler="dpmpp2m", steps=5, guidance_scale=2.0, y=torch.tensor([0, 1]),
                 null_class=3)
    assert out.shape == (2, 1, 2, 2) and out.abs().max() <= 1

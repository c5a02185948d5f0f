# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: DDPM thesis (.venv)
#     language: python
#     name: ddpm-thesis
# ---

# %% [markdown]
# # 02 · The variational bound, step by step (sections 2.2–2.3)
#
# **Produces:** `fig:kl-mc` (KL 散度闭式与蒙特卡洛估计的对比), `fig:elbo-weights` (变分界权重与简化损失权重的比较).
# **Runs:** under 10 s with profile quick on AMD EPYC (2 cores); on a GPU: not measured.
# **Cache:** none; everything is computed on each run.
#
# Each step of the derivation is checked numerically with the package's own functions:
#
# 1. the bound in its Monte Carlo form (eq. 6) equals its decomposition L_T + Σ L_{t−1} + L_0 (eq. 7), and
#    both lie above the true negative log-likelihood, on a 1-D Gaussian data distribution where everything
#    is tractable;
# 2. the posterior q(x_{t−1} | x_t, x_0) of eqs. (8)–(9) equals Gaussian conditioning of the joint, and its
#    mean equals eq. (11) when x_0 is written through ε;
# 3. the closed-form Gaussian KL used for every L_{t−1} agrees with a Monte Carlo estimate;
# 4. the weight of eq. (13) across t, against L_simple's constant 1 (eq. 14);
# 5. the discretised decoder L_0 (section 2.4.2) gives 256 probabilities summing to one.

# %% tags=["parameters"]
profile = "quick"  # configs/profiles/<profile>.yaml (`make figures` passes its values; these defaults are quick's)
out_dir = None  # artefacts folder (None: build/interactive/<profile>; `make figures` passes a staging folder)
cache_dir = None  # cache of expensive results (None: $DDPM_CACHE_DIR, else <repo>/cache)
seed = 0  # seed of every random draw
threads = 0  # torch CPU threads (0: torch's default, all cores)
num_timesteps = 1000  # T, the number of diffusion steps
mc_samples = 20000  # forward chains / x_0 draws for the bound (T steps each)
kl_mc_samples = 200000  # draws per Monte Carlo KL estimate
toy_sigma = 0.5  # standard deviation s of the 1-D Gaussian data N(0, s²)

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from diffusion import report
from diffusion.gaussian_diffusion import create_diffusion
from diffusion.losses import discretized_gaussian_log_likelihood, normal_kl

torch.manual_seed(seed)
if threads:
    torch.set_num_threads(threads)
art = report.Artefacts(profile, "02_elbo_checks", out_dir, cache_root=cache_dir, seed=seed,
                       dataset=f"一维高斯分布 N(0, {toy_sigma}²)",
                       config=dict(T=num_timesteps, schedule="linear", mc_samples=mc_samples,
                                   kl_mc_samples=kl_mc_samples))
T = num_timesteps
diffusion = create_diffusion("linear", T, var_type="fixed_small")
gen = torch.Generator().manual_seed(seed)
tt = lambda i, n: torch.full((n,), i, dtype=torch.long)  # noqa: E731  (timestep index tensor)

# %% [markdown]
# ## 1. Eq. (6) = eq. (7) ≥ −log p_θ(x_0) on a tractable toy
# Data x_0 ~ N(0, s²). Then x_t | x_0 is Gaussian and the *optimal* noise predictor is linear,
# ε*(x_t, t) = √(1−ᾱ_t) x_t / (ᾱ_t s² + 1 − ᾱ_t). We use it as ε_θ, so the reverse chain p_θ is linear-Gaussian
# and its marginal p_θ(x_0) = N(0, V) is exact (V by the recursion V ← a_t² V + σ_t², a_t the slope of
# μ_θ(·, t)). The decoder here is the continuous Gaussian N(μ_θ(x_1, 1), σ_1²), as the data are continuous.

# %%
s2 = toy_sigma**2


def eps_star(x, t):
    ab = torch.as_tensor(diffusion.alpha_bar, dtype=x.dtype)[t].reshape(-1, 1)
    return torch.sqrt(1 - ab) * x / (ab * s2 + 1 - ab)


def p_mean_logvar(x, i):
    out = diffusion.p_mean_variance(eps_star, x, tt(i, x.shape[0]), clip_denoised=False)
    return out["mean"].double(), out["log_variance"].double()


def gauss_logpdf(x, mean, logvar):
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 / torch.exp(logvar))


n = mc_samples
x0 = toy_sigma * torch.randn(n, 1, generator=gen, dtype=torch.float64)

# eq. (7): L_T + Σ_{t>1} KL(q(x_{t-1}|x_t,x_0) ‖ p_θ(x_{t-1}|x_t)) + L_0, each KL in closed form
mean_T, _, logvar_T = diffusion.q_mean_variance(x0, tt(T - 1, n))
terms = [normal_kl(mean_T, logvar_T.double(), 0.0, 0.0)]
for i in range(T):
    x_t = diffusion.q_sample(x0, tt(i, n), torch.randn(x0.shape, generator=gen, dtype=x0.dtype))
    pm, plv = p_mean_logvar(x_t, i)
    if i == 0:
        terms.append(-gauss_logpdf(x0, pm, plv))
    else:
        qm, _, qlv = diffusion.q_posterior_mean_variance(x0, x_t, tt(i, n))
        terms.append(normal_kl(qm.double(), qlv.double(), pm, plv))
bound7 = torch.stack(terms).sum(0).squeeze(1)

# eq. (6): −E_q[log p(x_T) + Σ_t log p_θ(x_{t−1}|x_t) − log q(x_t|x_{t−1})] along sampled forward chains
x_prev, log_ratio = x0, torch.zeros_like(x0)
chain = [x0]
for i in range(T):
    x_next = diffusion.q_step_sample(x_prev, tt(i, n), torch.randn(x0.shape, generator=gen, dtype=x0.dtype))
    beta = float(diffusion.betas[i])
    log_ratio -= gauss_logpdf(x_next, math.sqrt(1 - beta) * x_prev, torch.tensor(math.log(beta)))
    pm, plv = p_mean_logvar(x_next, i)
    log_ratio += gauss_logpdf(x_prev, pm, plv)
    x_prev = x_next
log_ratio += gauss_logpdf(x_prev, torch.zeros(()), torch.zeros(()))
bound6 = (-log_ratio).squeeze(1)

# exact marginal of the linear-Gaussian reverse chain
V = 1.0
for i in range(T - 1, -1, -1):
    slope, lv = p_mean_logvar(torch.ones(1, 1, dtype=torch.float64), i)
    V = slope.item() ** 2 * V + math.exp(lv.item())
nll = -gauss_logpdf(x0, torch.zeros(()), torch.tensor(math.log(V))).squeeze(1)

se = lambda a: a.std().item() / math.sqrt(len(a))  # noqa: E731
gap = bound7 - nll
print(f"eq. (7) bound   {bound7.mean():.4f} ± {se(bound7):.4f} nats")
print(f"eq. (6) MC      {bound6.mean():.4f} ± {se(bound6):.4f} nats")
print(f"true NLL        {nll.mean():.4f} nats   (p_θ(x_0) = N(0, {V:.4f}); data variance {s2:.4f})")
print(f"bound − NLL     {gap.mean():.5f} ± {se(gap):.5f} nats")
assert abs(bound7.mean() - bound6.mean()) < 5 * math.hypot(se(bound7), se(bound6))
assert gap.mean() > -3 * se(gap)
art.number("ToyBoundGap", gap.mean().item(), "{:.4f}")

# %% [markdown]
# ## 2. The posterior of eqs. (8)–(9)
# (x_{t−1}, x_t) given x_0 is jointly Gaussian with Cov = √α_t (1−ᾱ_{t−1}); conditioning gives the posterior
# directly. Its mean must also equal eq. (11), (1/√α_t)(x_t − β_t/√(1−ᾱ_t) ε), with x_0 written through ε.

# %%
ab, abp, al, be = diffusion.alpha_bar, diffusion.alpha_bar_prev, diffusion.alphas, diffusion.betas
x0v, xtv = 0.3, -0.8
cond_mean = np.sqrt(abp) * x0v + np.sqrt(al) * (1 - abp) / (1 - ab) * (xtv - np.sqrt(ab) * x0v)
cond_var = (1 - abp) - al * (1 - abp) ** 2 / (1 - ab)
idx = torch.arange(T)
pm, pv, _ = diffusion.q_posterior_mean_variance(torch.full((T, 1), x0v, dtype=torch.float64),
                                                torch.full((T, 1), xtv, dtype=torch.float64), idx)
eps = (xtv - np.sqrt(ab) * x0v) / np.sqrt(1 - ab)
mean_eq11 = (xtv - be / np.sqrt(1 - ab) * eps) / np.sqrt(al)
err_cond = np.abs(pm.squeeze(1).numpy() - cond_mean).max()
err_var = np.abs(pv.squeeze(1).numpy()[1:] - cond_var[1:]).max()
err_11 = np.abs(pm.squeeze(1).numpy() - mean_eq11).max()
print(f"max |μ̃ − Gaussian conditioning| = {err_cond:.2e}, max |β̃ − conditional variance| = {err_var:.2e}, "
      f"max |μ̃ − eq. (11)| = {err_11:.2e}")
assert max(err_cond, err_var, err_11) < 1e-5  # coefficients are gathered in float32

# %% [markdown]
# ## 3. Closed-form KL against Monte Carlo
# For the L_{t−1} terms of section 1 at several t (one fixed x_0 and x_t), KL(q ‖ p) in closed form versus
# the Monte Carlo average of log q(z) − log p(z) over z ~ q.

# %%
pick = sorted({1, 2, 5, T // 100, T // 20, T // 10, T // 4, T // 2, 3 * T // 4, T - 1} - {0})
x0s = torch.tensor([[0.4]], dtype=torch.float64)
analytic, mc, mc_se = [], [], []
for i in pick:
    xt = diffusion.q_sample(x0s, tt(i, 1), torch.randn(1, 1, generator=gen, dtype=torch.float64))
    qm, _, qlv = diffusion.q_posterior_mean_variance(x0s, xt, tt(i, 1))
    qm, qlv = qm.double(), qlv.double()
    pm_, plv_ = p_mean_logvar(xt, i)
    pm_ = pm_ + 0.5 * torch.exp(0.5 * plv_)  # shift p by half its std: every KL >= 1/8 nat
    kl = normal_kl(qm, qlv, pm_, plv_).item()
    z = qm + torch.exp(0.5 * qlv) * torch.randn(kl_mc_samples, 1, generator=gen, dtype=torch.float64)
    d = (gauss_logpdf(z, qm, qlv) - gauss_logpdf(z, pm_, plv_)).squeeze(1)
    analytic.append(kl), mc.append(d.mean().item()), mc_se.append(se(d))
analytic, mc, mc_se = map(np.asarray, (analytic, mc, mc_se))
rel = np.abs(mc - analytic) / analytic
print("t, analytic KL, MC KL, rel. error:")
for i, a, m_, r in zip(pick, analytic, mc, rel):
    print(f"  {i + 1:5d}  {a:.5f}  {m_:.5f}  {r:.2e}")
assert np.all(np.abs(mc - analytic) < 5 * mc_se)
art.number("KLMaxRelErr", report.latex_sci(float(rel.max())), escape=False)  # e.g. $1.3\times10^{-2}$

fig, ax = plt.subplots(figsize=(report.HALF_WIDTH_IN, 3.0))
ax.errorbar(analytic, mc, yerr=2 * mc_se, fmt="o", ms=3,
            label=f"蒙特卡洛估计（±2 倍标准误，$n={kl_mc_samples}$）")
lim = [analytic.min() * 0.8, analytic.max() * 1.2]
ax.plot(lim, lim, "k--", lw=0.8, label="$y=x$")
report.log_axis(ax, "both")
ax.set_xlabel("闭式 KL（nats）"), ax.set_ylabel("蒙特卡洛 KL（nats）")
ax.set_title(f"各项 $L_{{t-1}}$：最大相对误差 {report.latex_sci(float(rel.max()))}")
ax.legend(loc="upper left")
art.save_figure(fig, "kl_montecarlo")

# %% [markdown]
# ## 4. The weight of eq. (13) against L_simple
# L_{t−1} = β_t² / (2σ_t² α_t (1−ᾱ_t)) ‖ε − ε_θ‖² + C; L_simple (eq. 14) drops the weight (sets it to 1). The
# true bound weights small t far more heavily; L_simple shifts emphasis to the harder, noisier steps.

# %%
fig, ax = plt.subplots(figsize=(4.4, 2.8))
ts = np.arange(1, T + 1)
for var in ("fixed_large", "fixed_small"):
    w = create_diffusion("linear", T, var_type=var).weighted_loss_weight()
    label = r"$\sigma_t^2=\beta_t$" if var == "fixed_large" else r"$\sigma_t^2=\tilde{\beta}_t$"
    ax.plot(ts[1:], w[1:], label=f"式 (13)，{label}")
ax.axhline(1.0, color="k", ls="--", lw=0.8, label=r"$L_{\mathrm{simple}}$（式 (14)）")
report.log_axis(ax, "y")
ax.set_xlabel("时间步 $t$"), ax.set_ylabel(r"$\|\epsilon-\epsilon_\theta\|^2$ 的权重（每维）")
ax.legend()
art.save_figure(fig, "elbo_weights")

# %% [markdown]
# ## 5. The decoder L_0 is a proper distribution over the 256 pixel values

# %%
values = torch.linspace(-1, 1, 256, dtype=torch.float64)
worst = 0.0
for mu in (-1.2, -0.5, 0.0, 0.37, 0.99):
    for log_scale in (-6.0, -3.0, -1.0, 0.5):
        lp = discretized_gaussian_log_likelihood(values, torch.full_like(values, mu), torch.full_like(values, log_scale))
        worst = max(worst, abs(torch.exp(lp).sum().item() - 1))
print(f"max |Σ_x p(x) − 1| over 20 (μ, σ) pairs: {worst:.2e}")
assert worst < 1e-6

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
# # 01 · The forward process
#
# **Produces:** `fig:forward-process` (前向扩散过程示意), `fig:schedules` (三种方差调度的比较).
# **Runs:** under 10 s with profile quick on AMD EPYC (2 cores); on a GPU: not measured.
# **Cache:** none; everything is computed on each run.
#
# The forward (diffusion) process adds Gaussian noise in T small steps,
# q(x_t | x_{t−1}) = N(√(1−β_t) x_{t−1}, β_t I) (eq. 2). With α_t = 1 − β_t and ᾱ_t = ∏_{s≤t} α_s it has the
# closed form q(x_t | x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I) (eq. 3), which training uses to jump to any t at once.
# This notebook shows an image being noised, compares the β schedules of section 3.3.2 (linear, the
# thesis's choice) with the cosine and quadratic alternatives, and checks eq. (3) against iterating eq. (2).

# %% tags=["parameters"]
profile = "quick"  # configs/profiles/<profile>.yaml (`make figures` passes its values; these defaults are quick's)
out_dir = None  # artefacts folder (None: build/interactive/<profile>; `make figures` passes a staging folder)
cache_dir = None  # cache of expensive results (None: $DDPM_CACHE_DIR, else <repo>/cache)
seed = 0  # seed of every random draw
threads = 0  # torch CPU threads (0: torch's default, all cores)
dataset = "mnist5k"  # images to noise (a diffusion.data.load_dataset name)
num_timesteps = 1000  # T, the number of diffusion steps
mc_samples = 20000  # chains iterating eq. (2) from one x_0, compared with eq. (3)

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from diffusion import report
from diffusion.data import load_dataset, to_model_range
from diffusion.gaussian_diffusion import create_diffusion

torch.manual_seed(seed)
if threads:
    torch.set_num_threads(threads)
data = load_dataset(dataset, "train")
art = report.Artefacts(profile, "01_forward_process", out_dir, cache_root=cache_dir, seed=seed, dataset=data.label,
                       config=dict(T=num_timesteps, schedule="linear", beta_start=1e-4, beta_end=0.02))
diffusion = create_diffusion("linear", num_timesteps)

# %% [markdown]
# ## An image noised across t
# Each column is one draw x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (eq. 3) with the same ε for every t, so the columns
# show only the change of the coefficients.

# %%
T = num_timesteps
steps = sorted({1, T // 20, T // 10, T // 5, 3 * T // 10, T // 2, 7 * T // 10, T})  # thesis steps t
x0 = to_model_range(data.images[:4])
g = torch.Generator().manual_seed(seed)
eps = torch.randn(x0.shape, generator=g)
cols = [diffusion.q_sample(x0, torch.full((x0.shape[0],), s - 1), eps) for s in steps]
fig, axes = plt.subplots(1, len(steps) + 1, figsize=(report.FULL_WIDTH_IN, 3.1))
report.show_images(axes[0], x0, nrow=1, title="$x_0$\n（原图）")
for ax, s, xt in zip(axes[1:], steps, cols):
    report.show_images(ax, xt, nrow=1, title=f"$t={s}$\n$\\bar{{\\alpha}}_t={diffusion.alpha_bar[s - 1]:.3f}$")
art.save_figure(fig, "forward_process")

# %% [markdown]
# ## Schedules: ᾱ_t and the signal-to-noise ratio SNR(t) = ᾱ_t / (1 − ᾱ_t)

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(report.FULL_WIDTH_IN, 2.5))
SCHEDULE_NAMES = {"linear": "线性（linear）", "cosine": "余弦（cosine）", "quadratic": "二次（quadratic）"}
ts = np.arange(1, T + 1)
for name in ("linear", "cosine", "quadratic"):
    d = create_diffusion(name, T)
    ax1.plot(ts, d.alpha_bar, label=SCHEDULE_NAMES[name])
    ax2.plot(ts, np.log(d.alpha_bar / (1 - d.alpha_bar)), label=SCHEDULE_NAMES[name])
    print(f"{name:9s}: ᾱ_T = {d.alpha_bar[-1]:.2e}, ᾱ at t = T/2: {d.alpha_bar[T // 2 - 1]:.3f}")
ax1.set_xlabel("时间步 $t$"), ax1.set_ylabel(r"$\bar{\alpha}_t$"), ax1.legend()
ax2.set_xlabel("时间步 $t$"), ax2.set_ylabel(r"对数信噪比 $\log\,\mathrm{SNR}(t)$"), ax2.legend()
art.save_figure(fig, "schedules")

# %% [markdown]
# ## Eq. (3) against iterating eq. (2)
# Exactly: composing t steps of eq. (2) gives mean coefficient m_t = √α_t m_{t−1} and variance
# v_t = α_t v_{t−1} + β_t; by induction m_t = √ᾱ_t and v_t = 1 − ᾱ_t. Numerically, both recursions are
# compared with the closed form, and a Monte Carlo run of the Markov chain (`q_step_sample`) with
# `mc_samples` chains from a fixed x_0 is compared with eq. (3).

# %%
m, v = 1.0, 0.0
m_err = v_err = 0.0
for t in range(T):
    m, v = np.sqrt(diffusion.alphas[t]) * m, diffusion.alphas[t] * v + diffusion.betas[t]
    m_err = max(m_err, abs(m - diffusion.sqrt_alpha_bar[t]))
    v_err = max(v_err, abs(v - (1 - diffusion.alpha_bar[t])))
print(f"exact recursion vs eq. (3): max |Δ mean coef| = {m_err:.2e}, max |Δ variance| = {v_err:.2e}")
assert m_err < 1e-12 and v_err < 1e-12

x_start = torch.full((mc_samples, 1), 0.7, dtype=torch.float64)
x = x_start.clone()
gen = torch.Generator().manual_seed(seed + 1)
check = {T // 10, T // 2, T}
rows = []
for t in range(T):
    x = diffusion.q_step_sample(x, torch.full((mc_samples,), t), torch.randn(x.shape, generator=gen, dtype=x.dtype))
    if t + 1 in check:
        mean, var, _ = diffusion.q_mean_variance(x_start[:1], torch.tensor([t]))
        se_mean = float(np.sqrt(var.item() / mc_samples))
        rows.append((t + 1, x.mean().item(), mean.item(), x.var().item(), var.item(), se_mean))
for s, em, cm, ev, cv, se in rows:
    print(f"t = {s:4d}: mean MC {em:+.4f} vs eq. (3) {cm:+.4f} (±{3 * se:.4f});  var MC {ev:.4f} vs {cv:.4f}")
    assert abs(em - cm) < 5 * se and abs(ev - cv) < 5 * cv * np.sqrt(2 / mc_samples)

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
# # 00 · A diffusion model in two dimensions
#
# **Produces:** `fig:toy2d` (二维瑞士卷数据上的前向与逆向轨迹).
# **Runs:** about 30 s with profile quick on AMD EPYC (2 cores); on a GPU: not measured.
# **Cache:** reuses the trained ε-MLP from `cache/` when the inputs are unchanged (computed and stored
# otherwise).
#
# The gentlest entry to the thesis: the same forward process (eqs. 2–3), the same objective L_simple
# (eq. 14) and the same ancestral sampler (eq. 15, algorithm 2) as for images, on points of a swiss roll.
# The forward process turns the data into an isotropic Gaussian; the learned reverse process turns
# Gaussian noise back into the roll. ε_θ is a small MLP (`diffusion.toy.ToyMLP`) on Fourier features of x_t
# and the sinusoidal embedding of eq. (16) passed through a time MLP, as in the U-Net: a plain MLP on the raw
# (x_t, e(t)) learns only a Gaussian-like blob in a few thousand steps. Whether the roll was learned is
# measured below by the energy distance to held-out points. Everything here comes from `diffusion/`; this
# notebook only plots and measures.

# %% tags=["parameters"]
profile = "quick"  # configs/profiles/<profile>.yaml (`make figures` passes its values; these defaults are quick's)
out_dir = None  # artefacts folder (None: build/interactive/<profile>; `make figures` passes a staging folder)
cache_dir = None  # cache of expensive results (None: $DDPM_CACHE_DIR, else <repo>/cache)
seed = 0  # seed of every random draw
threads = 0  # torch CPU threads (0: torch's default, all cores)
toy_name = "swiss_roll"  # 2-D data set of diffusion.toy.make_toy_2d
n_points = 8000  # training points
num_timesteps = 1000  # T, the number of diffusion steps
train_steps = 4000  # optimiser steps of the ε-MLP
batch_size = 512  # points per optimiser step
hidden = 128  # hidden width of the ε-MLP
n_samples = 2000  # points drawn by the reverse process (and shown of the forward process)

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from diffusion import experiments, report
from diffusion.gaussian_diffusion import create_diffusion
from diffusion.toy import make_toy_2d

torch.manual_seed(seed)
if threads:
    torch.set_num_threads(threads)
art = report.Artefacts(profile, "00_toy_2d", out_dir, cache_root=cache_dir, seed=seed,
                       dataset=report.toy_label_zh(toy_name),
                       config=dict(n_points=n_points, T=num_timesteps, train_steps=train_steps, hidden=hidden))
diffusion = create_diffusion("linear", num_timesteps)
x0 = make_toy_2d(toy_name, n_points, seed=seed)

# %% [markdown]
# ## Forward process: q(x_t | x_0) in closed form (eq. 3)
# We draw x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε at a few timesteps. (Index t in the code is the thesis's step t+1.)

# %%
show_t = sorted({0, num_timesteps // 20, num_timesteps // 10, num_timesteps // 4, num_timesteps // 2,
                 num_timesteps - 1})
g = torch.Generator().manual_seed(seed)
forward = [diffusion.q_sample(x0[:n_samples], torch.full((min(n_samples, n_points),), t),
                              torch.randn(min(n_samples, n_points), 2, generator=g)) for t in show_t]

# %% [markdown]
# ## Training ε_θ with L_simple (eq. 14)
# Cached: rerunning the notebook with nothing changed reuses the trained MLP.

# %%
model, train_log = experiments.train_toy(art, toy_name, n_points, num_timesteps, train_steps, batch_size,
                                         hidden, seed=seed)
print(f"trained {train_steps} steps in {train_log['wall_time_s']:.1f} s; final loss "
      f"{np.mean(train_log['loss'][-100:]):.4f}")

# %% [markdown]
# ## Reverse process: ancestral sampling (eq. 15) from x_T ~ N(0, I)

# %%
# the loop of algorithm 2 itself: the toy data are not images, so nothing is clipped to [-1, 1]
gen = torch.Generator().manual_seed(seed + 7)
record = np.array(show_t[1:])  # the forward row's timesteps (except the first), visited from T down
x_gen, traj = diffusion.p_sample_loop(model, (n_samples, 2), generator=gen, clip_denoised=False,
                                      trajectory_steps=record)
print("recorded timesteps (thesis numbering):", [t + 1 for t in traj["t"]])

# %% [markdown]
# ## Did it learn the roll? Energy distance to held-out points
# The energy distance (`diffusion.metrics.energy`, a V-statistic, so two samples of the *same* distribution
# give a small positive value, not zero) between the generated points and held-out roll points, beside the
# same statistic for a second held-out sample (the noise floor at this n) and for N(0, I) (what a model that
# learned nothing but the scale would give). All four sets have n = `n_samples` points.

# %%
from diffusion.metrics.energy import energy_distance  # noqa: E402

held_out = make_toy_2d(toy_name, n_samples, seed=seed + 1000)  # never seen in training (seed differs)
energy = {"model": energy_distance(x_gen, held_out),
          "data": energy_distance(make_toy_2d(toy_name, n_samples, seed=seed + 2000), held_out),
          "gauss": energy_distance(torch.randn(n_samples, 2, generator=torch.Generator().manual_seed(seed + 3000)),
                                   held_out)}
print(f"energy distance to held-out points (n = {n_samples}): model {energy['model']:.4f}, "
      f"second data sample {energy['data']:.4f}, N(0, I) {energy['gauss']:.4f}")
art.number("ToyEnergySamples", n_samples, "{:d}")
art.number("ToyEnergyModel", energy["model"], "{:.4f}")
art.number("ToyEnergyData", energy["data"], "{:.4f}")
art.number("ToyEnergyGauss", energy["gauss"], "{:.4f}")
art.number("ToyEnergyRatio", energy["model"] / energy["data"], "{:.2f}")  # two digits: the ratio of the printed values

# %%
cols = len(show_t)
fig, axes = plt.subplots(2, cols, figsize=(report.FULL_WIDTH_IN, 2 * report.FULL_WIDTH_IN / cols + 0.7),
                         sharex=True, sharey=True)
for ax, t, xt in zip(axes[0], show_t, forward):
    ax.scatter(xt[:, 0], xt[:, 1], s=1, alpha=0.4, rasterized=True)
    ax.set_title(f"$q$: $t = {t + 1}$")
for ax, j in zip(axes[1][:-1], range(len(traj["t"]))):
    xt = traj["x_t"][j]
    ax.scatter(xt[:, 0], xt[:, 1], s=1, alpha=0.4, color="C1", rasterized=True)
    ax.set_title(f"$p_\\theta$: $t = {traj['t'][j] + 1}$")
axes[1][-1].scatter(x_gen[:, 0], x_gen[:, 1], s=1, alpha=0.4, color="C2", rasterized=True)
axes[1][-1].set_title("$p_\\theta$: $x_0$")
for ax in axes.flat:
    ax.set_xlim(-3, 3), ax.set_ylim(-3, 3), ax.set_aspect("equal")
axes[0][0].set_ylabel("前向\n$x_2$")
axes[1][0].set_ylabel("逆向\n$x_2$")
for ax in axes[1]:
    ax.set_xlabel("$x_1$")
fig.suptitle(f"瑞士卷：前向过程（上）与学到的逆向过程（下），$T = {num_timesteps}$")
art.save_figure(fig, "toy_2d")

# %% [markdown]
# The training loss (for reference; not a thesis figure):

# %%
loss = np.asarray(train_log["loss"])
k = max(1, len(loss) // 50)
fig, ax = plt.subplots(figsize=(4, 2.5))
ax.plot(loss, alpha=0.3, label="per step")
ax.plot(np.arange(k - 1, len(loss)), np.convolve(loss, np.ones(k) / k, "valid"), label=f"mean of {k}")
ax.set_xlabel("training step"), ax.set_ylabel("L_simple (per coordinate)"), ax.legend()
plt.show()

# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · A diffusion model in two dimensions
#
# The gentlest entry to the thesis: the same forward process (eqs. 2–3), the same objective L_simple
# (eq. 14) and the same ancestral sampler (eq. 15, algorithm 2) as for images, on points of a swiss roll.
# The forward process turns the data into an isotropic Gaussian; the learned reverse process turns
# Gaussian noise back into the roll. ε_θ is a small MLP on (x_t, e(t)), with e the sinusoidal embedding of
# eq. (16). Everything here comes from `diffusion/`; this notebook only plots.

# %% tags=["parameters"]
profile = "quick"
out_dir = None
cache_dir = None
seed = 0
threads = 1  # torch CPU threads (0: torch's default); one is fastest for these small tensors
toy_name = "swiss_roll"
n_points = 8000
num_timesteps = 1000
train_steps = 3000
batch_size = 256
hidden = 128
n_samples = 2000

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
                       dataset=f"toy 2-D: {toy_name}",
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
record = np.linspace(0, num_timesteps - 1, len(show_t)).round().astype(int)[1:]
x_gen, traj = diffusion.p_sample_loop(model, (n_samples, 2), generator=gen, clip_denoised=False,
                                      trajectory_steps=record)
print("recorded timesteps (thesis numbering):", [t + 1 for t in traj["t"]])

# %%
cols = len(show_t)
fig, axes = plt.subplots(2, cols, figsize=(1.6 * cols, 3.5), sharex=True, sharey=True)
for ax, t, xt in zip(axes[0], show_t, forward):
    ax.scatter(xt[:, 0], xt[:, 1], s=1, alpha=0.4, rasterized=True)
    ax.set_title(f"q: t = {t + 1}")
for ax, j in zip(axes[1][:-1], range(len(traj["t"]))):
    xt = traj["x_t"][j]
    ax.scatter(xt[:, 0], xt[:, 1], s=1, alpha=0.4, color="C1", rasterized=True)
    ax.set_title(f"p_θ: t = {traj['t'][j] + 1}")
axes[1][-1].scatter(x_gen[:, 0], x_gen[:, 1], s=1, alpha=0.4, color="C2", rasterized=True)
axes[1][-1].set_title("p_θ: x_0")
for ax in axes.flat:
    ax.set_xlim(-3, 3), ax.set_ylim(-3, 3), ax.set_aspect("equal")
axes[0][0].set_ylabel("forward\nx₂ (a.u.)")
axes[1][0].set_ylabel("reverse\nx₂ (a.u.)")
for ax in axes[1]:
    ax.set_xlabel("x₁ (a.u.)")
fig.suptitle(f"Swiss roll: forward (top) and learned reverse (bottom) trajectories, T = {num_timesteps}")
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

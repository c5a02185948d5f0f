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
# # 04 · Training (section 4.2)
#
# Trains this profile's two models through the package (`diffusion.train.Trainer`: L_simple of eq. 14,
# Adam with warm-up, gradient clipping, EMA of the weights, label dropout for guidance):
# a class-conditional model (used by notebooks 05 and 06) and an unconditional one. Both runs are cached
# by a hash of their configuration, data and the training code, so rerunning this notebook with nothing
# changed only re-plots. Shown: the loss curve (figure 1), samples at several training stages (§4.2.2),
# unconditional samples (figure 2b) and the effect of the EMA.

# %% tags=["parameters"]
profile = "quick"
out_dir = None
cache_dir = None
seed = 0
threads = 0  # torch CPU threads (0: torch's default)
cond = None
uncond = None
n_samples = 64
sampler = "ddim"
sample_steps = 100
stage_samples = 16

# %%
import platform

import matplotlib.pyplot as plt
import numpy as np
import torch

from diffusion import experiments, report

torch.manual_seed(seed)
if threads:
    torch.set_num_threads(threads)
cond, uncond = experiments.model_spec(profile, "cond", cond), experiments.model_spec(profile, "uncond", uncond)
art = report.Artefacts(profile, "04_training", out_dir, cache_root=cache_dir, seed=seed)

# %% [markdown]
# ## Train (or fetch) the two models

# %%
models = {}
for which, spec in (("cond", cond), ("uncond", uncond)):
    tm = experiments.trained_model(art, spec, which)
    models[which] = tm
    s = tm.summary
    print(f"{which:6s}: {tm.data.label}, {s['step']:,} steps in {s['elapsed_s'] / 60:.1f} min "
          f"({'cached' if tm.entry.hit else 'trained now'}), final EMA loss {s['ema_loss']:.4f}, "
          f"{s['params']:,} parameters")
label = {"cond": "conditional", "uncond": "unconditional"}
prov = {w: dict(dataset=models[w].data.label, config=spec) for w, spec in (("cond", cond), ("uncond", uncond))}

# %% [markdown]
# ## Figure 1: the training loss
# The raw curve is the mean L_simple over each logging interval; the smoothed one is the trainer's
# exponential moving average of the per-step loss.

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.0))
for i, (which, tm) in enumerate(models.items()):
    steps_ = np.array([r["step"] for r in tm.metrics])
    ax.plot(steps_, [r["loss"] for r in tm.metrics], color=f"C{i}", alpha=0.35, lw=0.8)
    ax.plot(steps_, [r["ema_loss"] for r in tm.metrics], color=f"C{i}",
            label=f"{label[which]} ({tm.data.label}), smoothed")
ax.set_yscale("log")
ax.set_xlabel("training step"), ax.set_ylabel("L_simple (MSE per dimension)")
ax.legend()
ax.set_title(f"Training loss, profile {profile} (faint: raw)")
art.save_figure(fig, "loss_curve", dataset=" / ".join(tm.data.label for tm in models.values()),
                config={w: prov[w]["config"] for w in models})

# %% [markdown]
# ## §4.2.2: samples at several training stages
# Fixed noise and the EMA weights at each stage (the spec's `stage.sampler`, written by the trainer at
# `train.sample_every`);
# conditional rows cycle through the classes.

# %%
stages = [(w, step, imgs) for w, tm in models.items() for step, imgs in tm.stage_samples()]
if stages:
    ncol = min(stage_samples, min(len(imgs) for _, _, imgs in stages))
    fig, ax = plt.subplots(figsize=(0.5 * ncol + 2.0, 0.5 * len(stages) + 0.5))
    report.show_images(ax, np.concatenate([imgs[:ncol] for _, _, imgs in stages]), nrow=ncol,
                       row_labels=[f"{label[w]}, step {step:,}" for w, step, _ in stages])
    ax.set_title(f"EMA samples during training ({models['cond'].data.label}, {models['cond'].stage_sampler} "
                 "sampler)")
    art.save_figure(fig, "training_stages", dataset=" / ".join(tm.data.label for tm in models.values()))
else:
    print("no stage samples: the configs set no train.sample_every")

# %% [markdown]
# ## Figure 2(b): unconditional samples (EMA weights)

# %%
tm = models["uncond"]
out = experiments.generate(art, tm, n_samples, sampler=sampler, steps=min(sample_steps, tm.diffusion.num_timesteps),
                           seed=seed)
fig, ax = plt.subplots(figsize=(5, 5))
nrow = int(np.ceil(np.sqrt(n_samples)))
report.show_images(ax, out["images"], nrow=nrow)
ax.set_title(f"{tm.data.label}, unconditional, {sampler} {min(sample_steps, tm.diffusion.num_timesteps)} steps")
art.save_figure(fig, "uncond_samples", **prov["uncond"])

# %% [markdown]
# ## EMA against raw weights
# The same initial noise through the EMA weights and the raw (last optimiser step) weights.

# %%
n_cmp = min(n_samples, 32)
steps_cmp = min(sample_steps, tm.diffusion.num_timesteps)
fig, axes = plt.subplots(1, 2, figsize=(7, 3.8))
for ax, use_ema in zip(axes, (True, False)):
    o = experiments.generate(art, tm, n_cmp, sampler=sampler, steps=steps_cmp, seed=seed + 1, use_ema=use_ema,
                             tag="ema_vs_raw")
    report.show_images(ax, o["images"], nrow=int(np.ceil(np.sqrt(n_cmp))))
    warm = " with warm-up" if tm.cfg.train.ema_warmup else ""
    ax.set_title(f"EMA weights (decay {tm.cfg.train.ema_decay}{warm})" if use_ema else "raw weights")
art.save_figure(fig, "ema_vs_raw", **prov["uncond"])

# %% [markdown]
# ## Table 3 (environment), training summary and the numbers the text quotes

# %%
env_rows = [["device", report.device_name()], ["CPU threads used by torch", str(torch.get_num_threads())],
            ["operating system", f"{platform.system()} {platform.release()}"],
            ["Python", platform.python_version()], ["PyTorch", torch.__version__],
            ["CUDA (torch build)", str(torch.version.cuda or "none")], ["NumPy", np.__version__],
            ["mixed precision", "bf16 autocast" if torch.cuda.is_available() else "none (CPU, float32)"],
            ["profile", profile]]
art.save_table("environment", report.booktabs_tabular(["item", "value"], env_rows, align="ll"))

rows = []
for which, tm in models.items():
    s = tm.summary
    rows.append([label[which], tm.data.label, f"{s['step']:,}", str(tm.cfg.train.batch_size),
                 f"{s['elapsed_s'] / 60:.1f}", f"{s['ema_loss']:.4f}", f"{s['params'] / 1e6:.2f}"])
art.save_table("training_summary", report.booktabs_tabular(
    ["model", "dataset", "steps", "batch", "wall time (min)", "final loss", "params (M)"], rows, align="llrrrrr"))

art.number("ProfileName", profile)
art.number("DeviceName", report.device_name())
art.number("TorchVersion", torch.__version__)
art.number("SmokeMarker", r"\textbf{[SMOKE TEST]}" if profile == "smoke" else "", escape=False)
for which, prefix in (("cond", "Cond"), ("uncond", "Uncond")):
    tm, s = models[which], models[which].summary
    art.number(f"{prefix}DatasetLabel", tm.data.label, **prov[which])
    art.number(f"{prefix}TrainSteps", f"{s['step']:,}", **prov[which])
    art.number(f"{prefix}TrainMinutes", s["elapsed_s"] / 60, "{:.1f}", **prov[which])
    art.number(f"{prefix}Params", s["params"] / 1e6, "{:.2f}", **prov[which])
    art.number(f"{prefix}FinalLoss", s["ema_loss"], "{:.4f}", **prov[which])
    art.number(f"{prefix}BatchSize", tm.cfg.train.batch_size, **prov[which])

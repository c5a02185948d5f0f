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
# # 05 · Classifier-free guidance (sections 3.2 and 4.3.2)
#
# The conditional model of notebook 04 was trained with label dropout (the null token ∅ with probability
# p_uncond), so one network gives both ε_θ(x_t, t, y) and ε_θ(x_t, t, ∅). Guidance (eq. 18) samples with
# ε̃ = ε_θ(x_t, t, ∅) + w (ε_θ(x_t, t, y) − ε_θ(x_t, t, ∅)): w = 0 is unconditional, w = 1 plain conditional,
# w > 1 extrapolates toward the class. Measured with the offline proxy classifier (`diffusion.metrics`):
# conditional accuracy (does a sample asked to be class c look like c?), the classifier FD to the held-out
# split (not FID: a different feature space) and the within-class diversity.

# %% tags=["parameters"]
profile = "quick"
out_dir = None
cache_dir = None
seed = 0
threads = 0
cond = None
guidance_scales = [0.0, 1.0, 2.0, 3.0, 5.0]
default_scale = 3.0
samples_per_class = 10
grid_per_class = 10
sampler = "ddim"
sample_steps = 25
classifier_steps = 600

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from diffusion import experiments, report
from diffusion.metrics.classifier import class_diversity, classifier_fd, conditional_accuracy

torch.manual_seed(seed)
if threads:
    torch.set_num_threads(threads)
cond = experiments.model_spec(profile, "cond", cond)
art = report.Artefacts(profile, "05_guidance", out_dir, cache_root=cache_dir, seed=seed, config=cond)
tm = experiments.trained_model(art, cond, "cond")
art.dataset = tm.data.label
K = tm.null_class
steps = min(sample_steps, tm.diffusion.num_timesteps)
print(f"model: {tm.data.label}, {K} classes, trained {tm.summary['step']:,} steps; sampler {sampler}, {steps} steps")

# %% [markdown]
# ## The proxy classifier
# Trained on the same (pooled) training images, its accuracy on the held-out split bounds how much the
# proxy numbers can be trusted.

# %%
clf, test = experiments.proxy_classifier(cond, classifier_steps)
print(f"classifier held-out accuracy: {100 * clf.accuracy:.1f}% on {test.label} (test split, {len(test):,} images)")
art.number("ClassifierAccuracy", 100 * clf.accuracy, "{:.1f}")

# %% [markdown]
# ## Sweep of the guidance scale w
# The same labels and seed for every w.

# %%
labels = np.repeat(np.arange(K), samples_per_class)
rows, results = [], {}
for w in guidance_scales:
    out = experiments.generate(art, tm, len(labels), sampler=sampler, steps=steps, guidance_scale=float(w),
                               y=labels, seed=seed, tag="guidance")
    x = torch.from_numpy(out["images"])
    acc = conditional_accuracy(clf, x, labels)["accuracy"]
    cfd = classifier_fd(clf, x, test.images)["cfd"]
    div = class_diversity(clf, x, labels)["diversity"]
    results[w] = dict(acc=100 * acc, cfd=cfd, div=div, images=out["images"])
    rows.append([f"{w:g}", f"{100 * acc:.1f}", f"{cfd:.2f}", f"{div:.2f}"])
    print(f"w = {w:4.1f}: accuracy {100 * acc:5.1f}%, classifier FD {cfd:8.2f}, diversity {div:.2f}")
art.save_table("guidance", report.booktabs_tabular(
    ["w", "cond. accuracy (%)", "classifier FD", "diversity"], rows, align="rrrr"))

ws = np.array(guidance_scales, dtype=float)
fig, axes = plt.subplots(1, 3, figsize=(8.5, 2.6))
for ax, key, name in zip(axes, ("acc", "cfd", "div"),
                         ("conditional accuracy (%)", "classifier FD (lower is better)", "within-class diversity")):
    ax.plot(ws, [results[w][key] for w in guidance_scales], "o-")
    ax.set_xlabel("guidance scale w"), ax.set_ylabel(name)
axes[0].axhline(100 * clf.accuracy, color="k", ls=":", lw=0.8, label="classifier on real test images")
axes[0].legend(loc="lower right")
fig.suptitle(f"Guidance trade-off, {tm.data.label}, {len(labels)} samples per w ({sampler}, {steps} steps)")
art.save_figure(fig, "guidance_sweep")

for w, name in ((0.0, "CondAccWZero"), (1.0, "CondAccWOne"), (3.0, "CondAccWThree")):
    if w in results:
        art.number(name, results[w]["acc"], "{:.1f}")
    else:
        art.number(name, f"(w = {w:g} not in this profile's sweep)")
for w, name in ((1.0, "CfdWOne"), (3.0, "CfdWThree")):
    art.number(name, results[w]["cfd"], "{:.2f}") if w in results else art.number(name, "n/a")
best = min(guidance_scales, key=lambda w: results[w]["cfd"])
art.number("BestGuidanceScale", best, "{:g}")
print(f"lowest classifier FD at w = {best:g}")

# %% [markdown]
# ## Figure 3: class × sample grid at the default w

# %%
grid_labels = np.repeat(np.arange(K), grid_per_class)
out = experiments.generate(art, tm, len(grid_labels), sampler=sampler, steps=steps,
                           guidance_scale=float(default_scale), y=grid_labels, seed=seed + 1, tag="guidance")
fig, ax = plt.subplots(figsize=(0.45 * grid_per_class + 1.2, 0.45 * K + 0.5))
report.show_images(ax, out["images"], nrow=grid_per_class, row_labels=tm.data.class_names,
                   title=f"w = {default_scale:g}, {sampler} {steps} steps")
art.save_figure(fig, "cond_grid")

# %% [markdown]
# ## One class at several w (same noise)

# %%
cls, n_each = 0, min(8, max(2, samples_per_class))
imgs = []
for w in guidance_scales:
    o = experiments.generate(art, tm, n_each, sampler=sampler, steps=steps, guidance_scale=float(w),
                             y=np.full(n_each, cls), seed=seed + 2, tag="guidance")
    imgs.append(o["images"])
fig, ax = plt.subplots(figsize=(0.5 * n_each + 1.0, 0.5 * len(guidance_scales) + 0.5))
report.show_images(ax, np.concatenate(imgs), nrow=n_each, row_labels=[f"w = {w:g}" for w in guidance_scales],
                   title=f"class '{tm.data.class_names[cls]}'")
art.save_figure(fig, "guidance_samples")

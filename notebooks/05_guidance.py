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
# # 05 · Classifier-free guidance (sections 3.2 and 4.3.2)
#
# **Produces:** `tab:guidance` (不同引导尺度下的指标), `fig:guidance-sweep` (引导尺度扫描), `fig:cond-grid` (类别条件生成样本),
# `fig:guidance-samples` (同一类别在不同引导尺度下的样本).
# **Runs:** about 60 s with profile quick on AMD EPYC (2 cores); on a GPU: not measured.
# **Cache:** reuses 04_training's trained U-Nets (trained here if 04 has not run yet), the proxy classifier,
# generated samples from `cache/` when the inputs are unchanged (computed and stored otherwise).
#
# The conditional model of notebook 04 was trained with label dropout (the null token ∅ with probability
# p_uncond), so one network gives both ε_θ(x_t, t, y) and ε_θ(x_t, t, ∅). Guidance (eq. 18) samples with
# ε̃ = ε_θ(x_t, t, ∅) + w (ε_θ(x_t, t, y) − ε_θ(x_t, t, ∅)): w = 0 is unconditional, w = 1 plain conditional,
# w > 1 extrapolates toward the class. Measured with the offline proxy classifier (`diffusion.metrics`):
# conditional accuracy (does a sample asked to be class c look like c?), the classifier FD to the held-out
# split (not FID: a different feature space) and the within-class diversity.

# %% tags=["parameters"]
profile = "quick"  # configs/profiles/<profile>.yaml (`make figures` passes its values; these defaults are quick's)
out_dir = None  # artefacts folder (None: build/interactive/<profile>; `make figures` passes a staging folder)
cache_dir = None  # cache of expensive results (None: $DDPM_CACHE_DIR, else <repo>/cache)
seed = 0  # seed of every random draw
threads = 0  # torch CPU threads (0: torch's default, all cores)
cond = None  # spec of the conditional model (None: `common.cond` of the profile)
guidance_scales = [0.0, 1.0, 2.0, 3.0, 5.0]  # guidance scales w of the sweep
default_scale = 3.0  # w of the class grid
samples_per_class = 10  # samples per class and w for the metrics
grid_per_class = 10  # samples per class in the grid
sampler = "ancestral"  # sampler: ancestral | ddim | dpmpp2m
sample_steps = 50  # sampling steps (at most T)
classifier_steps = 600  # optimiser steps of the proxy classifier

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from diffusion import experiments, report
from diffusion.metrics.intervals import DEFAULT_RESAMPLES as BOOTSTRAP_RESAMPLES
from diffusion.metrics.intervals import (FrechetToReference, bootstrap_ci, diversity_ci, format_ci,
                                        independent_difference_ci, jackknife_difference_ci, proxy_metrics_ci)
from diffusion.metrics.classifier import classifier_features, classifier_predict

torch.manual_seed(seed)
if threads:
    torch.set_num_threads(threads)
cond = experiments.model_spec(profile, "cond", cond)
art = report.Artefacts(profile, "05_guidance", out_dir, cache_root=cache_dir, seed=seed, config=cond)
tm = experiments.trained_model(art, cond, "cond")
art.dataset = report.dataset_label_zh(tm.data.label)
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
# The same labels and seed for every w, so every row has the same n. Each proxy number carries a 95 %
# interval over the samples (`diffusion.metrics.intervals`: jackknife for FD, KID and the within-class
# diversity, percentile bootstrap for the accuracy); KID
# (`diffusion.metrics.kid`) beside the classifier FD is unbiased in n.

# %%
labels = np.repeat(np.arange(K), samples_per_class)
ref_feats = classifier_features(clf, test.images)  # held-out reference of classifier FD and KID
rows, results = [], {}
for w in guidance_scales:
    out = experiments.generate(art, tm, len(labels), sampler=sampler, steps=steps, guidance_scale=float(w),
                               y=labels, seed=seed, tag="guidance")
    x = torch.from_numpy(out["images"])
    feats = classifier_features(clf, x)
    correct = classifier_predict(clf, x).numpy() == labels
    ci = proxy_metrics_ci(feats, ref_feats, correct, seed=seed)
    ci["div"] = diversity_ci(feats, labels)
    div = ci["div"]["estimate"]
    results[w] = dict(acc=ci["acc"]["estimate"], cfd=ci["cfd"]["estimate"], kid=ci["kid"]["estimate"], div=div,
                      ci=ci, images=out["images"], correct=correct, feats=feats)
    rows.append([f"{w:g}", str(ci["n"])] + [report.escape_latex(format_ci(ci[k], "{:.1f}" if k == "acc" else None))
                                            for k in ("acc", "cfd", "kid", "div")])
    print(f"w = {w:4.1f}: n = {ci['n']}, accuracy {format_ci(ci['acc'])}%, classifier FD {format_ci(ci['cfd'])}, "
          f"KID {format_ci(ci['kid'])}, diversity {format_ci(ci['div'])}")
art.save_table("guidance", report.booktabs_tabular(
    ["引导尺度 $w$", "$n$", "条件准确率（\\%）", "分类器 FD", "KID", "类内多样性"], rows, align="rrrrrr",
    escape=False),  # intervals: 95 %, stated in the thesis caption
    config={"n": len(labels), "bootstrap_resamples": BOOTSTRAP_RESAMPLES})

ws = np.array(guidance_scales, dtype=float)
fig, axes = plt.subplots(1, 3, figsize=(report.FULL_WIDTH_IN, 2.2))
for ax, key, name in zip(axes, ("acc", "cfd", "div"),
                         ("条件准确率（%）", "分类器 FD（越低越好）", "类内多样性")):
    ci = [results[w]["ci"][key] for w in guidance_scales]  # 95 % intervals (diffusion.metrics.intervals)
    ax.errorbar(ws, [c["estimate"] for c in ci], fmt="o-", capsize=2,
                yerr=np.clip([[c["estimate"] - c["low"] for c in ci], [c["high"] - c["estimate"] for c in ci]], 0, None))
    ax.set_xlabel("引导尺度 $w$"), ax.set_ylabel(name)
axes[0].axhline(100 * clf.accuracy, color="k", ls=":", lw=0.8)  # labelled at its left end: a legend covered points
axes[0].text(ws.min(), 100 * clf.accuracy + 1, "分类器在真实测试图像上", ha="left", va="bottom", fontsize="x-small")
axes[0].set_ylim(top=max(100 * clf.accuracy + 9, axes[0].get_ylim()[1]))  # room for that label above the line
art.save_figure(fig, "guidance_sweep", dataset=report.dataset_label_zh(tm.data.label))

for w, name in ((0.0, "CondAccWZero"), (1.0, "CondAccWOne"), (3.0, "CondAccWThree")):
    if w in results:
        art.number(name, results[w]["acc"], "{:.1f}")
    else:
        art.number(name, f"(w = {w:g} not in this profile's sweep)")
for w, name in ((1.0, "CfdWOne"), (3.0, "CfdWThree")):
    art.number(name, results[w]["cfd"], "{:.2f}") if w in results else art.number(name, "n/a")
for w, word in ((0.0, "WZero"), (1.0, "WOne"), (3.0, "WThree")):  # "estimate [low, high]", n = GuidanceSamples
    for key, name in (("acc", "CondAcc"), ("cfd", "Cfd"), ("kid", "Kid")):
        art.number(f"{name}{word}CI", format_ci(results[w]["ci"][key]) if w in results else "n/a")
# Differences the text reads as effects, each with its 95 % interval. Accuracy: every w uses the same labels
# and initial noise, so the per-sample differences are paired (bootstrap); classifier FD and diversity: jackknife
# of each set, combined as for independent sets.
fd_ref = FrechetToReference.from_features(ref_feats)
for (wa, wb), word in (((1.0, 0.0), "OneZero"), ((3.0, 1.0), "ThreeOne")):
    if wa in results and wb in results:
        acc_d = bootstrap_ci(100.0 * (results[wa]["correct"].astype(float) - results[wb]["correct"]), np.mean, seed=seed)
        cfd_d = jackknife_difference_ci(results[wa]["feats"], results[wb]["feats"], fd_ref)
        div_d = independent_difference_ci(results[wa]["ci"]["div"], results[wb]["ci"]["div"])
        for name, d in (("AccDiff", acc_d), ("CfdDiff", cfd_d), ("DivDiff", div_d)):  # worded by the thesis (\Finding…)
            art.number(f"{name}{word}", format_ci(d))
    else:
        for name in ("AccDiff", "CfdDiff", "DivDiff"):
            art.number(f"{name}{word}", f"n/a (w = {wa:g} or {wb:g} not in this profile's sweep)")
best = min(guidance_scales, key=lambda w: results[w]["cfd"])
art.number("BestGuidanceScale", best, "{:g}")
art.number("DefaultGuidanceScale", default_scale, "{:g}")
art.number("GuidanceSampler", report.sampler_name_zh(sampler))
art.number("GuidanceSteps", steps, "{:d}")
art.number("GuidanceSamples", len(labels), "{:d}")
print(f"lowest classifier FD at w = {best:g}")

# %% [markdown]
# ## Class × sample grid at the default w (`fig:cond-grid`)

# %%
grid_labels = np.repeat(np.arange(K), grid_per_class)
out = experiments.generate(art, tm, len(grid_labels), sampler=sampler, steps=steps,
                           guidance_scale=float(default_scale), y=grid_labels, seed=seed + 1, tag="guidance")
cell = min(0.4, (report.FULL_WIDTH_IN - 0.8) / grid_per_class)  # inches per image; 0.8 in for class names
fig, ax = plt.subplots(figsize=(cell * grid_per_class + 0.8, cell * K + 0.35))
report.show_images(ax, out["images"], nrow=grid_per_class,
                   row_labels=[report.class_name_zh(c) for c in tm.data.class_names],
                   title=f"$w={default_scale:g}$，{report.sampler_name_zh(sampler)} {steps} 步")
art.save_figure(fig, "cond_grid", dataset=report.dataset_label_zh(tm.data.label))

# %% [markdown]
# ## One class at several w (same noise)

# %%
cls, n_each = 0, min(8, max(2, samples_per_class))
imgs = []
for w in guidance_scales:
    o = experiments.generate(art, tm, n_each, sampler=sampler, steps=steps, guidance_scale=float(w),
                             y=np.full(n_each, cls), seed=seed + 2, tag="guidance")
    imgs.append(o["images"])
fig, ax = plt.subplots(figsize=(0.45 * n_each + 0.7, 0.45 * len(guidance_scales) + 0.35))
report.show_images(ax, np.concatenate(imgs), nrow=n_each, row_labels=[f"$w={w:g}$" for w in guidance_scales],
                   title=f"类别“{report.class_name_zh(tm.data.class_names[cls])}”")
art.save_figure(fig, "guidance_samples", dataset=report.dataset_label_zh(tm.data.label))

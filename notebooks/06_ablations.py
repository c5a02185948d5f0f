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
# # 06 · Ablations (section 4.4) and likelihood
#
# **Produces:** `tab:sampling-steps` (少步数采样设置的质量与速度), `tab:sampling-steps-long` (与完整祖先采样的比较),
# `tab:sample-colour` (样本的偏色), `fig:sampling-steps` (不同采样步数下的样本), `fig:eps-error` (逐时间步的噪声预测误差),
# `tab:width-depth` (网络宽度与深度的消融), `fig:width-depth-samples` (宽度与深度变体的样本), `tab:uncond-quality` (无条件模型的 FD 与
# KID), `fig:memorisation` (样本与留出图像到最近训练图像的距离), `fig:closest-pairs` (距离最近的样本与训练图像), `fig:nearest-neighbours`
# (生成样本与训练集最近邻), `tab:bpd` (逐维比特数), `tab:metrics-summary` (评价指标汇总).
# **Runs:** about 6 min with profile quick on AMD EPYC (2 cores); on a GPU: not measured.
# **Cache:** reuses 04_training's trained U-Nets (trained here if 04 has not run yet), the proxy classifier,
# generated samples, intermediate results from `cache/` when the inputs are unchanged (computed and stored
# otherwise).
#
# 1. **Sampling steps** (§4.4.1, `tab:sampling-steps`): ancestral sampling over respaced schedules, DDIM (η = 0) and
#    DPM-Solver++(2M) with 1000/250/100/50/… steps — quality (classifier FD, KID, conditional accuracy, each with a
#    95 % interval) against time per image, compared at equal n; the colour casts of the samples
#    (`sample_colour`) beside held-out images; the network's ε-error by timestep and its per-image colour part.
# 2. **Width and depth** (§4.4.2): variants of the conditional network trained with the same steps and batch,
#    described from their configs, with 95 % intervals of each variant's difference from the base, and their
#    samples side by side (`width_depth_samples`).
# 3. **The unconditional model and memorisation** (artefacts `uncond_quality`, `memorisation`, `closest_pairs`):
#    FD and KID of the unconditional samples in a named feature space, beside training images at the same n;
#    for both models, each sample's distance to its nearest training image against the same distance for
#    held-out images (equal n), and the closest pairs.
# 4. **Bits/dim** (§2.4.2): the full bound of eq. (7) on held-out images for σ_t² = β_t (fixed-large) and
#    σ_t² = β̃_t (fixed-small), with its L_T and L_0 parts; fixed-large with L_0's σ_1² = β̃_2 (DDPM's code)
#    and σ_1² = β_1 (the paper's text); of the unconditional model, or of the conditional one with the null
#    label ∅ (`bpd_model`).
# 5. **FID / IS** where the official Inception weights exist, beside the proxy numbers.

# %% tags=["parameters"]
profile = "quick"  # configs/profiles/<profile>.yaml (`make figures` passes its values; these defaults are quick's)
out_dir = None  # artefacts folder (None: build/interactive/<profile>; `make figures` passes a staging folder)
cache_dir = None  # cache of expensive results (None: $DDPM_CACHE_DIR, else <repo>/cache)
seed = 0  # seed of every random draw
threads = 0  # torch CPU threads (0: torch's default, all cores)
cond = None  # spec of the conditional model (None: `common.cond` of the profile)
uncond = None  # spec of the unconditional model (None: `common.uncond` of the profile)
# variants: width/depth variants: `--set` overrides of `cond` (section 4.4.2)
variants = {"base": {"model.ch_mult": [1, 2, 2], "model.num_res_blocks": 2},
            "narrow": {"model.ch_mult": [1, 1, 1], "model.num_res_blocks": 2},
            "shallow": {"model.ch_mult": [1, 2, 2], "model.num_res_blocks": 1}}
classifier_steps = 600  # optimiser steps of the proxy classifier
step_counts = [1000, 250, 100, 50, 20, 10]  # sampling step counts compared (capped at T)
quality_max_steps = 100  # DDIM and DPM-Solver++ run only at step counts up to this (ancestral at all)
samples_per_setting = 40  # images per setting of at most quality_max_steps network calls per image
long_row_samples = None  # images of the costlier rows, compared in a block of their own (None: samples_per_setting)
eps_error_images = 512  # held-out images for the ε-prediction error by timestep
bootstrap_resamples = 1000  # resamples of the 95 % bootstrap intervals (diffusion.metrics.intervals)
variant_steps = 300  # training steps of each variant
variant_batch = 32  # batch size of each variant
variant_samples = 64  # samples per variant for the classifier FD
bpd_images = 4  # held-out images for bits/dim (the full bound: T network calls each, shared by the variances)
bpd_model = "uncond"  # whose bound: "uncond" (the unconditional model) or "cond" (the conditional one, label ∅)
memo_samples = 64  # unconditional samples for FD/KID and the memorisation check (held-out images: the same n)
memo_sampler = "ddim"  # their sampler
memo_steps = 50  # and its steps (at most T)
memo_closest = 16  # closest sample–training pairs shown per model
nn_samples = 8  # unconditional samples shown beside their five nearest training images

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

from diffusion import experiments, report, timing
from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.likelihood import bpd_for_variances
from diffusion.metrics.intervals import (FrechetToReference, bootstrap_ci, format_ci, jackknife_difference_ci,
                                         proxy_metrics_ci)
from diffusion.metrics.classifier import classifier_features, classifier_predict
from diffusion.metrics.colour import colour_difference, colour_statistics
from diffusion.metrics.kid import KidToReference
from diffusion.metrics.memorisation import memorisation_check
from diffusion.metrics.neighbours import nearest_neighbours
from diffusion.report.cache import PROGRESS

torch.manual_seed(seed)
if threads:
    torch.set_num_threads(threads)
cond, uncond = experiments.model_spec(profile, "cond", cond), experiments.model_spec(profile, "uncond", uncond)
art = report.Artefacts(profile, "06_ablations", out_dir, cache_root=cache_dir, seed=seed, config=cond)
tm = experiments.trained_model(art, cond, "cond")
art.dataset = report.dataset_label_zh(tm.data.label)
T, K = tm.diffusion.num_timesteps, tm.null_class
clf, test = experiments.proxy_classifier(cond, classifier_steps)
print(f"{tm.data.label}: T = {T}; proxy classifier held-out accuracy {100 * clf.accuracy:.1f}%")
ref_feats = classifier_features(clf, test.images)  # held-out reference of classifier FD and KID (held fixed)
cfd_of, kid_of = FrechetToReference.from_features(ref_feats), KidToReference(ref_feats)


def scored(images, labels=None) -> dict:
    """Classifier FD, KID and (given labels) conditional accuracy of a set of samples, with 95 %
    intervals at its own n, plus the features for comparisons between sets."""
    feats = classifier_features(clf, torch.from_numpy(images))
    correct = None if labels is None else (classifier_predict(clf, torch.from_numpy(images)).numpy() == labels)
    return {"feats": feats, "correct": correct, **proxy_metrics_ci(feats, ref_feats, correct,
                                                                   num_resamples=bootstrap_resamples, seed=seed)}


def difference(a: dict, b: dict, metric: str = "cfd") -> dict:
    """95 % jackknife interval of metric(a) − metric(b) for two independent sets of samples (``"acc"``: the
    conditional accuracy in percentage points, whose jackknife interval is the textbook mean ± z·s/√n)."""
    if metric == "cfd":
        return jackknife_difference_ci(a["feats"], b["feats"], cfd_of)
    if metric == "acc":
        return jackknife_difference_ci(100.0 * a["correct"], 100.0 * b["correct"], np.mean)
    return jackknife_difference_ci(np.arange(len(a["feats"])), np.arange(len(b["feats"])), kid_of.on_indices(a["feats"]),
                                   statistic_b=kid_of.on_indices(b["feats"]))



# %% [markdown]
# ## 1. Sampling steps (`tab:sampling-steps`, `fig:sampling-steps`)
# Conditional samples (plain conditional model, no guidance) with labels cycling through the classes.
# The classifier FD is biased upwards at small n, so only rows with the same n are compared: every
# setting of at most `quality_max_steps` network calls per image is drawn `samples_per_setting` times; the
# costlier ancestral rows (250, 1000 steps) `long_row_samples` times, and they are compared only in a second
# table (`sampling_steps_long`) beside the settings compared with them, each with its first `long_row_samples`
# samples (None: every row at `samples_per_setting`). Each proxy number carries a 95 % interval over the samples (jackknife
# for FD and KID, percentile bootstrap for the accuracy) (`diffusion.metrics.intervals`); KID
# (`diffusion.metrics.kid`) is unbiased in n. DDIM and DPM-Solver++ run only up to `quality_max_steps` steps
# (their 1000-step cost would buy little: both follow the same deterministic trajectory ever more exactly).
# The time per image is S network calls times the time of one call per image, measured here apart from the
# samples (`diffusion.timing.seconds_per_call`: after a warm-up, three rounds that each time a 10-step run of
# every sampler on a batch of the size the samples are drawn in (the profile's `sampling.batch`), interleaved so
# that the machine's drifting speed falls on all samplers alike;
# each sampler's best run): a cached sampling run's wall time holds the network's compilation and whatever else
# the machine ran.

# %%
steps_list = sorted({min(int(s), T) for s in step_counts}, reverse=True)
SAMPLER_TITLES = {"ancestral": "祖先采样（跳步）", "ddim": "DDIM（η = 0）", "dpmpp2m": "DPM-Solver++(2M)"}
n_steps = int(samples_per_setting)
n_long = n_steps if long_row_samples is None else min(int(long_row_samples), n_steps)
y_steps = np.arange(n_steps) % K
res, sub = {}, {}  # every setting at its own n; every setting at n_long (its first n_long samples)
for smp in SAMPLER_TITLES:
    for S in steps_list:
        if smp != "ancestral" and S > quality_max_steps:
            continue
        n = n_steps if S <= quality_max_steps else n_long
        out = experiments.generate(art, tm, n, sampler=smp, steps=S, y=y_steps[:n], seed=seed, tag="steps")
        res[smp, S] = dict(images=out["images"], **scored(out["images"], y_steps[:n]))
        sub[smp, S] = res[smp, S] if n == n_long else dict(
            images=out["images"][:n_long], **scored(out["images"][:n_long], y_steps[:n_long]))
        r = res[smp, S]
        print(f"{smp:9s} {S:5d} steps, n = {n}: classifier FD {format_ci(r['cfd'])}, KID {format_ci(r['kid'])}, "
              f"accuracy {format_ci(r['acc'])}%")
# seconds per image: S calls times the time of one call, timed now (the samples above may come from the cache)
call_seconds = timing.seconds_per_call(tm, list(SAMPLER_TITLES))
for (smp, S), r in [*res.items(), *sub.items()]:
    r["spi"] = S * call_seconds[smp]
print("seconds per image per network call: " + ", ".join(f"{smp} {t * 1e3:.2f} ms" for smp, t in call_seconds.items()))


def step_row(smp: str, S: int, r: dict) -> list[str]:
    """A row of the table: S steps are S network calls per image for every sampler (``dpmpp2m_timesteps``
    picks exactly S distinct indices)."""
    return [SAMPLER_TITLES[smp], str(S), str(r["n"]), format_ci(r["cfd"]), format_ci(r["kid"]),
            format_ci(r["acc"], "{:.1f}"), f"{r['spi']:.3f}"]


STEPS_HEADER = ["采样器", "步数", "$n$", "分类器 FD", "KID", "条件准确率（\\%）", "单张耗时（秒）"]
few = min((S for S in steps_list if ("dpmpp2m", S) in res and S >= 20), default=None)  # DPM-Solver++ at 20 steps
# Two tables: every setting of at most quality_max_steps calls at its n; and, at n_long, the costlier ancestral
# rows beside the settings compared with them (ancestral and DDIM at 50 steps, DPM-Solver++ at `few`).
compared = [k for k in sub if k[1] > quality_max_steps or k in {("ancestral", 50), ("ddim", 50), ("dpmpp2m", few)}]
for name, table_rows, n in (("sampling_steps", [(k, r) for k, r in res.items() if k[1] <= quality_max_steps], n_steps),
                            ("sampling_steps_long", [(k, sub[k]) for k in compared], n_long)):
    art.save_table(name, report.booktabs_tabular(  # intervals: 95 %, stated in the thesis caption
        STEPS_HEADER, [[report.escape_latex(c) for c in step_row(smp, S, r)] for (smp, S), r in table_rows],
        align="lrrrrrr", escape=False),
        config={"n": n, "bootstrap_resamples": bootstrap_resamples, "quality_max_steps": quality_max_steps})
full = res["ancestral", steps_list[0]]  # at n_long
art.number("ConfidenceLevel", 100 * full["cfd"]["level"], "{:g}")  # of every interval in this notebook
art.number("StepsSamples", n_steps, "{:d}")
art.number("StepsLongSamples", n_long, "{:d}")
art.number("StepsMaxCalls", int(quality_max_steps), "{:d}")
art.number("StepsFullSteps", steps_list[0], "{:d}")
art.number("StepsTimeFull", full["spi"], "{:.3f}")
art.number("StepsCfdFull", format_ci(full["cfd"], part="estimate"))
art.number("StepsCfdFullInterval", format_ci(full["cfd"], part="interval"))
art.number("StepsKidFull", format_ci(full["kid"]))
if ("ddim", 50) in res:
    art.number("StepsTimeFifty", res["ddim", 50]["spi"], "{:.3f}")
    art.number("StepsCallRatio", steps_list[0] / 50, "{:g}")  # network calls: full ancestral / DDIM-50
    for name, r in (("StepsCfdFifty", sub["ddim", 50]), ("StepsCfdFiftyAncestral", sub["ancestral", 50])):
        art.number(name, format_ci(r["cfd"], part="estimate"))
        art.number(name + "Interval", format_ci(r["cfd"], part="interval"))
    art.number("StepsKidFifty", format_ci(sub["ddim", 50]["kid"]))
    pairs = [("StepsDdimVsFull", sub["ddim", 50], full), ("StepsAncestralFiftyVsFull", sub["ancestral", 50], full),
             ("StepsDdimVsAncestral", res["ddim", 50], res["ancestral", 50])]  # the last at n_steps
    if few is not None:
        art.number("StepsDpmSteps", few, "{:d}")
        art.number("StepsKidDpm", format_ci(sub["dpmpp2m", few]["kid"]))
        pairs.append(("StepsDpmVsFull", sub["dpmpp2m", few], full))
    for name, a, b in pairs:
        for metric, suffix in (("cfd", ""), ("kid", "Kid"), ("acc", "Acc")):
            d = difference(a, b, metric)
            art.number(name + suffix + "Diff", format_ci(d))  # worded by the thesis (\Finding…)
else:
    for name in ("StepsTimeFifty", "StepsCallRatio", "StepsCfdFifty", "StepsCfdFiftyAncestral", "StepsCfdFiftyInterval",
                 "StepsCfdFiftyAncestralInterval", "StepsKidFifty", "StepsDdimVsFullDiff", "StepsDdimVsAncestralDiff",
                 "StepsAncestralFiftyVsFullDiff", "StepsDdimVsFullKidDiff", "StepsDdimVsAncestralKidDiff",
                 "StepsAncestralFiftyVsFullKidDiff", "StepsDdimVsFullAccDiff", "StepsDdimVsAncestralAccDiff",
                 "StepsAncestralFiftyVsFullAccDiff"):
        art.number(name, "n/a (50 steps not in this profile)")
if few is None:
    for name in ("StepsDpmSteps", "StepsKidDpm", "StepsDpmVsFullDiff", "StepsDpmVsFullKidDiff", "StepsDpmVsFullAccDiff"):
        art.number(name, "n/a (DPM-Solver++ at 20 or more steps not in this profile)")

# Colour casts (`diffusion.metrics.colour`): the spread of the per-image mean colours and the share of clipped
# pixel values of the compared settings at n_long, beside as many held-out images drawn at random.
held = test.images[torch.randperm(len(test.images), generator=torch.Generator().manual_seed(seed))[:n_long]].numpy()
colour_sets = {"held": held, **{k: sub[k]["images"] for k in compared}}
colour = {k: colour_statistics(v) for k, v in colour_sets.items()}
art.save_table("sample_colour", report.booktabs_tabular(  # intervals: 95 %, stated in the thesis caption
    ["图像", "$n$", "逐图像平均颜色的离散度", "饱和像素（\\%）"],
    [[report.escape_latex(c) for c in ["留出图像" if k == "held" else f"{SAMPLER_TITLES[k[0]]}，{k[1]} 步", str(c["n"]),
                                      format_ci(c["spread"], "{:.3f}"),
                                      format_ci(c["saturated"], "{:.1f}", scale=100)]]
     for k, c in colour.items()], align="lrrr", escape=False),
    config={"n": n_long})
art.number("ColourSpreadHeld", format_ci(colour["held"]["spread"], "{:.3f}"))
for key, name in ((("ancestral", steps_list[0]), "Full"), (("ancestral", 50), "AncestralFifty"), (("ddim", 50), "Ddim"),
                  (("dpmpp2m", few), "Dpm")):
    if key in colour:
        art.number("ColourSpread" + name, format_ci(colour[key]["spread"], "{:.3f}"))
        art.number("ColourSpread" + name + "VsHeldDiff", format_ci(colour_difference(colour_sets[key], held), "{:.3f}"))
    else:
        for suffix in ("", "VsHeldDiff"):
            art.number("ColourSpread" + name + suffix, "n/a (setting not in this profile)")
# the samplers against full ancestral sampling (same noise, but the interval treats the sets as independent: wider
# than a paired one when the pairs are positively correlated): is a sampler's colour cast larger than that of the chain it shortens?
for key, name in ((("ancestral", 50), "AncestralFifty"), (("ddim", 50), "Ddim"), (("dpmpp2m", few), "Dpm")):
    full_key = ("ancestral", steps_list[0])
    art.number("ColourSpread" + name + "VsFullDiff",
               format_ci(colour_difference(colour_sets[key], colour_sets[full_key]), "{:.3f}")
               if key in colour and full_key in colour and key != full_key else "n/a (setting not in this profile)")

ncol = min(6, n_steps)
cell = min(0.3, (report.FULL_WIDTH_IN - 0.7) / (len(SAMPLER_TITLES) * ncol))  # inches per image; 0.7 in for labels
fig, axes = plt.subplots(1, len(SAMPLER_TITLES), figsize=(report.FULL_WIDTH_IN, cell * len(steps_list) + 0.45))
not_run = np.full_like(full["images"][:ncol], 128)  # grey: this sampler was not run at this step count
for ax, (smp, title) in zip(axes, SAMPLER_TITLES.items()):
    report.show_images(ax, np.concatenate([res[smp, S]["images"][:ncol] if (smp, S) in res else not_run
                                           for S in steps_list]), nrow=ncol,
                       row_labels=[f"{S} 步" for S in steps_list] if smp == "ancestral" else None,
                       title=title)
art.save_figure(fig, "sampling_steps")

fig, ax = plt.subplots(figsize=(4, 2.8))
for smp in SAMPLER_TITLES:
    done = [S for S in steps_list if (smp, S) in res]
    ax.errorbar([res[smp, S]["spi"] for S in done], [res[smp, S]["kid"]["estimate"] for S in done],
                yerr=np.clip([[res[smp, S]["kid"]["estimate"] - res[smp, S]["kid"]["low"] for S in done],
                              [res[smp, S]["kid"]["high"] - res[smp, S]["kid"]["estimate"] for S in done]], 0, None),
                fmt="o-", capsize=2, label=SAMPLER_TITLES[smp])
ax.set_xscale("log"), ax.set_xlabel("单张耗时（秒）"), ax.set_ylabel("KID（与 $n$ 无关）")
ax.legend()
plt.show()

# %% [markdown]
# ### Why the deterministic samplers lag here: the ε-error at each timestep
# L_simple (eq. 14) per timestep on held-out images, for the network and for the trivial predictor ε̂ = x_t
# (`diffusion.metrics.eps_error`). An ε-error at step t becomes an error (1−ᾱ_t)/ᾱ_t times larger in the
# predicted x̂_0; DDIM (η = 0) and DPM-Solver++ follow one deterministic trajectory from x_T and keep
# that error, while the ancestral sampler's fresh noise at each step masks it.

# %%
from diffusion.metrics.eps_error import eps_error_by_timestep  # noqa: E402

eps_ts = sorted({min(int(v), T - 1) for v in np.geomspace(1, T, 14).round() - 1}
                | {int(f * T) - 1 for f in (0.7, 0.8, 0.9, 0.95, 0.98)})  # denser where x̂_0 errors blow up
dev_m = next(tm.model.parameters()).device
x_held = test.images[:eps_error_images].to(dev_m).float() / 127.5 - 1
y_held = test.labels[:eps_error_images].to(dev_m)
eps_err = eps_error_by_timestep(tm.diffusion, tm.model, x_held, eps_ts, model_kwargs={"y": y_held},
                                generator=torch.Generator(device=dev_m).manual_seed(seed))
fig, axes = plt.subplots(1, 2, figsize=(report.FULL_WIDTH_IN, 2.5))
axes[0].plot(eps_err["t"] + 1, eps_err["mse"], "o-", label=r"网络 $\epsilon_\theta$（EMA 参数）")
axes[0].plot(eps_err["t"] + 1, eps_err["identity_mse"], "s--", label=r"平凡预测 $\hat{\epsilon}=x_t$")
axes[0].plot(eps_err["t"] + 1, eps_err["channel_mean_mse"], "^:", label="网络误差中逐图像通道均值的部分")
axes[0].set_xlabel("时间步 $t$"), axes[0].set_ylabel("噪声预测均方误差"), axes[0].legend()
axes[1].plot(eps_err["t"] + 1, eps_err["x0_mse"] ** 0.5, "o-", color="C2")
for ax in axes:
    report.log_axis(ax, "both")
axes[1].set_xlabel("时间步 $t$"), axes[1].set_ylabel(r"$\hat{x}_0$ 的均方根误差")
art.save_figure(fig, "eps_error")
top = -1  # t = T − 1
print(f"t = {T - 1}: network {eps_err['mse'][top]:.2e}, trivial {eps_err['identity_mse'][top]:.2e}, "
      f"implied x̂_0 RMS error {eps_err['x0_mse'][top] ** 0.5:.2f}, "
      f"{100 * eps_err['channel_mean_mse'][top] / eps_err['mse'][top]:.0f} % of the ε-error in the channel means")
art.number("EpsMseTop", report.latex_sci(eps_err["mse"][top]), escape=False)
art.number("EpsMseTopTrivial", report.latex_sci(eps_err["identity_mse"][top]), escape=False)
art.number("EpsXzeroRmsTop", eps_err["x0_mse"][top] ** 0.5, "{:.1f}")
# the share of the error in each image's channel means: 1/(H·W) for white errors; a colour-blind network's is larger
art.number("EpsChannelMeanShareTop", 100 * eps_err["channel_mean_mse"][top] / eps_err["mse"][top], "{:.2g}")
art.number("EpsWhiteMeanShare", 100 / (x_held.shape[-1] * x_held.shape[-2]), "{:.2f}")
art.number("EpsErrorImages", eps_error_images, "{:d}")

# %% [markdown]
# ## 2. Network width and depth (§4.4.2)
# Each variant overrides the conditional model's config and is trained for the same number of steps with
# the same batch, then sampled (ancestral, respaced to the profile's quality step count) and scored with
# 95 % intervals at the same n. The description of each variant (C, channel multipliers, residual
# blocks, parameters, what differs from `base`) is read from its config, and each variant's difference
# from `base` gets its own 95 % interval (the two sets of samples resampled independently).

# %%
q_steps = min(50, T, quality_max_steps)
VARIANT_TITLES = {"base": "基准模型", "narrow": "窄版", "shallow": "浅版"}
MODEL_FIELDS = {"ch": "C", "ch_mult": "通道倍率", "num_res_blocks": "残差块数", "attn_resolutions": "注意力分辨率"}


def model_text(value) -> str:
    return "(" + ",".join(map(str, value)) + ")" if isinstance(value, (list, tuple)) else str(value)


vres = {}
y_var = np.arange(variant_samples) % K
for name, overrides in variants.items():
    spec_v = experiments.variant_spec(cond, overrides, variant_steps, variant_batch)
    vm = experiments.trained_model(art, spec_v, "cond", producer="06_ablations", kind=f"variant-{name}")
    out = experiments.generate(art, vm, variant_samples, sampler="ancestral", steps=q_steps, y=y_var, seed=seed, tag="variants")
    vres[name] = dict(model=vm.cfg.model, loss=vm.summary["ema_loss"], params=vm.summary["params"],
                      images=out["images"], **scored(out["images"], y_var))
    print(f"{name:8s}: {vm.summary['params']:,} params, loss {vm.summary['ema_loss']:.4f}, "
          f"classifier FD {format_ci(vres[name]['cfd'])}, KID {format_ci(vres[name]['kid'])}")
base_name = "base" if "base" in vres else next(iter(vres))
base = vres[base_name]
for name, v in vres.items():
    changed = [f"{label} {model_text(getattr(base['model'], f))}→{model_text(getattr(v['model'], f))}"
               for f, label in MODEL_FIELDS.items() if getattr(v["model"], f) != getattr(base["model"], f)]
    v["change"] = "，".join(changed) if changed else ("—" if name == base_name else "无结构差异")
    v["param_pct"] = 100 * v["params"] / base["params"]
vrows = [[VARIANT_TITLES.get(name, name), str(v["model"].ch), model_text(v["model"].ch_mult),
          str(v["model"].num_res_blocks), f"{v['params'] / 1e6:.2f}（{v['param_pct']:.0f}%）",
          f"{v['loss']:.4f}", str(v["n"]), format_ci(v["cfd"]), format_ci(v["kid"])] for name, v in vres.items()]
art.save_table("width_depth", report.booktabs_tabular(  # intervals: 95 %, stated in the thesis caption
    ["变体", "$C$", "通道倍率", "残差块数", "参数量（M，占基准）", "最终损失", "$n$", "分类器 FD", "KID"],
    [[report.escape_latex(c) for c in r] for r in vrows], align="lrlrrrrrr", escape=False),
    config={"variants": variants, "steps": variant_steps, "batch": variant_batch, "n": variant_samples})
art.number("VariantSteps", int(variant_steps), "{:d}")
art.number("VariantSampleSteps", q_steps, "{:d}")  # ancestral, w = 1
art.number("VariantBatch", int(variant_batch), "{:d}")
art.number("VariantSamples", int(variant_samples), "{:d}")
art.number("WidthCfdBase", format_ci(base["cfd"], part="estimate"))
art.number("WidthCfdBaseInterval", format_ci(base["cfd"], part="interval"))
for key, prefix in (("narrow", "WidthNarrow"), ("shallow", "DepthShallow")):
    if key not in vres or key == base_name:
        for suffix in ("Change", "ParamPct", "CfdInterval", "CfdDiff", "KidDiff"):
            art.number(prefix + suffix, "n/a")
        continue
    v = vres[key]
    art.number(prefix + "Change", v["change"])
    art.number(prefix + "ParamPct", v["param_pct"], "{:.0f}")
    art.number(prefix + "CfdInterval", format_ci(v["cfd"], part="interval"))
    for metric in ("cfd", "kid"):
        d = difference(v, base, metric)
        art.number(prefix + metric.capitalize() + "Diff", format_ci(d))
for key, name in (("narrow", "WidthCfdNarrow"), ("shallow", "DepthCfdShallow")):
    art.number(name, format_ci(vres[key]["cfd"], part="estimate") if key in vres else "n/a")

# the variants' first samples side by side: the same labels and initial noise in every row
ncol_v = min(2 * K, variant_samples)
fig, ax = plt.subplots(figsize=(report.FULL_WIDTH_IN, (report.FULL_WIDTH_IN - 0.8) * len(vres) / ncol_v + 0.15))  # 0.8 in: labels
report.show_images(ax, np.concatenate([v["images"][:ncol_v] for v in vres.values()]), nrow=ncol_v,
                   row_labels=[VARIANT_TITLES.get(name, name) for name in vres])
art.save_figure(fig, "width_depth_samples")

# %% [markdown]
# ## 3. The unconditional model, and memorisation (artefacts `uncond_quality`, `memorisation`, `closest_pairs`)
# `memo_samples` unconditional samples (EMA weights, `memo_sampler` at `memo_steps` steps) measured by FD and
# KID in the feature space `experiments.uncond_feature_space` names (data without classes are measured in the
# conditional data's proxy-classifier features), against the whole held-out split; as a yardstick, as many
# training images measured the same way (what a model that reproduced its data would get at this n).
#
# Memorisation (`diffusion.metrics.memorisation`): for each sample the L2 pixel distance to its nearest
# training image, against the same distance for as many held-out images (a seeded shuffle of the held-out
# split: the splits are ordered); the fraction of samples nearer than the held-out 1st percentile is about
# 1 % for a model that does not copy. The conditional model is checked on the DDIM samples of section 1.

# %%
tu = experiments.trained_model(art, uncond, "uncond")
memo_steps = min(int(memo_steps), tu.diffusion.num_timesteps)
fs = experiments.uncond_feature_space(uncond, cond, classifier_steps)
out_u = experiments.generate(art, tu, int(memo_samples), sampler=memo_sampler, steps=memo_steps, seed=seed + 3,
                             tag="uncond_quality")
n_memo = len(out_u["images"])
shuffle = np.random.default_rng(seed)
train_pick = tu.data.images[shuffle.permutation(len(tu.data.images))[:n_memo]]
uq = {"samples": proxy_metrics_ci(fs.features(out_u["images"]), fs.reference, seed=seed),
      "train": proxy_metrics_ci(fs.features(train_pick.numpy()), fs.reference, seed=seed)}
for name, q in uq.items():
    print(f"{name:8s} n = {q['n']}: FD {format_ci(q['cfd'])}, KID {format_ci(q['kid'])} ({fs.name})")
data_u = report.dataset_label_zh(tu.data.label)
urows = [[f"生成样本（{report.sampler_name_zh(memo_sampler)} {memo_steps} 步）", str(uq["samples"]["n"]),
          format_ci(uq["samples"]["cfd"]), format_ci(uq["samples"]["kid"])],
         ["训练集图像（随机抽取，作为参照）", str(uq["train"]["n"]), format_ci(uq["train"]["cfd"]), format_ci(uq["train"]["kid"])]]
art.save_table("uncond_quality", report.booktabs_tabular(["图像集", "$n$", "FD", "KID"],
                                                         [[report.escape_latex(c) for c in r] for r in urows],
                                                         align="lrrr", escape=False),
               dataset=data_u, config={"uncond": uncond, "feature_space": fs.name, "n": n_memo})
art.number("UncondFeatureSpace", fs.name, dataset=data_u)
art.number("UncondFeatureWhy", fs.why, dataset=data_u)
art.number("UncondReferenceImages", len(fs.reference), "{:,d}", dataset=data_u)
art.number("UncondQualitySamples", n_memo, "{:,d}", dataset=data_u)
art.number("UncondQualitySteps", memo_steps, "{:d}", dataset=data_u)
art.number("UncondTrainImages", len(tu.data.images), "{:,d}", dataset=data_u)
for key, prefix in (("samples", "Uncond"), ("train", "UncondTrain")):
    art.number(prefix + "Fd", format_ci(uq[key]["cfd"]), dataset=data_u)
    art.number(prefix + "Kid", format_ci(uq[key]["kid"]), dataset=data_u)


def heldout_shuffled(images, seed_offset: int):
    """The held-out images in a seeded random order (the splits are sorted, by class or by file)."""
    order = np.random.default_rng(seed + seed_offset).permutation(len(images))
    return images[torch.as_tensor(order)]


memo_cond_key = ("ddim", q_steps) if ("ddim", q_steps) in res else next(iter(res))
memo = {"uncond": memorisation_check(out_u["images"], tu.data.images,
                                     heldout_shuffled(experiments.load_data(uncond, "test", tu.cfg).images, 11),
                                     seed=seed, closest=int(memo_closest)),
        "cond": memorisation_check(res[memo_cond_key]["images"], tm.data.images, heldout_shuffled(test.images, 12),
                                   seed=seed, closest=int(memo_closest))}
memo_models = {"uncond": tu, "cond": tm}
memo_title = {"uncond": f"无条件模型，{data_u}", "cond": f"条件模型，{report.dataset_label_zh(tm.data.label)}"}
for which, m in memo.items():
    print(f"{which}: n = {m['n']}, fraction below the held-out {m['percentile']:g}st percentile "
          f"{format_ci(m['fraction_below'], '{:.3f}')}, median distance samples − held-out "
          f"{format_ci(m['median_difference'], '{:.3f}')}")
fig, axes = plt.subplots(1, 2, figsize=(report.FULL_WIDTH_IN, 2.4))
for ax, (which, m) in zip(axes, memo.items()):
    both = np.concatenate([m["sample_distances"], m["heldout_distances"]])
    bins = np.linspace(0, both.max() * 1.02, 31)
    ax.hist(m["heldout_distances"], bins=bins, alpha=0.55, color="C1", label="留出集图像")
    ax.hist(m["sample_distances"], bins=bins, alpha=0.55, color="C0", label="生成样本")
    ax.axvline(m["threshold"], color="k", ls="--", lw=0.8, label=f"留出集第 {m['percentile']:g} 百分位")
    ax.set_xlabel("到最近训练图像的 $L_2$ 距离（像素值在 [0, 1]）")
    ax.set_title(f"{memo_title[which]}，各 $n={m['n']}$", fontsize="small")
axes[0].set_ylabel("图像数"), axes[0].legend()
art.save_figure(fig, "memorisation", dataset=" / ".join(dict.fromkeys([data_u, art.dataset])),
                config={"uncond_samples": n_memo, "cond_setting": list(memo_cond_key)})

cols = max(1, (int(memo_closest) + 1) // 2)  # pairs per row: two rows of pairs per model
cell = min(0.75, (report.FULL_WIDTH_IN - 1.0) / cols)  # inches per image; 1 in for the row labels
fig, axes = plt.subplots(2, 1, figsize=(cell * cols + 1.0, 2 * (4 * cell + 0.3)))
for ax, (which, m) in zip(axes, memo.items()):
    pairs = m["closest_pairs"]
    samples_ = {"uncond": out_u["images"], "cond": res[memo_cond_key]["images"]}[which]
    train_ = memo_models[which].data.images.numpy()
    rows_ = []
    for lo in range(0, len(pairs), cols):
        chunk = pairs[lo:lo + cols]
        pad = cols - len(chunk)
        blank = np.full((pad, *samples_.shape[1:]), 255, dtype=np.uint8)
        rows_ += [np.concatenate([samples_[chunk[:, 0]], blank]), np.concatenate([train_[chunk[:, 1]], blank])]
    report.show_images(ax, np.concatenate(rows_), nrow=cols,
                       row_labels=["样本", "最近训练图像"] * (len(rows_) // 2),
                       title=f"{memo_title[which]}：距离最近的 {len(pairs)} 对")
art.save_figure(fig, "closest_pairs", dataset=" / ".join(dict.fromkeys([data_u, art.dataset])))
for which, prefix in (("uncond", "MemoUncond"), ("cond", "MemoCond")):
    m = memo[which]
    art.number(prefix + "N", m["n"], "{:,d}")
    art.number(prefix + "Percentile", m["percentile"], "{:g}")
    art.number(prefix + "Fraction", format_ci(m["fraction_below"], "{:.1f}", scale=100))
    # the fraction's excess over the percentile a model that does not copy would give (worded by \Finding…)
    excess = {**m["fraction_below"], **{k: m["fraction_below"][k] - m["percentile"] / 100
                                        for k in ("estimate", "low", "high")}}
    art.number(prefix + "FractionExcessDiff", format_ci(excess, "{:.1f}", scale=100))
    art.number(prefix + "MedianSample", format_ci(m["median_sample"], "{:.3f}"))
    art.number(prefix + "MedianHeldout", format_ci(m["median_heldout"], "{:.3f}"))
    art.number(prefix + "MedianDiff", format_ci(m["median_difference"], "{:.3f}"))
    art.number(prefix + "ClosestDistance", float(m["sample_distances"].min()), "{:.3f}")
    art.number(prefix + "HeldoutClosestDistance", float(m["heldout_distances"].min()), "{:.3f}")
art.number("MemoCondSetting", f"{SAMPLER_TITLES[memo_cond_key[0]]}{memo_cond_key[1]} 步")

nn_show = min(int(nn_samples), n_memo)
idx, dist = nearest_neighbours(torch.as_tensor(out_u["images"][:nn_show]), tu.data.images, k=5)  # L2, pixel values in [0, 1]
panel = np.concatenate([np.concatenate([out_u["images"][i:i + 1], tu.data.images[idx[i]].numpy()])
                        for i in range(nn_show)])
fig, ax = plt.subplots(figsize=(3.0, 0.45 * nn_show + 0.35))
report.show_images(ax, panel, nrow=6)
ax.set_title("生成样本 | 训练集中 5 个 $L_2$ 最近邻")
art.save_figure(fig, "nearest_neighbours", dataset=data_u, config=uncond)
art.number("NNMinDistance", float(dist[:, 0].min()), "{:.3f}", dataset=tu.data.label)

# %% [markdown]
# ## 4. Bits/dim: fixed-large against fixed-small, and the two conventions for L_0
# The full bound (all T terms, eq. 7) on `bpd_images` held-out images (a seeded random draw from the held-out
# split), of the unconditional model or, with `bpd_model = "cond"`, of the conditional model given the null
# label ∅ (its unconditional branch, a model of p(x) trained on one step in ten); the ε-network is the
# same, only the reverse variance σ_t² differs. All use the same noise. For fixed-large the decoder term L_0
# is reported under both conventions: σ_1² = β̃_2 (DDPM's code, the one behind the paper's bits/dim) and
# σ_1² = β_1 (the paper's text); the other T − 1 terms are identical.

# %%
if bpd_model not in ("cond", "uncond"):
    raise ValueError(f"bpd_model must be 'cond' or 'uncond', got {bpd_model!r}")
tb = tm if bpd_model == "cond" else tu
bpd_spec = cond if bpd_model == "cond" else uncond
bpd_pool = experiments.load_data(bpd_spec, "test", tb.cfg).images
x_test = bpd_pool[torch.as_tensor(np.random.default_rng(seed + 13).permutation(len(bpd_pool))[:int(bpd_images)])]
bpd_kwargs = {"y": tb.null_class} if bpd_model == "cond" else None
bpd_data = report.dataset_label_zh(tb.data.label)
art.number("BpdModel", "条件模型在空标签 $\\varnothing$ 下（即其无条件分支）" if bpd_model == "cond" else "无条件模型",
           escape=False, dataset=bpd_data)
BPD_VARIANCES = {"fixed_large": ("fixed_large", "ddpm_code"), "fixed_large_paper": ("fixed_large", "paper"),
                 "fixed_small": ("fixed_small", "ddpm_code")}
bpd_diffusions = {name: GaussianDiffusion(tb.diffusion.betas, tb.diffusion.model_mean_type, var, tb.diffusion.loss_type, dv)
                  for name, (var, dv) in BPD_VARIANCES.items()}


def bpd_work(folder):
    """One network call per image and term, shared by the three variances (diffusion.likelihood), through the
    network the samples were drawn with (compiled where the profile compiles), in the batch they were drawn in;
    each finished chunk of images is kept, so an interrupted run resumes."""
    dev = next(tb.model.parameters()).device
    x0 = x_test.to(dev).float() / 127.5 - 1
    g = torch.Generator(device=dev).manual_seed(seed)
    kwargs = None if bpd_kwargs is None else {"y": torch.full((len(x0),), bpd_kwargs["y"], device=dev)}
    b = bpd_for_variances(bpd_diffusions, tb.network(), x0, model_kwargs=kwargs, batch_size=bpd_batch, generator=g,
                          progress=True, progress_dir=folder / PROGRESS)
    return {f"{name}.{k}": b[name][k].cpu().numpy() for name in b for k in ("total_bpd", "prior_bpd", "vb")}


bpd_batch = tb.images_per_batch()  # the noise of each chunk of images depends on the chunks: keyed
r = art.cached({"model": tb.entry.key, "variances": BPD_VARIANCES, "n": bpd_images, "seed": seed, "batch": bpd_batch,
                "y": bpd_kwargs, "data": report.data_digest(x_test)} | ({"compiled": True} if tb.compile_sampling else {}),
               bpd_work, kind="bpd", modules=["diffusion.gaussian_diffusion", "diffusion.likelihood"]).result
bres = {}
for name in BPD_VARIANCES:
    total, prior, vb = r[f"{name}.total_bpd"], r[f"{name}.prior_bpd"], r[f"{name}.vb"]
    bres[name] = dict(total=total.mean(), prior=prior.mean(), l0=vb[:, 0].mean(), mid=vb[:, 1:].sum(1).mean(),
                      per_image=total)
    print(f"{name}: {bres[name]['total']:.3f} bits/dim (L_T {bres[name]['prior']:.4f}, L_0 {bres[name]['l0']:.3f})")
bpd_labels = {"fixed_large": (r"$\sigma_t^2=\beta_t$（fixed-large）", r"$\sigma_1^2=\tilde\beta_2$（DDPM 代码）"),
              "fixed_large_paper": (r"$\sigma_t^2=\beta_t$（fixed-large）", r"$\sigma_1^2=\beta_1$（论文正文）"),
              "fixed_small": (r"$\sigma_t^2=\tilde\beta_t$（fixed-small）", r"$\sigma_1^2=\tilde\beta_2$")}


def bpd_interval(per_image) -> dict | None:
    """95 % bootstrap interval of the mean over images (None for a single image: no interval)."""
    return bootstrap_ci(per_image, np.mean, num_resamples=bootstrap_resamples, seed=seed) if len(per_image) > 1 else None


for b in bres.values():
    b["ci"] = bpd_interval(b["per_image"])
brows = [[*bpd_labels[v], str(len(b["per_image"])), format_ci(b["ci"], "{:.3f}") if b["ci"] else f"{b['total']:.3f}",
          f"{b['prior']:.4f}", f"{b['mid']:.3f}",
          f"{b['l0']:.3f}"] for v, b in bres.items()]
art.save_table("bpd", report.booktabs_tabular(
    ["逆向方差", r"$L_0$ 方差约定", r"$n$", r"总计（bits/dim）",
     r"$L_T$", r"$\sum_{t\geq2} L_{t-1}$", r"$L_0$"], brows, align="llrrrrr", escape=False),
    dataset=tb.data.label, config={"model": bpd_model, "spec": bpd_spec})
# same images and noise for every variance: the paired per-image difference carries the comparison
bpd_diff = bpd_interval(bres["fixed_small"]["per_image"] - bres["fixed_large"]["per_image"])
art.number("BpdImages", len(x_test), "{:d}")
for name, ci in (("BpdFixedLargeInterval", bres["fixed_large"]["ci"]), ("BpdFixedSmallInterval", bres["fixed_small"]["ci"]),
                 ("BpdSmallMinusLargeDiff", bpd_diff)):  # the difference is worded by the thesis (\Finding…)
    text = (format_ci(ci, "{:.2f}", part="interval") if name.endswith("Interval") else format_ci(ci)) if ci else \
        "（单幅图像，无区间）"
    art.number(name, text, dataset=tb.data.label)
art.number("BpdFixedLarge", bres["fixed_large"]["total"], "{:.2f}", dataset=tb.data.label)
art.number("BpdFixedLargePaperLzero", bres["fixed_large_paper"]["total"], "{:.2f}", dataset=tb.data.label)
art.number("BpdFixedSmall", bres["fixed_small"]["total"], "{:.2f}", dataset=tb.data.label)

# %% [markdown]
# ## 5. Summary of the metrics, with FID / IS where the official Inception weights exist
# FID and IS rows appear only when the weights are on this machine; the proxy numbers always.

# %%
from diffusion.metrics.inception import weights_path  # noqa: E402

e = report.escape_latex
summary = res[memo_cond_key]
setting = f"{SAMPLER_TITLES[memo_cond_key[0]]}{memo_cond_key[1]} 步，$w=1$，$n={summary['n']}$"
mrows = []
if os.path.isfile(weights_path()):
    from diffusion.metrics.fid import fid_from_images
    from diffusion.metrics.inception import inception_features_and_logits, load_inception
    from diffusion.metrics.inception_score import inception_score

    net = load_inception(allow_download=False)
    xs = torch.from_numpy(summary["images"])
    fid = fid_from_images(xs, test, net)
    is_mean, is_std = inception_score(inception_features_and_logits(xs, net)[1])
    mrows += [[f"FID（Inception 官方权重，{setting}）", f"{fid:.2f}"],
              [f"Inception Score（{setting}，10 组）", e(f"{is_mean:.2f} ± {is_std:.2f}")]]
mrows += [[f"分类器 FD（{setting}）", e(format_ci(summary["cfd"]))],
          [f"KID（{setting}）", e(format_ci(summary["kid"]))],
          [f"条件准确率（\\%，{setting}）", e(format_ci(summary["acc"], "{:.1f}"))],
          ["代理分类器留出集准确率（\\%）", f"{100 * clf.accuracy:.1f}"],
          [f"无条件模型 FD（{e(fs.name)}，$n={uq['samples']['n']}$）", e(format_ci(uq["samples"]["cfd"]))],
          ["无条件模型 KID（同上）", e(format_ci(uq["samples"]["kid"]))],
          [f"负对数似然上界，fixed-large（bits/dim，$n={len(x_test)}$）",
           e(format_ci(bres["fixed_large"]["ci"], "{:.3f}")) if bres["fixed_large"]["ci"] else f"{bres['fixed_large']['total']:.3f}"]]
art.save_table("metrics_summary", report.booktabs_tabular(["指标", "取值"], mrows, align="ll", escape=False),
               dataset=" / ".join(dict.fromkeys([art.dataset, data_u])))  # rows of both models

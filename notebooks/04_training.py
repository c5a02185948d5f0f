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
# # 04 · Training (section 4.2)
#
# **Produces:** `fig:loss-curve` (训练损失曲线), `fig:training-stages` (不同训练阶段的样本), `fig:quality-vs-steps`
# (样本质量随训练步数的变化), `fig:uncond-samples` (无条件生成样本), `fig:ema-vs-raw` (EMA 参数与原始参数的样本对比), `tab:environment`
# (实验软硬件环境), `tab:training-summary` (训练的模型与设计).
# **Runs:** about 6 min with profile quick on AMD EPYC (2 cores); on a GPU: not measured.
# **Cache:** reuses its trained U-Nets, the proxy classifier, generated samples from `cache/` when the inputs
# are unchanged (computed and stored otherwise).
#
# Trains this profile's two models through the package (`diffusion.train.Trainer`: L_simple of eq. 14,
# Adam with warm-up, gradient clipping, EMA of the weights, label dropout for guidance):
# a class-conditional model (used by notebooks 05 and 06) and an unconditional one. Both runs are cached
# by a hash of their configuration, data and the training code, so rerunning this notebook with nothing
# changed only re-plots. Shown: the loss curve (`fig:loss-curve`), samples at several training stages
# (`fig:training-stages`), unconditional samples (`fig:uncond-samples`) and the effect of the EMA
# (`fig:ema-vs-raw`).

# %% tags=["parameters"]
profile = "quick"  # configs/profiles/<profile>.yaml (`make figures` passes its values; these defaults are quick's)
out_dir = None  # artefacts folder (None: build/interactive/<profile>; `make figures` passes a staging folder)
cache_dir = None  # cache of expensive results (None: $DDPM_CACHE_DIR, else <repo>/cache)
seed = 0  # seed of every random draw
threads = 0  # torch CPU threads (0: torch's default, all cores)
cond = None  # spec of the conditional model (None: `common.cond` of the profile)
uncond = None  # spec of the unconditional model (None: `common.uncond` of the profile)
n_samples = 64  # unconditional samples in the grid
sampler = "ancestral"  # sampler: ancestral | ddim | dpmpp2m
sample_steps = 100  # sampling steps (at most T)
stage_samples = 16  # samples shown per training stage
classifier_steps = 600  # optimiser steps of the proxy classifier (shared with 05 and 06)

# %%
import platform

import matplotlib.pyplot as plt
import numpy as np
import torch

from diffusion import experiments, report
from diffusion.config import load_config
from diffusion.report import trained_models

torch.manual_seed(seed)
if threads:
    torch.set_num_threads(threads)
cond, uncond = experiments.model_spec(profile, "cond", cond), experiments.model_spec(profile, "uncond", uncond)
art = report.Artefacts(profile, "04_training", out_dir, cache_root=cache_dir, seed=seed)

# %% [markdown]
# ## Train (or fetch) the two models
# From the cache if this configuration was trained before; else from the committed weights
# (`weights/<profile>/`, written by `tools/export_weights.py`) when they were trained with this configuration,
# data and torch version by code that trains the same way (`diffusion.fingerprint`); else trained now.
# `DDPM_RETRAIN=1` ignores the weights.

# %%
models = {}
ORIGIN = {"computed": "trained now", "cache": "cached", "weights": "committed weights, weights/<profile>/"}
for which, spec in (("cond", cond), ("uncond", uncond)):
    tm = experiments.trained_model(art, spec, which)
    models[which] = tm
    s = tm.summary
    print(f"{which:6s}: {tm.data.label}, {s['step']:,} steps in {s['elapsed_s'] / 60:.1f} min "
          f"({ORIGIN[tm.entry.source]}), final EMA loss {s['ema_loss']:.4f}, "
          f"{s['params']:,} parameters")
label = {"cond": "条件模型", "uncond": "无条件模型"}
data_zh = {w: report.dataset_label_zh(tm.data.label) for w, tm in models.items()}
prov = {w: dict(dataset=data_zh[w], config=spec) for w, spec in (("cond", cond), ("uncond", uncond))}


def final_loss(tm):
    """Mean raw L_simple over the last tenth of the logged training (at least one logging interval): unlike
    the trainer's running average it does not lag behind the end of training."""
    losses = [r["loss"] for r in tm.metrics]
    return float(np.mean(losses[-max(1, len(losses) // 10):]))

# %% [markdown]
# ## The training loss (`fig:loss-curve`)
# The raw curve is the mean L_simple over each logging interval; the smoothed one is its centred moving
# average (`report.centred_moving_average`) of log L_simple, drawn on the log axis: no lag, unlike a running
# exponential average. The window spans about a tenth of the run, but each point's half-window is at most a
# quarter of its index, so the steep fall of the first few hundred steps is not averaged into the points after it.

# %%
fig, ax = plt.subplots(figsize=(report.FULL_WIDTH_IN, 2.8))
for i, (which, tm) in enumerate(models.items()):
    steps_ = np.array([r["step"] for r in tm.metrics])
    raw = np.array([r["loss"] for r in tm.metrics])
    window = 2 * max(1, len(raw) // 20) + 1
    ax.plot(steps_, raw, color=f"C{i}", alpha=0.35, lw=0.8, label=f"{label[which]}，原始值")
    ax.plot(steps_, np.exp(report.centred_moving_average(np.log(raw), window, relative=0.25)), color=f"C{i}",
            label=f"{label[which]}，中心滑动平均（至多 {window} 个记录点）")
report.log_axis(ax, "y")
ax.set_xlabel("训练步数"), ax.set_ylabel(r"$L_{\mathrm{simple}}$（每维均方误差）")
ax.legend(ncol=2, loc="upper right")  # the curves lie low there once the first steps have passed
art.save_figure(fig, "loss_curve", dataset=" / ".join(dict.fromkeys(data_zh.values())),
                config={w: prov[w]["config"] for w in models})

# %% [markdown]
# ## §4.2.2: samples at several training stages
# Fixed noise and the EMA weights at each stage (the spec's `stage.sampler`, written by the trainer at
# `train.sample_every`);
# conditional rows cycle through the classes.

# %%
stages = {w: rows for w, rows in ((w, tm.stage_samples()) for w, tm in models.items()) if rows}
if stages:
    ncol = min(stage_samples, min(len(imgs) for rows in stages.values() for _, imgs in rows))
    samplers_zh = {w: report.sampler_name_zh(models[w].stage_sampler) for w in stages}
    one_sampler = len(set(samplers_zh.values())) == 1  # else each row names its model's stage sampler
    labels_in = 1.6 if one_sampler else 2.4  # inches for the row labels
    cell = min(0.34, (report.FULL_WIDTH_IN - labels_in) / ncol)  # inches per image
    # one panel per model: the two models' images differ in size (32x32 CIFAR-10, 64x64 CelebA)
    heights = [len(rows) for rows in stages.values()]
    fig, axes = plt.subplots(len(stages), 1, squeeze=False, gridspec_kw={"height_ratios": heights},
                             figsize=(cell * ncol + labels_in, cell * sum(heights) + 0.4 + 0.1 * len(stages)))
    for ax, (w, rows) in zip(axes[:, 0], stages.items()):
        report.show_images(ax, np.concatenate([imgs[:ncol] for _, imgs in rows]), nrow=ncol,
                           row_labels=[f"{label[w]}，第 {step:,} 步" + ("" if one_sampler else f"（{samplers_zh[w]}）")
                                       for step, _ in rows])
    axes[0, 0].set_title("训练过程中的 EMA 样本" + (f"（{next(iter(samplers_zh.values()))}）" if one_sampler else ""))
    art.save_figure(fig, "training_stages", dataset=" / ".join(dict.fromkeys(data_zh[w] for w in stages)))
else:
    print("no stage samples: the configs set no train.sample_every")

# %% [markdown]
# ## Sample quality against training steps (`fig:quality-vs-steps`)
# The conditional model's stage samples (the same noise at every stage, labels cycling through the classes,
# the spec's `stage.sampler`) scored like the samples of chapter 4: KID and conditional accuracy from the
# proxy classifier, each with its 95 % interval at the stage's n. This is the measurement that says whether
# the model has trained long enough for the deterministic samplers (DDIM with 50 steps is the quick and
# long profiles' stage sampler); with a handful of stage samples (quick: 10) the intervals are very wide.

# %%
from diffusion.metrics.classifier import classifier_features, classifier_predict  # noqa: E402
from diffusion.metrics.intervals import format_ci, jackknife_difference_ci, proxy_metrics_ci  # noqa: E402
from diffusion.metrics.kid import KidToReference  # noqa: E402

tc = models["cond"]
clf, test = experiments.proxy_classifier(cond, classifier_steps)
ref_feats = classifier_features(clf, test.images)
quality = []
for step, imgs in tc.stage_samples():
    y_stage = np.arange(len(imgs)) % tc.null_class
    x = torch.from_numpy(imgs)
    feats = classifier_features(clf, x)
    q = proxy_metrics_ci(feats, ref_feats, classifier_predict(clf, x).numpy() == y_stage, seed=seed)
    quality.append((step, q, feats))
    print(f"step {step:6,d}: n = {q['n']}, KID {format_ci(q['kid'])}, classifier FD {format_ci(q['cfd'])}, "
          f"accuracy {format_ci(q['acc'])}%")
if quality:
    fig, axes = plt.subplots(1, 2, figsize=(report.FULL_WIDTH_IN, 2.4))
    st = [step for step, *_ in quality]
    for ax, metric, ylabel in ((axes[0], "kid", "KID"), (axes[1], "acc", "条件准确率（%）")):
        est = np.array([q[metric]["estimate"] for _, q, _ in quality])
        err = np.clip([est - [q[metric]["low"] for _, q, _ in quality], [q[metric]["high"] for _, q, _ in quality] - est],
                      0, None)
        ax.errorbar(st, est, yerr=err, fmt="o-", capsize=2, color="C0")
        ax.set_xlabel("训练步数"), ax.set_ylabel(ylabel)
        ax.set_xlim(0, None)
    stage_steps = min(int((cond.get("stage") or {}).get("steps", 50)), tc.diffusion.num_timesteps)
    fig.suptitle(f"条件模型的阶段样本：{report.sampler_name_zh(tc.stage_sampler)} {stage_steps} 步，"
                 f"每个阶段 $n = {quality[0][1]['n']}$", fontsize="small")
    art.save_figure(fig, "quality_vs_steps", **prov["cond"])
    first, last = quality[0], quality[-1]
    art.number("StageSamples", last[1]["n"], "{:d}")
    art.number("StageFirstStep", first[0], "{:,d}")
    art.number("StageLastStep", last[0], "{:,d}")
    art.number("StageKidFirst", format_ci(first[1]["kid"]))
    art.number("StageKidLast", format_ci(last[1]["kid"]))
    art.number("StageAccFirst", format_ci(first[1]["acc"], "{:.1f}"))
    art.number("StageAccLast", format_ci(last[1]["acc"], "{:.1f}"))
    # still improving? KID of the last stage minus the one before (the stages share their noise, so treating
    # the two sets as independent makes the interval conservative)
    if len(quality) > 1:
        prev = quality[-2]
        kid_of = KidToReference(ref_feats)
        d = jackknife_difference_ci(np.arange(len(last[2])), np.arange(len(prev[2])), kid_of.on_indices(last[2]),
                                    statistic_b=kid_of.on_indices(prev[2]))
        art.number("StagePrevStep", prev[0], "{:,d}")
        art.number("StageKidLastDiff", format_ci(d))  # the thesis words it (\FindingStageKidLast)
    else:
        for name in ("StagePrevStep", "StageKidLastDiff"):
            art.number(name, "n/a（只有一个训练阶段）")

# %% [markdown]
# ## Unconditional samples, EMA weights (`fig:uncond-samples`)

# %%
tm = models["uncond"]
out = experiments.generate(art, tm, n_samples, sampler=sampler, steps=min(sample_steps, tm.diffusion.num_timesteps),
                           seed=seed)
nrow = report.grid_columns(n_samples)
fig, ax = plt.subplots(figsize=(4.0, 4.0 * int(np.ceil(n_samples / nrow)) / nrow + 0.3))
report.show_images(ax, out["images"], nrow=nrow)
ax.set_title(f"{data_zh['uncond']}，无条件，{report.sampler_name_zh(sampler)} "
             f"{min(sample_steps, tm.diffusion.num_timesteps)} 步")
art.save_figure(fig, "uncond_samples", **prov["uncond"])

# %% [markdown]
# ## EMA against raw weights
# The same initial noise through the EMA weights and the raw (last optimiser step) weights.

# %%
n_cmp = min(n_samples, 32)
steps_cmp = min(sample_steps, tm.diffusion.num_timesteps)
ncol_cmp = report.grid_columns(n_cmp)
fig, axes = plt.subplots(1, 2, figsize=(report.FULL_WIDTH_IN, report.FULL_WIDTH_IN / 2
                                        * int(np.ceil(n_cmp / ncol_cmp)) / ncol_cmp + 0.4))
for ax, use_ema in zip(axes, (True, False)):
    o = experiments.generate(art, tm, n_cmp, sampler=sampler, steps=steps_cmp, seed=seed + 1, use_ema=use_ema,
                             tag="ema_vs_raw")
    report.show_images(ax, o["images"], nrow=ncol_cmp)
    warm = "，含衰减率预热" if tm.cfg.train.ema_warmup else ""
    ax.set_title(f"EMA 参数（$d={tm.cfg.train.ema_decay}${warm}）" if use_ema else "原始参数")
art.save_figure(fig, "ema_vs_raw", **prov["uncond"])

# %% [markdown]
# ## Environment (`tab:environment`), training summary (`tab:training-summary`) and the numbers the text quotes

# %%
env_rows = [["计算设备", report.device_name()], ["PyTorch 使用的 CPU 线程数", str(torch.get_num_threads())],
            ["操作系统", f"{platform.system()} {platform.release()}"],
            ["Python", platform.python_version()], ["PyTorch", torch.__version__],
            ["CUDA（PyTorch 构建版本）", str(torch.version.cuda or "无")], ["NumPy", np.__version__],
            ["混合精度", "bf16 自动混合精度" if torch.cuda.is_available() else "无（CPU，float32）"]]
art.save_table("environment", report.booktabs_tabular(["项目", "取值"], env_rows, align="ll"))

# The trained models beside their designs (the configuration files before the profile's overrides):
# one column each, every cell read from a configuration (diffusion.report.trained_models).
specs = {"cond": cond, "uncond": uncond}
columns = []  # (header, configuration, model name, trained model or None for the design)
for which, tm in models.items():
    design = load_config(experiments.repo_root() / specs[which]["config"])
    columns += [(f"{label[which]}：设计", design, which, None), (f"{label[which]}：本文训练", tm.cfg, which, tm)]
rows = [["数据集", *(trained_models.design_dataset(c) if t is None else report.escape_latex(data_zh[w])
                   for _, c, w, t in columns)]]
rows += trained_models.settings_rows([c for _, c, _, _ in columns])
rows += [["参数量（百万）", *(f"{(t.summary['params'] if t else trained_models.parameter_count(c, models[w].data)) / 1e6:.2f}"
                         for _, c, w, t in columns)],
         ["训练用时（分钟）", *("—" if t is None else f"{t.summary['elapsed_s'] / 60:.0f}" for _, _, _, t in columns)],
         ["最终损失", *("—" if t is None else f"{final_loss(t):.4f}" for _, _, _, t in columns)]]
art.save_table("training_summary", report.booktabs_tabular(["设置", *(h for h, _, _, _ in columns)], rows,
                                                           align="l" + "r" * len(columns), escape=False),
               dataset=" / ".join(dict.fromkeys(data_zh.values())), config={w: prov[w]["config"] for w in models})

art.number("ProfileName", profile)
art.number("DeviceName", report.device_name())
art.number("TorchVersion", torch.__version__)
art.number("SmokeMarker", r"\textbf{[SMOKE TEST]}" if profile == "smoke" else "", escape=False)
for which, prefix in (("cond", "Cond"), ("uncond", "Uncond")):
    tm, s = models[which], models[which].summary
    art.number(f"{prefix}DatasetLabel", data_zh[which], **prov[which])
    art.number(f"{prefix}TrainSteps", f"{s['step']:,}", **prov[which])
    art.number(f"{prefix}TrainMinutes", s["elapsed_s"] / 60, "{:.1f}", **prov[which])
    art.number(f"{prefix}Params", s["params"] / 1e6, "{:.2f}", **prov[which])
    art.number(f"{prefix}FinalLoss", final_loss(tm), "{:.4f}", **prov[which])
    art.number(f"{prefix}BatchSize", tm.cfg.train.batch_size, **prov[which])

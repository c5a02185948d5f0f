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
# # 03 · The noise-prediction network ε_θ (section 3.1, `tab:hparams`)
#
# **Produces:** `tab:unet-arch` (U-Net 各层级的结构与参数量), `fig:time-embedding` (正弦时间步嵌入的热力图), `tab:hparams`
# (网络结构与扩散过程参数).
# **Runs:** under 10 s with profile quick on AMD EPYC (2 cores); on a GPU: not measured.
# **Cache:** reuses the proxy classifier from `cache/` when the inputs are unchanged (computed and stored
# otherwise).
#
# With a converted official DDPM checkpoint it also draws samples from DDPM's published weights and, under
# the gpu profile, tabulates their quality against sampling steps (shown here only: the thesis has no such
# float while the weights cannot be obtained offline).
#
# The U-Net of section 3.1: input projection, an encoder of residual blocks with down-sampling,
# a middle block (residual → self-attention → residual), a decoder with skip concatenations and N+1
# residual blocks per level, and a GroupNorm → SiLU → conv head. The timestep enters through the
# sinusoidal embedding of eq. (16) and MLP_t; a class label through its own embedding and MLP_y (eq. 17).
# This notebook tabulates the architecture stage by stage for the CIFAR-10 configuration of `tab:hparams`, counts its
# parameters and FLOPs, shows the embedding of eq. (16), and lists the hyper-parameters actually used by
# this profile's models.

# %% tags=["parameters"]
profile = "quick"  # configs/profiles/<profile>.yaml (`make figures` passes its values; these defaults are quick's)
out_dir = None  # artefacts folder (None: build/interactive/<profile>; `make figures` passes a staging folder)
cache_dir = None  # cache of expensive results (None: $DDPM_CACHE_DIR, else <repo>/cache)
seed = 0  # seed of every random draw
threads = 0  # torch CPU threads (0: torch's default, all cores)
cond = None  # spec of the conditional model (None: `common.cond` of the profile)
uncond = None  # spec of the unconditional model (None: `common.uncond` of the profile)
table_config = "configs/cifar10.yaml"  # configuration tabulated stage by stage
flops = True  # count the FLOPs of one forward pass
ddpm_ckpt = None  # converted official DDPM checkpoint (`import-diffusers`); None: $DDPM_OFFICIAL_CKPT, else skipped
ddpm_grid_samples = 64  # samples in the grid of the official model
ddpm_step_counts = []  # sampling-step table of the official model (empty: no table)
ddpm_step_samples = 500  # samples per row of that table
classifier_steps = 600  # proxy classifier of that table (the profile's common value; None: the dataset's default)

# %%
import matplotlib.pyplot as plt
import torch

from diffusion import experiments, report
from diffusion.config import load_config
from diffusion.model_info import count_parameters, describe_unet, flops_per_image
from diffusion.unet import UNet, timestep_embedding

torch.manual_seed(seed)
if threads:
    torch.set_num_threads(threads)
cond, uncond = experiments.model_spec(profile, "cond", cond), experiments.model_spec(profile, "uncond", uncond)
art = report.Artefacts(profile, "03_unet", out_dir, cache_root=cache_dir, seed=seed, dataset="无（网络结构）",
                       config={"table_config": table_config})
SHAPES = {"cifar10": (3, 32, 10), "cifar10-jpeg": (3, 32, 10), "celeba64": (3, 64, 0), "celeba-6k": (3, 64, 0),
          "mnist5k": (1, 32, 10)}  # channels, image size, classes of each dataset


def unet_of(cfg, class_cond=None):
    c, s, k = SHAPES[cfg.data.name]
    m = cfg.model
    use_classes = m.class_cond if class_cond is None else class_cond
    return UNet(c, ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, image_size=s,
                num_classes=(k or None) if use_classes else None, num_heads=m.num_heads), c, s


# %% [markdown]
# ## The CIFAR-10 network of `tab:hparams`, stage by stage (`tab:unet-arch`)
# Without the class embedding this is the DDPM CIFAR-10 model (35.7 M parameters).

# %%
cfg_tab = load_config(experiments.repo_root() / table_config)
net, c, s = unet_of(cfg_tab, class_cond=False)
rows = describe_unet(net, s, c)
total = count_parameters(net)
assert rows[-1]["parameters"] == total == sum(r["parameters"] for r in rows[:-1])
print(f"{'stage':<22}{'kind':<28}{'res':>5}{'in':>6}{'out':>6}{'params':>12}")
for r in rows:
    print(f"{r['name']:<22}{r['kind']:<28}{str(r['resolution'] or ''):>5}{str(r['in_channels'] or ''):>6}"
          f"{r['out_channels']:>6}{r['parameters']:>12,}")

# one row per resolution level: merge the stages of the encoder/decoder level that work at that size
KIND_ZH = {"res": "残差块", "res + attn": "残差块 + 自注意力", "attn": "自注意力", "conv 3×3": "3×3 卷积",
           "conv 3×3 stride 2": "3×3 卷积（步长 2）", "nearest ×2 + conv 3×3": "最近邻 ×2 + 3×3 卷积",
           "GroupNorm + SiLU": "GroupNorm + SiLU", "time MLP_t": "时间 MLP（式 (16)）",
           "class MLP_y": "类别 MLP（式 (17)）", "class embedding": "类别嵌入表（含空标签）"}
STAGE_ZH = {"time_mlp": "时间嵌入", "class_embed": "类别嵌入", "class_mlp": "类别嵌入", "input_conv": "输入投影",
            "head.norm": "输出头", "head.conv": "输出头"}


def kind_zh(kind):
    """Chinese name of a stage kind of describe_unet (its parenthesised remark dropped)."""
    return KIND_ZH[kind.split(" (")[0]]


levels = []
for part, prefix in (("编码器", "down."), ("中间层", "mid."), ("解码器", "up.")):
    by_res = {}
    for r in rows:
        if r["name"].startswith(prefix):
            key = r["resolution"]
            e = by_res.setdefault(key, {"n": 0, "params": 0, "ch": set(), "kinds": set()})
            e["n"] += 1
            e["params"] += r["parameters"]
            e["ch"].add(r["out_channels"])
            e["kinds"].add(kind_zh(r["kind"]))
    for res, e in by_res.items():
        levels.append([part, f"{res}×{res}", "/".join(str(x) for x in sorted(e["ch"])), str(e["n"]),
                       "，".join(sorted(e["kinds"])), f"{e['params']:,}"])
other = [r for r in rows[:-1] if not r["name"].startswith(("down.", "mid.", "up."))]
for r in other:
    res = f"{r['resolution']}×{r['resolution']}" if r["resolution"] else "—"
    levels.append([STAGE_ZH[r["name"]], res, str(r["out_channels"]), "1", kind_zh(r["kind"]), f"{r['parameters']:,}"])
levels.append(["合计", "", "", "", "", f"{total:,}"])
art.save_table("unet_arch", report.booktabs_tabular(
    ["部分", "分辨率", "输出通道数", "模块数", "模块类型", "参数量"], levels, align="lllrlr"),
    config=table_config)
art.number("CifarParams", f"{total:,}")

# %% [markdown]
# ## FLOPs per image
# Counted by `torch.utils.flop_counter` (2 × multiply-adds of convolutions, linear layers and attention).

# %%
if flops:
    gflops = flops_per_image(net, s, c) / 1e9
    print(f"{gflops:.2f} GFLOPs per {s}×{s} image and forward pass")
    art.number("CifarGFlops", gflops, "{:.2f}")
else:
    art.number("CifarGFlops", "not computed (smoke)")

# %% [markdown]
# ## Shapes through this profile's models

# %%
for which, spec in (("conditional", cond), ("unconditional", uncond)):
    cfg = experiments.load_run_config(spec)
    m, cc, ss = unet_of(cfg)
    print(f"{which}: {cfg.data.name}, {count_parameters(m):,} parameters")
    for r in describe_unet(m, ss, cc):
        if r["name"] in ("input_conv", "mid.attn", "head.conv") or r["name"].endswith("sample"):
            print(f"   {r['name']:<20} -> {r['output_shape']}")

# %% [markdown]
# ## The sinusoidal time embedding of eq. (16)
# e[2i] = sin(t ω_i), e[2i+1] = cos(t ω_i): low dimensions oscillate fast in t, high ones slowly, so nearby
# timesteps get similar codes and distant ones differ. The configuration's frequencies are drawn: DDPM's
# ω_i = 10000^(−i/(d/2−1)) (`model.time_embed_freq_shift: 1`, the default) or eq. (16)'s 10000^(−2i/d) (0).
# Drawn at the d of the conditional model this profile trains (d = its base channel count C).

# %%
cfg_emb = experiments.load_run_config(cond)
T = cfg_emb.diffusion.num_timesteps
d = cfg_emb.model.ch
emb = timestep_embedding(torch.arange(T), d, cfg_emb.model.time_embed_freq_shift).numpy()
fig, ax = plt.subplots(figsize=(5.0, 2.6))
im = ax.imshow(emb.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
               extent=(0.5, T + 0.5, d - 0.5, -0.5))
ax.set_xlabel("时间步 $t$"), ax.set_ylabel("嵌入维度")
ax.grid(False)
fig.colorbar(im, ax=ax, label="取值")
ax.set_title(f"正弦时间步嵌入（式 (16)，$d={d}$）")
art.save_figure(fig, "time_embedding")

# %% [markdown]
# ## Hyper-parameters (`tab:hparams`, section 3.3.2) and those this profile trains with

# %%
DATASET_ZH = {"cifar10": "CIFAR-10", "cifar10-jpeg": "CIFAR-10（JPEG q75 有损副本）", "celeba64": "CelebA",
              "celeba-6k": "CelebA（6k 子集）", "mnist5k": "MNIST-5k"}
SCHEDULE_ZH = {"linear": "线性", "cosine": "余弦", "quadratic": "二次"}
columns = [("完整设计：CIFAR-10", cfg_tab)]  # the configuration files the full profile trains with
cfg_celeba = experiments.repo_root() / "configs" / "celeba64.yaml"
if cfg_celeba.is_file():
    columns.append(("完整设计：CelebA", load_config(cfg_celeba)))
columns += [("本文训练：条件模型", experiments.load_run_config(cond)),
            ("本文训练：无条件模型", experiments.load_run_config(uncond))]


def fmt(v):
    if isinstance(v, bool):
        return "是" if v else "否"
    return "(" + ", ".join(str(x) for x in v) + ")" if isinstance(v, (list, tuple)) else str(v)


def dataset_zh(c):
    name = DATASET_ZH.get(c.data.name, c.data.name)
    size = c.data.image_size
    return f"{name}（{size}×{size}）" if size else name


e = report.escape_latex
fields = [("数据集", dataset_zh), ("基础通道数 $C$", lambda c: c.model.ch),
          ("通道倍率", lambda c: c.model.ch_mult), ("每级残差块数", lambda c: c.model.num_res_blocks),
          ("注意力分辨率", lambda c: c.model.attn_resolutions), ("GroupNorm 组数", lambda c: c.model.norm_groups),
          ("Dropout", lambda c: c.model.dropout),
          ("类别条件", lambda c: c.model.class_cond), ("时间步数 $T$", lambda c: c.diffusion.num_timesteps),
          ("$\\beta_t$ 调度", lambda c: f"{SCHEDULE_ZH.get(c.diffusion.schedule, c.diffusion.schedule)}，"
                                    f"{c.diffusion.beta_start:g} 至 {c.diffusion.beta_end:g}"),
          ("逆向方差", lambda c: c.diffusion.var_type.replace("_", "-")), ("批量", lambda c: c.train.batch_size),
          ("学习率", lambda c: f"{c.train.lr:g}"), ("预热步数", lambda c: c.train.warmup_steps),
          ("EMA 衰减率 $d$", lambda c: c.train.ema_decay),
          ("EMA 衰减率预热", lambda c: c.train.ema_warmup),
          ("空标签概率 $p_{\\mathrm{uncond}}$", lambda c: c.train.p_uncond if c.model.class_cond else "—"),
          ("训练步数", lambda c: f"{c.train.total_steps:,}")]
table = [[name] + [e(fmt(get(c))) for _, c in columns] for name, get in fields]
art.save_table("hparams", report.booktabs_tabular(["超参数"] + [e(n) for n, _ in columns], table,
                                                  align="l" + "l" * len(columns), escape=False))

# %% [markdown]
# ## The official DDPM model
# Our U-Net with its defaults is DDPM's network exactly (time-embedding frequencies 10000^(−i/(half−1)),
# TensorFlow 'SAME' down-sampling), so the weights DDPM published for CIFAR-10 load into it unchanged
# (`diffusion.convert`). With a converted checkpoint (`ddpm_ckpt`, else `$DDPM_OFFICIAL_CKPT`) this section
# draws samples from it and, when `ddpm_step_counts` is non-empty (the gpu profile), tabulates sample quality
# against sampling steps as notebook 06 does for our own model. Without one it only says how to get it.

# %%
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ddpm_path = ddpm_ckpt or os.environ.get("DDPM_OFFICIAL_CKPT")
if ddpm_path and not Path(ddpm_path).is_absolute():
    ddpm_path = str(experiments.repo_root() / ddpm_path)
if not ddpm_path or not Path(ddpm_path).is_file():
    print("The official DDPM model is not available offline: download google/ddpm-cifar10-32 from the Hugging "
          "Face Hub (e.g. `huggingface-cli download google/ddpm-cifar10-32 --local-dir ddpm-cifar10-32`), run "
          "`python -m diffusion import-diffusers ddpm-cifar10-32 --out ddpm-cifar10-32.pt`, and set "
          f"ddpm_ckpt (or $DDPM_OFFICIAL_CKPT) to that file; looked for: {ddpm_path or '(not set)'}.")
else:
    from diffusion.cli import load_trained
    from diffusion.metrics.intervals import format_ci, proxy_metrics_ci
    from diffusion.metrics.classifier import classifier_features
    from diffusion.metrics.images import to_uint8
    from diffusion.samplers import sample

    dev = experiments.device()
    ddpm_model, ddpm_diffusion, ddpm_cfg, _ = load_trained(ddpm_path, dev)
    shape = (ddpm_model.in_channels, ddpm_model.image_size, ddpm_model.image_size)
    print(f"{ddpm_path}: {count_parameters(ddpm_model):,} parameters, T = {ddpm_diffusion.num_timesteps}, "
          f"time_embed_freq_shift = {ddpm_model.time_embed_freq_shift}, "
          f"downsample_padding = {ddpm_model.downsample_padding}")

    def ddpm_samples(n, sampler, steps):
        g = torch.Generator(device=dev).manual_seed(seed)
        start = time.perf_counter()
        with torch.no_grad():
            x = torch.cat([sample(ddpm_diffusion, ddpm_model, (min(256, n - lo), *shape), sampler=sampler,
                                  steps=steps, generator=g, device=dev).cpu() for lo in range(0, n, 256)])
        return to_uint8(x), (time.perf_counter() - start) / n

    grid, _ = ddpm_samples(ddpm_grid_samples, "ddim", min(50, ddpm_diffusion.num_timesteps))
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.imshow(report.image_grid(grid.float() / 127.5 - 1, report.grid_columns(len(grid))))
    ax.axis("off")
    art.save_figure(fig, "ddpm_official_samples", dataset="CIFAR-10（DDPM 官方权重）",
                    config={"ckpt": Path(ddpm_path).name, "sampler": "ddim", "steps": 50})
    if ddpm_step_counts:
        clf, test = experiments.proxy_classifier(cond, classifier_steps)
        if tuple(test.images.shape[1:]) != shape:
            print(f"no proxy classifier of this shape ({test.label}: {tuple(test.images.shape[1:])}); skipping the table")
        else:
            ref = classifier_features(clf, test.images)
            rows = []
            for smp in ("ancestral", "ddim"):
                for S in sorted({min(int(s), ddpm_diffusion.num_timesteps) for s in ddpm_step_counts}, reverse=True):
                    imgs, spi = ddpm_samples(ddpm_step_samples, smp, S)
                    m = proxy_metrics_ci(classifier_features(clf, imgs), ref, seed=seed)
                    rows.append([smp, str(S), str(len(imgs)), format_ci(m["cfd"]), format_ci(m["kid"]), f"{spi:.3f}"])
                    print(rows[-1])
            art.save_table("ddpm_official_steps", report.booktabs_tabular(
                ["采样器 (sampler)", "步数", "样本数 n", "分类器 FD [95% 置信区间]", "KID [95% 置信区间]",
                 "单张耗时 (s)"], rows, align="lrrrrr"), dataset="CIFAR-10（DDPM 官方权重）",
                config={"ckpt": Path(ddpm_path).name, "n": ddpm_step_samples})

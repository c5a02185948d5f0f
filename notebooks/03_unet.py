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
# # 03 · The noise-prediction network ε_θ (section 3.1, table 2)
#
# The U-Net of section 3.1: input projection, an encoder of residual blocks with down-sampling,
# a middle block (residual → self-attention → residual), a decoder with skip concatenations and N+1
# residual blocks per level, and a GroupNorm → SiLU → conv head. The timestep enters through the
# sinusoidal embedding of eq. (16) and MLP_t; a class label through its own embedding and MLP_y (eq. 17).
# This notebook tabulates the architecture stage by stage for the configuration of table 2, counts its
# parameters and FLOPs, shows the embedding of eq. (16), and lists the hyper-parameters actually used by
# this profile's models.

# %% tags=["parameters"]
profile = "quick"
out_dir = None
cache_dir = None
seed = 0
threads = 1  # torch CPU threads (0: torch's default); one is fastest for these small tensors
cond = None
uncond = None
table_config = "configs/cifar10.yaml"
flops = True

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
art = report.Artefacts(profile, "03_unet", out_dir, cache_root=cache_dir, seed=seed, dataset="(architecture)",
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
# ## Table 2's network, stage by stage
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
levels = []
for part, prefix in (("encoder", "down."), ("middle", "mid."), ("decoder", "up.")):
    by_res = {}
    for r in rows:
        if r["name"].startswith(prefix):
            key = r["resolution"]
            e = by_res.setdefault(key, {"n": 0, "params": 0, "ch": set(), "kinds": set()})
            e["n"] += 1
            e["params"] += r["parameters"]
            e["ch"].add(r["out_channels"])
            e["kinds"].add(r["kind"].split(" (")[0])
    for res, e in by_res.items():
        levels.append([part, f"{res}×{res}", "/".join(str(x) for x in sorted(e["ch"])), str(e["n"]),
                       ", ".join(sorted(e["kinds"])), f"{e['params']:,}"])
other = [r for r in rows[:-1] if not r["name"].startswith(("down.", "mid.", "up."))]
for r in other:
    res = f"{r['resolution']}×{r['resolution']}" if r["resolution"] else "--"
    levels.append([r["name"], res, str(r["out_channels"]), "1", r["kind"], f"{r['parameters']:,}"])
levels.append(["total", "", "", "", "", f"{total:,}"])
art.save_table("unet_arch", report.booktabs_tabular(
    ["part", "resolution", "channels", "stages", "kind", "parameters"], levels, align="lllrlr"),
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
# e[2i] = sin(t / 10000^{2i/d}), e[2i+1] = cos(t / 10000^{2i/d}): low dimensions oscillate fast in t,
# high ones slowly, so nearby timesteps get similar codes and distant ones differ.

# %%
T = cfg_tab.diffusion.num_timesteps
d = cfg_tab.model.ch
emb = timestep_embedding(torch.arange(T), d).numpy()
fig, ax = plt.subplots(figsize=(5.5, 2.8))
im = ax.imshow(emb.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
               extent=(0.5, T + 0.5, d - 0.5, -0.5))
ax.set_xlabel("timestep t"), ax.set_ylabel("embedding dimension")
ax.grid(False)
fig.colorbar(im, ax=ax, label="value")
ax.set_title(f"Sinusoidal embedding, eq. (16), d = {d}")
art.save_figure(fig, "time_embedding")

# %% [markdown]
# ## Hyper-parameters (table 2 and section 3.3.2) and those this profile trains with

# %%
columns = [("table 2: " + table_config.split("/")[-1], cfg_tab)]
cfg_celeba = experiments.repo_root() / "configs" / "celeba64.yaml"
if cfg_celeba.is_file():
    columns.append(("CelebA: celeba64.yaml", load_config(cfg_celeba)))
columns += [(f"{profile}: conditional", experiments.load_run_config(cond)),
            (f"{profile}: unconditional", experiments.load_run_config(uncond))]


def fmt(v):
    return "(" + ", ".join(str(x) for x in v) + ")" if isinstance(v, (list, tuple)) else str(v)


fields = [("dataset", lambda c: c.data.name), ("base channels C", lambda c: c.model.ch),
          ("channel multipliers", lambda c: c.model.ch_mult), ("res. blocks per level", lambda c: c.model.num_res_blocks),
          ("attention resolutions", lambda c: c.model.attn_resolutions), ("dropout", lambda c: c.model.dropout),
          ("class-conditional", lambda c: c.model.class_cond), ("T", lambda c: c.diffusion.num_timesteps),
          ("β schedule", lambda c: f"{c.diffusion.schedule} {c.diffusion.beta_start:g}..{c.diffusion.beta_end:g}"),
          ("reverse variance", lambda c: c.diffusion.var_type), ("batch size", lambda c: c.train.batch_size),
          ("learning rate", lambda c: f"{c.train.lr:g}"), ("warm-up steps", lambda c: c.train.warmup_steps),
          ("EMA decay", lambda c: c.train.ema_decay), ("p_uncond", lambda c: c.train.p_uncond),
          ("training steps", lambda c: f"{c.train.total_steps:,}")]
table = [[name] + [fmt(get(c)) for _, c in columns] for name, get in fields]
art.save_table("hparams", report.booktabs_tabular(["hyper-parameter"] + [n for n, _ in columns], table,
                                                  align="l" + "l" * len(columns)))

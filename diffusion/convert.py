"""Published DDPM checkpoints: diffusers' ``UNet2DModel`` in DDPM's layout ⇄ :class:`diffusion.unet.UNet`.

DDPM's released TensorFlow checkpoints are distributed, converted, as diffusers pipelines
(``google/ddpm-cifar10-32``, ``google/ddpm-celebahq-256``, ``google/ddpm-church-256``, …): a ``UNet2DModel``
plus a ``DDPMScheduler`` config. Their network is exactly this package's U-Net with its defaults
``time_embed_freq_shift=1`` and ``downsample_padding="tf_same"``; this module maps the parameters one to one:

- ``to_q``/``to_k``/``to_v`` (linear layers) are stacked into our 1×1 ``qkv`` convolution, ``to_out.0``
  becomes ``proj_out`` (per-head channel order is the same: head h owns channels h·d … (h+1)·d−1);
- the time embedding: diffusers concatenates [sin(t ω), cos(t ω)] (or [cos, sin] with ``flip_sin_to_cos``),
  eq. (16) interleaves sin and cos, so the input columns of the first linear layer of MLP_t are permuted;
- everything else is renamed (``down_blocks.l.resnets.j`` → ``down.l.blocks.j.res``, …).

A layout that is not DDPM's (other block types, norm, activation, class embedding, time-scale shift, …) is
refused with :class:`ConversionError` listing every difference. :func:`import_diffusers` is what
``python -m diffusion import-diffusers SRC --out CKPT`` runs.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from diffusion.unet import GROUPNORM_EPS, GROUPNORM_GROUPS, UNet

__all__ = ["ConversionError", "DDPM_CHECKPOINTS", "diffusers_layout_differences", "from_diffusers",
           "import_diffusers", "scheduler_to_diffusion_config", "to_diffusers", "unet_kwargs_from_diffusers"]

# Hub ids of DDPM's own checkpoints in diffusers' format (all unconditional, linear β 1e-4 … 0.02, T = 1000).
DDPM_CHECKPOINTS = ("google/ddpm-cifar10-32", "google/ddpm-celebahq-256", "google/ddpm-church-256",
                    "google/ddpm-bedroom-256", "google/ddpm-cat-256")

_RES_NAMES = {  # diffusers' ResnetBlock2D names → our ResBlock's
    "norm1": "norm1", "conv1": "conv1", "time_emb_proj": "emb_proj.1", "norm2": "norm2",
              "conv2": "conv2", "conv_shortcut": "skip"}
_SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine"}
_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_VARIANCES = {"fixed_small": "fixed_small", "fixed_large": "fixed_large"}
# (channels, side) of the datasets of diffusion.data an imported model can be evaluated against.
_DATASET_OF_SHAPE = {(3, 32): "cifar10", (3, 64): "celeba64", (1, 32): "mnist5k"}


class ConversionError(ValueError):
    """A checkpoint that is not in DDPM's layout, or that cannot be found or loaded."""


# ----------------------------------------------------------------------------------------------- layout
def diffusers_layout_differences(config: dict) -> list[str]:
    """Every way a ``UNet2DModel`` config departs from the layout our U-Net can express (DDPM's); [] if none."""
    c = dict(config)
    diffs = []

    def need(key, ok, wanted):
        if not ok(c.get(key)):
            diffs.append(f"{key} = {c.get(key)!r} (needs {wanted})")

    need("time_embedding_type", lambda v: v in (None, "positional"), "'positional'")
    need("freq_shift", lambda v: v in (0, 1), "0 or 1")
    need("downsample_padding", lambda v: v in (0, 1), "0 (TF 'SAME', DDPM) or 1 (symmetric)")
    need("downsample_type", lambda v: v in (None, "conv"), "'conv'")
    need("upsample_type", lambda v: v in (None, "conv"), "'conv'")
    need("center_input_sample", lambda v: not v, "false")
    need("act_fn", lambda v: v in (None, "silu", "swish"), "'silu'")
    groups = c.get("norm_num_groups", GROUPNORM_GROUPS)
    need("norm_num_groups", lambda v: isinstance(v, int) and v >= 1, "a positive integer")
    need("attn_norm_num_groups", lambda v: v in (None, groups), f"null or norm_num_groups ({groups})")
    need("norm_eps", lambda v: v is not None and abs(float(v) - GROUPNORM_EPS) <= 1e-12, f"{GROUPNORM_EPS:g}")
    need("resnet_time_scale_shift", lambda v: v in (None, "default"), "'default' (additive time embedding)")
    need("mid_block_type", lambda v: v in (None, "UNetMidBlock2D"), "'UNetMidBlock2D'")
    need("add_attention", lambda v: v in (None, True), "true (attention in the middle block)")
    need("mid_block_scale_factor", lambda v: v in (None, 1, 1.0), "1")
    need("class_embed_type", lambda v: v is None, "null (unconditional)")
    need("num_class_embeds", lambda v: v is None, "null (unconditional)")
    need("layers_per_block", lambda v: isinstance(v, int) and v >= 1, "a positive integer")
    size = c.get("sample_size")
    if isinstance(size, (list, tuple)):
        size = size[0] if len(set(size)) == 1 else None
    if not isinstance(size, int) or size < 1:
        diffs.append(f"sample_size = {c.get('sample_size')!r} (needs a square size)")
    chans = list(c.get("block_out_channels") or [])
    ch = chans[0] if chans else None
    if not chans or not isinstance(groups, int) or groups < 1 or ch % groups or any(v % ch for v in chans):
        diffs.append(f"block_out_channels = {chans} (needs multiples of the first, which a multiple of "
                     f"norm_num_groups = {groups})")
    ted = c.get("time_embedding_dim")
    if ted is not None and ch is not None and ted != 4 * ch:
        diffs.append(f"time_embedding_dim = {ted} (needs null or 4 × block_out_channels[0] = {4 * ch})")
    down, up = list(c.get("down_block_types") or []), list(c.get("up_block_types") or [])
    if any(b not in ("DownBlock2D", "AttnDownBlock2D") for b in down) or len(down) != len(chans):
        diffs.append(f"down_block_types = {down} (needs DownBlock2D/AttnDownBlock2D, one per block_out_channels)")
    if any(b not in ("UpBlock2D", "AttnUpBlock2D") for b in up) or len(up) != len(down):
        diffs.append(f"up_block_types = {up} (needs UpBlock2D/AttnUpBlock2D, one per down block)")
    elif [b.startswith("Attn") for b in down] != [b.startswith("Attn") for b in reversed(up)]:
        diffs.append(f"up_block_types = {up} (attention must mirror down_block_types = {down})")
    if chans and not diffs:
        head_dim = c.get("attention_head_dim")
        attended = [chans[i] for i, b in enumerate(down) if b.startswith("Attn")] + [chans[-1]]
        heads = {a // (head_dim or a) for a in attended}
        if (head_dim and any(a % head_dim for a in attended)) or len(heads) != 1:
            diffs.append(f"attention_head_dim = {head_dim!r} (needs one head count for every attention "
                         f"block; attended channels {sorted(set(attended))})")
    return diffs


def unet_kwargs_from_diffusers(config: dict) -> dict:
    """``UNet(**kwargs)`` of a ``UNet2DModel`` config in DDPM's layout (ConversionError listing the
    differences otherwise)."""
    diffs = diffusers_layout_differences(config)
    if diffs:
        raise ConversionError("this UNet2DModel is not in DDPM's layout, which is all diffusion.unet.UNet "
                              "expresses; differences: " + "; ".join(diffs))
    chans, down = list(config["block_out_channels"]), list(config["down_block_types"])
    ch = chans[0]
    size = config["sample_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    levels = [size // 2**i for i in range(len(chans))]
    head_dim = config.get("attention_head_dim")
    return dict(in_channels=int(config.get("in_channels", 3)), out_channels=int(config.get("out_channels", 3)),
                ch=ch, ch_mult=tuple(v // ch for v in chans), num_res_blocks=int(config["layers_per_block"]),
                attn_resolutions=tuple(r for r, b in zip(levels, down) if b.startswith("Attn")),
                dropout=float(config.get("dropout") or 0.0), image_size=int(size),
                num_heads=chans[-1] // head_dim if head_dim else 1,
                time_embed_freq_shift=int(config["freq_shift"]),
                downsample_padding="tf_same" if config["downsample_padding"] == 0 else "symmetric",
                norm_groups=int(config.get("norm_num_groups", GROUPNORM_GROUPS)))


def _time_columns(ch: int, flip_sin_to_cos: bool) -> torch.Tensor:
    """perm with our column j = diffusers' column perm[j]: ours interleaves (sin ω_i, cos ω_i), diffusers
    concatenates [sin ω_0 … sin ω_{h−1}, cos ω_0 … cos ω_{h−1}] ([cos …, sin …] when flipped)."""
    half = ch // 2
    i = torch.arange(half)
    sin_col, cos_col = (i + half, i) if flip_sin_to_cos else (i, i + half)
    return torch.stack((sin_col, cos_col), dim=1).reshape(ch)


def _key_map(model: UNet) -> dict[str, tuple[str, str]]:
    """our module name → (diffusers' module name, kind): kind ``res`` (residual block), ``attn``
    (self-attention) or ``plain`` (a convolution, linear layer or group norm named alike on both sides)."""
    m = {"input_conv": ("conv_in", "plain"), "time_mlp.0": ("time_embedding.linear_1", "plain"),
         "time_mlp.2": ("time_embedding.linear_2", "plain"), "out_norm": ("conv_norm_out", "plain"),
         "out_conv": ("conv_out", "plain"), "mid_res1": ("mid_block.resnets.0", "res"),
         "mid_attn": ("mid_block.attentions.0", "attn"), "mid_res2": ("mid_block.resnets.1", "res")}
    for side, levels in (("down", model.down), ("up", model.up)):
        for li, level in enumerate(levels):
            for bi, block in enumerate(level.blocks):
                m[f"{side}.{li}.blocks.{bi}.res"] = (f"{side}_blocks.{li}.resnets.{bi}", "res")
                if not isinstance(block.attn, torch.nn.Identity):
                    m[f"{side}.{li}.blocks.{bi}.attn"] = (f"{side}_blocks.{li}.attentions.{bi}", "attn")
            if hasattr(level, "downsample"):
                m[f"down.{li}.downsample.conv"] = (f"down_blocks.{li}.downsamplers.0.conv", "plain")
            if hasattr(level, "upsample"):
                m[f"up.{li}.upsample.conv"] = (f"up_blocks.{li}.upsamplers.0.conv", "plain")
    return m


def _state_dict_from_diffusers(model: UNet, theirs: dict, flip_sin_to_cos: bool) -> dict:
    ours = {}
    for mine, (prefix, kind_of) in _key_map(model).items():
        if kind_of == "attn":
            for kind in ("weight", "bias"):
                ours[f"{mine}.norm.{kind}"] = theirs[f"{prefix}.group_norm.{kind}"]
            c = theirs[f"{prefix}.to_q.weight"].shape[0]
            qkv = torch.cat([theirs[f"{prefix}.to_{s}.weight"] for s in "qkv"])
            ours[f"{mine}.qkv.weight"] = qkv.reshape(3 * c, c, 1, 1)
            ours[f"{mine}.qkv.bias"] = torch.cat([theirs[f"{prefix}.to_{s}.bias"] for s in "qkv"])
            ours[f"{mine}.proj_out.weight"] = theirs[f"{prefix}.to_out.0.weight"].reshape(c, c, 1, 1)
            ours[f"{mine}.proj_out.bias"] = theirs[f"{prefix}.to_out.0.bias"]
        elif kind_of == "res":
            for their_sub, sub in _RES_NAMES.items():
                for kind in ("weight", "bias"):
                    if f"{prefix}.{their_sub}.{kind}" in theirs:
                        ours[f"{mine}.{sub}.{kind}"] = theirs[f"{prefix}.{their_sub}.{kind}"]
        else:
            for kind in ("weight", "bias"):
                ours[f"{mine}.{kind}"] = theirs[f"{prefix}.{kind}"]
    ours["time_mlp.0.weight"] = ours["time_mlp.0.weight"][:, _time_columns(model.ch, flip_sin_to_cos)]
    return ours


def from_diffusers(unet) -> UNet:
    """Our :class:`UNet` (float32, eval mode) with the weights of a diffusers ``UNet2DModel`` in DDPM's layout."""
    config = dict(unet.config)
    model = UNet(**unet_kwargs_from_diffusers(config))
    theirs = {k: v.detach().to("cpu", torch.float32) for k, v in unet.state_dict().items()}
    try:
        ours = _state_dict_from_diffusers(model, theirs, bool(config.get("flip_sin_to_cos")))
        model.load_state_dict(ours, strict=True)
    except (KeyError, RuntimeError) as err:
        raise ConversionError(f"the UNet2DModel's weights do not fit its own config in DDPM's layout: "
                              f"{str(err).splitlines()[0]}") from None
    return model.eval()


def to_diffusers(model: UNet):
    """The diffusers ``UNet2DModel`` (DDPM's layout) computing the same function as our ``model``
    (unconditional models only): the inverse of :func:`from_diffusers`."""
    _require_diffusers()
    from diffusers import UNet2DModel

    if model.num_classes is not None:
        raise ConversionError("to_diffusers converts unconditional U-Nets only (DDPM's layout has no class "
                              "embedding); this model has num_classes set")
    levels = [model.image_size // 2**i for i in range(len(model.ch_mult))]
    attn = [r in model.attn_resolutions for r in levels]
    chans = tuple(model.ch * m for m in model.ch_mult)
    attended = {c for c, a in zip(chans, attn) if a} | {chans[-1]}
    if model.num_heads > 1 and len(attended) > 1:
        raise ConversionError(f"diffusers' layout fixes the head width, not the head count: {model.num_heads} heads "
                              f"over attended widths {sorted(attended)} have no UNet2DModel equivalent")
    unet = UNet2DModel(
        sample_size=model.image_size, in_channels=model.in_channels, out_channels=model.out_channels,
        freq_shift=model.time_embed_freq_shift, flip_sin_to_cos=False,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        block_out_channels=chans, layers_per_block=model.num_res_blocks,
        downsample_padding=0 if model.downsample_padding == "tf_same" else 1,
        attention_head_dim=chans[-1] // model.num_heads if model.num_heads > 1 else None,
        norm_num_groups=model.norm_groups, norm_eps=GROUPNORM_EPS,
        dropout=float(model.down[0].blocks[0].res.dropout.p))
    ours = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    perm = _time_columns(model.ch, False)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm))
    ours["time_mlp.0.weight"] = ours["time_mlp.0.weight"][:, inverse]
    theirs = {}
    for mine, (prefix, kind_of) in _key_map(model).items():
        if kind_of == "attn":
            for kind in ("weight", "bias"):
                theirs[f"{prefix}.group_norm.{kind}"] = ours[f"{mine}.norm.{kind}"]
            w, b = ours[f"{mine}.qkv.weight"], ours[f"{mine}.qkv.bias"]
            c = w.shape[1]
            for i, s in enumerate("qkv"):
                theirs[f"{prefix}.to_{s}.weight"] = w[i * c:(i + 1) * c].reshape(c, c)
                theirs[f"{prefix}.to_{s}.bias"] = b[i * c:(i + 1) * c]
            theirs[f"{prefix}.to_out.0.weight"] = ours[f"{mine}.proj_out.weight"].reshape(c, c)
            theirs[f"{prefix}.to_out.0.bias"] = ours[f"{mine}.proj_out.bias"]
        elif kind_of == "res":
            for their_sub, sub in _RES_NAMES.items():
                for kind in ("weight", "bias"):
                    if f"{mine}.{sub}.{kind}" in ours:
                        theirs[f"{prefix}.{their_sub}.{kind}"] = ours[f"{mine}.{sub}.{kind}"]
        else:
            for kind in ("weight", "bias"):
                theirs[f"{prefix}.{kind}"] = ours[f"{mine}.{kind}"]
    unet.load_state_dict(theirs, strict=True)
    return unet.eval()


# ----------------------------------------------------------------------------------------------- scheduler
def scheduler_to_diffusion_config(sched: dict | None) -> dict:
    """Our ``diffusion`` config section from a ``DDPMScheduler`` config (DDPM's own settings when ``None``:
    linear β 1e-4 … 0.02, T = 1000, ε-prediction, fixed-large variance); unsupported settings are refused."""
    if sched is None:
        return {"num_timesteps": 1000, "schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                "mean_type": "eps", "var_type": "fixed_large"}
    diffs = []
    if sched.get("trained_betas") is not None:
        diffs.append("trained_betas is set (needs a named beta_schedule)")
    schedule = _SCHEDULES.get(sched.get("beta_schedule", "linear"))
    if schedule is None:
        diffs.append(f"beta_schedule = {sched.get('beta_schedule')!r} (needs one of {', '.join(_SCHEDULES)})")
    mean = _PREDICTIONS.get(sched.get("prediction_type", "epsilon"))
    if mean is None:
        diffs.append(f"prediction_type = {sched.get('prediction_type')!r} (needs one of {', '.join(_PREDICTIONS)})")
    var = _VARIANCES.get(sched.get("variance_type", "fixed_small"))
    if var is None:
        diffs.append(f"variance_type = {sched.get('variance_type')!r} (needs one of {', '.join(_VARIANCES)})")
    if diffs:
        raise ConversionError("the scheduler config is not one this package's GaussianDiffusion expresses: "
                              + "; ".join(diffs))
    d = {"num_timesteps": int(sched.get("num_train_timesteps", 1000)), "schedule": schedule,
         "beta_start": float(sched.get("beta_start", 1e-4)), "beta_end": float(sched.get("beta_end", 0.02)),
         "mean_type": mean, "var_type": var}
    _check_betas(sched, d)
    return d


def _check_betas(sched: dict, d: dict) -> None:
    """Our β_1 … β_T equal diffusers' for the same scheduler config (diffusers computes them in float32)."""
    from diffusers import DDPMScheduler

    from diffusion.schedules import get_beta_schedule

    theirs = DDPMScheduler.from_config(sched).betas.double().numpy()
    ours = get_beta_schedule(d["schedule"], d["num_timesteps"], d["beta_start"], d["beta_end"])
    if theirs.shape != ours.shape or not np.allclose(ours, theirs, rtol=1e-5, atol=1e-8):
        raise ConversionError(f"beta_schedule {sched.get('beta_schedule')!r}: diffusers' betas differ from this "
                              f"package's {d['schedule']!r} schedule (max |Δβ| = "
                              f"{np.abs(ours - theirs).max() if theirs.shape == ours.shape else float('nan'):.2e})")


# ----------------------------------------------------------------------------------------------- loading
def _require_diffusers() -> None:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise ConversionError("converting diffusers checkpoints needs the diffusers package (a development "
                              "dependency): pip install diffusers==0.42.1") from None


def _offline_message(src: str, err: Exception) -> str:
    name = src.rstrip("/").split("/")[-1]
    return (f"cannot load {src!r}: it is not a local folder and diffusers could not fetch it from the Hugging "
            f"Face Hub ({type(err).__name__}; offline?). On a machine with internet, download the repository "
            f"https://huggingface.co/{src} (config.json, diffusion_pytorch_model.safetensors or .bin, "
            f"scheduler_config.json; e.g. `huggingface-cli download {src} --local-dir {name}`), copy the folder "
            f"here and run `python -m diffusion import-diffusers {name} --out {name}.pt`.")


def _load_source(src: str):
    """(UNet2DModel, scheduler config or None) of a local folder (the model's own folder or a pipeline with
    ``unet/`` and ``scheduler/``) or a hub id, through diffusers' loading code."""
    _require_diffusers()
    from diffusers import UNet2DModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # not the advice to install accelerate on every load
    path = Path(src)
    if path.exists():
        if not path.is_dir():
            raise ConversionError(f"SRC {src!r} must be a folder with config.json and the weights, or a hub id")
        sub = None if (path / "config.json").is_file() else "unet" if (path / "unet" / "config.json").is_file() else ""
        if sub == "":
            raise ConversionError(f"SRC folder {src} has no config.json (nor unet/config.json): not a diffusers "
                                  f"UNet2DModel checkpoint")
        config = json.loads((path / (sub or "") / "config.json").read_text())
        if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise ConversionError(f"{path / (sub or '') / 'config.json'} describes a {config['_class_name']}, "
                                  f"not a UNet2DModel")
        try:
            unet = UNet2DModel.from_pretrained(str(path), subfolder=sub)
        except (OSError, ValueError, RuntimeError) as err:
            raise ConversionError(f"diffusers cannot load the UNet2DModel in {path}: "
                                  f"{str(err).splitlines()[0]}") from None
        sched = None
        for cand in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
            if cand.is_file():
                sched = json.loads(cand.read_text())
                break
        return unet, sched
    if src.count("/") != 1 or src.startswith((".", "/")):
        raise ConversionError(f"SRC {src!r} is neither an existing folder nor a hub id like google/ddpm-cifar10-32")
    local_only = not _hub_reachable()  # offline: only diffusers' local cache, no minute of retries
    try:
        try:
            unet = UNet2DModel.from_pretrained(src, local_files_only=local_only)
        except EnvironmentError:
            unet = UNet2DModel.from_pretrained(src, subfolder="unet", local_files_only=local_only)
    except Exception as err:  # network, missing repository, offline mode: all end in the same advice
        raise ConversionError(_offline_message(src, err)) from None
    from diffusers import DDPMScheduler

    sched = None
    for sub in (None, "scheduler"):
        try:
            sched = dict(DDPMScheduler.load_config(src, subfolder=sub, local_files_only=local_only))
            break
        except Exception:  # no scheduler config there: DDPM's own settings are assumed
            continue
    return unet, sched


def _hub_reachable() -> bool:
    """Whether the Hugging Face Hub's host name resolves (and offline mode is not requested)."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        return False
    return True


def import_diffusers(src: str, out: str | Path, data: str | None = None) -> dict:
    """Convert the diffusers ``UNet2DModel`` at ``src`` (folder or hub id) into a checkpoint of this package
    at ``out`` that ``python -m diffusion sample|evaluate --ckpt out`` accept.

    ``data``: the dataset of ``diffusion.data`` that ``evaluate`` compares with (default: cifar10 for
    3×32×32, celeba64 for 3×64×64; required for other shapes). Returns a summary dict.
    """
    from diffusion.checkpoint import git_info, save_checkpoint
    from diffusion.config import config_from_dict, config_to_dict
    from diffusion.data import DATASET_NAMES

    unet, sched = _load_source(src)
    model = from_diffusers(unet)
    diffusion = scheduler_to_diffusion_config(sched)
    shape = (model.in_channels, model.image_size)
    data = data or _DATASET_OF_SHAPE.get(shape)
    if data is None or data not in DATASET_NAMES:
        raise ConversionError(f"--data must name the dataset evaluate compares this {shape[0]}×{shape[1]}×"
                              f"{shape[1]} model with, one of {', '.join(DATASET_NAMES)}; got {data!r}")
    kw = unet_kwargs_from_diffusers(dict(unet.config))
    cfg = config_from_dict({
        "name": f"diffusers:{src}",
        "model": {"kind": "unet", "ch": kw["ch"], "ch_mult": list(kw["ch_mult"]),
                  "num_res_blocks": kw["num_res_blocks"], "attn_resolutions": list(kw["attn_resolutions"]),
                  "dropout": kw["dropout"], "class_cond": False, "num_heads": kw["num_heads"],
                  "time_embed_freq_shift": kw["time_embed_freq_shift"],
                  "downsample_padding": kw["downsample_padding"]},
        "diffusion": diffusion, "data": {"name": data}})
    if model.out_channels != model.in_channels:
        raise ConversionError(f"out_channels = {model.out_channels} differs from in_channels = "
                              f"{model.in_channels}: a learned-variance model, which this package does not sample")
    weights = model.state_dict()
    state = {"step": 0, "model": weights, "ema": {"module": weights}, "config": config_to_dict(cfg),
             "data": {"name": data, "label": f"{src} (diffusers checkpoint)", "channels": model.in_channels,
                      "image_size": model.image_size, "num_classes": 0, "class_names": []},
             "source": {"diffusers": str(src), "unet_config": json.dumps(dict(unet.config), default=str),
                        "scheduler_config": json.dumps(sched, default=str)},
             "git": git_info(), "torch_version": str(torch.__version__),
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = save_checkpoint(state, out)
    notes = []
    if "attention_head_dim" in (unet.config.get("_use_default_values") or []) and kw["num_heads"] > 1:
        notes.append(f"config.json does not set attention_head_dim: diffusers' default was used, giving "
                     f"{kw['num_heads']} attention heads (DDPM's own network attends with one head); the "
                     f"converted model computes what diffusers computes")
    return {"checkpoint": str(path), "source": str(src), "parameters": sum(p.numel() for p in model.parameters()),
            "model": config_to_dict(cfg)["model"], "diffusion": config_to_dict(cfg)["diffusion"], "data": data,
            "notes": notes}

"""Size and cost of the U-Net ε_θ (section 3.1, table 2): stage-by-stage description, parameter count,
FLOPs per image. Used by ``python -m diffusion info`` and the U-Net notebook."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from diffusion.unet import UNet

__all__ = ["count_parameters", "describe_unet", "flops_per_image"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (35,746,307 for the CIFAR-10 U-Net of table 2 without
    class embedding)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _check_model_input(model: UNet, image_size: int, in_channels: int) -> None:
    if not isinstance(model, UNet):
        raise ValueError(f"model must be a diffusion.unet.UNet, got {type(model).__name__}")
    if image_size != model.image_size:
        raise ValueError(f"image_size must equal the model's image_size {model.image_size}, got {image_size!r}")
    if in_channels != model.in_channels:
        raise ValueError(f"in_channels must equal the model's in_channels {model.in_channels}, got {in_channels!r}")


def _stages(model: UNet) -> list[tuple[str, str, nn.Module]]:
    """(name, kind, module) for every stage in forward order."""
    stages: list[tuple[str, str, nn.Module]] = [("time_mlp", "time MLP_t (eq. 16)", model.time_mlp)]
    if model.num_classes is not None:
        stages.append(("class_embed", f"class embedding ({model.num_classes}+1 rows)", model.class_embed))
        stages.append(("class_mlp", "class MLP_y (eq. 17)", model.class_mlp))
    stages.append(("input_conv", "conv 3×3", model.input_conv))
    for i, level in enumerate(model.down):
        for j, block in enumerate(level.blocks):
            kind = "res" if isinstance(block.attn, nn.Identity) else "res + attn"
            stages.append((f"down.{i}.{j}", kind, block))
        if hasattr(level, "downsample"):
            stages.append((f"down.{i}.downsample", "conv 3×3 stride 2", level.downsample))
    stages.append(("mid.res1", "res", model.mid_res1))
    stages.append(("mid.attn", "attn", model.mid_attn))
    stages.append(("mid.res2", "res", model.mid_res2))
    for i, level in zip(reversed(range(len(model.up))), model.up):
        for j, block in enumerate(level.blocks):
            kind = "res" if isinstance(block.attn, nn.Identity) else "res + attn"
            stages.append((f"up.{i}.{j}", kind + " (skip concat)", block))
        if hasattr(level, "upsample"):
            stages.append((f"up.{i}.upsample", "nearest ×2 + conv 3×3", level.upsample))
    stages.append(("head.norm", "GroupNorm + SiLU", model.out_norm))
    stages.append(("head.conv", "conv 3×3", model.out_conv))
    return stages


@torch.no_grad()
def describe_unet(model: UNet, image_size: int, in_channels: int) -> list[dict]:
    """One row per stage of the U-Net of section 3.1 in forward order, then a ``total`` row.

    Each row: ``name``, ``kind``, ``resolution`` (output side length; ``None`` for the embedding MLPs),
    ``in_channels``, ``out_channels`` (feature widths entering/leaving the stage; for the embedding stages
    the vector widths), ``output_shape`` (for one image) and ``parameters``. The shapes are measured by
    running one zero image through the model. The ``total`` row's parameters are ``count_parameters(model)``
    and equal the sum over the stages.
    """
    _check_model_input(model, image_size, in_channels)
    stages = _stages(model)
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for name, _, module in stages:
        def hook(mod, args, output, name=name):
            seen[name] = (tuple(args[0].shape), tuple(output.shape))
        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    param = next(model.parameters())
    try:
        model.eval()
        x = torch.zeros(1, in_channels, image_size, image_size, device=param.device, dtype=param.dtype)
        model(x, torch.zeros(1, dtype=torch.long, device=param.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    rows = []
    for name, kind, module in stages:
        in_shape, out_shape = seen[name]
        spatial = len(out_shape) == 4
        rows.append(dict(
            name=name,
            kind=kind,
            resolution=out_shape[-1] if spatial else None,
            in_channels=in_shape[1] if len(in_shape) > 1 else None,
            out_channels=out_shape[1],
            output_shape=out_shape,
            parameters=count_parameters(module),
        ))
    rows.append(dict(name="total", kind="", resolution=None, in_channels=in_channels,
                     out_channels=model.out_channels, output_shape=rows[-1]["output_shape"],
                     parameters=count_parameters(model)))
    return rows


@torch.no_grad()
def flops_per_image(model: UNet, image_size: int, in_channels: int, y: int | None = None) -> int:
    """Floating-point operations of one forward pass of ε_θ for one image, as counted by
    ``torch.utils.flop_counter.FlopCounterMode``.

    What is counted: 2 × multiply-adds of every convolution, matrix multiplication (the linear layers of
    MLP_t, MLP_y and the residual blocks' embedding projections) and of the two attention matmuls QKᵀ and AV
    inside ``scaled_dot_product_attention``. Not counted: biases, normalisation, activations, softmax,
    additions, up-sampling and the sinusoidal embedding of eq. (16) — element-wise work that is small next
    to the convolutions. ``y`` is a class index for a conditional model (default: the null token ∅).
    """
    _check_model_input(model, image_size, in_channels)
    param = next(model.parameters())
    x = torch.zeros(1, in_channels, image_size, image_size, device=param.device, dtype=param.dtype)
    t = torch.zeros(1, dtype=torch.long, device=param.device)
    labels = None if y is None else torch.tensor([y], dtype=torch.long, device=param.device)
    was_training = model.training
    try:
        model.eval()
        # the math backend of attention: FlopCounterMode sees its two matmuls (it has no formula for the
        # fused CPU kernel, which would leave QKᵀ and AV uncounted)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x, t, labels)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())

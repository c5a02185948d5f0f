"""Tests of diffusion.model_info: stage table, parameter count and FLOPs of the U-Net (section 3.1)."""

import pytest
import torch
from torch import nn

from diffusion.model_info import count_parameters, describe_unet, flops_per_image
from diffusion.unet import UNet


def tiny(**kwargs):
    cfg = dict(in_channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
               image_size=8)
    cfg.update(kwargs)
    return UNet(**cfg)


def test_count_parameters_by_hand():
    layer = nn.Conv2d(3, 5, 3)
    assert count_parameters(layer) == 3 * 5 * 9 + 5
    layer.bias.requires_grad_(False)
    assert count_parameters(layer, trainable_only=True) == 3 * 5 * 9


@pytest.mark.parametrize("num_classes", [None, 4])
def test_describe_unet_rows(num_classes):
    model = tiny(num_classes=num_classes)
    rows = describe_unet(model, 8, 1)
    assert rows[-1]["name"] == "total"
    stages = rows[:-1]
    # two routes to the total: sum over stages and the model's own parameter count
    assert sum(r["parameters"] for r in stages) == rows[-1]["parameters"] == count_parameters(model)
    by_name = {r["name"]: r for r in rows}
    assert by_name["input_conv"]["in_channels"] == 1 and by_name["input_conv"]["out_channels"] == 32
    assert by_name["input_conv"]["resolution"] == 8
    assert by_name["down.0.downsample"]["resolution"] == 4
    assert by_name["down.1.0"]["kind"] == "res + attn"
    assert by_name["mid.attn"]["resolution"] == 4 and by_name["mid.attn"]["out_channels"] == 64
    # decoder blocks see the skip concatenation: 64 running + 64 skip channels at the bottom level
    assert by_name["up.1.0"]["in_channels"] == 128
    assert "up.0.upsample" not in by_name and "down.1.downsample" not in by_name
    assert by_name["up.1.upsample"]["resolution"] == 8
    assert by_name["head.conv"]["output_shape"] == (1, 1, 8, 8)
    assert by_name["time_mlp"]["in_channels"] == 32 and by_name["time_mlp"]["out_channels"] == 128
    assert ("class_mlp" in by_name) == (num_classes is not None)


def _hand_flops(model, image_size, in_channels):
    """2 × multiply-adds of convolutions, linears and attention matmuls, from layer shapes seen by hooks."""
    total = 0
    hooks = []

    def conv_hook(m, args, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, args, out):
        nonlocal total
        total += 2 * out.numel() * m.in_features

    def attn_hook(m, args, out):
        nonlocal total
        _, c, h, w = args[0].shape
        total += 2 * 2 * (h * w) ** 2 * c  # QKᵀ and AV, summed over heads
        # the 1×1 projections to Q, K, V and back, computed with their Conv2d weights (no module call, no hook)
        total += 2 * (h * w) * c * 3 * c + 2 * (h * w) * c * c

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif m.__class__.__name__ == "AttnBlock":
            hooks.append(m.register_forward_hook(attn_hook))
    with torch.no_grad():
        model(torch.zeros(1, in_channels, image_size, image_size), torch.zeros(1, dtype=torch.long))
    for h in hooks:
        h.remove()
    return total


@pytest.mark.parametrize("num_classes,num_heads", [(None, 1), (3, 2)])
def test_flops_per_image_matches_hand_count(num_classes, num_heads):
    model = tiny(num_classes=num_classes, num_heads=num_heads)
    flops = flops_per_image(model, 8, 1)
    assert flops == _hand_flops(model, 8, 1)
    assert flops_per_image(model, 8, 1, y=None) == flops
    if num_classes is not None:
        assert flops_per_image(model, 8, 1, y=1) == flops


def test_model_info_value_errors():
    model = tiny()
    with pytest.raises(ValueError, match="image_size"):
        describe_unet(model, 16, 1)
    with pytest.raises(ValueError, match="in_channels"):
        flops_per_image(model, 8, 3)
    with pytest.raises(ValueError, match="model"):
        describe_unet(nn.Linear(2, 2), 8, 1)

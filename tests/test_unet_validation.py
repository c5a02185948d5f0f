"""Every check of the U-Net's configuration and inputs, with its whole message and at its boundaries
(what is just allowed works, what is just outside is named)."""
import re

import pytest
import torch

from diffusion.unet import Downsample, UNet, timestep_embedding

BASE = dict(in_channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
            image_size=8)


def build(**kw):
    return UNet(**{**BASE, **kw})


def exact(message):
    return "^" + re.escape(message) + "$"


@pytest.mark.parametrize("kw, message", [
    (dict(in_channels=0), "in_channels must be a positive integer, got 0"),
    (dict(in_channels=True), "in_channels must be a positive integer, got True"),
    (dict(in_channels=1.0), "in_channels must be a positive integer, got 1.0"),
    (dict(ch=-32), "ch must be a positive integer, got -32"),
    (dict(ch=48), "ch must be divisible by 32 (GroupNorm groups), got 48"),
    (dict(ch_mult=()), "ch_mult must list at least one channel multiplier, got an empty sequence"),
    (dict(ch_mult=(1, 0)), "ch_mult entries must be a positive integer, got 0"),
    (dict(num_res_blocks=0), "num_res_blocks must be a positive integer, got 0"),
    (dict(dropout=1.0), "dropout must be in [0, 1), got 1.0"),
    (dict(dropout=-0.1), "dropout must be in [0, 1), got -0.1"),
    (dict(image_size=0), "image_size must be a positive integer, got 0"),
    (dict(image_size=6, ch_mult=(1, 2, 2)),
     "image_size must be divisible by 2**(len(ch_mult)-1) = 4 for 3 levels, got 6"),
    (dict(num_classes=0), "num_classes must be a positive integer, got 0"),
    (dict(num_heads=0), "num_heads must be a positive integer, got 0"),
    (dict(num_heads=3), "num_heads must divide every attended channel count [64], got 3"),
    (dict(num_heads=64, attn_resolutions=(8, 4)), "num_heads must divide every attended channel count [32, 64], "
                                                 "got 64"),
    (dict(time_embed_freq_shift=2), "time_embed_freq_shift must be 0 or 1, got 2"),
    (dict(time_embed_freq_shift=True), "time_embed_freq_shift must be 0 or 1, got True"),
    (dict(downsample_padding="same"), "downsample_padding must be one of tf_same, symmetric, got 'same'"),
    (dict(out_channels=0), "out_channels must be a positive integer, got 0"),
    (dict(attn_resolutions=(2,)), "attn_resolutions entry 2 is not reached by any level; resolutions are [8, 4]"),
])
def test_configuration_errors_are_named(kw, message):
    with pytest.raises(ValueError, match=exact(message)):
        build(**kw)


@pytest.mark.parametrize("kw", [dict(dropout=0.0), dict(dropout=0.999), dict(image_size=4, ch_mult=(1, 2, 2)),
                                dict(num_heads=32), dict(num_heads=64, attn_resolutions=()),
                                dict(time_embed_freq_shift=0), dict(downsample_padding="symmetric"),
                                dict(attn_resolutions=(8, 4)), dict(ch_mult=(1,), attn_resolutions=(8,)),
                                dict(out_channels=2), dict(num_classes=1)])
def test_configurations_at_the_boundaries_are_accepted(kw):
    net = build(**kw)
    x = torch.zeros(2, 1, net.image_size, net.image_size)
    y = torch.tensor([0, 1]) if kw.get("num_classes") else None
    assert net(x, torch.tensor([0, 5]), y).shape == (2, kw.get("out_channels", 1), net.image_size, net.image_size)


def test_input_errors_are_named():
    net = build(num_classes=3)
    x, t, y = torch.zeros(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 3])  # 3: the null token
    assert net(x, t, y).shape == x.shape and net(x, t).shape == x.shape
    cases = [
        ((torch.zeros(1, 8, 8), t, y), "x must be a 4-D tensor (B, C, H, W), got shape (1, 8, 8)"),
        ((torch.zeros(2, 3, 8, 8), t, y), "x must have 1 channels (in_channels), got 3"),
        ((torch.zeros(2, 1, 8, 4), t, y), "x must be 8×8 (image_size), got 8×4"),
        ((torch.zeros(2, 1, 4, 8), t, y), "x must be 8×8 (image_size), got 4×8"),
        ((x, torch.tensor([1, 2, 3]), y), "t must have shape (2,) matching x's batch, got (3,)"),
        ((x, torch.tensor([[1, 2]]), y), "t must have shape (2,) matching x's batch, got (1, 2)"),
        ((x, t, torch.tensor([0])), "y must have shape (2,) matching x's batch, got (1,)"),
        ((x, t, torch.tensor([[0, 1]])), "y must have shape (2,) matching x's batch, got (1, 2)"),
        ((x, t, torch.tensor([0.0, 1.0])), "y must be an integer tensor of class indices, got dtype torch.float32"),
        ((x, t, torch.tensor([1j, 0j])), "y must be an integer tensor of class indices, got dtype torch.complex64"),
        ((x, t, torch.tensor([True, False])), "y must be an integer tensor of class indices, got dtype torch.bool"),
        ((x, t, torch.tensor([0, 4])),
         "y must hold class indices in [0, 3] (index 3 is the null token), got values in [0, 4]"),
        ((x, t, torch.tensor([-1, 2])),
         "y must hold class indices in [0, 3] (index 3 is the null token), got values in [-1, 2]"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=exact(message)):
            net(*args)
    assert net(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)).shape[0] == 0
    with pytest.raises(ValueError, match=exact("y must be None for an unconditional model (num_classes=None)")):
        build()(x, t, y)


@pytest.mark.parametrize("args, message", [
    ((torch.zeros(2), 0), "dim must be a positive even integer, got 0"),
    ((torch.zeros(2), 5), "dim must be a positive even integer, got 5"),
    ((torch.zeros(2), True), "dim must be a positive even integer, got True"),
    ((torch.zeros(2), 4.0), "dim must be a positive even integer, got 4.0"),
    ((torch.zeros(2), 4, 2), "freq_shift must be 0 or 1, got 2"),
    ((torch.zeros(2), 4, True), "freq_shift must be 0 or 1, got True"),
    ((torch.zeros(2), 2, 1), "dim must be at least 4 with freq_shift=1, got 2"),
    ((torch.zeros(2, 1), 4), "t must be a 1-D tensor of timesteps (B,), got shape (2, 1)"),
])
def test_timestep_embedding_errors_are_named(args, message):
    with pytest.raises(ValueError, match=exact(message)):
        timestep_embedding(*args)


def test_timestep_embedding_boundaries():
    assert timestep_embedding(torch.tensor([3]), 2, 0).shape == (1, 2)  # the smallest width without a shift
    assert timestep_embedding(torch.tensor([3]), 4, 1).shape == (1, 4)  # and with one
    with pytest.raises(ValueError, match=exact("padding must be one of tf_same, symmetric, got 'zeros'")):
        Downsample(32, padding="zeros")

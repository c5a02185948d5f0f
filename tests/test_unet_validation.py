"""Every check of the U-Net's configuration and inputs, with its whole message and at its boundaries
(what is just allowed works, what is just outside is named); the defaults and recorded configuration; the
context embedding and a residual block written out with the modules' own weights."""

import pytest
import torch
import torch.nn.functional as F

from diffusion.unet import AttnBlock, Downsample, ResBlock, UNet, timestep_embedding
from tests.messages import exact

BASE = dict(in_channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
            image_size=8)


def build(**kw):
    return UNet(**{**BASE, **kw})


@pytest.mark.parametrize("kw, message", [
    (dict(in_channels=0), "in_channels must be a positive integer, got 0"),
    (dict(in_channels=True), "in_channels must be a positive integer, got True"),
    (dict(in_channels=1.0), "in_channels must be a positive integer, got 1.0"),
    (dict(ch=-32), "ch must be a positive integer, got -32"),
    (dict(ch=48), "ch must be divisible by norm_groups=32 (GroupNorm groups), got 48"),
    (dict(ch=32, norm_groups=0), "norm_groups must be a positive integer, got 0"),
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


def test_timestep_embedding_is_float32_whatever_the_inputs():
    """The embedding is float32 for float64 timesteps and under a float64 default dtype (the MLP_t after it is
    float32; a float64 embedding would fail there)."""
    expected = timestep_embedding(torch.tensor([0, 7, 999]), 8)
    assert expected.dtype == torch.float32
    assert torch.equal(timestep_embedding(torch.tensor([0.0, 7.0, 999.0], dtype=torch.float64), 8), expected)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        under_float64 = timestep_embedding(torch.tensor([0, 7, 999]), 8)
    finally:
        torch.set_default_dtype(default)
    assert under_float64.dtype == torch.float32
    torch.testing.assert_close(under_float64, expected, rtol=0, atol=1e-6)


def test_defaults_are_the_ddpm_cifar10_network():
    """Constructed with nothing but the channels, the network is table 2's CIFAR-10 model."""
    net = UNet(3)
    assert (net.out_channels, net.ch, net.ch_mult, net.num_res_blocks, net.attn_resolutions, net.image_size,
            net.num_classes, net.num_heads, net.time_embed_freq_shift, net.downsample_padding) == (
        3, 128, (1, 2, 2, 2), 2, (16,), 32, None, 1, 1, "tf_same")
    assert {m.num_heads for m in net.modules() if isinstance(m, AttnBlock)} == {1}
    assert {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    assert Downsample(32).padding == "tf_same"


def test_configuration_is_recorded_as_given():
    kw = dict(in_channels=2, ch=64, ch_mult=[1, 3], num_res_blocks=3, attn_resolutions=[8], dropout=0.0,
              image_size=8, num_classes=5, num_heads=2, out_channels=4, time_embed_freq_shift=0,
              downsample_padding="symmetric")
    net = UNet(**kw)
    expected = {**kw, "ch_mult": (1, 3), "attn_resolutions": (8,)}  # sequences are kept as tuples
    del expected["dropout"]  # recorded in the Dropout modules
    assert {name: getattr(net, name) for name in expected} == expected
    assert {m.num_heads for m in net.modules() if isinstance(m, AttnBlock)} == {2}
    assert [m.padding for m in net.modules() if isinstance(m, Downsample)] == ["symmetric"]


def _randomise(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return module


def test_context_embedding_written_out():
    """e_ctx = W₂ SiLU(W₁ e_raw + b₁) + b₂ + V₂ SiLU(V₁ E[y] + c₁) + c₂ (eqs. 16-17) with the module's own weights;
    y = None is the null row E[K]."""
    net = _randomise(build(num_classes=3))
    t, y = torch.tensor([0, 4, 9]), torch.tensor([2, 0, 3])

    def mlp(layers, v):
        first, _, second = layers
        return F.linear(F.silu(F.linear(v, first.weight, first.bias)), second.weight, second.bias)

    e_raw = timestep_embedding(t, 32, freq_shift=1)
    expected = mlp(net.time_mlp, e_raw) + mlp(net.class_mlp, net.class_embed.weight[y])
    torch.testing.assert_close(net.context_embedding(t, y), expected, rtol=1e-5, atol=1e-5)
    null = mlp(net.time_mlp, e_raw) + mlp(net.class_mlp, net.class_embed.weight[[3, 3, 3]])
    torch.testing.assert_close(net.context_embedding(t), null, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_ch, out_ch", [(32, 32), (32, 64)])
def test_residual_block_written_out(in_ch, out_ch):
    """h = conv₁(SiLU(GN₁ x)) + Linear(SiLU(e_ctx)); out = skip(x) + conv₂(SiLU(GN₂ h)) (dropout 0)."""
    block = _randomise(ResBlock(in_ch, out_ch, emb_dim=16, dropout=0.0), seed=1)
    generator = torch.Generator().manual_seed(2)
    x, emb = torch.randn(2, in_ch, 4, 4, generator=generator), torch.randn(2, 16, generator=generator)

    def norm(layer, v):
        return F.group_norm(v, 32, layer.weight, layer.bias, eps=1e-6)

    h = F.conv2d(F.silu(norm(block.norm1, x)), block.conv1.weight, block.conv1.bias, padding=1)
    h = h + F.linear(F.silu(emb), block.emb_proj[1].weight, block.emb_proj[1].bias)[:, :, None, None]
    out = F.conv2d(F.silu(norm(block.norm2, h)), block.conv2.weight, block.conv2.bias, padding=1)
    skip = x if in_ch == out_ch else F.conv2d(x, block.skip.weight, block.skip.bias)
    torch.testing.assert_close(block(x, emb), skip + out, rtol=1e-4, atol=1e-4)


def test_embeddings_are_made_on_the_timesteps_device():
    """The frequencies and the null labels are created on t's device (``meta`` stands in for an accelerator:
    mixing it with CPU tensors fails or, for the embedding lookup, is recorded by a hook)."""
    t = torch.tensor([1, 2], device="meta")
    assert timestep_embedding(t, 8).device.type == "meta"
    net = build(num_classes=3).to("meta")
    seen = []
    net.class_embed.register_forward_pre_hook(lambda module, args: seen.append((args[0].device.type, args[0].dtype)))
    assert net.context_embedding(t).device.type == "meta"
    assert seen == [("meta", torch.int64)]

"""Tests of the U-Net ε_θ (section 3.1, table 2) and its embeddings (eqs. 16-17)."""

import math

import pytest
import torch
from torch import nn

from diffusion.unet import UNet, timestep_embedding


def tiny(**kwargs):
    cfg = dict(in_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
               image_size=8)
    cfg.update(kwargs)
    return UNet(**cfg)


def perturb_(model, scale=0.05, seed=0):
    """Give every parameter (including the zero-initialised ones) random values so outputs are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.mark.parametrize(
    "in_channels,image_size,ch_mult,attn",
    [(3, 8, (1, 2), (4,)), (1, 16, (1, 2, 2), (8,)), (3, 12, (1, 2), (6,)), (4, 4, (1,), (4,))],
)
def test_output_shape(in_channels, image_size, ch_mult, attn):
    torch.manual_seed(0)
    model = tiny(in_channels=in_channels, image_size=image_size, ch_mult=ch_mult, attn_resolutions=attn)
    x = torch.randn(2, in_channels, image_size, image_size)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    out_c = tiny(in_channels=in_channels, image_size=image_size, ch_mult=ch_mult, attn_resolutions=attn,
                 out_channels=2 * in_channels)(x, torch.tensor([3.5, 10.0]))
    assert out_c.shape == (2, 2 * in_channels, image_size, image_size)


def test_cifar10_parameter_count():
    model = UNet(in_channels=3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                 dropout=0.1, image_size=32)
    assert sum(p.numel() for p in model.parameters()) == 35_746_307
    # The class-conditional variant adds exactly the embedding of K+1 rows and MLP_y (eq. 17).
    cond = UNet(in_channels=3, image_size=32, num_classes=10)
    d = 4 * 128
    extra = 11 * d + 2 * (d * d + d)
    assert sum(p.numel() for p in cond.parameters()) == 35_746_307 + extra


def test_null_token_changes_output_and_none_means_null():
    torch.manual_seed(0)
    model = perturb_(tiny(num_classes=10)).eval()
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([1, 50, 500])
    null = torch.full((3,), 10)
    real = torch.tensor([0, 4, 9])
    out_null = model(x, t, null)
    out_real = model(x, t, real)
    assert (out_null - out_real).abs().max() > 1e-4
    torch.testing.assert_close(model(x, t), out_null)
    # eq. (17): e_ctx = MLP_t(e_t) + MLP_y(v_y), checked by hand.
    e_t = model.time_mlp(timestep_embedding(t, 32, model.time_embed_freq_shift))
    manual = e_t + model.class_mlp(model.class_embed.weight[real])
    torch.testing.assert_close(model.context_embedding(t, real), manual)


def test_zero_initialised_output_projections():
    model = tiny(num_heads=2)
    attn = [m for m in model.modules() if m.__class__.__name__ == "AttnBlock"]
    assert len(attn) == 4  # 1 encoder + 2 decoder blocks at 4×4, plus the middle block
    for block in attn:
        assert torch.count_nonzero(block.proj_out.weight) == 0
        assert torch.count_nonzero(block.proj_out.bias) == 0
        # zero projection => the attention block is the identity at initialisation
        h = torch.randn(2, block.proj_out.in_channels, 4, 4)
        torch.testing.assert_close(block(h), h)
    assert all(torch.count_nonzero(b.qkv.weight) > 0 for b in attn)


def test_attention_matches_hand_computation():
    """softmax(QKᵀ/√d_k)V per head, recomputed by hand with explicit matmuls."""
    torch.manual_seed(0)
    model = perturb_(tiny(num_heads=2))
    block = model.mid_attn
    h = torch.randn(2, 64, 4, 4)
    qkv = block.qkv(block.norm(h)).reshape(2, 3, 2, 32, 16)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, heads, d, HW)
    a = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(32), dim=-1)
    out = torch.einsum("bhij,bhdj->bhdi", a, v).reshape(2, 64, 4, 4)
    torch.testing.assert_close(block(h), h + block.proj_out(out), atol=1e-5, rtol=1e-4)


def test_bf16_autocast_channels_last_matches_fp32():
    torch.manual_seed(0)
    model = perturb_(tiny(num_classes=3), scale=0.02).eval()
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([5, 700])
    y = torch.tensor([1, 3])
    ref = model(x, t, y)
    model_cl = model.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model_cl(x.to(memory_format=torch.channels_last), t, y)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_no_graph_breaks():
    torch._dynamo.reset()
    model = tiny(num_classes=3, ch_mult=(1,), attn_resolutions=(8,)).eval()
    x = torch.randn(2, 3, 8, 8)
    explanation = torch._dynamo.explain(model)(x, torch.tensor([1, 2]), torch.tensor([0, 3]))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()


@pytest.mark.parametrize("dim", [2, 6, 32])
def test_timestep_embedding_eq16(dim):
    ts = [0, 1, 17, 999]
    emb = timestep_embedding(torch.tensor(ts), dim)
    assert emb.shape == (len(ts), dim)
    for row, t in enumerate(ts):
        for i in range(dim // 2):
            angle = t / 10000 ** (2 * i / dim)
            assert emb[row, 2 * i].item() == pytest.approx(math.sin(angle), abs=2e-4)
            assert emb[row, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=2e-4)
    # float timesteps (respaced models) are embedded by the same formula
    half = timestep_embedding(torch.tensor([0.5]), 2)
    assert half[0, 0].item() == pytest.approx(math.sin(0.5), abs=1e-6)


def test_timestep_embedding_bad_input():
    with pytest.raises(ValueError, match="dim"):
        timestep_embedding(torch.tensor([1]), 7)
    with pytest.raises(ValueError, match="t must"):
        timestep_embedding(torch.tensor([[1]]), 8)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(image_size=10, ch_mult=(1, 2, 2)), "image_size"),
        (dict(ch=48), "ch"),
        (dict(attn_resolutions=(2,)), "attn_resolutions"),
        (dict(in_channels=0), "in_channels"),
        (dict(num_res_blocks=0), "num_res_blocks"),
        (dict(ch_mult=()), "ch_mult"),
        (dict(num_heads=3), "num_heads"),
        (dict(num_classes=0), "num_classes"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_constructor_value_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tiny(**kwargs)


def test_forward_value_errors():
    model = tiny(num_classes=10)
    t = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="image_size"):
        model(torch.randn(2, 3, 16, 16), t)
    with pytest.raises(ValueError, match="in_channels"):
        model(torch.randn(2, 1, 8, 8), t)
    with pytest.raises(ValueError, match="t must"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([0]))
    for bad in ([0, 11], [-1, 2]):
        with pytest.raises(ValueError, match=r"y must hold class indices in \[0, 10\]"):
            model(torch.randn(2, 3, 8, 8), t, torch.tensor(bad))
    with pytest.raises(ValueError, match="y must be an integer"):
        model(torch.randn(2, 3, 8, 8), t, torch.tensor([0.0, 1.0]))
    model(torch.randn(2, 3, 8, 8), t, torch.tensor([0, 10]))  # index K (null token) is allowed
    with pytest.raises(ValueError, match="unconditional"):
        tiny()(torch.randn(2, 3, 8, 8), t, torch.tensor([0, 1]))


def test_architecture_follows_section_3_1():
    model = tiny(ch_mult=(1, 2), num_res_blocks=2)
    # decoder has N+1 residual blocks per level, encoder N
    assert [len(level.blocks) for level in model.down] == [2, 2]
    assert [len(level.blocks) for level in model.up] == [3, 3]
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert all(m.num_groups == 32 and m.eps == 1e-6 for m in norms)
    down = model.down[0].downsample.conv
    assert down.stride == (2, 2) and down.kernel_size == (3, 3)
    # time embedding: width ch, MLP_t ch → 4ch → 4ch
    assert model.time_mlp[0].in_features == 32 and model.time_mlp[2].out_features == 128


@pytest.mark.parametrize("norm_groups, blind", [(32, True), (8, False)])
def test_group_norm_of_one_channel_per_group_is_blind_to_each_images_colour(norm_groups, blind):
    """At C = 32, DDPM's 32 groups make every GroupNorm an instance norm: the output head maps features h and
    h + a per-image, per-channel constant to exactly the same ε̂, so the per-image colour of x_t cannot reach
    the output through it. With C/4 groups (DDPM's 4 channels per group) it can."""
    torch.manual_seed(0)
    model = UNet(in_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                 image_size=16, norm_groups=norm_groups)
    assert all(m.num_groups == norm_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm))
    torch.nn.init.normal_(model.out_conv.weight, std=0.1)  # zero-initialised: give the head something to say
    h = torch.randn(4, 32, 16, 16)
    shift = torch.randn(4, 32, 1, 1)
    head = lambda f: model.out_conv(torch.nn.functional.silu(model.out_norm(f)))  # noqa: E731
    same = torch.allclose(head(h + shift), head(h), atol=1e-5)
    assert same == blind
    with pytest.raises(ValueError, match="norm_groups"):
        UNet(in_channels=3, ch=32, norm_groups=5)

"""Structure of the U-Net of section 3.1, observed while it runs (not through parameter counts).

Forward hooks record, in call order, the feature-map size and channels at which every residual block and
every self-attention block runs. The expected sequence is written out independently from the
configuration: encoder levels (resolution halving, ``num_res_blocks`` blocks each, attention after each
block at the levels in ``attn_resolutions``), the middle block (res → attn → res at the lowest
resolution), then the decoder levels in reverse (``num_res_blocks + 1`` blocks each over a skip
concatenation, attention where the encoder had it). Moving attention to another level, dropping or adding a
block, or skipping the concatenation changes the sequence. Fresh residual and attention blocks (zero-
initialised last convolution / output projection) must return exactly their skip path / their input.
"""
import pytest
import torch

from diffusion.unet import AttnBlock, ResBlock, UNet

torch.set_num_threads(1)


def expected_calls(ch, ch_mult, num_res_blocks, attn_resolutions, image_size):
    """[(kind, in_channels, out_channels, size)] in execution order, from the configuration alone."""
    calls, skips = [], [ch]
    cur, size = ch, image_size
    for level, mult in enumerate(ch_mult):
        for _ in range(num_res_blocks):
            calls.append(("res", cur, ch * mult, size))
            cur = ch * mult
            skips.append(cur)
            if size in attn_resolutions:
                calls.append(("attn", cur, cur, size))
        if level != len(ch_mult) - 1:
            size //= 2
            skips.append(cur)
    calls += [("res", cur, cur, size), ("attn", cur, cur, size), ("res", cur, cur, size)]
    for level in reversed(range(len(ch_mult))):
        for _ in range(num_res_blocks + 1):
            calls.append(("res", cur + skips.pop(), ch * ch_mult[level], size))
            cur = ch * ch_mult[level]
            if size in attn_resolutions:
                calls.append(("attn", cur, cur, size))
        if level != 0:
            size *= 2
    assert not skips
    return calls


def observed_calls(model, image_size, in_channels):
    calls = []

    def hook(module, inputs, output):
        x = inputs[0]
        assert x.shape[-1] == x.shape[-2] == output.shape[-1]
        calls.append(("res" if isinstance(module, ResBlock) else "attn", x.shape[1], output.shape[1], x.shape[-1]))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (ResBlock, AttnBlock))]
    try:
        with torch.no_grad():
            model(torch.randn(2, in_channels, image_size, image_size), torch.tensor([0, 5]))
    finally:
        for h in handles:
            h.remove()
    return calls


@pytest.mark.parametrize("ch_mult, num_res_blocks, attn_resolutions, image_size", [
    ((1, 2, 2), 1, (8,), 16),
    ((1, 2, 2), 1, (16,), 16),
    ((1, 2, 2), 2, (4, 16), 16),
    ((1, 2), 1, (), 8),
    ((1, 1, 2, 2), 2, (16,), 32),  # the CIFAR-10 layout of table 2, narrower
])
def test_blocks_and_attention_run_exactly_where_configured(ch_mult, num_res_blocks, attn_resolutions, image_size):
    model = UNet(in_channels=1, ch=32, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                 attn_resolutions=attn_resolutions, dropout=0.0, image_size=image_size).eval()
    got = observed_calls(model, image_size, 1)
    want = expected_calls(32, ch_mult, num_res_blocks, attn_resolutions, image_size)
    assert got == want
    attn_sizes = {size for kind, _, _, size in got if kind == "attn"}
    assert attn_sizes == set(attn_resolutions) | {image_size // 2 ** (len(ch_mult) - 1)}  # + the middle block


def test_moving_attention_moves_it():
    def net(attn):
        return UNet(1, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=attn, image_size=16)

    a, b = observed_calls(net((8,)), 16, 1), observed_calls(net((16,)), 16, 1)
    where = lambda calls: [(c, s) for kind, c, _, s in calls if kind == "attn"]  # noqa: E731
    assert where(a) != where(b)
    assert (64, 8) in where(a) and (32, 16) not in where(a)
    assert (32, 16) in where(b) and (64, 8) not in where(b)


@pytest.mark.parametrize("in_ch, out_ch", [(32, 32), (32, 64)])
def test_fresh_resblock_returns_its_skip_path(in_ch, out_ch):
    torch.manual_seed(0)
    block = ResBlock(in_ch, out_ch, emb_dim=16, dropout=0.0).eval()
    x, emb = torch.randn(2, in_ch, 4, 4), torch.randn(2, 16)
    out = block(x, emb)
    skip = x if in_ch == out_ch else torch.nn.functional.conv2d(x, block.skip.weight, block.skip.bias)
    torch.testing.assert_close(out, skip, rtol=0, atol=0)
    # once the last convolution is trained, the residual branch adds to the skip path and sees the embedding
    torch.nn.init.normal_(block.conv2.weight, std=0.1)
    out2 = block(x, emb)
    h = block.conv1(torch.nn.functional.silu(block.norm1(x))) + block.emb_proj(emb)[:, :, None, None]
    h = block.conv2(torch.nn.functional.silu(block.norm2(h)))
    torch.testing.assert_close(out2, skip + h, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(block(x, torch.randn(2, 16)), out2)


def test_fresh_attention_block_returns_its_input():
    torch.manual_seed(0)
    block = AttnBlock(64, num_heads=2).eval()
    x = torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    out = block(x)
    assert not torch.allclose(out, x)


def test_fresh_unet_predicts_zero_and_every_block_is_identity_on_its_skip():
    """With all zero-initialised layers untouched, every Stage is the identity on its skip path, so the
    network's output (zero-initialised head) is exactly zero; perturbing one decoder block's last
    convolution changes the output (that block's residual branch is on the path)."""
    torch.manual_seed(0)
    model = UNet(1, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, image_size=8).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 7])
    with torch.no_grad():
        assert torch.count_nonzero(model(x, t)) == 0
        torch.nn.init.normal_(model.out_conv.weight, std=0.1)
        before = model(x, t)
        torch.nn.init.normal_(model.up[-1].blocks[0].res.conv2.weight, std=0.1)
        assert not torch.allclose(model(x, t), before)

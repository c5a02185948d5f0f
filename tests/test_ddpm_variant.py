"""DDPM's exact network details (time-embedding frequencies, TF 'SAME' down-sampling) and the decoder
variance σ_1² of the bound's L_0 term (DDPM's code against the paper's text)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion.config import Config, ModelConfig, build_model, config_from_checkpoint, config_from_dict, config_to_dict
from diffusion.gaussian_diffusion import DecoderVariance, create_diffusion
from diffusion.unet import Downsample, UNet, timestep_embedding


@pytest.mark.parametrize("dim", [4, 8, 128])
def test_ddpm_frequencies_are_exactly_10000_pow_minus_i_over_half_minus_1(dim):
    half = dim // 2
    t = torch.tensor([1.0, 3.0, 250.0, 999.0])
    emb = timestep_embedding(t, dim, freq_shift=1).double()
    for i in range(half):
        omega = 10000.0 ** (-i / (half - 1))
        assert torch.allclose(emb[:, 2 * i], torch.sin(t.double() * omega), atol=1e-4)
        assert torch.allclose(emb[:, 2 * i + 1], torch.cos(t.double() * omega), atol=1e-4)
    # at t = 1 the sines are sin(ω_i) themselves: ω_0 = 1 and ω_{half-1} = 1/10000 exactly
    assert emb[0, 0].item() == pytest.approx(math.sin(1.0), abs=1e-7)
    assert emb[0, 2 * (half - 1)].item() == pytest.approx(math.sin(1e-4), rel=1e-4)
    # the two conventions share ω_0 = 1 and differ everywhere else
    other = timestep_embedding(t, dim, freq_shift=0)
    assert torch.equal(other[:, :2], emb[:, :2].float()) and not torch.allclose(other[:, 2:], emb[:, 2:].float())


def test_freq_shift_bad_input():
    with pytest.raises(ValueError, match="freq_shift"):
        timestep_embedding(torch.tensor([1]), 8, freq_shift=2)
    with pytest.raises(ValueError, match="dim must be at least 4"):
        timestep_embedding(torch.tensor([1]), 2, freq_shift=1)
    with pytest.raises(ValueError, match="time_embed_freq_shift"):
        UNet(3, ch=32, ch_mult=(1,), attn_resolutions=(), image_size=8, time_embed_freq_shift=True)
    with pytest.raises(ValueError, match="downsample_padding"):
        UNet(3, ch=32, ch_mult=(1, 2), attn_resolutions=(), image_size=8, downsample_padding="same")


def test_tf_same_downsample_is_pad_right_bottom_then_valid_conv(gen):
    down = Downsample(4, "tf_same")
    sym = Downsample(4, "symmetric")
    sym.load_state_dict(down.state_dict())
    x = torch.randn(2, 4, 8, 8, generator=gen)
    w, b = down.conv.weight, down.conv.bias
    padded = torch.zeros(2, 4, 9, 9)
    padded[:, :, :8, :8] = x  # one zero row at the bottom, one zero column at the right
    expected = F.conv2d(padded, w, b, stride=2)
    assert down(x).shape == (2, 4, 4, 4)
    assert torch.allclose(down(x), expected, atol=1e-6)
    # output pixel (i, j) sees input rows/columns 2i … 2i+2 (TF) against 2i−1 … 2i+1 (symmetric)
    i, j = 1, 2
    patch = x[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
    assert torch.allclose(down(x)[:, :, i, j], (patch[:, None] * w).sum((2, 3, 4)) + b, atol=1e-5)
    assert torch.allclose(sym(x), F.conv2d(x, w, b, stride=2, padding=1), atol=1e-6)
    assert not torch.allclose(sym(x), down(x), atol=1e-3)


def test_config_defaults_are_ddpm_and_old_checkpoints_keep_their_variant():
    m = ModelConfig()
    assert (m.time_embed_freq_shift, m.downsample_padding) == (1, "tf_same")
    assert Config().diffusion.decoder_variance == "ddpm_code"
    data = type("D", (), {"channels": 3, "image_size": 8, "num_classes": 0})()
    cfg = config_from_dict({"model": {"ch": 32, "ch_mult": [1, 2], "attn_resolutions": [4]}})
    model = build_model(cfg, data)
    assert (model.time_embed_freq_shift, model.downsample_padding) == (1, "tf_same")
    stored = config_to_dict(cfg)
    for key in ("time_embed_freq_shift", "downsample_padding"):
        del stored["model"][key]  # a checkpoint written before these keys existed
    legacy = config_from_checkpoint(stored)
    assert (legacy.model.time_embed_freq_shift, legacy.model.downsample_padding) == (0, "symmetric")
    assert config_from_checkpoint(config_to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="model.downsample_padding"):
        config_from_dict({"model": {"downsample_padding": "valid"}})
    with pytest.raises(ValueError, match="diffusion.decoder_variance"):
        config_from_dict({"diffusion": {"decoder_variance": "improved"}})


def test_decoder_variance_at_index_0_for_both_conventions():
    code = create_diffusion("linear", 1000)
    paper = create_diffusion("linear", 1000, decoder_variance="paper")
    assert code.decoder_variance is DecoderVariance.DDPM_CODE
    b1, b2 = 1e-4, 1e-4 + (0.02 - 1e-4) / 999
    tilde_beta_2 = b2 * (1 - (1 - b1)) / (1 - (1 - b1) * (1 - b2))  # β̃_2 = β_2 (1 − ᾱ_1)/(1 − ᾱ_2)
    assert code.model_variance[0] == pytest.approx(tilde_beta_2, rel=1e-12)
    assert code.model_log_variance[0] == pytest.approx(math.log(tilde_beta_2), rel=1e-12)
    assert paper.model_variance[0] == pytest.approx(b1, rel=1e-12)
    assert paper.model_log_variance[0] == pytest.approx(math.log(b1), rel=1e-12)
    np.testing.assert_array_equal(code.model_variance[1:], code.betas[1:])
    np.testing.assert_array_equal(paper.model_variance[1:], paper.betas[1:])
    # fixed-small is β̃ with the same clipped index 0 under either convention
    for dv in ("ddpm_code", "paper"):
        small = create_diffusion("linear", 1000, var_type="fixed_small", decoder_variance=dv)
        assert small.model_variance[0] == pytest.approx(tilde_beta_2, rel=1e-12)


def test_only_l0_changes_and_an_accurate_decoder_gains_bits(gen):
    """Same noise, same model: the bound's terms agree except L_0. With the exact x_0 as the decoder mean
    (μ_θ(x_1, 1) = x_0 when ε is predicted exactly), L_0 is −log2 of the Gaussian mass of the pixel's bin
    (half-width 1/255, interior pixels), larger for σ = √β̃_2 < √β_1: DDPM's convention gives fewer bits/dim."""
    T = 30
    code = create_diffusion("linear", T, 1e-4, 0.05)
    paper = create_diffusion("linear", T, 1e-4, 0.05, decoder_variance="paper")
    x0 = (torch.randint(1, 255, (3, 1, 4, 4), generator=gen).double() / 127.5 - 1)
    model = lambda x, t, **_: torch.tanh(x)  # noqa: E731  any ε-model: the KL terms t > 0 must not change
    r_code = code.calc_bpd_loop(model, x0, clip_denoised=False, generator=torch.Generator().manual_seed(3))
    r_paper = paper.calc_bpd_loop(model, x0, clip_denoised=False, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(r_code["vb"][:, 1:], r_paper["vb"][:, 1:], rtol=0, atol=0)
    diff_l0 = (r_code["vb"][:, 0] - r_paper["vb"][:, 0]).double()
    assert torch.allclose((r_code["total_bpd"] - r_paper["total_bpd"]).double(), diff_l0, atol=1e-5)
    assert (diff_l0 != 0).all()
    # exact ε at index 0: decoder mean = x_0, L_0 in closed form
    noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    t = torch.zeros(3, dtype=torch.long)
    exact = lambda x, tt, **_: noise  # noqa: E731
    for d, var in ((code, code.posterior_variance[1]), (paper, paper.betas[0])):
        x1 = d.q_sample(x0, t, noise)
        l0 = d.vb_terms_bpd(exact, x0, x1, t, clip_denoised=False)
        half_bin = torch.tensor(1 / 255 / math.sqrt(var), dtype=x0.dtype)
        mass = torch.special.ndtr(half_bin) - torch.special.ndtr(-half_bin)
        assert torch.allclose(l0, -torch.log2(mass).expand(3), rtol=1e-6)
    l0_code = code.vb_terms_bpd(exact, x0, code.q_sample(x0, t, noise), t, clip_denoised=False)
    l0_paper = paper.vb_terms_bpd(exact, x0, paper.q_sample(x0, t, noise), t, clip_denoised=False)
    assert (l0_code < l0_paper).all()

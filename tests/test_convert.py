"""diffusers' UNet2DModel in DDPM's layout ⇄ our U-Net (diffusion.convert), and `import-diffusers`."""

import json

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import UNet2DModel  # noqa: E402

from diffusion.cli import load_trained, main  # noqa: E402
from diffusion.convert import (ConversionError, diffusers_layout_differences, from_diffusers,  # noqa: E402
                               scheduler_to_diffusion_config, to_diffusers)
from diffusion.schedules import get_beta_schedule  # noqa: E402
from diffusion.unet import UNet  # noqa: E402


def ddpm_unet(ch=(32, 64), attn=(False, True), layers=1, size=16, seed=0, scale=0.05, **overrides):
    """A randomly initialised UNet2DModel in DDPM's layout (every weight random, none zero)."""
    kw = dict(sample_size=size, in_channels=3, out_channels=3, block_out_channels=ch, layers_per_block=layers,
              down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
              up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
              freq_shift=1, flip_sin_to_cos=False, downsample_padding=0, norm_eps=1e-6, attention_head_dim=None)
    kw.update(overrides)
    torch.manual_seed(seed)
    unet = UNet2DModel(**kw).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if "norm" in name and name.endswith("weight")
                                                                 else 0.0))
    return unet


def max_output_difference(unet, model, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.tensor([0, 517, 999][:batch])
    with torch.no_grad():
        theirs, ours = unet(x, t).sample, model(x, t)
    assert theirs.abs().max() > 1e-2  # the outputs are not trivially zero
    return (theirs - ours).abs().max().item()


@pytest.mark.parametrize("overrides", [
    {},                                                       # DDPM: freq_shift 1, TF 'SAME' padding
    {"freq_shift": 0, "downsample_padding": 1},               # the improved-DDPM variant
    {"flip_sin_to_cos": True},                                # [cos, sin] order: another column permutation
    {"attention_head_dim": 16},                               # 4 heads of 16 channels
])
def test_converted_model_computes_the_same_function(overrides):
    unet = ddpm_unet(**overrides)
    model = from_diffusers(unet)
    assert model.time_embed_freq_shift == overrides.get("freq_shift", 1)
    assert model.downsample_padding == ("symmetric" if overrides.get("downsample_padding") == 1 else "tf_same")
    assert model.num_heads == (4 if "attention_head_dim" in overrides else 1)
    assert max_output_difference(unet, model) <= 1e-5


def test_real_cifar10_layout_has_ddpm_parameter_count_and_same_outputs():
    # weights of scale 0.02 give outputs of ε's scale (max ≈ 1.7); float32 rounding is then ≈ 1e-5 at most
    unet = ddpm_unet(ch=(128, 256, 256, 256), attn=(False, True, False, False), layers=2, size=32, scale=0.02)
    model = from_diffusers(unet)
    assert sum(p.numel() for p in model.parameters()) == 35_746_307
    assert (model.ch, model.ch_mult, model.num_res_blocks, model.attn_resolutions) == (128, (1, 2, 2, 2), 2, (16,))
    assert max_output_difference(unet, model, batch=1) <= 1e-5


def test_the_other_variant_gives_other_outputs():
    """The two details matter: converting with the wrong frequency shift or padding changes the output."""
    unet = ddpm_unet()
    model = from_diffusers(unet)
    for attr, other in (("time_embed_freq_shift", 0), ("downsample_padding", "symmetric")):
        wrong = from_diffusers(unet)
        setattr(wrong, attr, other)
        if attr == "downsample_padding":
            for level in wrong.down:
                if hasattr(level, "downsample"):
                    level.downsample.padding = other
                    level.downsample.conv.padding = (1, 1)
        assert max_output_difference(unet, wrong) > 1e-3
    assert max_output_difference(unet, model) <= 1e-5


def test_round_trips_are_exact():
    unet = ddpm_unet(attention_head_dim=16)
    model = from_diffusers(unet)
    back = to_diffusers(model)
    theirs, again = unet.state_dict(), back.state_dict()
    assert theirs.keys() == again.keys()
    assert all(torch.equal(theirs[k], again[k]) for k in theirs)
    ours, ours_again = model.state_dict(), from_diffusers(back).state_dict()
    assert all(torch.equal(ours[k], ours_again[k]) for k in ours)
    # a head count over attended widths 32 and 64 has no UNet2DModel equivalent (it fixes the head width)
    two_widths = UNet(3, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), image_size=16, num_heads=2)
    with pytest.raises(ConversionError, match="head width"):
        to_diffusers(two_widths)
    with pytest.raises(ConversionError, match="unconditional"):
        to_diffusers(UNet(3, ch=32, ch_mult=(1,), attn_resolutions=(), image_size=8, num_classes=3))


def test_mismatched_layout_is_refused_with_every_difference():
    unet = ddpm_unet(norm_eps=1e-5, resnet_time_scale_shift="scale_shift", act_fn="gelu")
    with pytest.raises(ConversionError) as err:
        from_diffusers(unet)
    message = str(err.value)
    for key in ("norm_eps", "resnet_time_scale_shift", "act_fn"):
        assert key in message
    cfg = dict(ddpm_unet().config)
    assert diffusers_layout_differences(cfg) == []
    cfg.update(up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"), num_class_embeds=10)
    diffs = diffusers_layout_differences(cfg)
    assert any("mirror" in d for d in diffs) and any("num_class_embeds" in d for d in diffs)


def test_scheduler_config_maps_to_our_diffusion():
    d = scheduler_to_diffusion_config({"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                                       "num_train_timesteps": 1000, "variance_type": "fixed_small",
                                       "prediction_type": "epsilon"})
    assert d == {"num_timesteps": 1000, "schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                 "mean_type": "eps", "var_type": "fixed_small"}
    q = scheduler_to_diffusion_config({"beta_schedule": "scaled_linear", "beta_start": 1e-4, "beta_end": 0.02,
                                       "num_train_timesteps": 50, "variance_type": "fixed_large"})
    assert q["schedule"] == "quadratic" and q["var_type"] == "fixed_large"
    assert get_beta_schedule("quadratic", 50, 1e-4, 0.02)[[0, -1]] == pytest.approx([1e-4, 0.02])
    with pytest.raises(ConversionError, match="variance_type.*learned_range"):
        scheduler_to_diffusion_config({"variance_type": "learned_range"})


def test_import_diffusers_folder_then_sample_and_load(tmp_path, capsys):
    unet = ddpm_unet(ch=(32, 32), size=32)
    src = tmp_path / "ddpm-tiny"
    unet.save_pretrained(src)
    (src / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
        "num_train_timesteps": 20, "variance_type": "fixed_large", "clip_sample": True}))
    ckpt = tmp_path / "tiny.pt"
    assert main(["import-diffusers", str(src), "--out", str(ckpt)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["data"] == "cifar10" and summary["diffusion"]["num_timesteps"] == 20
    model, diffusion, cfg, state = load_trained(ckpt, "cpu")
    assert cfg.model.time_embed_freq_shift == 1 and cfg.model.downsample_padding == "tf_same"
    assert diffusion.num_timesteps == 20 and cfg.diffusion.var_type == "fixed_large"
    assert max_output_difference(unet, model) <= 1e-5
    png = tmp_path / "s.png"
    assert main(["sample", "--ckpt", str(ckpt), "--sampler", "ddim", "--steps", "2", "--num", "2",
                 "--device", "cpu", "--out", str(png)]) == 0
    assert png.is_file()


def test_import_diffusers_refusals_exit_2_with_one_message(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad"
    ddpm_unet(norm_eps=1e-5).save_pretrained(bad)
    assert main(["import-diffusers", str(bad), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "norm_eps" in err and "Traceback" not in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["import-diffusers", "google/ddpm-cifar10-32", "--out", str(tmp_path / "y.pt")]) == 2
    err = capsys.readouterr().err
    assert "huggingface.co/google/ddpm-cifar10-32" in err and "import-diffusers ddpm-cifar10-32" in err
    assert not (tmp_path / "y.pt").exists()

"""Tests of diffusion.config: the YAML configs, overrides, type and key errors, dict round trip, builders."""

import io
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffusion.config import (Config, ModelConfig, TrainConfig, build_diffusion, build_model, config_from_dict,
                              config_to_dict, load_config, parse_override)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
YAMLS = sorted(CONFIGS.glob("*.yaml"))
CIFAR = types.SimpleNamespace(channels=3, image_size=32, num_classes=10)


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_every_yaml_loads_and_round_trips():
    assert {p.stem for p in YAMLS} >= {"cifar10", "celeba64", "mnist5k", "toy2d"}
    for path in YAMLS:
        cfg = load_config(path)
        assert cfg.name == path.stem
        d = config_to_dict(cfg)
        assert config_from_dict(d) == cfg
        assert config_from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg
        # what a checkpoint stores must load with weights_only=True
        assert config_from_dict(_torch_round_trip(d)) == cfg


def _torch_round_trip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_cifar10_is_table_2_and_section_3_3_2():
    cfg = load_config(CONFIGS / "cifar10.yaml")
    m, d, t = cfg.model, cfg.diffusion, cfg.train
    assert (m.kind, m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.dropout) == \
        ("unet", 128, (1, 2, 2, 2), 2, (16,), 0.1)
    assert m.class_cond is True and t.p_uncond == 0.1
    assert (d.num_timesteps, d.schedule, d.beta_start, d.beta_end, d.var_type, d.mean_type, d.loss_type) == \
        (1000, "linear", 1e-4, 0.02, "fixed_large", "eps", "simple")
    assert (t.lr, t.adam_betas, t.warmup_steps, t.grad_clip, t.ema_decay, t.batch_size, t.total_steps) == \
        (2e-4, (0.9, 0.999), 5000, 1.0, 0.9999, 128, 800000)
    assert cfg.data.name == "cifar10" and cfg.data.hflip is True


def test_celeba64_mnist_and_toy_settings():
    c = load_config(CONFIGS / "celeba64.yaml")
    assert (c.diffusion.var_type, c.model.dropout, c.model.attn_resolutions, c.model.class_cond, c.model.ch) == \
        ("fixed_small", 0.0, (16,), False, 128)
    assert 64 // 2 ** (len(c.model.ch_mult) - 1) <= 16  # the 16×16 level exists at 64×64
    assert c.data.name == "celeba64"
    mn = load_config(CONFIGS / "mnist5k.yaml")
    assert mn.data.name == "mnist5k" and mn.data.hflip is False and mn.model.class_cond is True
    toy = load_config(CONFIGS / "toy2d.yaml")
    assert toy.model.kind == "mlp" and toy.data.name.startswith("toy:")


def test_overrides():
    cfg = load_config(CONFIGS / "cifar10.yaml", ["model.ch=64", "train.sample_every=[100, 200]",
                                                 "train.lr=1e-3", "data.root=null", "name=small",
                                                 "diffusion.var_type=fixed_small", "train.warmup_steps=0"])
    assert cfg.model.ch == 64 and cfg.train.sample_every == (100, 200)
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)  # YAML 1.1 reads "1e-3" as a string
    assert cfg.data.root is None and cfg.name == "small"
    assert cfg.diffusion.var_type == "fixed_small" and cfg.train.warmup_steps == 0
    assert load_config(CONFIGS / "cifar10.yaml", ["train.grad_clip=2"]).train.grad_clip == 2.0  # int for float
    assert load_config(CONFIGS / "cifar10.yaml", ["train.compile=step"]).train.compile == "step"
    assert load_config(CONFIGS / "cifar10.yaml", ["train.compile=true"]).train.compile is True
    assert parse_override("data.root=/a=b") == (["data", "root"], "/a=b")
    for bad in ["model.ch", "model..ch=3", "a.b.c=1"]:
        with pytest.raises(ValueError, match="override"):
            parse_override(bad)


def test_unknown_keys(tmp_path):
    path = _write(tmp_path, "model:\n  ch: 64\n  chanels: 3\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    assert "model.chanels" in str(err.value) and "ch_mult" in str(err.value) and "attn_resolutions" in str(err.value)
    with pytest.raises(ValueError, match=r"train\.lr_max.*warmup_steps"):
        load_config(CONFIGS / "mnist5k.yaml", ["train.lr_max=1"])
    with pytest.raises(ValueError, match=r"optim.*model, diffusion, data, train"):
        load_config(CONFIGS / "mnist5k.yaml", ["optim.lr=1"])
    with pytest.raises(ValueError, match="valid top-level keys"):
        load_config(_write(tmp_path, "modle:\n  ch: 3\n"))


@pytest.mark.parametrize("override, pieces", [
    ("model.ch=abc", ["model.ch", "int", "'abc'"]),
    ("model.ch=1.5", ["model.ch", "int", "1.5"]),
    ("model.class_cond=1", ["model.class_cond", "bool", "1"]),
    ("model.ch_mult=[1, x]", ["model.ch_mult[1]", "int", "'x'"]),
    ("model.ch_mult=3", ["model.ch_mult", "tuple", "3"]),
    ("train.adam_betas=[0.9]", ["train.adam_betas", "2 values"]),
    ("train.lr=fast", ["train.lr", "float", "'fast'"]),
    ("data.root=[1]", ["data.root", "str", "[1]"]),
    ("name=3", ["name", "str", "3"]),
    ("train.compile=3", ["train.compile", "bool | str", "3"]),
])
def test_wrong_types(override, pieces):
    with pytest.raises(ValueError) as err:
        load_config(CONFIGS / "mnist5k.yaml", [override])
    for piece in pieces:
        assert piece in str(err.value)


@pytest.mark.parametrize("override, key", [
    ("model.dropout=1.5", "model.dropout"), ("model.ch=0", "model.ch"), ("model.kind=cnn", "model.kind"),
    ("diffusion.schedule=sigmoid", "diffusion.schedule"), ("diffusion.var_type=learned", "diffusion.var_type"),
    ("diffusion.beta_end=1e-5", "beta_end"), ("data.name=imagenet", "data.name"),
    ("train.ema_decay=1.0", "train.ema_decay"), ("train.batch_size=0", "train.batch_size"),
    ("model.kind=mlp", "model.kind"), ("train.compile=fast", "train.compile"),
])
def test_out_of_range_values(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(CONFIGS / "mnist5k.yaml", [override])


def test_defaults_and_partial_dicts():
    cfg = config_from_dict({"name": "x", "model": {"ch": 32}})
    assert cfg.model == ModelConfig(ch=32) and cfg.train == TrainConfig()
    assert config_from_dict(config_to_dict(Config())) == Config()
    with pytest.raises(ValueError, match="mapping"):
        config_from_dict({"model": [1, 2]})


def test_build_model_cifar_parameter_count():
    cfg = load_config(CONFIGS / "cifar10.yaml", ["model.class_cond=false"])
    model = build_model(cfg, CIFAR)
    assert sum(p.numel() for p in model.parameters()) == 35_746_307  # the DDPM CIFAR-10 size (table 2)


def test_build_model_small_forward_and_errors():
    small = ["model.ch=32", "model.ch_mult=[1, 2]", "model.attn_resolutions=[16]"]
    cfg = load_config(CONFIGS / "mnist5k.yaml", small)
    data = types.SimpleNamespace(channels=1, image_size=32, num_classes=10)
    model = build_model(cfg, data)
    x = torch.randn(2, 1, 32, 32)
    out = model(x, torch.tensor([0, 999]), y=torch.tensor([3, 10]))  # 10 = the null token
    assert out.shape == x.shape
    uncond = load_config(CONFIGS / "mnist5k.yaml", small + ["model.class_cond=false"])
    assert sum(p.numel() for p in build_model(uncond, data).parameters()) < sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="class_cond"):
        build_model(cfg, types.SimpleNamespace(channels=3, image_size=64, num_classes=0))
    with pytest.raises(ValueError, match="data_info"):
        build_model(cfg, None)
    toy = build_model(load_config(CONFIGS / "toy2d.yaml", ["model.hidden=16"]))
    assert toy(torch.randn(4, 2), torch.arange(4)).shape == (4, 2)


def test_build_diffusion_follows_the_config():
    diffusion = build_diffusion(load_config(CONFIGS / "celeba64.yaml", ["diffusion.num_timesteps=50"]))
    betas = np.asarray(diffusion.betas)
    assert betas.shape == (50,)
    np.testing.assert_allclose(betas, np.linspace(1e-4, 0.02, 50))
    # fixed_small: reverse variance = posterior variance β̃_t (eq. 9) at t ≥ 1, not β_t
    np.testing.assert_allclose(np.asarray(diffusion.posterior_variance)[1:],
                               betas[1:] * (1 - np.cumprod(1 - betas)[:-1]) / (1 - np.cumprod(1 - betas)[1:]))
    assert diffusion.model_var_type.value == "fixed_small"

"""The table of trained models beside their design (diffusion.report.trained_models): every cell comes from
the configuration it describes, and the parameter count of a design is the count of the network it builds."""

from types import SimpleNamespace

import pytest

from diffusion.config import load_config
from diffusion.report.trained_models import SETTINGS, design_dataset, parameter_count, settings_rows


def test_rows_read_each_configuration():
    design = load_config("configs/cifar10.yaml")
    trained = load_config("configs/cifar10.yaml", ["model.ch=32", "model.norm_groups=8", "train.batch_size=64",
                                                    "train.lr=5e-4", "train.warmup_steps=500", "train.ema_decay=0.999",
                                                    "train.ema_warmup=true", "train.total_steps=6000"])
    rows = {r[0]: r[1:] for r in settings_rows([design, trained])}
    assert len(rows) == len(SETTINGS)
    assert rows["基础通道数 $C$"] == ["128", "32"]
    assert rows["组归一化的组数"] == ["32", "8"]
    assert rows["批量"] == ["128", "64"]
    assert rows["学习率（线性预热步数）"] == [r"$2.0\times10^{-4}$（5,000）", r"$5.0\times10^{-4}$（500）"]
    assert rows["EMA 衰减率"] == ["0.9999", "0.999，衰减率预热"]
    assert rows["训练步数"] == ["800,000", "6,000"]
    assert rows["类别条件"] == ["是，空标签概率 0.1"] * 2
    assert rows["各级通道倍率"] == ["(1, 2, 2, 2)"] * 2
    assert rows["逆向方差"][0].startswith("fixed-large")
    celeba = load_config("configs/celeba64.yaml")
    rows = {r[0]: r[1] for r in settings_rows([celeba])}
    assert rows["逆向方差"].startswith("fixed-small") and rows["类别条件"] == "否" and rows["Dropout"] == "0"
    assert design_dataset(design) == "CIFAR-10" and design_dataset(celeba).startswith("CelebA")


def test_parameter_count_of_the_design_is_table_2s():
    """Without its class embedding the CIFAR-10 design is DDPM's 35,746,307-parameter network (table 1 of the
    thesis); the embedding adds a table of K + 1 = 11 rows and the two 512×512 layers of its MLP (eq. 17);
    a quarter of the width is far smaller."""
    cifar = SimpleNamespace(channels=3, image_size=32, num_classes=10)
    assert parameter_count(load_config("configs/cifar10.yaml", ["model.class_cond=false"]), cifar) == 35_746_307
    assert parameter_count(load_config("configs/cifar10.yaml"), cifar) == 35_746_307 + 11 * 512 + 2 * (512 * 512 + 512)
    small = parameter_count(load_config("configs/cifar10.yaml", ["model.ch=32", "model.norm_groups=8"]), cifar)
    assert 2_000_000 < small < 2_500_000


def test_no_configuration_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        settings_rows([])

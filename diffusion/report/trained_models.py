"""What was trained beside what was designed: the settings of each trained model next to those of its design
(the configuration of chapter 3, table 2 and section 3.3.2), row by row, for the thesis's table of the trained
models. Every cell is read from a :class:`~diffusion.config.Config`, so the table cannot drift from the runs."""

from __future__ import annotations

from typing import Callable, Sequence

from diffusion.config import Config, build_model
from diffusion.model_info import count_parameters
from diffusion.report.latex import latex_sci

DESIGN_DATASETS = {"cifar10": "CIFAR-10", "celeba64": "CelebA（$64\\times64$）", "mnist5k": "MNIST-5k"}
VARIANCE_TEXT = {"fixed_large": r"fixed-large（$\sigma_t^2=\beta_t$）",
                 "fixed_small": r"fixed-small（$\sigma_t^2=\tilde\beta_t$）"}


def _tuple(value) -> str:
    return "(" + ", ".join(map(str, value)) + ")" if len(value) else "无"


def _number(value: float) -> str:
    """0.1 → ``0.1``, 0.0005 → ``$5\\times10^{-4}$``, 0.9999 → ``0.9999``: LaTeX text for a setting."""
    return latex_sci(value) if 0 < abs(value) < 1e-3 else f"{value:g}"


def _class_cond(cfg: Config) -> str:
    return f"是，空标签概率 {cfg.train.p_uncond:g}" if cfg.model.class_cond else "否"


def _ema(cfg: Config) -> str:
    return _number(cfg.train.ema_decay) + ("，衰减率预热" if cfg.train.ema_warmup else "")


# (row label, cell of a config); labels and cells are LaTeX text
SETTINGS: tuple[tuple[str, Callable[[Config], str]], ...] = (
    ("基础通道数 $C$", lambda c: str(c.model.ch)),
    ("各级通道倍率", lambda c: _tuple(c.model.ch_mult)),
    ("每级残差块数", lambda c: str(c.model.num_res_blocks)),
    ("自注意力所在分辨率", lambda c: _tuple(c.model.attn_resolutions)),
    ("组归一化的组数", lambda c: str(c.model.norm_groups)),
    ("Dropout", lambda c: f"{c.model.dropout:g}"),
    ("类别条件", _class_cond),
    ("逆向方差", lambda c: VARIANCE_TEXT.get(c.diffusion.var_type, c.diffusion.var_type)),
    ("批量", lambda c: str(c.train.batch_size)),
    ("学习率（线性预热步数）", lambda c: f"{_number(c.train.lr)}（{c.train.warmup_steps:,}）"),
    ("EMA 衰减率", _ema),
    ("训练步数", lambda c: f"{c.train.total_steps:,}"),
)


def design_dataset(cfg: Config) -> str:
    """The dataset a design is written for (its ``data.name``), as the thesis names it."""
    return DESIGN_DATASETS.get(cfg.data.name, cfg.data.name)


def settings_rows(configs: Sequence[Config]) -> list[list[str]]:
    """One row per entry of :data:`SETTINGS`: its label, then its value in each of ``configs`` (LaTeX text)."""
    if not configs:
        raise ValueError("configs must hold at least one configuration")
    return [[label, *(cell(c) for c in configs)] for label, cell in SETTINGS]


def parameter_count(cfg: Config, data_info) -> int:
    """Parameters of the network ``cfg`` describes for data shaped like ``data_info`` (channels, image size,
    classes): the size of a design that was not trained, built on the CPU and counted."""
    return count_parameters(build_model(cfg, data_info))

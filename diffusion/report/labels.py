"""Display names for the thesis (written in Chinese): dataset labels and sampler names.

A dataset's own label is English (``diffusion.data``: "MNIST-5k at 16×16"); in a Chinese sentence the
English "at" reads wrongly, so figures, tables and numbers show :func:`dataset_label_zh` of it.
"""

from __future__ import annotations

import re

SAMPLER_NAMES_ZH = {"ancestral": "祖先采样", "ddim": "DDIM", "dpmpp2m": "DPM-Solver++(2M)"}
CLASS_NAMES_ZH = {"airplane": "飞机", "automobile": "汽车", "bird": "鸟", "cat": "猫", "deer": "鹿", "dog": "狗",
                  "frog": "青蛙", "horse": "马", "ship": "船", "truck": "卡车"}


def dataset_label_zh(label: str) -> str:
    """``"MNIST-5k at 16×16"`` → ``"MNIST-5k（16×16）"``; other labels unchanged."""
    if not isinstance(label, str):
        raise ValueError(f"label must be a string, got {label!r}")
    return re.sub(r"\s+at\s+(\d+×\d+)$", r"（\1）", label)


def sampler_name_zh(sampler: str) -> str:
    """Display name of a sampler id of ``diffusion.samplers.sample`` (``"dpmpp2m"`` → ``"DPM-Solver++(2M)"``)."""
    if sampler not in SAMPLER_NAMES_ZH:
        raise ValueError(f"sampler must be one of {sorted(SAMPLER_NAMES_ZH)}, got {sampler!r}")
    return SAMPLER_NAMES_ZH[sampler]


def class_name_zh(name: str) -> str:
    """Chinese name of a CIFAR-10 class (``"airplane"`` → ``"飞机"``); other names (MNIST digits) unchanged."""
    return CLASS_NAMES_ZH.get(str(name), str(name))

"""Display names for the thesis (written in Chinese): dataset labels and sampler names.

A dataset's own label is English (``diffusion.data``: "MNIST-5k at 16×16"); in a Chinese sentence the
English "at" reads wrongly, so figures, tables and numbers show :func:`dataset_label_zh` of it.
"""

from __future__ import annotations

import re

SAMPLER_NAMES_ZH = {"ancestral": "祖先采样", "ddim": "DDIM", "dpmpp2m": "DPM-Solver++(2M)"}
CLASS_NAMES_ZH = {"airplane": "飞机", "automobile": "汽车", "bird": "鸟", "cat": "猫", "deer": "鹿", "dog": "狗",
                  "frog": "青蛙", "horse": "马", "ship": "船", "truck": "卡车"}


DATASET_LABELS_ZH = {"CIFAR-10 (JPEG q75 copy)": "CIFAR-10（JPEG q75 有损副本）", "CelebA 6k subset": "CelebA（6k 子集）",
                     "CelebA 64×64": "CelebA（64×64）"}
"""Chinese display labels of the honest English labels of ``diffusion.data`` that are not a plain name."""


def dataset_label_zh(label: str) -> str:
    """``"MNIST-5k at 16×16"`` → ``"MNIST-5k（16×16）"``, ``"CIFAR-10 (JPEG q75 copy)"`` →
    ``"CIFAR-10（JPEG q75 有损副本）"``, ``"CelebA 6k subset"`` → ``"CelebA（6k 子集）"``; other labels unchanged;
    a Chinese label is returned as it is."""
    if not isinstance(label, str):
        raise ValueError(f"label must be a string, got {label!r}")
    if label in DATASET_LABELS_ZH:
        return DATASET_LABELS_ZH[label]
    return re.sub(r"\s+at\s+(\d+×\d+)$", r"（\1）", label)


def dataset_label_en(label: str) -> str:
    """The English label of a display label of :func:`dataset_label_zh` (for the English abstract):
    ``"MNIST-5k（16×16）"`` → ``"MNIST-5k at 16×16"``; an English label is returned as it is."""
    if not isinstance(label, str):
        raise ValueError(f"label must be a string, got {label!r}")
    english = {zh: en for en, zh in DATASET_LABELS_ZH.items()}
    if label in english:
        return english[label]
    return re.sub(r"（(\d+×\d+)）$", r" at \1", label)


TOY_NAMES_ZH = {"swiss_roll": "瑞士卷", "8gaussians": "8 个高斯分量的混合", "25gaussians": "25 个高斯分量的混合"}


def toy_label_zh(name: str) -> str:
    """Display label of a 2-D toy set of ``diffusion.toy.make_toy_2d`` (``"swiss_roll"`` → ``"二维玩具数据（瑞士卷）"``)."""
    key = name[4:] if isinstance(name, str) and name.startswith("toy:") else name
    if key not in TOY_NAMES_ZH:
        raise ValueError(f"name must be one of {sorted(TOY_NAMES_ZH)}, got {name!r}")
    return f"二维玩具数据（{TOY_NAMES_ZH[key]}）"


def sampler_name_zh(sampler: str) -> str:
    """Display name of a sampler id of ``diffusion.samplers.sample`` (``"dpmpp2m"`` → ``"DPM-Solver++(2M)"``)."""
    if sampler not in SAMPLER_NAMES_ZH:
        raise ValueError(f"sampler must be one of {sorted(SAMPLER_NAMES_ZH)}, got {sampler!r}")
    return SAMPLER_NAMES_ZH[sampler]


def class_name_zh(name: str) -> str:
    """Chinese name of a CIFAR-10 class (``"airplane"`` → ``"飞机"``); other names (MNIST digits) unchanged."""
    return CLASS_NAMES_ZH.get(str(name), str(name))

"""Pixel conversions shared by every metric: samples are judged as the uint8 images a PNG would hold.

Model outputs are float tensors in [-1, 1] (the data scaling of section 2.4.2); datasets are uint8.
"""
from __future__ import annotations

import torch


def check_finite(images: torch.Tensor, name: str = "samples") -> None:
    """Raise ``ValueError`` naming how many entries of ``images`` are NaN or infinite."""
    if images.is_floating_point():
        bad = int((~torch.isfinite(images)).sum())
        if bad:
            raise ValueError(f"{name} contain {bad} NaN or infinite values (of {images.numel()}); "
                             "the model or sampler diverged — refusing to compute metrics on them")


def to_uint8(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Quantise NCHW images to uint8 exactly as saving them as PNG would.

    uint8 input is returned unchanged. Float input is taken to be in [-1, 1] (section 2.4.2 scaling),
    clamped, mapped to [0, 255] and rounded half up (the rounding of ``torchvision.utils.save_image``).
    Returns a uint8 tensor on the input's device.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor (uint8 or float in [-1, 1]), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must be NCHW (4 dimensions), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"{name} must be uint8 or floating point in [-1, 1], got dtype {images.dtype}")
    check_finite(images, name)
    x = (images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5 + 0.5
    return x.floor_().clamp_(0, 255).to(torch.uint8)


"""Nearest training images of generated samples in pixel space (memorisation check, figure 2a).

Distances are Euclidean (L2) over all pixels with values scaled to [0, 1] (i.e. uint8 / 255), so
a distance of d between C×H×W images is an RMS pixel difference of d / sqrt(C·H·W). Samples given as
floats in [-1, 1] are quantised to uint8 first, as saved images would be.
"""
from __future__ import annotations

import torch
from diffusion.progress import tqdm

from .images import to_uint8


def nearest_neighbours(samples: torch.Tensor, train_images: torch.Tensor, k: int = 1, chunk_size: int = 2048,
                       device=None, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (N, k) into ``train_images`` and L2 distances (N, k), ascending, of each sample's ``k``
    nearest training images. The training set is processed in chunks of ``chunk_size`` (float64)."""
    samples = to_uint8(samples, "samples")
    train_images = to_uint8(train_images, "train_images")
    if samples.shape[1:] != train_images.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape[1:])} and train_images {tuple(train_images.shape[1:])} "
                         "must have the same C×H×W")
    if not 1 <= k <= len(train_images):
        raise ValueError(f"k must lie in [1, {len(train_images)}] (the training set size), got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    device = torch.device(device) if device is not None else samples.device
    a = samples.to(device).flatten(1).double() / 255.0
    a_sq = (a * a).sum(1, keepdim=True)
    best_d = torch.full((len(a), k), float("inf"), dtype=torch.float64, device=device)
    best_i = torch.zeros((len(a), k), dtype=torch.long, device=device)
    for start in tqdm(range(0, len(train_images), chunk_size), desc="nearest neighbours", disable=not progress,
                      leave=False):
        b = train_images[start:start + chunk_size].to(device).flatten(1).double() / 255.0
        d2 = (a_sq + (b * b).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min_(0.0)
        idx = torch.arange(start, start + len(b), device=device).expand(len(a), -1)
        cand_d = torch.cat([best_d, d2], 1)
        cand_i = torch.cat([best_i, idx], 1)
        best_d, order = cand_d.topk(k, dim=1, largest=False)
        best_i = cand_i.gather(1, order)
    return best_i.cpu(), best_d.sqrt().cpu()

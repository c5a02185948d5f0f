"""Two-dimensional toy data and a small MLP noise-prediction model ε_θ(x_t, t) for the 2-D notebook.

Datasets (``make_toy_2d``): ``swiss_roll``, ``8gaussians``, ``25gaussians`` (a ``toy:`` prefix, as in a
config's ``data.name``, is accepted). Each is centred and scaled by constants of its *population*
distribution: mean 0 and variance 1 averaged over the two coordinates (the swiss roll's two variances are
about 0.95 and 1.05; the Gaussian mixtures' are both 1), with the same scaling for every n and seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from diffusion.unet import timestep_embedding

__all__ = ["TOY_NAMES", "ToyMLP", "make_toy_2d"]

TOY_NAMES = ("swiss_roll", "8gaussians", "25gaussians")
SWISS_ROLL_NOISE = 0.25  # std of the isotropic noise added to the raw roll (t cos t, t sin t)
EIGHT_RADIUS, EIGHT_STD = math.sqrt(2.0), 0.1  # centres on a circle: per-coordinate centre variance 1
GRID_STD = 0.05  # 25 Gaussians: centres on {-2,…,2}², per-coordinate centre variance 2


def _swiss_roll_moments() -> tuple[np.ndarray, float]:
    """Mean (2,) and per-coordinate std of the roll with t ~ U[1.5π, 4.5π], by dense quadrature."""
    t = np.linspace(1.5 * np.pi, 4.5 * np.pi, 200_001)
    pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
    mean = pts.mean(axis=0)
    var = ((pts - mean) ** 2).mean(axis=0).mean() + SWISS_ROLL_NOISE**2
    return mean, float(np.sqrt(var))


def make_toy_2d(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """n points of a 2-D toy distribution, float32 (n, 2): population mean 0 and population variance 1
    averaged over the coordinates (a sample's moments are only approximately 0 and 1).

    Args:
        name: "swiss_roll", "8gaussians" or "25gaussians" (optionally prefixed "toy:").
        n: number of points, a positive integer.
        seed: seed of the sample.
    """
    key = name[4:] if isinstance(name, str) and name.startswith("toy:") else name
    if key not in TOY_NAMES:
        raise ValueError(f"name must be one of {', '.join(TOY_NAMES)} (optionally 'toy:'-prefixed), got {name!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    g = torch.Generator().manual_seed(seed)
    if key == "swiss_roll":
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
        pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
        pts = pts + SWISS_ROLL_NOISE * torch.randn(n, 2, generator=g, dtype=torch.float64)
        mean, std = _swiss_roll_moments()
        pts = (pts - torch.from_numpy(mean)) / std
    elif key == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=g).double()
        centres = EIGHT_RADIUS * torch.stack([torch.cos(2 * math.pi * k / 8), torch.sin(2 * math.pi * k / 8)], 1)
        pts = (centres + EIGHT_STD * torch.randn(n, 2, generator=g, dtype=torch.float64))
        pts = pts / math.sqrt(EIGHT_RADIUS**2 / 2 + EIGHT_STD**2)
    else:
        centres = torch.randint(-2, 3, (n, 2), generator=g).double()
        pts = (centres + GRID_STD * torch.randn(n, 2, generator=g, dtype=torch.float64)) / math.sqrt(2 + GRID_STD**2)
    return pts.to(torch.float32)


class ToyMLP(nn.Module):
    """ε_θ(x_t, t) for low-dimensional data: an MLP on [x_t, e_raw(t)], where e_raw is the sinusoidal
    timestep embedding of eq. (16) (width ``time_dim``); ``num_layers`` hidden SiLU layers of width
    ``hidden``; the output has x's shape. Unconditional: ``y`` must be None.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, num_layers: int = 3, time_dim: int = 32):
        super().__init__()
        for arg, value in (("dim", dim), ("hidden", hidden), ("num_layers", num_layers), ("time_dim", time_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}")
        if time_dim % 2:
            raise ValueError(f"time_dim must be even, got {time_dim}")
        self.time_dim = time_dim
        layers: list[nn.Module] = []
        width = dim + time_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None:
            raise ValueError("ToyMLP is unconditional: y must be None")
        if x.dim() != 2:
            raise ValueError(f"x must be (B, dim), got shape {tuple(x.shape)}")
        emb = timestep_embedding(t, self.time_dim).to(x.dtype)
        return self.net(torch.cat([x, emb], dim=1))

"""Two-dimensional toy data, a small MLP noise-prediction model ε_θ(x_t, t) for the 2-D notebook, and its
training loop (L_simple, eq. 14).

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

__all__ = ["TOY_NAMES", "ToyMLP", "fit_toy_mlp", "make_toy_2d"]

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
    """ε_θ(x_t, t) for low-dimensional data.

    Inputs: x_t with its Fourier features γ(x) = [x, sin(2^k x), cos(2^k x)]_{k=0…F−1} (per coordinate,
    ``fourier_octaves`` = F), and the sinusoidal timestep embedding e_raw(t) of eq. (16) (width
    ``time_dim``) passed through a two-layer MLP e(t) = W₂ SiLU(W₁ e_raw(t)), as in the U-Net (eq. 17).
    h = SiLU(W_in γ(x_t) + e(t)), then ``num_layers`` − 1 further SiLU layers of width ``hidden``, then a
    linear map to x's shape. Unconditional: ``y`` must be None.

    Why not a plain MLP on [x_t, e_raw(t)]: with raw coordinates and the raw embedding concatenated, the
    2-D input is two of 34 columns of one linear layer, and a small MLP on raw coordinates fits smooth,
    low-frequency functions first; in a few thousand steps it learns ε only well enough to produce a
    Gaussian-like blob, not the thin roll (the Fourier features give it the high frequencies, the time MLP
    the t-dependence).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, num_layers: int = 3, time_dim: int = 32,
                 fourier_octaves: int = 4):
        super().__init__()
        for arg, value in (("dim", dim), ("hidden", hidden), ("num_layers", num_layers), ("time_dim", time_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}")
        if isinstance(fourier_octaves, bool) or not isinstance(fourier_octaves, int) or fourier_octaves < 0:
            raise ValueError(f"fourier_octaves must be a non-negative integer, got {fourier_octaves!r}")
        if time_dim % 2:
            raise ValueError(f"time_dim must be even, got {time_dim}")
        self.dim, self.time_dim = dim, time_dim
        self.register_buffer("frequencies", 2.0 ** torch.arange(fourier_octaves, dtype=torch.float32),
                             persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim * (1 + 2 * fourier_octaves), hidden)
        layers: list[nn.Module] = []
        for _ in range(num_layers - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def fourier_features(self, x: torch.Tensor) -> torch.Tensor:
        """γ(x) = [x, sin(2^k x), cos(2^k x)], shape (B, dim·(1 + 2F))."""
        angles = (x[:, :, None] * self.frequencies.to(x.dtype)).flatten(1)
        return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None:
            raise ValueError("ToyMLP is unconditional: y must be None")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be (B, {self.dim}), got shape {tuple(x.shape)}")
        emb = self.time_mlp(timestep_embedding(t, self.time_dim).to(x.dtype))
        return self.net(nn.functional.silu(self.inp(self.fourier_features(x)) + emb))


def fit_toy_mlp(x0: torch.Tensor, diffusion, steps: int, batch_size: int, hidden: int = 128, *, lr: float = 3e-3,
                seed: int = 0, progress: bool = False) -> tuple[ToyMLP, list[float]]:
    """Train a :class:`ToyMLP` (3 layers, ``hidden`` wide) with L_simple (eq. 14) on the points ``x0``
    (N, 2): Adam at ``lr`` with cosine decay to 0 over ``steps``, minibatches of ``batch_size`` points drawn
    with replacement, t uniform over the T indices. Returns the model (eval mode) and the loss per step.
    """
    for arg, value in (("steps", steps), ("batch_size", batch_size), ("hidden", hidden)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if x0.ndim != 2:
        raise ValueError(f"x0 must be (N, dim) points, got shape {tuple(x0.shape)}")
    from diffusion.progress import tqdm

    torch.manual_seed(seed)
    model = ToyMLP(dim=x0.shape[1], hidden=hidden, num_layers=3, time_dim=32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed + 1)
    n, T, losses = x0.shape[0], diffusion.num_timesteps, []
    for _ in tqdm(range(steps), desc="toy training", mininterval=2, disable=not progress):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        t = torch.randint(0, T, (batch_size,), generator=gen)
        noise = torch.randn(batch_size, x0.shape[1], generator=gen)
        loss = diffusion.training_losses(model, x0[idx], t, noise=noise)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model.eval(), losses

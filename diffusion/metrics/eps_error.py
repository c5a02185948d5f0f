"""How well the network predicts the noise at each timestep: the per-t value of L_simple (eq. 14).

``eps_error_by_timestep`` draws x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (eq. 3) for held-out images at chosen t and
reports, per t, the mean squared error of ε_θ(x_t, t) against ε, beside that of the trivial predictor
ε̂ = x_t (best possible as t → T, where x_t ≈ ε). It also reports the error that a given ε-error implies
for the predicted clean image, x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, i.e. mse · (1−ᾱ_t)/ᾱ_t: at large t a
small ε-error becomes a large x̂_0-error (1/ᾱ_T ≈ 2.5·10⁴ for the linear schedule). The deterministic
samplers (DDIM with η = 0, DPM-Solver++) carry that error along their whole trajectory, while the ancestral
sampler's fresh noise at each step masks it — which is why an undertrained network can sample well
ancestrally and poorly deterministically.

``channel_mean_mse`` is the part of the error carried by each image's per-channel mean (the error averaged over
the pixels, squared, per dimension): white errors put 1/(H·W) of their MSE there, while a network blind to each
image's colour (a GroupNorm of one channel per group, ``diffusion.unet.UNet``) puts most of it there at large t,
where it becomes a colour cast of x̂_0.
"""
from __future__ import annotations

import numpy as np
import torch

from diffusion.eval_mode import check_eval_mode

__all__ = ["eps_error_by_timestep"]


@torch.no_grad()
def eps_error_by_timestep(diffusion, model, x0: torch.Tensor, timesteps, *, model_kwargs: dict | None = None,
                          generator: torch.Generator | None = None, batch_size: int = 256) -> dict:
    """Per-timestep mean squared ε-error (per dimension) of ``model`` and of the predictor ε̂ = x_t.

    Args:
        diffusion: a ``GaussianDiffusion`` (``q_sample`` and ``alpha_bar`` are used).
        model: ``model(x, t, **model_kwargs) -> ε̂``, in eval mode (a module in training mode is refused:
            its dropout would make the error random).
        x0: clean images in [-1, 1], (N, C, H, W), on the model's device.
        timesteps: the timestep indices to evaluate (each in [0, T)).
        model_kwargs: e.g. ``{"y": labels}`` (N,) for a class-conditional model; sliced with ``x0``.
        generator: for the noise draws (on ``x0``'s device).

    Returns ``{"t": (K,) int array, "mse": (K,), "identity_mse": (K,), "x0_mse": (K,), "channel_mean_mse": (K,)}``
    as float64 numpy arrays, where ``x0_mse`` = ``mse`` · (1−ᾱ_t)/ᾱ_t is the implied error of the predicted x̂_0
    and ``channel_mean_mse`` the mean over images and channels of the squared per-image channel mean of the
    ε-error (at most ``mse``; images of at least two dimensions, (N, C, ...))
    """
    if not isinstance(x0, torch.Tensor) or x0.dim() < 2 or len(x0) == 0:
        raise ValueError("x0 must be a non-empty batch of images (N, ...) in [-1, 1]")
    ts = np.asarray(list(timesteps), dtype=np.int64)
    if ts.size == 0 or ts.min() < 0 or ts.max() >= diffusion.num_timesteps:
        raise ValueError(f"timesteps must be a non-empty list of indices in [0, {diffusion.num_timesteps})")
    check_eval_mode(model, "the ε-error")
    kwargs = model_kwargs or {}
    mse, ident, mean_mse = [], [], []
    for t in ts:
        err = ref = mean_err = 0.0
        for lo in range(0, len(x0), batch_size):
            xb = x0[lo:lo + batch_size]
            tb = torch.full((len(xb),), int(t), device=xb.device, dtype=torch.long)
            noise = torch.randn(xb.shape, generator=generator, device=xb.device, dtype=xb.dtype)
            x_t = diffusion.q_sample(xb, tb, noise=noise)
            kw = {k: v[lo:lo + batch_size] for k, v in kwargs.items()}
            eps = model(x_t, tb, **kw).float()
            diff = (eps - noise).double()
            err += float((diff ** 2).sum())
            mean_err += float((diff.flatten(2).mean(dim=2) ** 2).sum()) if diff.dim() > 2 else float((diff ** 2).sum())
            ref += float(((x_t - noise) ** 2).double().sum())
        mse.append(err / x0.numel())
        ident.append(ref / x0.numel())
        mean_mse.append(mean_err / (x0.shape[0] * x0.shape[1]))
    ab = np.asarray(diffusion.alpha_bar, dtype=np.float64)[ts]
    mse_a = np.asarray(mse)
    return {"t": ts, "mse": mse_a, "identity_mse": np.asarray(ident), "x0_mse": mse_a * (1 - ab) / ab,
            "channel_mean_mse": np.asarray(mean_mse)}

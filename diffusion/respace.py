"""Respaced sampling: the reverse process over a subset S of the T timesteps (thin wrapper).

For a subsequence τ_1 < … < τ_K of the original indices, ᾱ is kept at those indices and new betas are
recomputed as β'_k = 1 − ᾱ_{τ_k}/ᾱ_{τ_{k-1}} (improved DDPM, section 4). The forward marginals
q(x_τ | x_0) of eq. (3) are unchanged, so a model trained on all T steps is used as is; the wrapper
maps each new index k back to the original τ_k before calling the model.
"""
from __future__ import annotations

import numpy as np
import torch

from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps: int, spec) -> list[int]:
    """Indices kept out of ``range(num_timesteps)``.

    ``spec`` is an int or a string: ``"K"`` keeps K indices evenly spaced from 0 to T−1 (rounded);
    ``"ddimK"`` keeps the stride-⌊T/K⌋ indices 0, s, 2s, … (DDIM's uniform spacing).
    """
    spec = str(spec)
    if spec.startswith("ddim"):
        k = int(spec[4:])
        if not 1 <= k <= num_timesteps:
            raise ValueError(f"steps must lie in [1, {num_timesteps}], got {k}")
        return list(range(0, num_timesteps, num_timesteps // k))[:k]
    try:
        k = int(spec)
    except ValueError:
        raise ValueError(f"timestep spacing must be an int 'K' or 'ddimK', got {spec!r}") from None
    if not 1 <= k <= num_timesteps:
        raise ValueError(f"steps must lie in [1, {num_timesteps}], got {k}")
    if k == 1:
        return [num_timesteps - 1]
    return sorted(set(int(round(x)) for x in np.linspace(0, num_timesteps - 1, k)))


class _TimestepMap:
    """Calls the model with original timestep indices τ_k in place of the respaced index k."""

    def __init__(self, model, timestep_map: torch.Tensor):
        self.model, self.timestep_map = model, timestep_map

    def __call__(self, x, t, **kwargs):
        return self.model(x, self.timestep_map.to(t.device)[t], **kwargs)


class SpacedDiffusion(GaussianDiffusion):
    """A :class:`GaussianDiffusion` over the kept timesteps of ``base`` (ᾱ preserved at every kept index)."""

    def __init__(self, base: GaussianDiffusion, use_timesteps):
        use = sorted(set(int(i) for i in use_timesteps))
        if not use or use[0] < 0 or use[-1] >= base.num_timesteps:
            raise ValueError(f"use_timesteps must be a non-empty subset of [0, {base.num_timesteps})")
        last, betas = 1.0, []
        for i in use:
            betas.append(1.0 - base.alpha_bar[i] / last)
            last = base.alpha_bar[i]
        super().__init__(np.array(betas), base.model_mean_type, base.model_var_type, base.loss_type,
                         base.decoder_variance)
        self.base = base
        self.timestep_map = torch.tensor(use, dtype=torch.long)

    def wrap_model(self, model):
        """The model called with original timestep indices (what it was trained on)."""
        return _TimestepMap(model, self.timestep_map)

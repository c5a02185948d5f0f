"""Classifier-free guidance, eq. (18): ε̃ = ε_θ(x_t, t, ∅) + w (ε_θ(x_t, t, y) − ε_θ(x_t, t, ∅))."""
from __future__ import annotations

import torch


def inputs_per_image(guidance_scale: float | None) -> int:
    """Network inputs per image and sampler step: 2 where eq. (18) needs both predictions (w other than 0 and 1,
    computed by :class:`ClassifierFreeGuidance` as one pass of twice the batch), else 1 (no guidance, or w = 1, the
    plain conditional model, or w = 0, the unconditional one)."""
    return 1 if guidance_scale is None or float(guidance_scale) in (0.0, 1.0) else 2


class ClassifierFreeGuidance:
    """A model callable that applies eq. (18) with guidance scale ``guidance_scale`` = w.

    The conditional and unconditional predictions are computed in one batched forward pass of size 2B.
    w = 1 is the plain conditional model and w = 0 the unconditional one (each then needs one pass of
    size B). ``null_class`` is the index K of the null token ∅.
    """

    def __init__(self, model, guidance_scale: float, null_class: int):
        if not isinstance(null_class, int) or null_class < 1:
            raise ValueError(f"null_class must be the positive index K of the null token, got {null_class!r}")
        if not float(guidance_scale) == float(guidance_scale):  # NaN
            raise ValueError("guidance_scale must be a number, got NaN")
        self.model, self.guidance_scale, self.null_class = model, float(guidance_scale), null_class

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier-free guidance needs class labels y")
        w = self.guidance_scale
        null = torch.full_like(y, self.null_class)
        if inputs_per_image(w) == 1:  # w = 1: the conditional model; w = 0: the unconditional one
            return self.model(x, t, y=y if w == 1.0 else null, **kwargs)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null]), **kwargs)
        cond, uncond = out.chunk(2)
        return uncond + w * (cond - uncond)

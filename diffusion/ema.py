"""Exponential moving average (EMA) of the network weights (section 3.3.2: decay 0.9999).

After every optimiser step the shadow weights move towards the trained weights,

    θ_EMA ← d_n · θ_EMA + (1 − d_n) · θ,      d_n = decay,  or with warm-up  d_n = min(decay, (1 + n) / (10 + n)),

where n counts the updates made before this one. The warm-up (the ``num_updates`` rule of TensorFlow's
``ExponentialMovingAverage``) matters for short runs only: with a constant decay the shadow keeps a weight
decay^(N−k) of the early, poorly trained weights after N steps (0.995^400 ≈ 0.13 of everything before step
300 of a 700-step run), and its samples are then worse than the raw weights'. With the warm-up the
effective averaging window is about n/9 steps until it reaches 1/(1 − decay); for decay 0.9999 that is
after ≈ 90,000 updates, so an 800k-step thesis run is hardly affected.

The update is ``torch._foreach_lerp_`` over all parameters and runs without host synchronisation: the
update count lives in a device tensor and the warm-up's decay is computed from it on the device (passed
as a tensor-list weight; a ``Scalar`` weight would copy it to the host). With a constant decay the update
is one fused kernel launch per dtype/device group; the warm-up's tensor weights take ATen's per-tensor
route (one launch per parameter tensor, or fused by ``torch.compile``). Nothing in ``update`` is a Python value that changes from step to step,
so it can sit inside a compiled training step without recompiling. Buffers (none in the U-Net, but e.g.
running statistics in other models) are copied, not averaged. Sampling and evaluation use the EMA weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """An EMA copy of ``model``'s weights, held as a frozen module ``self.module`` in eval mode.

    Args:
        model: the trained network (unwrapped: not a DDP or compiled wrapper).
        decay: the EMA decay in [0, 1); 0.9999 in the thesis (section 3.3.2).
        warmup: use d_n = min(decay, (1 + n)/(10 + n)) instead of the constant ``decay``.

    ``update(model)`` applies one step of the rule above; ``state_dict``/``load_state_dict`` hold the shadow
    weights, the decay, the warm-up flag and the number of updates (so a resumed run continues exactly).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self._ema_params = [p for p in self.module.parameters()]
        self._ema_buffers = [b for b in self.module.buffers()]
        device = self._ema_params[0].device if self._ema_params else None
        # Updates made so far, on the parameters' device (float64: exact far beyond any run length).
        self._count = torch.zeros((), dtype=torch.float64, device=device)

    @property
    def num_updates(self) -> int:
        """Updates made so far (reads the device counter: a host synchronisation, for bookkeeping only)."""
        return int(self._count.item())

    def current_decay(self, n: int | None = None) -> float:
        """d_n for the update that follows ``n`` earlier ones (default: the next update)."""
        n = self.num_updates if n is None else int(n)
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """θ_EMA ← d_n·θ_EMA + (1−d_n)·θ for every parameter, buffers copied."""
        params = [p.detach() for p in model.parameters()]
        if len(params) != len(self._ema_params):
            raise ValueError(f"model has {len(params)} parameter tensors, the EMA copy {len(self._ema_params)}")
        if params and self.warmup:
            d = torch.clamp((1.0 + self._count) / (10.0 + self._count), max=self.decay)
            weight = (1.0 - d).to(params[0].dtype)
            # The tensor-list overload keeps the weight on the device (the Scalar one would copy it out).
            torch._foreach_lerp_(self._ema_params, params, [weight] * len(params))
        elif params:
            torch._foreach_lerp_(self._ema_params, params, 1.0 - self.decay)
        buffers = list(model.buffers())
        if buffers:
            torch._foreach_copy_(self._ema_buffers, buffers)
        self._count.add_(1.0)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.decay = float(state["decay"])
        self.warmup = bool(state.get("warmup", False))  # checkpoints written before the warm-up existed
        self._count.fill_(float(int(state["num_updates"])))

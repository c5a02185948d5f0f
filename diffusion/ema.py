"""Exponential moving average (EMA) of the network weights (section 3.3.2: decay 0.9999).

After every optimiser step the shadow weights move towards the trained weights,

    θ_EMA ← decay · θ_EMA + (1 − decay) · θ,

done for all parameters at once with ``torch._foreach_lerp_`` (one fused kernel launch per dtype/device
group instead of one per tensor, and no host synchronisation, so it can sit inside a compiled training
step). Buffers (none in the U-Net, but e.g. running statistics in other models) are copied, not averaged.
Sampling and evaluation use the EMA weights.
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

    ``update(model)`` applies θ_EMA ← decay·θ_EMA + (1−decay)·θ; ``state_dict``/``load_state_dict`` hold the
    shadow weights and the number of updates (so a resumed run continues exactly).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.num_updates = 0
        self._ema_params = [p for p in self.module.parameters()]
        self._ema_buffers = [b for b in self.module.buffers()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """θ_EMA ← decay·θ_EMA + (1−decay)·θ for every parameter (foreach lerp), buffers copied."""
        params = [p.detach() for p in model.parameters()]
        if len(params) != len(self._ema_params):
            raise ValueError(f"model has {len(params)} parameter tensors, the EMA copy {len(self._ema_params)}")
        torch._foreach_lerp_(self._ema_params, params, 1.0 - self.decay)
        buffers = list(model.buffers())
        if buffers:
            torch._foreach_copy_(self._ema_buffers, buffers)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])

"""The CUDA fast path of sampling: backend flags, bf16 autocast, channels_last, ``torch.compile``.

Training has its fast path in ``diffusion.train`` (bf16 autocast, channels_last, compiled model, fused Adam,
foreach EMA, no host synchronisation), switched by the config. Sampling uses this module:

* :func:`configure_backends` — cuDNN autotuning (``cudnn.benchmark``: the fastest convolution algorithm
  for each shape, chosen once) and TF32 for float32 matrix products; called by the trainer, the command
  line and the benchmark whenever they run on CUDA.
* :class:`Bf16Model` — the network called under bf16 autocast with its output returned in float32, so
  the sampler's arithmetic (posterior mean, DDIM and DPM-Solver updates) stays in float32 while the U-Net
  runs in bf16. ``diffusion.samplers.sample`` applies it by default on CUDA (``bf16=None``).
* :func:`prepare_for_sampling` — channels_last weights and ``torch.compile`` of the network (the largest
  gain: compiled + CUDA graph 2.9× diffusers' bf16 eager throughput on an H200, eager 0.8×; see
  ``benchmarks/RESULTS.md``), used by ``python -m diffusion sample`` / ``evaluate`` on CUDA unless
  ``--no-compile``. Compilation costs tens of seconds once, so short interactive runs skip it.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["Bf16Model", "configure_backends", "prepare_for_sampling"]


def configure_backends(device) -> bool:
    """On CUDA, enable cuDNN autotuning and TF32 float32 matmuls (``set_float32_matmul_precision("high")``);
    returns whether anything was set (nothing on other devices)."""
    if torch.device(device).type != "cuda":
        return False
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")
    return True


class Bf16Model(nn.Module):
    """``model(x, t, y=None)`` under bf16 autocast on ``x``'s device type; the output is cast to float32.

    Inputs are passed in the memory format the model's first 4-D weight has when it is wrapped
    (channels_last weights get channels_last inputs, avoiding a layout conversion at the first convolution)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not callable(model):
            raise ValueError(f"model must be callable as model(x, t, y=None), got {type(model).__name__}")
        self.model = model
        params = getattr(model, "parameters", None)
        first_4d = next((p for p in (params() if params is not None else ()) if p.dim() == 4), None)
        channels_last = first_4d is not None and not first_4d.is_contiguous() \
            and first_4d.is_contiguous(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            out = self.model(x, t) if y is None else self.model(x, t, y=y)
        return out.float().contiguous()


def prepare_for_sampling(model: nn.Module, *, channels_last: bool = True, compile: bool = True) -> nn.Module:
    """``model`` in eval mode with channels_last weights (in place) and, if ``compile``, wrapped by
    ``torch.compile`` (dynamic batch sizes, so the last, smaller batch does not recompile). Meant for CUDA;
    on other devices the model is returned unchanged apart from eval mode."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type != "cuda":
        return model
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return torch.compile(model, dynamic=None) if compile else model

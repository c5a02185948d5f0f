"""CUDA-graph capture of the sampling model call ε_θ(x_t, t[, y]) for a fixed batch shape.

A sampler calls the same network T (or ``steps``) times with tensors of one shape. Recording one forward
pass as a CUDA graph and replaying it removes the per-kernel launch cost of the Python/ATen dispatch
(hundreds of small kernels per U-Net pass): each call copies its inputs into static buffers, replays the
recorded kernels and returns a copy of the static output. The network, its weights, the batch shape,
dtypes and device must stay fixed; the weights may change *in place* (the graph reads their memory).

The graph records the autocast state active when it is built (or the one named by ``autocast_dtype``),
with autocast's weight-cast cache off, and runs under ``torch.no_grad`` (inference only). The model may itself be a
``torch.compile``d module: the warm-up calls compile it before the capture. On CPU, or when the capture
fails (e.g. the model synchronises with the host), ``GraphedModel`` warns once and calls the model eagerly.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

__all__ = ["GraphedModel"]


class GraphedModel:
    """The callable ``model(x, t, y=None)`` replayed from a CUDA graph captured at ``example_x``'s shape.

    Args:
        model: the ε-network (any callable ``model(x, t, y=None) -> Tensor``), put in eval mode by the
            caller (dropout inside a captured graph would replay one fixed mask).
        example_x: a tensor with the batch shape, dtype and device of every later ``x`` (its values are
            only used for the warm-up calls).
        example_t: timestep indices (B,) with the dtype of every later ``t``.
        example_y: class labels (B,) for a class-conditional model, or ``None`` if the model is always
            called without ``y``.
        warmup: eager calls on a side stream before the capture (at least 1; they also trigger
            ``torch.compile`` and cuDNN algorithm selection).
        autocast_dtype: run the model under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``),
            captured or not; ``None`` keeps the caller's autocast state (recorded into the graph).

    Attributes:
        graphed: ``True`` when calls replay a captured graph, ``False`` on the eager fallback.
        fallback_reason: why the eager fallback is used (``None`` when graphed).
    """

    def __init__(self, model, example_x: torch.Tensor, example_t: torch.Tensor,
                 example_y: torch.Tensor | None = None, *, warmup: int = 3,
                 autocast_dtype: torch.dtype | None = None):
        if not callable(model):
            raise ValueError(f"model must be callable as model(x, t, y=None), got {type(model).__name__}")
        for name, value in (("example_x", example_x), ("example_t", example_t)):
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name} must be a tensor, got {type(value).__name__}")
        if example_y is not None and not isinstance(example_y, torch.Tensor):
            raise ValueError(f"example_y must be a tensor of class indices or None, got {type(example_y).__name__}")
        if example_x.dim() < 1 or example_t.shape != (example_x.shape[0],):
            raise ValueError(f"example_t must have shape ({example_x.shape[0] if example_x.dim() else '?'},) "
                             f"matching example_x's batch, got {tuple(example_t.shape)}")
        if example_y is not None and example_y.shape != example_t.shape:
            raise ValueError(f"example_y must have shape {tuple(example_t.shape)}, got {tuple(example_y.shape)}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be a positive integer, got {warmup!r}")
        self.model = model
        self.autocast_dtype = autocast_dtype
        self._device_type = example_x.device.type
        self.graphed = False
        self.fallback_reason: str | None = None
        self._static = {"x": example_x, "t": example_t, "y": example_y}
        if example_x.device.type != "cuda":
            self._fall_back(f"CUDA graphs need a CUDA device, the inputs are on {example_x.device}")
            return
        try:
            self._capture(warmup)
        except Exception as err:  # any capture failure: keep working, eagerly
            with contextlib.suppress(Exception):
                torch.cuda.synchronize(example_x.device)
            self._fall_back(f"capture failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")

    def _fall_back(self, reason: str) -> None:
        self.graphed, self.fallback_reason, self._graph = False, reason, None
        warnings.warn(f"GraphedModel: {reason}; calling the model eagerly", RuntimeWarning, stacklevel=3)

    def _autocast(self):
        """``autocast_dtype``, or the caller's autocast state, always without the weight-cast cache: a
        cached cast made outside the graph would be read by the replays after it is freed."""
        device_type = self._device_type
        dtype = self.autocast_dtype
        if dtype is None:
            if not torch.is_autocast_enabled(device_type):
                return contextlib.nullcontext()
            dtype = torch.get_autocast_dtype(device_type)
        return torch.autocast(device_type=device_type, dtype=dtype, cache_enabled=False)

    def _call(self) -> torch.Tensor:
        s = self._static
        with self._autocast():
            if s["y"] is None:
                return self.model(s["x"], s["t"])
            return self.model(s["x"], s["t"], y=s["y"])

    @torch.no_grad()
    def _capture(self, warmup: int) -> None:
        s = {k: (v.detach().clone() if v is not None else None) for k, v in self._static.items()}
        self._static = s
        device = s["x"].device
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._call()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._call()
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model must return a tensor, got {type(out).__name__}")
        self._graph, self._out, self.graphed = graph, out, True

    def _check(self, name: str, value: torch.Tensor | None) -> None:
        ref = self._static[name]
        if ref is None:
            if value is not None:
                raise ValueError(f"{name} must be None: the graph was captured without {name} (example_{name}=None)")
            return
        if not isinstance(value, torch.Tensor) or value.shape != ref.shape or value.dtype != ref.dtype \
                or value.device != ref.device:
            got = (f"{tuple(value.shape)} {value.dtype} on {value.device}" if isinstance(value, torch.Tensor)
                   else type(value).__name__)
            raise ValueError(f"{name} must match the captured example: {tuple(ref.shape)} {ref.dtype} on "
                             f"{ref.device}, got {got}")

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """ε_θ(x, t[, y]) for inputs of the captured shape (a fresh tensor, not the graph's buffer)."""
        if not self.graphed:
            with self._autocast():
                return self.model(x, t) if y is None else self.model(x, t, y=y)
        self._check("x", x)
        self._check("t", t)
        self._check("y", y)
        s = self._static
        s["x"].copy_(x)
        s["t"].copy_(t)
        if y is not None:
            s["y"].copy_(y)
        self._graph.replay()
        return self._out.clone()

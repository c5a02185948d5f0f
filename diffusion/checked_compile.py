"""``torch.compile`` checked against the eager network it compiles.

A compiled network is only a faster route to the same function, and on the CPU that is not always what it
is: with PyTorch's kernels capped at AVX2 on an AVX-512 machine (``ATEN_CPU_CAPABILITY=avx2``, the instruction
set of many AMD EPYC CPUs), torch 2.14's inductor turned every output of the 64×64 CelebA U-Net at batch 64
into NaN, while the eager network, and the same compiled network at batch 8, were correct. So
:class:`CheckedCompile` runs the eager network beside the compiled one on the first call of every input
shape (``dynamic=False`` compiles each shape anew anyway) and keeps the compiled route for that shape only if
the two agree; otherwise it warns once and computes that shape eagerly. The check costs one eager call per
shape. A compiled kernel that crashes the process cannot be caught that way: with one torch thread and AVX-512
kernels, torch 2.14.1's inductor (g++ 12, Intel Xeon) aborted the cpu profile's CIFAR U-Net at batch 16 with heap
corruption every time, while two threads, or one thread with AVX2 kernels, ran it correctly; there
(:func:`compiled_kernels_crash`) the network runs eagerly at every shape, with one warning.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["CheckedCompile", "RTOL", "compiled_kernels_crash", "outputs_agree"]

RTOL = 1e-3
"""Largest difference allowed between the compiled and the eager output, relative to the eager output's
largest magnitude (floor 1). Compiled and eager U-Nets differ by about 4e-6 here (another summation order)."""


def compiled_kernels_crash() -> bool:
    """Whether inductor's CPU kernels are known to crash the process in this configuration: one torch thread with
    AVX-512 kernels (see the module docstring)."""
    return torch.get_num_threads() == 1 and torch.backends.cpu.get_cpu_capability() == "AVX512"


def outputs_agree(compiled: torch.Tensor, eager: torch.Tensor, rtol: float = RTOL) -> bool:
    """Whether ``compiled`` is finite wherever ``eager`` is and within ``rtol`` of it (relative to
    ``max(1, max|eager|)``)."""
    if compiled.shape != eager.shape:
        return False
    compiled, eager = compiled.detach(), eager.detach()
    finite = torch.isfinite(eager)
    if not bool(torch.isfinite(compiled)[finite].all()):
        return False
    if not bool(finite.any()):
        return True
    scale = max(1.0, float(eager[finite].abs().max()))
    return float((compiled[finite] - eager[finite]).abs().max()) <= rtol * scale


def _shape_key(args, kwargs) -> tuple:
    def one(value):
        return (tuple(value.shape), value.dtype, value.device.type) if isinstance(value, torch.Tensor) else value

    return tuple(one(a) for a in args) + tuple((k, one(v)) for k, v in sorted(kwargs.items()))


class CheckedCompile(torch.nn.Module):
    """``network`` through ``torch.compile(network, dynamic=False)``, checked on the first call of every input
    shape against ``network`` itself (:func:`outputs_agree`); a shape whose compiled output disagrees is
    computed eagerly from then on, with one warning. Attributes not of this wrapper are the network's."""

    def __init__(self, network: torch.nn.Module, rtol: float = RTOL, compile_fn=None):
        super().__init__()
        self.network = network
        # the network's mode, not nn.Module's default (training): a sampler that switches to eval mode and back
        # (``diffusion.samplers``) must leave an eval network in eval mode, or dropout stays on in every later
        # eager evaluation of it (the ε-error and the bound of 06_ablations)
        self.training = network.training
        self.rtol = rtol
        self._compiled = (compile_fn or (lambda m: torch.compile(m, dynamic=False)))(network)
        self._verdict: dict[tuple, bool] = {}  # shape key -> the compiled route agreed
        self._eager_only = compile_fn is None and compiled_kernels_crash()  # a stand-in compiler has no kernels
        if self._eager_only:
            warnings.warn("torch.compile's CPU kernels crash with one torch thread and AVX-512 kernels "
                          "(torch.set_num_threads(1)): the eager network samples instead", RuntimeWarning,
                          stacklevel=2)

    @property
    def rejected_shapes(self) -> list[tuple]:
        """The input shapes computed eagerly because the compiled network disagreed on them."""
        return [key for key, ok in self._verdict.items() if not ok]

    def forward(self, *args, **kwargs):
        if self._eager_only:
            return self.network(*args, **kwargs)
        key = _shape_key(args, kwargs)
        verdict = self._verdict.get(key)
        if verdict is None:
            compiled = self._compiled(*args, **kwargs)
            eager = self.network(*args, **kwargs)
            verdict = self._verdict[key] = outputs_agree(compiled, eager, self.rtol)
            if not verdict:
                shapes = ", ".join("×".join(map(str, a.shape)) for a in args if isinstance(a, torch.Tensor))
                warnings.warn(f"torch.compile gave a wrong result for inputs of shape {shapes} on this CPU "
                              f"({torch.backends.cpu.get_cpu_capability()} kernels; non-finite or off by more than "
                              f"{self.rtol:g} relative): this shape is computed by the eager network instead",
                              RuntimeWarning, stacklevel=2)
            return compiled if verdict else eager
        return self._compiled(*args, **kwargs) if verdict else self.network(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("network"), name)

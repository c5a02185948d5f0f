"""One optimiser step of algorithm 1 (eq. 14) and its running statistics, without host synchronisation.

``make_train_step`` builds the step: for each of ``grad_accum`` micro-batches draw timestep indices
t ~ Uniform{0, …, T−1} (index t is the thesis's step t+1) and noise ε ~ N(0, I); for a class-conditional model
replace each label by the null token ∅ with probability ``p_uncond`` (the label dropout that classifier-free
guidance, eq. 18, needs); L_simple = ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖² averaged over pixels and the batch
(eq. 14, through ``GaussianDiffusion.training_losses``); backward. Then clip the gradient norm, take an Adam step
and update the EMA of the weights. ``TrainStats`` keeps the running statistics (loss sums, EMA of the loss,
gradient norm, first non-finite step) in tensors on the device; they are read every ``log_every`` steps.
``warmup_lr`` is the learning-rate schedule of section 3.3.2 and ``set_lr`` applies it.

Fast path on CUDA: bf16 autocast, fused Adam, ``torch._foreach`` EMA, and ``compile="step"``: the loss
computation and the update (clip, Adam, EMA, statistics) as two compiled graphs around ``backward``.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from diffusion import distributed
from diffusion.ema import EMA

__all__ = ["COMPILE_MODES", "TrainStats", "make_train_step", "set_lr", "warmup_lr"]

COMPILE_MODES = (False, "model", "step")


def warmup_lr(step: int, base_lr: float, warmup_steps: int) -> float:
    """Learning rate of the update that takes the model from ``step`` to ``step + 1`` (section 3.3.2):
    linear warm-up ``base_lr · (step+1)/warmup_steps`` over the first ``warmup_steps`` updates, then
    constant ``base_lr``."""
    if warmup_steps <= 0:
        return float(base_lr)
    return float(base_lr) * min(1.0, (step + 1) / warmup_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate; a tensor lr (compiled step) is filled in place, which
    neither recompiles nor synchronises."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


class TrainStats:
    """Running statistics of the training step, kept on the device (no host synchronisation).

    Per optimiser step: the loss (mean L_simple over the global batch of this rank) and the gradient
    norm before clipping are summed; an exponential moving average of the loss with factor ``beta`` is kept
    with its bias correction (ema = Σ β^{n-i}(1−β)ℓ_i / (1−β^n)); the index of the first step with a
    non-finite loss is recorded (−1 while none). ``read()`` synchronises once and resets the sums.
    """

    def __init__(self, device: torch.device, beta: float = 0.99):
        if not 0.0 < beta < 1.0:
            raise ValueError(f"beta must be in (0, 1), got {beta!r}")
        self.beta = beta
        z = lambda: torch.zeros((), dtype=torch.float32, device=device)  # noqa: E731
        self.loss_sum, self.grad_norm_sum, self.count = z(), z(), z()
        self.ema_num, self.ema_den = z(), z()
        self.steps_done = z()
        self.first_bad = z() - 1.0

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}

    @torch.no_grad()
    def update(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        loss = loss.detach().float()
        self.loss_sum.add_(loss)
        self.grad_norm_sum.add_(grad_norm.detach().float())
        self.count.add_(1.0)
        self.ema_num.mul_(self.beta).add_((1.0 - self.beta) * loss)
        self.ema_den.mul_(self.beta).add_(1.0 - self.beta)
        bad = (~torch.isfinite(loss)) & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(bad, self.steps_done, self.first_bad))
        self.steps_done.add_(1.0)

    def read(self, reduce: bool = False) -> dict:
        """Interval means (loss, grad_norm), the EMA loss and the first non-finite step (``None`` if none),
        then reset the interval sums. With ``reduce`` the sums are averaged over DDP ranks."""
        with torch.no_grad():
            vec = torch.stack([self.loss_sum, self.grad_norm_sum, self.count, self.ema_num, self.ema_den])
            bad = torch.where(self.first_bad < 0, torch.full_like(self.first_bad, float("inf")), self.first_bad)
            if reduce:
                vec = distributed.all_reduce_sum(vec)
                bad = distributed.all_reduce_min(bad)
            loss_sum, gn_sum, count, ema_num, ema_den = vec.tolist()
            first_bad = bad.item()
            self.loss_sum.zero_()
            self.grad_norm_sum.zero_()
            self.count.zero_()
        return {
            "loss": loss_sum / count if count else float("nan"),
            "grad_norm": gn_sum / count if count else float("nan"),
            "ema_loss": ema_num / ema_den if ema_den else float("nan"),
            "first_nonfinite_step": None if math.isinf(first_bad) else int(first_bad),
        }

    def state_dict(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.tensors().items()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in self.tensors().items():
            v.copy_(state[k])


def make_train_step(model: nn.Module, diffusion, optimizer: torch.optim.Optimizer, ema: EMA | None, *,
                    grad_clip: float | None = 1.0, p_uncond: float = 0.0, null_class: int | None = None,
                    grad_accum: int = 1, bf16: bool = False, stats: TrainStats | None = None,
                    compile: bool | str = False):
    """The full optimiser step of algorithm 1 as a function ``step(x0, y) -> loss`` (a 0-d device tensor).

    ``x0`` (B, C, H, W) in [-1, 1] is this rank's batch, split into ``grad_accum`` equal micro-batches;
    ``y`` (B,) class labels (ignored for an unconditional model, ``null_class=None``). For each micro-batch:
    t ~ Uniform{0..T−1}, ε ~ N(0, I) (global torch RNG), labels → ∅ with probability ``p_uncond``,
    L_simple (eq. 14) under bf16 autocast if ``bf16``, backward (DDP gradient sync only on the last
    micro-batch). Then gradient-norm clipping to ``grad_clip`` (``None``: no clipping, the norm is still
    measured), ``optimizer.step()``, ``ema.update`` and ``stats.update`` — all without host synchronisation.

    ``model`` is what is called (the module, or its DDP/compiled wrapper; its ``parameters()`` are the
    trained ones). ``compile``: ``False``; ``"model"`` (the caller compiled ``model``; nothing more here);
    ``"step"`` compiles the loss computation and the update (clip, Adam, EMA, statistics) as two graphs
    around ``backward``; for a compiled step the optimizer's lr must be a tensor (see ``set_lr``).
    The returned function has the attribute ``stats``.
    """
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
    if not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"grad_accum must be a positive integer, got {grad_accum!r}")
    if not 0.0 <= float(p_uncond) < 1.0:
        raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond!r}")
    if grad_clip is not None and not float(grad_clip) > 0:
        raise ValueError(f"grad_clip must be positive or None, got {grad_clip!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    stats = stats if stats is not None else TrainStats(device)
    max_norm = float("inf") if grad_clip is None else float(grad_clip)
    T = diffusion.num_timesteps
    p_uncond = float(p_uncond)

    def micro_loss(x0: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        b = x0.shape[0]
        t = torch.randint(0, T, (b,), device=x0.device)
        noise = torch.randn_like(x0)
        kwargs = None
        if null_class is not None:
            if p_uncond > 0:
                drop = torch.rand(b, device=x0.device) < p_uncond
                y = torch.where(drop, torch.full_like(y, null_class), y)
            kwargs = {"y": y}
        with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=bf16):
            return diffusion.training_losses(model, x0, t, model_kwargs=kwargs, noise=noise)["loss"].mean()

    def update(loss: torch.Tensor) -> None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        stats.update(loss, grad_norm)

    if compile == "step":
        micro_loss = torch.compile(micro_loss)
        update = torch.compile(update)
    no_sync = getattr(model, "no_sync", None)

    def step(x0: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x0.shape[0] % grad_accum:
            raise ValueError(f"the batch of {x0.shape[0]} images does not split into grad_accum={grad_accum} "
                             "equal micro-batches")
        if null_class is not None and y is None:
            raise ValueError("y (class labels) is required for a class-conditional model")
        optimizer.zero_grad(set_to_none=True)
        xs = x0.chunk(grad_accum)
        ys = y.chunk(grad_accum) if y is not None else [None] * grad_accum
        total = None
        for i, (xi, yi) in enumerate(zip(xs, ys)):
            sync = i == grad_accum - 1 or no_sync is None
            with contextlib.nullcontext() if sync else no_sync():
                loss = micro_loss(xi, yi) / grad_accum
                loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        update(total)
        return total

    step.stats = stats
    return step

"""Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler, `kill`).

The first signal asks the loop to stop after the current step, which then writes a checkpoint that
``--resume`` continues from; a second signal stops at once (``KeyboardInterrupt``). Under DistributedDataParallel
the processes agree every ``log_every`` steps, by one collective, so that a signal seen by any rank stops all of
them at the same step.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import torch

from diffusion import distributed

__all__ = ["StopSignals"]


class StopSignals:
    """The stop request of one training run: ``received`` is the first signal's number, or ``None``."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None

    def handle(self, signum: int, frame=None) -> None:
        """The handler: remember the first signal; a second one raises ``KeyboardInterrupt``."""
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    @contextlib.contextmanager
    def installed(self):
        """Install :meth:`handle` for SIGINT and SIGTERM while the block runs (main thread only), then restore
        the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def requested(self, step: int, log_every: int, world_size: int, device: torch.device) -> bool:
        """Whether the run stops after ``step``. One process: whether a signal arrived. Under DDP the ranks
        agree every ``log_every`` steps (the largest signal number seen by any rank is adopted by all)."""
        if world_size == 1:
            return self.received is not None
        if step % log_every:
            return False
        flag = torch.tensor(0.0 if self.received is None else float(self.received), device=device)
        agreed = int(distributed.all_reduce_max(flag).item())
        if agreed and self.received is None:
            self.received = agreed
        return bool(agreed)

    @property
    def name(self) -> str | None:
        """The signal's name (``"SIGTERM"``), or ``None`` when none arrived."""
        return signal.Signals(self.received).name if self.received is not None else None

"""The sampling time of a trained model, measured apart from the samples it times.

The wall time of a cached sampling run is not a measurement one can print: it holds the compilation of the
network on its first batch, and whatever else ran on the machine while the samples were drawn (the run may have
been made hours earlier, beside a training). :func:`seconds_per_call` instead times the network where the table
that prints the time is made: one untimed warm-up run (which compiles), then the best of ``repeats`` timed
runs of the sampler over ``probe_steps`` respaced steps on one batch. Every sampler of
:mod:`diffusion.samplers` calls the network once per step (DPM-Solver++(2M) too: its step selection gives
exactly the requested number of calls), so an S-step setting costs S times the returned value per image.
"""

from __future__ import annotations

import time

import torch

__all__ = ["seconds_per_call"]


def seconds_per_call(tm, sampler: str, *, batch_size: int = 128, probe_steps: int = 10, repeats: int = 3,
                     guidance_scale: float | None = None, use_ema: bool = True, seed: int = 0) -> float:
    """Seconds per image per network call of ``sampler`` on the trained model ``tm``
    (:class:`diffusion.experiments.TrainedModel`), sampled as :func:`diffusion.experiments.generate` samples
    it (the same network, compiled or not, the same guidance; a conditional model gets labels cycling through
    its classes): the best of ``repeats`` timed runs over ``probe_steps`` steps on a batch of ``batch_size``,
    after one untimed warm-up run, divided by ``probe_steps × batch_size``."""
    from diffusion.samplers import sample

    for name, value, low in (("batch_size", batch_size, 1), ("probe_steps", probe_steps, 1), ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    diffusion = tm.diffusion
    if probe_steps > diffusion.num_timesteps:
        raise ValueError(f"probe_steps must be at most T = {diffusion.num_timesteps}, got {probe_steps}")
    model = tm.network(use_ema)
    plain = tm.model if use_ema else tm.raw_model
    dev = next(plain.parameters()).device
    shape = (batch_size, plain.in_channels, plain.image_size, plain.image_size)
    y = None
    if tm.cfg.model.class_cond:
        y = torch.arange(batch_size, device=dev) % tm.data.num_classes

    def run() -> float:
        gen = torch.Generator(device=dev).manual_seed(seed)
        t0 = time.perf_counter()
        sample(diffusion, model, shape, sampler=sampler, steps=probe_steps, guidance_scale=guidance_scale, y=y,
               null_class=tm.null_class, generator=gen, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    with torch.no_grad():
        run()  # warm-up: compilation, allocator, caches
        best = min(run() for _ in range(repeats))
    return best / (probe_steps * batch_size)

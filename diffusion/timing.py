"""The sampling time of a trained model, measured apart from the samples it times.

The wall time of a cached sampling run is not a measurement one can print: it holds the compilation of the
network on its first batch, and whatever else ran on the machine while the samples were drawn (the run may have
been made hours earlier, beside a training). :func:`seconds_per_call` instead times the network where the table
that prints the time is made: one untimed warm-up run of every sampler (which compiles), then ``rounds`` rounds,
each timing one run of every sampler over ``probe_steps`` respaced steps on one batch, the order rotated from
round to round, and the best run of each sampler. Interleaving matters on a shared machine whose speed drifts by
tens of percent within a minute: timed one after the other, samplers that cost the same per call were measured
up to 30 % apart. Every sampler of :mod:`diffusion.samplers` calls the network once per step (DPM-Solver++(2M)
too: its step selection gives exactly the requested number of calls), so an S-step setting costs S times the
returned value per image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

__all__ = ["seconds_per_call"]


def seconds_per_call(tm, samplers: Sequence[str], *, batch_size: int | None = None, probe_steps: int = 10, rounds: int = 3,
                     guidance_scale: float | None = None, use_ema: bool = True, seed: int = 0) -> dict[str, float]:
    """Seconds per image per network call of each of ``samplers`` on the trained model ``tm``
    (:class:`diffusion.experiments.TrainedModel`), sampled as :func:`diffusion.experiments.generate` samples
    it (the same network, compiled or not, the same guidance; a conditional model gets labels cycling through
    its classes): after one untimed warm-up run per sampler, ``rounds`` interleaved rounds of one timed run per
    sampler over ``probe_steps`` steps on a batch of ``batch_size`` images (default: the batch ``generate`` samples
    in, ``tm.images_per_batch(guidance_scale)``); each sampler's best run divided by ``probe_steps × batch_size``.
    Returns ``{sampler: seconds}``."""
    from diffusion.samplers import sample

    samplers = [samplers] if isinstance(samplers, str) else list(samplers)
    if not samplers or not all(isinstance(s, str) for s in samplers) or len(set(samplers)) != len(samplers):
        raise ValueError(f"samplers must be distinct sampler names, got {samplers!r}")
    if batch_size is None:
        batch_size = tm.images_per_batch(guidance_scale)
    for name, value, low in (("batch_size", batch_size, 1), ("probe_steps", probe_steps, 1), ("rounds", rounds, 1)):
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

    def run(sampler: str) -> float:
        gen = torch.Generator(device=dev).manual_seed(seed)
        t0 = time.perf_counter()
        sample(diffusion, model, shape, sampler=sampler, steps=probe_steps, guidance_scale=guidance_scale, y=y,
               null_class=tm.null_class, generator=gen, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    runs: dict[str, list[float]] = {s: [] for s in samplers}
    with torch.no_grad():
        for s in samplers:
            run(s)  # warm-up: compilation, allocator, caches
        for r in range(rounds):
            for s in samplers[r % len(samplers):] + samplers[:r % len(samplers)]:
                runs[s].append(run(s))
    return {s: min(t) / (probe_steps * batch_size) for s, t in runs.items()}

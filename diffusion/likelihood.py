"""The full variational bound under several reverse variances from one set of network evaluations.

The bound of eq. (7) needs T network calls per image; σ_t² (fixed-large β_t or fixed-small β̃_t, and
the convention for L_0) enters only after the network, through the mean and variance of
p_θ(x_{t-1} | x_t). :func:`bpd_for_variances` therefore draws x_t once per term, calls ε_θ once, and
evaluates the terms of every given :class:`~diffusion.gaussian_diffusion.GaussianDiffusion` on that output,
so comparing k variances costs what one costs. With a single diffusion and ``batch_size=None`` it is
exactly :meth:`GaussianDiffusion.calc_bpd_loop` (same noise draws, same terms).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from diffusion.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from diffusion.eval_mode import check_eval_mode
from diffusion.gaussian_diffusion import GaussianDiffusion, mean_flat
from diffusion.progress import tqdm

__all__ = ["bpd_for_variances"]


def _check_compatible(diffusions: Mapping[str, GaussianDiffusion]) -> GaussianDiffusion:
    if not diffusions:
        raise ValueError("diffusions must name at least one GaussianDiffusion")
    first = next(iter(diffusions.values()))
    for name, d in diffusions.items():
        if d.num_timesteps != first.num_timesteps or not np.array_equal(d.betas, first.betas):
            raise ValueError(f"diffusion {name!r} has another noise schedule; the terms share x_t only under one")
        if d.model_mean_type is not first.model_mean_type:
            raise ValueError(f"diffusion {name!r} reads the network output as {d.model_mean_type.value}, "
                             f"not {first.model_mean_type.value}")
    return first


@torch.no_grad()
def bpd_for_variances(diffusions: Mapping[str, GaussianDiffusion], model, x0: torch.Tensor, model_kwargs=None,
                      clip_denoised: bool = True, t_batch: int = 1, batch_size: int | None = None,
                      generator: torch.Generator | None = None, progress: bool = False,
                      progress_dir: str | os.PathLike | None = None) -> dict[str, dict]:
    """For each named diffusion: ``total_bpd`` (B,), ``prior_bpd`` (B,), ``vb`` (B, T) of eq. (7) in bits/dim.

    ``batch_size`` images go through the loop over terms at a time (None: all), ``t_batch`` timesteps per
    forward pass; the noise comes from ``generator`` in the order of the loop. ``model`` must be in eval mode
    (:func:`diffusion.eval_mode.check_eval_mode`). With ``progress_dir``, each finished chunk of ``batch_size``
    images is saved there (its terms and the generator's state after it), and a call with the same arguments
    resumes after the last readable chunk, with the result of an uninterrupted call: the bound of 200 images
    takes most of an hour on two CPU cores."""
    first = _check_compatible(diffusions)
    check_eval_mode(model, "the bound in bits/dim")
    B, T = x0.shape[0], first.num_timesteps
    size = B if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if progress_dir is not None and generator is None:
        raise ValueError("progress_dir needs a generator: a resumed call draws the noise an uninterrupted one would")
    net = first.wrap_model(model)
    kwargs = model_kwargs or {}
    vb = {name: torch.zeros(B, T, device=x0.device) for name in diffusions}
    chunks = range(0, B, size)
    terms_per_chunk = len(range(T - 1, -1, -t_batch))
    bar = tqdm(total=len(chunks) * terms_per_chunk, desc="bound terms", disable=not progress, leave=False)
    resuming = progress_dir is not None
    for lo in chunks:
        xs = x0[lo:lo + size]
        n = xs.shape[0]
        path = None if progress_dir is None else Path(progress_dir) / f"chunk_{lo:07d}.pt"
        if resuming and path.is_file():
            done = _load_chunk(path, diffusions, n, T)
            if done is not None:
                for name in diffusions:
                    vb[name][lo:lo + n] = done["vb"][name].to(x0.device)
                generator.set_state(done["generator"])
                bar.update(terms_per_chunk)
                continue
        resuming = False  # from the first chunk not found on disk, everything after it is computed anew
        kw = {k: (v[lo:lo + size] if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        for hi in range(T - 1, -1, -t_batch):
            ts = list(range(hi, max(hi - t_batch, -1), -1))
            t = torch.tensor(ts, device=x0.device).repeat_interleave(n)
            xb = xs.repeat(len(ts), *([1] * (xs.ndim - 1)))
            noise = torch.randn(xb.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            x_t = first.q_sample(xb, t, noise)
            rep = {k: (v.repeat(len(ts), *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) else v)
                   for k, v in kw.items()}
            out = net(x_t, t, **rep)
            for name, d in diffusions.items():
                terms = d._vb_terms_bpd(out, xb, x_t, t, clip_denoised)
                for j, ti in enumerate(ts):
                    vb[name][lo:lo + n, ti] = terms[j * n:(j + 1) * n]
            bar.update()
        if path is not None:
            save_checkpoint({"vb": {name: vb[name][lo:lo + n].cpu() for name in diffusions},
                             "generator": generator.get_state()}, path)
    bar.close()
    result = {}
    for name, d in diffusions.items():
        prior = d.prior_bpd(x0)
        result[name] = {"total_bpd": vb[name].sum(dim=1) + prior, "prior_bpd": prior, "vb": vb[name]}
    return result


def _load_chunk(path: Path, diffusions: Mapping[str, GaussianDiffusion], n: int, T: int) -> dict | None:
    """A saved chunk of :func:`bpd_for_variances` if it is readable and holds the terms of these ``n`` images
    under these diffusions (else None: computed again)."""
    try:
        done = load_checkpoint(path)
    except CheckpointError:
        return None
    vb = done.get("vb")
    if not (isinstance(vb, dict) and set(vb) == set(diffusions)
            and all(isinstance(v, torch.Tensor) and tuple(v.shape) == (n, T) for v in vb.values())
            and isinstance(done.get("generator"), torch.Tensor)):
        return None
    return done

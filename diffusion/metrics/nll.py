"""Negative log-likelihood in bits/dim from the full variational bound, eq. (7) (section 2.4.2).

The bound L = L_T + Σ_{t>1} L_{t-1} + L_0 is evaluated term by term by the core's
``GaussianDiffusion.calc_bpd_loop`` (all T terms, each with one Monte Carlo draw of x_t); this module
batches it over a held-out set and reports the total and its three parts. Timestep index 0 of the
core's ``vb`` array is the decoder term L_0 (the discretised Gaussian of section 2.4.2), indices
1 … T−1 are the L_{t-1} KL terms, and ``prior_bpd`` is L_T. Images are uint8 (the discrete data the
bound is a code length for); floats in [-1, 1] are quantised first.
"""
from __future__ import annotations

import torch
from diffusion.progress import tqdm

from ..data import to_model_range
from ..eval_mode import check_eval_mode
from .images import to_uint8


def bits_per_dim(diffusion, model, images: torch.Tensor, labels: torch.Tensor | None = None,
                 batch_size: int = 64, clip_denoised: bool = True, t_batch: int = 1,
                 generator: torch.Generator | None = None, device=None, progress: bool = True) -> dict:
    """Mean NLL bound in bits/dim over ``images`` (eq. 7), split into its parts.

    Args:
        diffusion: a ``GaussianDiffusion`` (the bound needs all T steps, so not a respaced one).
        model: ``model(x, t, y=None)``, in eval mode; class-conditional models get ``labels`` as ``y``.
        images: NCHW uint8 (or float in [-1, 1], quantised to uint8 first).
        labels: optional class indices (N,) for a class-conditional model.
        batch_size: images per ``calc_bpd_loop`` call; ``t_batch``: timesteps per forward pass.
        generator: makes the Monte Carlo draws of x_t reproducible.

    Returns ``{"bpd", "prior_bpd" (L_T), "kl_bpd" (Σ_{t>1} L_{t-1}), "decoder_bpd" (L_0),
    "bpd_std" (over images), "num_images", "num_timesteps"}``; ``bpd = prior_bpd + kl_bpd + decoder_bpd``.
    """
    images = to_uint8(images, "images")
    check_eval_mode(model, "bits/dim")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must hold one class per image, shape ({len(images)},), got {tuple(labels.shape)}")
    if device is None:
        device = next((p.device for p in getattr(model, "parameters", lambda: iter(()))()), torch.device("cpu"))
    totals, priors, kls, decoders = [], [], [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), desc="bits/dim", disable=not progress, leave=False):
            x0 = to_model_range(images[start:start + batch_size].to(device))
            kwargs = {"y": labels[start:start + batch_size].to(device)} if labels is not None else None
            out = diffusion.calc_bpd_loop(model, x0, model_kwargs=kwargs, clip_denoised=clip_denoised,
                                          t_batch=t_batch, generator=generator)
            totals.append(out["total_bpd"].double().cpu())
            priors.append(out["prior_bpd"].double().cpu())
            kls.append(out["vb"][:, 1:].sum(dim=1).double().cpu())
            decoders.append(out["vb"][:, 0].double().cpu())
    total = torch.cat(totals)
    if not torch.isfinite(total).all():
        raise ValueError(f"bits/dim is not finite for {int((~torch.isfinite(total)).sum())} of {len(total)} images; "
                         "the model's predictions contain NaN or infinite values")
    return {"bpd": float(total.mean()), "prior_bpd": float(torch.cat(priors).mean()),
            "kl_bpd": float(torch.cat(kls).mean()), "decoder_bpd": float(torch.cat(decoders).mean()),
            "bpd_std": float(total.std()) if len(total) > 1 else 0.0,
            "num_images": len(total), "num_timesteps": int(diffusion.num_timesteps)}

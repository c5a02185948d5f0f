"""Closed-form pieces of the variational bound (section 2.2.2 and 2.4.2).

- :func:`normal_kl` — the KL divergence between two diagonal Gaussians, used for every L_{t-1} and L_T
  of eq. (7).
- :func:`discretized_gaussian_log_likelihood` — the decoder term L_0 = −log p_θ(x_0 | x_1) of
  section 2.4.2: the Gaussian N(μ_θ(x_1, 1), σ_1²) integrated over the bin of width 2/255 around
  each pixel value, with the two edge bins open-ended, so that the 256 probabilities sum to one.
"""
from __future__ import annotations

import math

import torch

BIN_HALF_WIDTH = 1.0 / 255.0  # data in {0..255} scaled to [-1, 1]: bins of width 2/255


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats (the terms of eq. (7)).

    KL = ½ (logvar2 − logvar1 + e^{logvar1 − logvar2} + (mean1 − mean2)² e^{−logvar2} − 1).
    Arguments broadcast; at least one must be a tensor.
    """
    tensor = next(a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor))
    logvar1, logvar2 = (torch.as_tensor(v, dtype=tensor.dtype, device=tensor.device) for v in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    """Φ(z) = ½ erfc(−z/√2): accurate to full relative precision in the lower tail (``torch.special.ndtr``
    computes ½(1 + erf(z/√2)) there and returns 0 below z ≈ −8.3 in float64)."""
    return 0.5 * torch.special.erfc(-z / math.sqrt(2.0))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) per element for the discretised Gaussian decoder of section 2.4.2 (the L_0 term of eq. (7)).

    ``x`` holds 8-bit data scaled to [-1, 1]; ``means`` and ``log_scales`` (log standard deviations)
    parameterise N(μ, σ²). Each value x owns the bin [x − 1/255, x + 1/255]; the bin of −1 extends to
    −∞ and the bin of +1 to +∞. Evaluated in float64 with the upper-tail form where the bin lies above
    the mean, so that no probability is lost to cancellation.
    """
    if x.shape != means.shape:
        raise ValueError(f"x and means must have the same shape, got {tuple(x.shape)} and {tuple(means.shape)}")
    x, means = x.double(), means.double()
    inv_std = torch.exp(-log_scales.double())
    z_plus = (x - means + BIN_HALF_WIDTH) * inv_std
    z_minus = (x - means - BIN_HALF_WIDTH) * inv_std
    z_plus = torch.where(x > 1.0 - 1e-3, torch.full_like(z_plus, float("inf")), z_plus)      # open top bin
    z_minus = torch.where(x < -1.0 + 1e-3, torch.full_like(z_minus, -float("inf")), z_minus)  # open bottom bin
    upper = (z_plus + z_minus) > 0  # bin mostly above the mean: use Φ(−a) − Φ(−b)
    prob = torch.where(upper,
                       _normal_cdf(-z_minus) - _normal_cdf(-z_plus),
                       _normal_cdf(z_plus) - _normal_cdf(z_minus))
    return torch.log(prob.clamp_min(1e-300)).to(log_scales.dtype if log_scales.is_floating_point() else torch.float32)

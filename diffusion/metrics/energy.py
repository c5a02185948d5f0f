"""The energy distance between two samples of points (Székely & Rizzo): a two-sample statistic for the
low-dimensional toy data, where features are the points themselves.

    E(X, Y) = 2·E‖X − Y‖ − E‖X − X′‖ − E‖Y − Y′‖ ≥ 0, zero iff X and Y have the same distribution.

:func:`energy_distance` is the V-statistic: every expectation is the mean over *all* pairs, the zero
diagonal of the within-sample terms included, so the value is never negative. Its expectation exceeds E by
E‖X − X′‖/m + E‖Y − Y′‖/n: two independent samples of one distribution give about that, not zero, which
is why a sample is judged against the value of two data samples of the same sizes (the noise floor).
"""

from __future__ import annotations

import torch

__all__ = ["energy_distance"]


def energy_distance(x, y) -> float:
    """V-statistic energy distance (module docstring) between points x (M, D) and y (N, D), float64."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 1 or len(y) < 1:
        raise ValueError(f"x and y must be (M, D) and (N, D) point sets with the same D, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())

"""A centred smoother for noisy curves such as the training loss.

A one-sided exponential moving average lags its input: after a step change it needs about 1/(1−decay)
points to catch up, so a smoothed loss drawn against the step lies hundreds of steps behind the raw one.
The centred moving average has no lag: each point is the mean of the window of points centred on it.
"""

from __future__ import annotations

import numpy as np


def centred_moving_average(values, window: int) -> np.ndarray:
    """Mean of ``values[i − h … i + h]`` (``h = window // 2``) for every ``i``; the window is shrunk
    symmetrically near the ends (``h_i = min(h, i, n − 1 − i)``), so every point stays centred and a
    linear trend passes through unchanged. ``window`` must be a positive odd integer."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {x.shape}")
    if not isinstance(window, (int, np.integer)) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window!r}")
    n = len(x)
    if n == 0:
        return x.copy()
    csum = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(n)
    h = np.minimum(window // 2, np.minimum(i, n - 1 - i))
    return (csum[i + h + 1] - csum[i - h]) / (2 * h + 1)

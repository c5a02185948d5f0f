"""A centred smoother for noisy curves such as the training loss.

A one-sided exponential moving average lags its input: after a step change it needs about 1/(1−decay)
points to catch up, so a smoothed loss drawn against the step lies hundreds of steps behind the raw one.
The centred moving average has no lag: each point is the mean of the window of points centred on it. Where
the curve falls steeply (the first few hundred steps of a training loss) a full window would average the
fall's high early values into the points after it; ``relative`` caps each point's half-window at a fraction of
its index, so the early points are averaged over few neighbours and the flat, noisy tail over the full window.
"""

from __future__ import annotations

import numpy as np


def centred_moving_average(values, window: int, relative: float | None = None) -> np.ndarray:
    """Mean of ``values[i − h_i … i + h_i]`` for every ``i``, with ``h_i = min(window // 2, i, n − 1 − i)``:
    the window is shrunk symmetrically near the ends, so every point stays centred and a linear trend passes
    through unchanged. With ``relative`` = r > 0 also ``h_i ≤ ⌊r·i⌋`` (the window grows along the curve).
    ``window`` must be a positive odd integer."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {x.shape}")
    if not isinstance(window, (int, np.integer)) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window!r}")
    if relative is not None and not (np.isfinite(relative) and relative > 0):
        raise ValueError(f"relative must be a positive number or None, got {relative!r}")
    n = len(x)
    if n == 0:
        return x.copy()
    csum = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(n)
    h = np.minimum(window // 2, np.minimum(i, n - 1 - i))
    if relative is not None:
        h = np.minimum(h, np.floor(relative * i).astype(np.int64))
    return (csum[i + h + 1] - csum[i - h]) / (2 * h + 1)

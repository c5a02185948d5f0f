"""Variance schedules β_1 … β_T of the forward process (section 3.3.2).

All schedules are returned as float64 numpy arrays of length ``num_timesteps``; entry ``i`` is the
thesis's β_{i+1}. They are cast to the working dtype only where they are used.
"""
from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("linear", "cosine", "quadratic")


def linear_beta_schedule(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """β_t rising linearly from β_1 = ``beta_start`` to β_T = ``beta_end`` (section 3.3.2, DDPM)."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def quadratic_beta_schedule(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """√β_t rising linearly from √β_1 to √β_T, i.e. β_t quadratic in t."""
    return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def cosine_alpha_bar(u: np.ndarray, s: float = 0.008) -> np.ndarray:
    """ᾱ(u) = cos²(π/2 · (u + s)/(1 + s)) / cos²(π/2 · s/(1 + s)) for u = t/T ∈ [0, 1] (Nichol & Dhariwal 2021)."""
    f = lambda v: np.cos((v + s) / (1.0 + s) * math.pi / 2.0) ** 2  # noqa: E731
    return f(u) / f(0.0)


def cosine_beta_schedule(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """β_t = 1 − ᾱ(t/T)/ᾱ((t−1)/T), clipped at ``max_beta`` so that β_T < 1 (improved DDPM)."""
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = cosine_alpha_bar(u, s)
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def get_beta_schedule(name: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """The named schedule as float64 β_1 … β_T; ``beta_start``/``beta_end`` apply to linear and quadratic."""
    if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    if name in ("linear", "quadratic"):
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        fn = linear_beta_schedule if name == "linear" else quadratic_beta_schedule
        return fn(int(num_timesteps), beta_start, beta_end)
    if name == "cosine":
        return cosine_beta_schedule(int(num_timesteps))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")

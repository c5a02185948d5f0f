"""The 2-D toy model learns its data (energy distance against held-out points), and the energy distance."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion.gaussian_diffusion import create_diffusion
from diffusion.metrics.energy import energy_distance
from diffusion.toy import ToyMLP, fit_toy_mlp, make_toy_2d
from tests.messages import exact


def _mean_abs_normal(m: float, s: float) -> float:
    """E|D| for D ~ N(m, s²) (folded normal mean)."""
    return s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * s * s)) + m * math.erf(m / (s * math.sqrt(2)))


def test_energy_distance_matches_closed_form_in_one_dimension():
    """X ~ N(0, 1), Y ~ N(0.7, 1.5²): the mean V-statistic over repetitions equals the population energy
    distance 2E|X−Y| − E|X−X′| − E|Y−Y′| plus its known bias E|X−X′|/m + E|Y−Y′|/n."""
    rng = np.random.default_rng(0)
    m, n, reps = 40, 60, 1500
    exy = _mean_abs_normal(0.7, math.sqrt(1 + 1.5**2))
    exx, eyy = _mean_abs_normal(0, math.sqrt(2)), _mean_abs_normal(0, 1.5 * math.sqrt(2))
    expected = 2 * exy - exx - eyy + exx / m + eyy / n
    vals = [energy_distance(rng.normal(0, 1, (m, 1)), rng.normal(0.7, 1.5, (n, 1))) for _ in range(reps)]
    assert np.mean(vals) == pytest.approx(expected, abs=4 * np.std(vals) / math.sqrt(reps))
    assert energy_distance(np.ones((3, 2)), np.ones((5, 2))) == 0.0
    with pytest.raises(ValueError, match="same D"):
        energy_distance(np.zeros((3, 2)), np.zeros((3, 3)))


def test_energy_distance_of_single_points_and_bad_shapes():
    assert energy_distance(np.zeros((1, 2)), np.ones((1, 2))) == pytest.approx(2 * math.sqrt(2), rel=1e-15)
    for x, y, shapes in ((np.zeros((0, 2)), np.zeros((3, 2)), "(0, 2) and (3, 2)"),
                         (np.zeros((3, 2)), np.zeros((0, 2)), "(3, 2) and (0, 2)"),
                         (np.zeros(3), np.zeros((3, 1)), "(3,) and (3, 1)"),
                         (np.zeros((3, 1)), np.zeros(3), "(3, 1) and (3,)")):
        with pytest.raises(ValueError, match=exact(f"x and y must be (M, D) and (N, D) point sets with the same D, "
                                                   f"got shapes {shapes}")):
            energy_distance(x, y)


def test_toy_mlp_learns_the_swiss_roll():
    """A short run (seconds) of the notebook's recipe: samples of the learned reverse process lie within
    twice the data-vs-data energy distance of held-out points at the same n, while N(0, I) does not."""
    torch.set_num_threads(1)
    n = 500
    diffusion = create_diffusion("linear", 1000)
    model, losses = fit_toy_mlp(make_toy_2d("swiss_roll", 8000, seed=0), diffusion, steps=1500, batch_size=256)
    assert np.mean(losses[-100:]) < np.mean(losses[:100])
    with torch.no_grad():
        samples = diffusion.p_sample_loop(model, (n, 2), generator=torch.Generator().manual_seed(1), clip_denoised=False)
    held_out, other = make_toy_2d("swiss_roll", n, seed=100), make_toy_2d("swiss_roll", n, seed=101)
    floor = energy_distance(other, held_out)
    assert energy_distance(samples, held_out) < 2 * floor
    assert energy_distance(torch.randn(n, 2, generator=torch.Generator().manual_seed(2)), held_out) > 2 * floor


def test_toy_mlp_shapes_and_errors():
    model = ToyMLP(dim=2, hidden=16, fourier_octaves=3)
    assert model.fourier_features(torch.zeros(4, 2)).shape == (4, 2 * (1 + 2 * 3))
    assert model(torch.randn(4, 2), torch.tensor([0, 1, 500, 999])).shape == (4, 2)
    with pytest.raises(ValueError, match="fourier_octaves"):
        ToyMLP(fourier_octaves=-1)
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="steps"):
        fit_toy_mlp(torch.zeros(10, 2), create_diffusion("linear", 10), steps=0, batch_size=4)

"""The bits/dim wrapper agrees with calc_bpd_loop, splits the bound into its parts, batches correctly."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffusion.data import to_model_range
from diffusion.gaussian_diffusion import create_diffusion
from diffusion.metrics.nll import bits_per_dim


class TinyEps(nn.Module):
    """A tiny ε-model; with ``num_classes`` it also takes class labels."""

    def __init__(self, channels=1, num_classes=None):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.emb = nn.Embedding(num_classes + 1, channels) if num_classes else None
        self.num_classes = num_classes

    def forward(self, x, t, y=None):
        h = self.conv(x) * 0.1 + 0.01 * t.float().view(-1, 1, 1, 1)
        if self.emb is not None and y is not None:
            h = h + self.emb(y)[:, :, None, None]
        return h


def _images(n=6, c=1, s=4, seed=0):
    return torch.randint(0, 256, (n, c, s, s), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_bits_per_dim_matches_calc_bpd_loop_and_splits_the_bound():
    torch.manual_seed(0)
    diffusion = create_diffusion(num_timesteps=6)
    model = TinyEps()
    images = _images()
    out = bits_per_dim(diffusion, model, images, batch_size=6,
                       generator=torch.Generator().manual_seed(3), progress=False)
    ref = diffusion.calc_bpd_loop(model, to_model_range(images), generator=torch.Generator().manual_seed(3))
    assert out["bpd"] == pytest.approx(float(ref["total_bpd"].mean()), rel=1e-6)
    assert out["prior_bpd"] == pytest.approx(float(ref["prior_bpd"].mean()), rel=1e-6)
    assert out["decoder_bpd"] == pytest.approx(float(ref["vb"][:, 0].mean()), rel=1e-6)  # index 0 is L_0
    assert out["kl_bpd"] == pytest.approx(float(ref["vb"][:, 1:].sum(1).mean()), rel=1e-6)
    assert out["bpd"] == pytest.approx(out["prior_bpd"] + out["kl_bpd"] + out["decoder_bpd"], rel=1e-6)
    assert out["num_images"] == 6 and out["num_timesteps"] == 6
    assert all(math.isfinite(v) for v in (out["bpd"], out["bpd_std"])) and out["bpd"] > 0
    assert out["decoder_bpd"] > 0  # −log of a probability of a discrete value


def test_bits_per_dim_batching_does_not_change_the_mean():
    diffusion = create_diffusion(num_timesteps=4)
    model = TinyEps()
    images = _images(n=5)
    # the KL terms depend on the noise draws, which differ with the batch layout; L_T does not
    a = bits_per_dim(diffusion, model, images, batch_size=5, progress=False)
    b = bits_per_dim(diffusion, model, images, batch_size=2, progress=False)
    assert a["prior_bpd"] == pytest.approx(b["prior_bpd"], rel=1e-6)
    assert a["num_images"] == b["num_images"] == 5


def test_bits_per_dim_passes_labels_to_conditional_model():
    diffusion = create_diffusion(num_timesteps=4)
    model = TinyEps(num_classes=3)
    images, labels = _images(n=4), torch.tensor([0, 1, 2, 0])
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    out = bits_per_dim(diffusion, model, images, labels=labels, generator=g(), progress=False)
    ref = diffusion.calc_bpd_loop(model, to_model_range(images), model_kwargs={"y": labels}, generator=g())
    assert out["bpd"] == pytest.approx(float(ref["total_bpd"].mean()), rel=1e-6)
    with pytest.raises(ValueError, match="labels"):
        bits_per_dim(diffusion, model, images, labels=labels[:2], progress=False)


def test_bits_per_dim_reports_non_finite_bound():
    diffusion = create_diffusion(num_timesteps=3)

    def nan_model(x, t, y=None):
        return torch.full_like(x, float("nan"))

    with pytest.raises(ValueError, match="not finite"):
        bits_per_dim(diffusion, nan_model, _images(n=2), progress=False)

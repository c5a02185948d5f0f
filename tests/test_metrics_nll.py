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
        self.eval()  # evaluated as a trained model is: in eval mode

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


class _SpyDiffusion:
    """Stands in for ``GaussianDiffusion``: records the arguments of each ``calc_bpd_loop`` call and returns a
    bound whose terms are known: with m the mean pixel of image i (in [-1, 1]), vb[i, t] = (t + 1)(m + 2) and
    L_T = m/2 + 1; ``nan_rows`` of each batch get NaN."""

    num_timesteps = 3

    def __init__(self, nan_rows=()):
        self.calls, self.nan_rows = [], list(nan_rows)

    def calc_bpd_loop(self, model, x0, model_kwargs=None, clip_denoised=True, progress=False, t_batch=1,
                      generator=None):
        self.calls.append({"model": model, "x0": x0, "model_kwargs": model_kwargs, "clip_denoised": clip_denoised,
                           "progress": progress, "t_batch": t_batch, "generator": generator})
        m = x0.flatten(1).mean(1) if x0.device.type == "cpu" else torch.zeros(len(x0))
        vb = (m[:, None] + 2) * torch.arange(1.0, 4.0)
        prior = m / 2 + 1
        total = vb.sum(1) + prior
        total[self.nan_rows] = float("nan")
        return {"total_bpd": total, "prior_bpd": prior, "vb": vb, "mse": torch.zeros_like(vb)}


def test_bits_per_dim_written_out_with_a_spy():
    """Batches of 64 by default, labels as int64 slices beside their images, ``clip_denoised``, ``t_batch`` (1 by
    default) and the generator passed on, the parts of the bound taken from the right columns."""
    images = _images(n=70, s=2, seed=4)
    labels = (torch.arange(70) % 3).to(torch.int32)
    spy, gen, model = _SpyDiffusion(), torch.Generator(), TinyEps()
    out = bits_per_dim(spy, model, images, labels=labels, clip_denoised=False, generator=gen, progress=False)
    assert [len(c["x0"]) for c in spy.calls] == [64, 6]
    for c, lo in zip(spy.calls, (0, 64)):
        assert torch.equal(c["x0"], to_model_range(images[lo:lo + len(c["x0"])]))
        assert c["model_kwargs"]["y"].dtype == torch.long
        assert torch.equal(c["model_kwargs"]["y"], labels[lo:lo + len(c["x0"])].long())
        assert (c["model"], c["clip_denoised"], c["t_batch"], c["generator"], c["progress"]) == (model, False, 1, gen,
                                                                                                 False)
    m = to_model_range(images).double().flatten(1).mean(1)
    total = 6 * (m + 2) + m / 2 + 1
    assert out == {"bpd": pytest.approx(float(total.mean()), rel=1e-6),
                   "prior_bpd": pytest.approx(float((m / 2 + 1).mean()), rel=1e-6),
                   "kl_bpd": pytest.approx(float(5 * (m + 2).mean()), rel=1e-6),
                   "decoder_bpd": pytest.approx(float((m + 2).mean()), rel=1e-6),
                   "bpd_std": pytest.approx(float(total.std()), rel=1e-5), "num_images": 70, "num_timesteps": 3}
    spy = _SpyDiffusion()
    one = bits_per_dim(spy, model, images[:2], batch_size=1, t_batch=2, progress=False)
    assert [len(c["x0"]) for c in spy.calls] == [1, 1] and spy.calls[0]["model_kwargs"] is None
    assert spy.calls[0]["t_batch"] == 2 and spy.calls[0]["clip_denoised"] is True and one["num_images"] == 2
    total = 6 * (m[:2] + 2) + m[:2] / 2 + 1
    assert one["bpd_std"] == pytest.approx(float(total.std()), rel=1e-5) and one["bpd_std"] > 0  # of two images
    assert bits_per_dim(_SpyDiffusion(), model, images[:1], progress=False)["bpd_std"] == 0.0  # one image: no spread


def test_bits_per_dim_works_on_the_models_device():
    """Images and labels go to the device of the model's parameters ("meta" stands in for an accelerator), or to
    the one given; a model without parameters runs on the CPU."""
    spy = _SpyDiffusion()
    on_meta = TinyEps(num_classes=2).to("meta")
    bits_per_dim(spy, on_meta, _images(n=2), labels=[0, 1], progress=False)
    assert spy.calls[-1]["x0"].device.type == "meta" and spy.calls[-1]["model_kwargs"]["y"].device.type == "meta"
    bits_per_dim(spy, TinyEps(), _images(n=2), device="meta", progress=False)
    assert spy.calls[-1]["x0"].device.type == "meta"
    bits_per_dim(spy, lambda x, t: x, _images(n=2), progress=False)
    assert spy.calls[-1]["x0"].device.type == "cpu"


def test_bits_per_dim_progress_bar_by_default(capsys):
    bits_per_dim(_SpyDiffusion(), TinyEps(), _images(n=3), batch_size=1)
    err = capsys.readouterr().err
    assert err.startswith("\rbits/dim:   0%|") and "0/3" in err
    assert err.split("\r")[-1].strip() == ""  # a finished bar is removed
    bits_per_dim(_SpyDiffusion(), TinyEps(), _images(n=3), batch_size=1, progress=False)
    assert capsys.readouterr().err == ""


def test_bits_per_dim_messages():
    with pytest.raises(ValueError, match=r"^bits/dim is not finite for 1 of 3 images; the model's predictions contain "
                                         r"NaN or infinite values$"):
        bits_per_dim(_SpyDiffusion(nan_rows=[1]), TinyEps(), _images(n=3), progress=False)
    with pytest.raises(ValueError, match=r"^images must be NCHW \(4 dimensions\), got shape \(3, 4\)$"):
        bits_per_dim(_SpyDiffusion(), TinyEps(), torch.zeros(3, 4, dtype=torch.uint8), progress=False)
    with pytest.raises(ValueError, match=r"^labels must hold one class per image, shape \(3,\), got \(2,\)$"):
        bits_per_dim(_SpyDiffusion(), TinyEps(), _images(n=3), labels=[0, 1], progress=False)

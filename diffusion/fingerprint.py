"""The training fingerprint: what the current code computes when it trains, condensed into a digest.

A trained model is a function of its configuration, its data, its seed, the torch version and *the
computation the training code performs*. The last of these is measured here rather than read from the source
text: :func:`training_fingerprint` trains two tiny models (one class-conditional with label dropout, attention,
flips, gradient accumulation, clipping, EMA warm-up and DDIM stage samples; one unconditional with the
fixed-small variance and ancestral stage samples) for three steps through :func:`diffusion.train.train`, the
same entry point the notebooks train through, and hashes what came out: the logged losses and gradient norms,
the raw and EMA weights' sums and sums of squares, and the stage samples' pixels.

A refactor that leaves the computation unchanged (renamed variables, a split module, a reordered file) keeps the
fingerprint, and with it every cached and committed model; a change that alters training (a coefficient, the
order of random draws, the EMA rule, the sampler of the stage samples) changes it, and with it the keys, so the
models are retrained instead of silently reused.

The tiny runs are made in float64 and every value is rounded to :data:`SIGNIFICANT` significant digits before
hashing. Floating-point reduction order differs between CPU families and thread counts; in float64 after
three steps that moves values by about 1e-15 relative, far below the rounding (weights perturbed by 1e-11 still
give the same digest), so float noise alone leaves the digest unchanged. What would differ between CPUs is a random draw
made differently: torch's ``bernoulli_`` (dropout's masks) takes MKL's generator on Intel CPUs and its own on
others, so the tiny models have no dropout and the draws they make are torch's own on every CPU. It is computed
on the CPU whatever device trains, once per process (about a second).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["FINGERPRINT_VERSION", "SIGNIFICANT", "THREADS", "fingerprint_values", "training_fingerprint"]

FINGERPRINT_VERSION = 2
"""Raised when the set of measured values changes (not when the training code does: that is what is measured)."""
SIGNIFICANT = 9
"""Significant digits kept of every measured value before hashing."""
THREADS = 1
"""torch threads of the tiny runs: one is fastest for such small tensors and is not slowed by a busy machine
(the digest does not depend on it: tests/test_fingerprint.py)."""


def _tiny_data(conditional: bool):
    from diffusion.data import ImageData

    g = torch.Generator().manual_seed(20261205)
    n, k = 12, 3
    images = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % k if conditional else torch.zeros(n, dtype=torch.int64)
    return ImageData(images=images, labels=labels, num_classes=k if conditional else 0,
                     class_names=tuple("abc") if conditional else (), label="fingerprint", name="fingerprint")


def _tiny_config(conditional: bool):
    from diffusion.config import config_from_dict

    return config_from_dict({
        "name": "fingerprint",
        # no dropout: torch draws dropout masks through MKL on Intel CPUs and through its own generator on all
        # others (bernoulli_), so a model with dropout trains differently on the two (tests/test_fingerprint.py)
        "model": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [2] if conditional else [],
                  "dropout": 0.0, "class_cond": conditional},
        "diffusion": {"num_timesteps": 20, "var_type": "fixed_large" if conditional else "fixed_small"},
        "data": {"name": "cifar10", "hflip": conditional},  # the name is not read: the data are given
        "train": {"batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "grad_clip": 0.5 if conditional else 1.0,
                  "ema_decay": 0.9, "ema_warmup": conditional, "total_steps": 3, "p_uncond": 0.5 if conditional else 0.0,
                  "seed": 7, "grad_accum": 2 if conditional else 1, "log_every": 1, "ckpt_every": 3, "keep_last": 1,
                  "sample_every": [3]},
    })


def _round(value: float) -> str:
    return f"{float(value):.{SIGNIFICANT}g}"


def _measure(conditional: bool) -> dict[str, list[str]]:
    from diffusion.checkpoint import load_checkpoint
    from diffusion.train import train

    cfg = _tiny_config(conditional)
    sampler = "ddim" if conditional else "ancestral"
    with tempfile.TemporaryDirectory(prefix="ddpm-fingerprint-") as tmp:
        run = Path(tmp) / "run"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train(cfg, data=_tiny_data(conditional), out_dir=run, device="cpu", progress=False, sample_num=2,
                  sample_sampler=sampler, sample_steps=4)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        state = load_checkpoint(run / "checkpoints", map_location="cpu")
        with np.load(run / "samples" / "step_000003.npz") as z:
            pixels = z["images"].astype(np.int64)
    ema = state["ema"].get("module", state["ema"])

    def moments(tensors) -> list[str]:
        flat = torch.cat([t.detach().double().reshape(-1) for t in tensors.values() if t.is_floating_point()])
        return [_round(flat.sum()), _round((flat * flat).sum())]

    return {"loss": [_round(m["loss"]) for m in metrics], "grad_norm": [_round(m["grad_norm"]) for m in metrics],
            "weights": moments(state["model"]), "ema": moments(ema),
            "samples": [str(int(pixels.sum())), str(int((pixels * pixels).sum()))]}


@contextlib.contextmanager
def _isolated():
    """float64 by default, :data:`THREADS` threads, and every global state the training touches restored
    afterwards."""
    dtype, np_state = torch.get_default_dtype(), np.random.get_state()
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.set_default_dtype(torch.float64)
            torch.set_num_threads(THREADS)
            yield
    finally:
        torch.set_default_dtype(dtype)
        np.random.set_state(np_state)
        torch.set_num_threads(threads)


def fingerprint_values() -> dict:
    """The rounded values the digest is computed from: ``{"cond": {...}, "uncond": {...}}``."""
    with _isolated():
        return {"cond": _measure(True), "uncond": _measure(False)}


@functools.lru_cache(maxsize=1)
def training_fingerprint() -> str:
    """The digest (24 hex digits) of :func:`fingerprint_values` and :data:`FINGERPRINT_VERSION`."""
    blob = json.dumps({"version": FINGERPRINT_VERSION, "values": fingerprint_values()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]

#!/usr/bin/env python
"""Throughput of this project's DDPM U-Net against diffusers' ``UNet2DModel`` in one process.

Both networks have the DDPM CIFAR-10 layout (channels 128·(1, 2, 2, 2), 2 residual blocks per level,
attention at 16×16 with one head, dropout 0.1, 32×32×3; 35,746,307 parameters each) and are measured on
the same shapes:

* **training** (batch ``--batch``): the full optimiser step of algorithm 1 (t and ε drawn on the device,
  L_simple of eq. (14), backward, gradient-norm clipping to 1.0, Adam, EMA update). diffusers: its
  ``DDPMScheduler.add_noise``, bf16 autocast, eager, PyTorch's default Adam (``diffusers_train_step``); ours:
  ``diffusion.train_step.make_train_step`` in fp32 eager, bf16 eager, bf16 + channels_last, + ``torch.compile`` of
  the model, + compile of the whole step (fused Adam and ``torch._foreach`` EMA throughout). Reported:
  images/s, ms/step, peak ``torch.cuda.max_memory_allocated``, host synchronisations per step (GPU).
* **sampling** (batch ``--sample-batch``): forward passes of the ε-model under ``no_grad`` and bf16 autocast,
  in image-steps/s (images × network evaluations per second): diffusers eager vs ours eager, eager + CUDA
  graph, compiled, compiled + CUDA graph (``diffusion.cuda_graph.GraphedModel``); plus a DDIM sampler run
  end to end through ``diffusion.samplers.sample`` with and without ``cuda_graph=True``.
* **checks** (faithfulness): the bf16/channels_last/compiled/graphed outputs against the fp32 eager output
  (relative L2 error < 2e-2), graph replays with fresh inputs, the sampler with and without the graph.

Timing: every variant of a phase (training, sampling) is built first and gets its warm-up calls (the first
one timed separately: it includes compilation and cuDNN autotuning); then the phase's variants are timed
together, interleaved — ``--repeats`` rounds, each timing every variant for ``inner`` calls, the order rotated
each round — and the median round is reported (CUDA events on the GPU, ``time.perf_counter`` on the CPU), so a
drift of clock or temperature during the run affects all variants alike. Peak memory is each variant's own:
the most allocated during its warm-up minus what was allocated before it was built. The JSON (``--out``)
holds the device, versions, git commit, every figure and the ratios to diffusers; it is rewritten after
every variant, so a run cut short keeps what it measured.
``--tiny`` uses a small network and batch so the whole run takes seconds on a CPU (``make test`` runs it).
Exit status 1 if a check failed.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from diffusion.cuda_graph import GraphedModel  # noqa: E402
from diffusion.ema import EMA  # noqa: E402
from diffusion.fast import configure_backends  # noqa: E402
from diffusion.gaussian_diffusion import create_diffusion  # noqa: E402
from diffusion.samplers import sample  # noqa: E402
from diffusion.train_step import make_train_step  # noqa: E402
from diffusion.unet import UNet  # noqa: E402

FULL = dict(in_channels=3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
            image_size=32)
TINY = dict(in_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1,
            image_size=16)
CIFAR10_PARAMS = 35_746_307
TRAIN_VARIANTS = ("diffusers_bf16_eager", "ours_fp32_eager", "ours_bf16_eager", "ours_bf16_cl",
                  "ours_bf16_cl_compile_model", "ours_bf16_cl_compile_step")
SAMPLE_VARIANTS = ("diffusers_bf16_eager", "ours_bf16_cl_eager", "ours_bf16_cl_graph", "ours_bf16_cl_compiled",
                   "ours_bf16_cl_compiled_graph")
# Rough cost of a compiled variant on an H100/H200 (compilation dominates), for --budget-s.
COMPILE_COST_S = {"ours_bf16_cl_compile_model": 60.0, "ours_bf16_cl_compile_step": 90.0,
                  "ours_bf16_cl_compiled": 30.0, "ours_bf16_cl_compiled_graph": 5.0}
REL_TOL = 2e-2  # bf16 tolerance of the faithfulness checks
TARGETS = {"train_ratio": 2.0, "sample_ratio": 3.0, "train_peak_gb": 6.0}


class DiffusersEps(nn.Module):
    """diffusers' ``UNet2DModel`` behind this project's model interface ``model(x, t, y=None) -> ε``."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x, t, return_dict=False)[0]


def import_diffusers():
    """(module, None) or (None, reason) — diffusers is an optional benchmark dependency."""
    try:
        import diffusers
    except Exception as err:  # ImportError, or a broken install of one of its dependencies
        return None, f"{type(err).__name__}: {err}"
    return diffusers, None


def build_diffusers(diffusers, cfg: dict) -> DiffusersEps:
    """``UNet2DModel`` in the layout of ``cfg``: one block type per level (attention where ours attends),
    the up blocks mirrored, GroupNorm(32, eps 1e-6), one attention head of the full width (as ours)."""
    res = [cfg["image_size"] // 2**i for i in range(len(cfg["ch_mult"]))]
    down = tuple("AttnDownBlock2D" if r in cfg["attn_resolutions"] else "DownBlock2D" for r in res)
    up = tuple(b.replace("Down", "Up") for b in reversed(down))
    unet = diffusers.UNet2DModel(
        sample_size=cfg["image_size"], in_channels=cfg["in_channels"], out_channels=cfg["in_channels"],
        block_out_channels=tuple(cfg["ch"] * m for m in cfg["ch_mult"]), layers_per_block=cfg["num_res_blocks"],
        down_block_types=down, up_block_types=up, dropout=cfg["dropout"], norm_num_groups=32, norm_eps=1e-6,
        attention_head_dim=None)
    return DiffusersEps(unet)


def diffusers_train_step(diffusers, model: nn.Module, ema: EMA, x0: torch.Tensor):
    """The diffusers baseline step, written as a diffusers user writes it: ``DDPMScheduler.add_noise``
    (linear β 1e-4…0.02, T = 1000), the ε-prediction MSE in float32 with the forward in bf16 autocast,
    backward, gradient-norm clipping to 1.0, PyTorch's default Adam (lr 2e-4) and the same foreach EMA as
    ours (diffusers' own ``EMAModel`` loops over tensors and would only slow the baseline down).
    Returns ``step()`` with a ``mean_loss()`` attribute."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                        beta_schedule="linear")
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    total = torch.zeros((), device=x0.device)
    count = [0]

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=x0.device)
        x_t = scheduler.add_noise(x0, noise, t)
        with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16):
            pred = model(x_t, t)
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.update(model)
        total.add_(loss.detach())
        count[0] += 1
        return loss

    def mean_loss() -> float:
        value = float(total) / max(count[0], 1)
        total.zero_()
        count[0] = 0
        return value

    step.mean_loss = mean_loss
    return step


def count_host_syncs(fn, device: torch.device) -> int | None:
    """Synchronising CUDA calls made by one call of ``fn`` (``torch.cuda.set_sync_debug_mode``); ``None``
    on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(w.message) for w in caught)


def build_ours(cfg: dict) -> UNet:
    return UNet(**cfg)


def randomize_zero_init_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give the zero-initialised weights (output convolutions) random values, so that output comparisons
    are not trivially 0 = 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.detach().any():
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
    return model


@contextlib.contextmanager
def strict_fp32():
    """Full fp32 arithmetic (no TF32 in convolutions and matmuls) for the reference outputs."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=False, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_calls(fn, device: torch.device, warmup: int) -> float:
    """Seconds of the first call of ``fn`` (it includes compilation and cuDNN autotuning), followed by
    ``warmup - 1`` more untimed calls."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first_s = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        fn()
    sync(device)
    return first_s


def time_calls(fn, device: torch.device, inner: int) -> float:
    """Milliseconds per call over ``inner`` back-to-back calls (CUDA events on the GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) * 1e3 / inner


def interleaved(fns: dict, device: torch.device, repeats: int, inner: int) -> dict[str, list[float]]:
    """``repeats`` rounds; each round times every (warmed-up) function of ``fns`` for ``inner`` calls, the
    order rotated by one each round. Interleaving puts every variant under the same clock, temperature and
    co-tenant conditions, so a drift during the run cannot favour the variants timed first or last; the
    median of each variant's rounds is what the tables report."""
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            sync(device)
            out[name].append(time_calls(fns[name], device, inner))
    return out


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def git_commit() -> str | None:
    commit = os.environ.get("BENCH_COMMIT") or None
    if commit:
        return commit
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def source_digest() -> str:
    """SHA-256 of the ``diffusion`` package sources (identifies the code when no git commit is at hand)."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "diffusion").rglob("*.py")):
        h.update(path.relative_to(ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def compute_ratios(r: dict) -> None:
    """Fill ``r["ratios"]`` (ours / diffusers bf16 eager) and ``r["targets"]`` (the throughput targets)
    from the figures."""
    base_train = r["train"].get("diffusers_bf16_eager", {}).get("images_per_s")
    base_sample = r["sample"].get("diffusers_bf16_eager", {}).get("image_steps_per_s")
    ratios = {"train": {}, "sample": {}}
    timed_train = {k: v for k, v in r["train"].items() if "images_per_s" in v}  # built but not yet timed: skip
    for name, v in timed_train.items():
        if base_train and not name.startswith("diffusers"):
            ratios["train"][name] = v["images_per_s"] / base_train
    for name, v in r["sample"].items():
        if base_sample and not name.startswith("diffusers"):
            ratios["sample"][name] = v["image_steps_per_s"] / base_sample
    r["ratios"] = ratios
    ours_train = {k: v for k, v in timed_train.items() if not k.startswith("diffusers")}
    targets = {}
    if ratios["train"]:
        best = max(ratios["train"], key=ratios["train"].get)
        targets["train"] = {"best": best, "ratio": ratios["train"][best], "target": TARGETS["train_ratio"],
                            "met": ratios["train"][best] >= TARGETS["train_ratio"]}
    if ratios["sample"]:
        best = max(ratios["sample"], key=ratios["sample"].get)
        targets["sample"] = {"best": best, "ratio": ratios["sample"][best], "target": TARGETS["sample_ratio"],
                             "met": ratios["sample"][best] >= TARGETS["sample_ratio"]}
    if ours_train and all(v.get("peak_mem_gb") is not None for v in ours_train.values()):
        fastest = max(ours_train, key=lambda k: ours_train[k]["images_per_s"])
        gb = ours_train[fastest]["peak_mem_gb"]
        targets["train_peak_mem"] = {"variant": fastest, "peak_mem_gb": gb, "target": TARGETS["train_peak_gb"],
                                     "met": gb < TARGETS["train_peak_gb"]}
    r["targets"] = targets


class Bench:
    """The run: options, results, JSON writing."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.cfg = TINY if args.tiny else FULL
        self.t_start = time.perf_counter()
        self.diffusers, self.diffusers_missing = import_diffusers()
        self.diffusion = create_diffusion()
        self.bf16 = torch.bfloat16
        self.result = {
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor()
            or platform.machine(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "diffusers": getattr(self.diffusers, "__version__", None), "diffusers_missing": self.diffusers_missing,
            "git_commit": git_commit(), "source_sha256": source_digest(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": {**self.cfg, "ch_mult": list(self.cfg["ch_mult"]),
                       "attn_resolutions": list(self.cfg["attn_resolutions"]), "tiny": bool(args.tiny)},
            "batch": args.batch, "sample_batch": args.sample_batch, "repeats": args.repeats,
            "warmup": args.warmup, "inner": args.inner, "sample_inner": args.sample_inner,
            "sampler_steps": args.sampler_steps, "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "params": {}, "train": {}, "sample": {}, "sampler": {}, "checks": [], "skipped": {}, "errors": {},
            "ratios": {}, "targets": {},
        }
        self.train_steps: dict = {}  # prepared training variants awaiting the interleaved timing

    # ------------------------------------------------------------------ bookkeeping
    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def skip_reason(self, name: str, extra_cost_s: float = 0.0) -> str | None:
        """Why variant ``name`` is not run (``None``: run it): diffusers missing, or a compiled variant whose
        estimated cost (``COMPILE_COST_S`` + ``extra_cost_s``) would overrun ``--budget-s``."""
        if name.startswith("diffusers") and self.diffusers is None:
            return f"diffusers not importable ({self.diffusers_missing})"
        budget = self.args.budget_s
        cost = COMPILE_COST_S.get(name, 0.0) + extra_cost_s
        if budget is not None and cost > 0 and self.elapsed() + cost > budget:
            return f"time budget: {self.elapsed():.0f} s elapsed + ~{cost:.0f} s > --budget-s {budget:.0f}"
        return None

    def note_skip(self, section: str, name: str, reason: str) -> None:
        self.result["skipped"][f"{section}/{name}"] = reason
        print(f"  skip {section}/{name}: {reason}", flush=True)

    def guarded(self, section: str, name: str, fn) -> None:
        """Run one variant; an exception is recorded (JSON ``errors``) and the run goes on."""
        try:
            fn()
        except Exception as err:  # one broken variant must not cost the others on a one-shot GPU run
            msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            self.result["errors"][f"{section}/{name}"] = msg
            print(f"  ERROR {section}/{name}: {msg}", flush=True)
            traceback.print_exc(limit=-3)
            free(self.device)
        self.save()

    def check(self, name: str, value: float, tol: float = REL_TOL) -> None:
        ok = bool(value < tol)
        self.result["checks"].append({"name": name, "rel_err": value, "tol": tol, "pass": ok})
        print(f"  check {name}: rel err {value:.2e} (< {tol:g}) {'ok' if ok else 'FAIL'}", flush=True)

    def save(self) -> None:
        compute_ratios(self.result)
        if self.args.out:
            out = Path(self.args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(out.suffix + ".tmp")
            tmp.write_text(json.dumps(self.result, indent=2) + "\n")
            os.replace(tmp, out)

    # ------------------------------------------------------------------ parameters
    def parameter_counts(self) -> None:
        ours = count_params(build_ours(self.cfg))
        self.result["params"]["ours"] = ours
        line = f"parameters: ours {ours:,}"
        if self.diffusers is not None:
            theirs = count_params(build_diffusers(self.diffusers, self.cfg))
            self.result["params"]["diffusers"] = theirs
            line += f", diffusers UNet2DModel {theirs:,}"
        print(line, flush=True)
        if not self.args.tiny:
            for who, n in self.result["params"].items():
                if abs(n - CIFAR10_PARAMS) > 0.001 * CIFAR10_PARAMS:
                    print(f"  warning: {who} has {n:,} parameters, not ≈ 35.7 M", flush=True)

    # ------------------------------------------------------------------ training
    def prepare_train(self, name: str) -> None:
        """Build variant ``name``, run its first call and warm-up (timed: compilation), record its own peak
        memory (the most allocated during these calls minus what was allocated before it was built) and its
        host synchronisations per step; the step is kept for :meth:`time_train`."""
        dev, cfg, a = self.device, self.cfg, self.args
        torch.manual_seed(0)
        free(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        base_mem = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else None
        cl = "_cl" in name
        compile_mode = "model" if name.endswith("compile_model") else "step" if name.endswith("compile_step") else False
        g = torch.Generator(device=dev).manual_seed(1)
        x0 = (torch.rand((a.batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"]), generator=g,
                         device=dev) * 2 - 1)
        if cl:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        if name.startswith("diffusers"):
            model = build_diffusers(self.diffusers, cfg).to(dev).train()
            ema = EMA(model, 0.9999)
            step = diffusers_train_step(self.diffusers, model, ema, x0)
        else:
            model = build_ours(cfg).to(dev)
            if cl:
                model = model.to(memory_format=torch.channels_last)
            lr = torch.tensor(2e-4, device=dev) if compile_mode == "step" else 2e-4
            optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True if dev.type == "cuda" else None)
            model.train()
            ema = EMA(model, 0.9999)
            net = torch.compile(model) if compile_mode == "model" else model
            train_step = make_train_step(net, self.diffusion, optimizer, ema, grad_clip=1.0, bf16="bf16" in name,
                                         compile="step" if compile_mode == "step" else False)

            def step():
                return train_step(x0)
            step.mean_loss = lambda: train_step.stats.read()["loss"]
        first_s = first_calls(step, dev, a.warmup)
        peak = (torch.cuda.max_memory_allocated(dev) - base_mem) / 1e9 if dev.type == "cuda" else None
        syncs = count_host_syncs(step, dev)
        step.mean_loss()  # reset the running loss: the timed steps' mean is reported
        self.train_steps[name] = step
        self.result["train"][name] = {"first_step_s": first_s, "peak_mem_gb": peak,
                                      "baseline_mem_gb": base_mem / 1e9 if base_mem is not None else None,
                                      "host_syncs_per_step": syncs}
        mem = f", peak {peak:.2f} GB" if peak is not None else ""
        sync_note = f", {syncs} host syncs/step" if syncs is not None else ""
        print(f"  built train {name}: first step {first_s:.1f} s{mem}{sync_note}", flush=True)

    def time_train(self) -> None:
        """Time the prepared training variants interleaved (:func:`interleaved`) and record img/s."""
        dev, a = self.device, self.args
        ms = interleaved(self.train_steps, dev, a.repeats, a.inner)
        for name, step in self.train_steps.items():
            rec = self.result["train"][name]
            loss = step.mean_loss()
            rec.update(ms_per_step=statistics.median(ms[name]), ms_all=ms[name], mean_loss=loss)
            rec["images_per_s"] = a.batch * 1e3 / rec["ms_per_step"]
            print(f"  train {name}: {rec['images_per_s']:.0f} img/s ({rec['ms_per_step']:.2f} ms/step, "
                  f"loss {loss:.3f})", flush=True)
            if not math.isfinite(loss):
                self.result["checks"].append({"name": f"train/{name} loss finite", "rel_err": None, "tol": None,
                                              "pass": False})

    # ------------------------------------------------------------------ sampling
    def autocast(self):
        # Without the weight-cast cache, as inside GraphedModel (no recompilation between the two).
        return torch.autocast(device_type=self.device.type, dtype=self.bf16, cache_enabled=False)

    def sampling(self, names: list[str], end_to_end: bool) -> None:
        """The sampling variants ``names`` (the models are built anew for each call); ``end_to_end`` also
        runs the DDIM sampler with and without the CUDA graph (on the compiled model if one was built)."""
        dev, cfg, a = self.device, self.cfg, self.args
        shape = (a.sample_batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
        g = torch.Generator(device=dev).manual_seed(2)
        x = torch.randn(shape, generator=g, device=dev)
        t = torch.randint(0, self.diffusion.num_timesteps, (a.sample_batch,), generator=g, device=dev)
        x2 = torch.randn(shape, generator=g, device=dev)
        t2 = torch.randint(0, self.diffusion.num_timesteps, (a.sample_batch,), generator=g, device=dev)
        x_cl, x2_cl = (v.contiguous(memory_format=torch.channels_last) for v in (x, x2))

        torch.manual_seed(0)
        ours = randomize_zero_init_(build_ours(cfg)).to(dev).eval().requires_grad_(False)
        with torch.no_grad(), strict_fp32():
            ref = ours(x, t)  # fp32 eager, NCHW, no TF32: the reference output
            ref2 = ours(x2, t2)
        ours_cl = ours.to(memory_format=torch.channels_last)

        def run(model, xi, ti):
            with torch.no_grad(), self.autocast():
                return model(xi, ti)

        if "ours_bf16_cl_eager" in names:
            self.check("sample/ours_bf16_cl_eager vs fp32", rel_err(run(ours_cl, x_cl, t), ref))
        compiled = None
        calls: dict = {}  # warmed-up callables, timed together below
        for name in names:
            # The graph over the compiled model compiles it first if the compiled variant did not run.
            extra = COMPILE_COST_S["ours_bf16_cl_compiled"] if name.endswith("compiled_graph") and compiled is None else 0
            reason = self.skip_reason(name, extra)
            if reason:
                self.note_skip("sample", name, reason)
                continue
            if name in ("ours_bf16_cl_compiled", "ours_bf16_cl_compiled_graph") and compiled is None:
                compiled = torch.compile(ours_cl)
            if name == "diffusers_bf16_eager":
                def variant():
                    torch.manual_seed(0)
                    theirs = build_diffusers(self.diffusers, cfg).to(dev).eval().requires_grad_(False)
                    self.add_sample_call(calls, name, lambda: run(theirs, x, t))
            elif name == "ours_bf16_cl_eager":
                def variant():
                    self.add_sample_call(calls, name, lambda: run(ours_cl, x_cl, t))
            elif name == "ours_bf16_cl_compiled":
                def variant():
                    self.add_sample_call(calls, name, lambda: run(compiled, x_cl, t))
                    self.check("sample/ours_bf16_cl_compiled vs fp32", rel_err(run(compiled, x_cl, t), ref))
            elif name == "ours_bf16_cl_compiled_graph":
                def variant():
                    self.graph_variant(calls, name, compiled, x_cl, t, x2_cl, t2, ref, ref2)
            else:  # ours_bf16_cl_graph
                def variant():
                    self.graph_variant(calls, name, ours_cl, x_cl, t, x2_cl, t2, ref, ref2)
            self.guarded("sample", name, variant)
        if calls:
            def timing():
                ms = interleaved({n: c["fn"] for n, c in calls.items()}, dev, a.repeats, a.sample_inner)
                for n, c in calls.items():
                    self.record_sample(n, ms[n], c["first_call_s"], **c["extra"])
            self.guarded("sample", "timing", timing)
            calls.clear()
        if end_to_end and a.sampler_steps:
            self.guarded("sampler", "ddim", lambda: self.sampler_end_to_end(
                compiled if compiled is not None else ours_cl, shape))
        del ours, ours_cl, compiled
        free(dev)

    def graph_variant(self, calls: dict, name, model, x, t, x2, t2, ref, ref2) -> None:
        dev, a = self.device, self.args
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graphed = GraphedModel(model, x, t, autocast_dtype=self.bf16)
        build_s = time.perf_counter() - t0
        for w in caught:
            print(f"  warning: {w.message}", flush=True)
        with torch.no_grad():
            out1 = graphed(x, t)
            out2 = graphed(x2, t2)  # new inputs; out1 must survive this replay (it is a copy)
        self.check(f"sample/{name} replay vs fp32 (kept after a second replay)", rel_err(out1, ref))
        self.check(f"sample/{name} replay with new inputs vs fp32", rel_err(out2, ref2))
        if dev.type == "cuda" and not graphed.graphed:
            self.result["checks"].append({"name": f"sample/{name} captured", "rel_err": None, "tol": None,
                                          "pass": False, "reason": graphed.fallback_reason})
            print(f"  check sample/{name} captured: FAIL ({graphed.fallback_reason})", flush=True)

        def call():
            with torch.no_grad():
                return graphed(x, t)

        first_calls(call, dev, a.warmup)
        calls[name] = {"fn": call, "first_call_s": build_s,
                       "extra": {"graphed": graphed.graphed, "fallback_reason": graphed.fallback_reason}}

    def add_sample_call(self, calls: dict, name: str, fn) -> None:
        """Run ``fn``'s first call and warm-up, then queue it for the interleaved timing."""
        calls[name] = {"fn": fn, "first_call_s": first_calls(fn, self.device, self.args.warmup), "extra": {}}

    def record_sample(self, name: str, ms_all: list[float], first_call_s: float, **extra) -> None:
        a = self.args
        ms = statistics.median(ms_all)
        rec = {"ms_per_call": ms, "image_steps_per_s": a.sample_batch * 1e3 / ms, "first_call_s": first_call_s,
               "ms_all": ms_all, **extra}
        self.result["sample"][name] = rec
        print(f"  sample {name}: {rec['image_steps_per_s']:.0f} image-steps/s ({rec['ms_per_call']:.2f} ms/call, "
              f"first call {rec['first_call_s']:.1f} s)", flush=True)

    def sampler_end_to_end(self, model, shape) -> None:
        """DDIM (η = 0) with ``--sampler-steps`` steps through ``samplers.sample``, eager vs ``cuda_graph=True``."""
        dev, steps = self.device, self.args.sampler_steps
        noise = torch.randn(shape, generator=torch.Generator(device=dev).manual_seed(3), device=dev)
        noise = noise.contiguous(memory_format=torch.channels_last)
        outs = {}
        for graph in (False, True):
            sync(dev)
            t0 = time.perf_counter()
            with self.autocast(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outs[graph] = sample(self.diffusion, model, shape, sampler="ddim", steps=steps, noise=noise,
                                     device=dev, cuda_graph=graph)
            sync(dev)
            sec = time.perf_counter() - t0
            key = "ddim_cuda_graph" if graph else "ddim_eager"
            self.result["sampler"][key] = {"steps": steps, "seconds": sec,
                                           "images_per_s": shape[0] / sec, "image_steps_per_s": shape[0] * steps / sec}
            print(f"  sampler {key} ({steps} steps, batch {shape[0]}): {sec:.2f} s incl. capture, "
                  f"{shape[0] * steps / sec:.0f} image-steps/s", flush=True)
        self.check("sampler/ddim cuda_graph vs eager", rel_err(outs[True], outs[False]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    p.add_argument("--tiny", action="store_true", help="tiny network and batches (a CPU smoke run in seconds)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 128; tiny 4)")
    p.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default 500; tiny 4)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, the median is reported (default 7)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before timing (default 3)")
    p.add_argument("--inner", type=int, default=None, help="training steps per timed repeat (default 4)")
    p.add_argument("--sample-inner", type=int, default=None, help="forward passes per timed repeat (default 4)")
    p.add_argument("--sampler-steps", type=int, default=None,
                   help="DDIM steps of the end-to-end sampler run (0: skip; default 20, tiny 2)")
    p.add_argument("--train-variants", default=None,
                   help=f"comma list of {','.join(TRAIN_VARIANTS)} (default all; without compile on CPU)")
    p.add_argument("--sample-variants", default=None,
                   help=f"comma list of {','.join(SAMPLE_VARIANTS)} (default all; without compile on CPU)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip compiled variants that would not finish within this many seconds of the start "
                        "(eager variants always run)")
    p.add_argument("--out", default=None, help="JSON output path")
    p.add_argument("--table", metavar="JSON", default=None,
                   help="only print the table of an existing JSON (e.g. of a run that was cut short)")
    args = p.parse_args(argv)
    if args.table:
        return args
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device must be cpu or cuda[:index], got {args.device!r}")
    if dev.type not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda[:index], got {args.device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was requested but no CUDA GPU is available")
    defaults = dict(batch=4, sample_batch=4, repeats=2, warmup=1, inner=1, sample_inner=1, sampler_steps=2) \
        if args.tiny else dict(batch=128, sample_batch=500, repeats=7, warmup=3, inner=4, sample_inner=4,
                               sampler_steps=20)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("batch", "sample_batch", "repeats", "warmup", "inner", "sample_inner"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)}")
    if args.sampler_steps < 0:
        p.error(f"--sampler-steps must be >= 0, got {args.sampler_steps}")
    for key, allowed in (("train_variants", TRAIN_VARIANTS), ("sample_variants", SAMPLE_VARIANTS)):
        value = getattr(args, key)
        if value is None:
            names = [n for n in allowed if dev.type == "cuda" or "compile" not in n]
        else:
            names = [n.strip() for n in value.split(",") if n.strip()]
            bad = [n for n in names if n not in allowed]
            if bad:
                p.error(f"--{key.replace('_', '-')}: unknown {bad}; allowed: {', '.join(allowed)}")
        setattr(args, key, names)
    return args


def table(result: dict) -> str:
    """The summary table (plain text)."""
    lines = [f"device {result['device']} | torch {result['torch']} | diffusers {result['diffusers']} | "
             f"commit {result['git_commit'] or 'unknown'} (sources {result['source_sha256']})",
             "parameters: " + ", ".join(f"{k} {v:,}" for k, v in result["params"].items()), ""]
    rt, rs = result["ratios"].get("train", {}), result["ratios"].get("sample", {})
    lines.append(f"training, batch {result['batch']}: {'variant':<28} {'img/s':>9} {'ms/step':>9} {'peak GB':>8} "
                 f"{'syncs':>6} {'first s':>8} {'vs diffusers':>12}")
    for name, v in result["train"].items():
        if "images_per_s" not in v:
            lines.append(f"{'':<{len('training, batch ') + len(str(result['batch'])) + 1}} {name:<28} not timed")
            continue
        mem = f"{v['peak_mem_gb']:.2f}" if v["peak_mem_gb"] is not None else "-"
        syncs = v.get("host_syncs_per_step")
        ratio = f"{rt[name]:.2f}x" if name in rt else "1.00x" if name.startswith("diffusers") else "-"
        lines.append(f"{'':<{len('training, batch ') + len(str(result['batch'])) + 1}} {name:<28} "
                     f"{v['images_per_s']:>9.0f} {v['ms_per_step']:>9.2f} {mem:>8} "
                     f"{'-' if syncs is None else syncs:>6} {v['first_step_s']:>8.1f} {ratio:>12}")
    lines.append("")
    lines.append(f"sampling, batch {result['sample_batch']}: {'variant':<28} {'img-steps/s':>11} {'ms/call':>9} "
                 f"{'first s':>8} {'vs diffusers':>12}")
    for name, v in result["sample"].items():
        ratio = f"{rs[name]:.2f}x" if name in rs else "1.00x" if name.startswith("diffusers") else "-"
        lines.append(f"{'':<{len('sampling, batch ') + len(str(result['sample_batch'])) + 1}} {name:<28} "
                     f"{v['image_steps_per_s']:>11.0f} {v['ms_per_call']:>9.2f} {v['first_call_s']:>8.1f} "
                     f"{ratio:>12}")
    for key, v in result["sampler"].items():
        lines.append(f"sampler {key}: {v['steps']} steps, {v['seconds']:.2f} s, {v['image_steps_per_s']:.0f} "
                     "image-steps/s (incl. capture)")
    lines.append("")
    if result["config"]["tiny"]:
        lines.append("targets: not assessed (--tiny run; they refer to the CIFAR-10 network on a GPU)")
    for key, v in ({} if result["config"]["tiny"] else result["targets"]).items():
        if key == "train_peak_mem":
            lines.append(f"target memory: {v['variant']} peak {v['peak_mem_gb']:.2f} GB < {v['target']} GB: "
                         f"{'met' if v['met'] else 'NOT met'}")
        else:
            lines.append(f"target {key}: best {v['best']} {v['ratio']:.2f}x >= {v['target']}x: "
                         f"{'met' if v['met'] else 'NOT met'}")
    failed = [c["name"] for c in result["checks"] if not c["pass"]]
    lines.append(f"checks: {len(result['checks']) - len(failed)}/{len(result['checks'])} passed"
                 + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    for key, why in result["skipped"].items():
        lines.append(f"skipped {key}: {why}")
    for key, why in result["errors"].items():
        lines.append(f"ERROR {key}: {why}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        result = json.loads(Path(args.table).read_text())
        compute_ratios(result)
        print(table(result))
        return 0
    on_cuda = configure_backends(args.device)  # cuDNN autotuning and TF32, as the trainer sets them
    if not on_cuda and args.tiny:
        torch.set_num_threads(1)  # tiny tensors: thread hand-offs cost more than they gain on a busy CPU
    bench = Bench(args)
    r = bench.result
    print(f"throughput benchmark on {r['device']} (torch {r['torch']}, diffusers {r['diffusers']})", flush=True)
    if bench.diffusers is None:
        print(f"diffusers is not available ({bench.diffusers_missing}); install it (pip install diffusers) to "
              "measure the baseline — measuring this project only", flush=True)
    bench.parameter_counts()
    bench.save()
    def order(names: list[str]) -> list[str]:
        """Eager variants first, compiled ones last, so that --budget-s cuts only compiled variants. Every
        variant of a phase is built and warmed up first, then all are timed together, interleaved."""
        return [n for n in names if "compile" not in n] + [n for n in names if "compile" in n]

    if args.train_variants:
        print(f"training (batch {args.batch}):", flush=True)
    for name in order(args.train_variants):
        reason = bench.skip_reason(name)
        if reason:
            bench.note_skip("train", name, reason)
            continue
        bench.guarded("train", name, lambda: bench.prepare_train(name))
    if bench.train_steps:
        bench.guarded("train", "timing", bench.time_train)
        bench.train_steps.clear()  # also after a failed timing
        torch._dynamo.reset()  # drop the compiled graphs (and the models they hold)
        free(bench.device)
    if args.sample_variants or args.sampler_steps:
        print(f"sampling (batch {args.sample_batch}):", flush=True)
        bench.guarded("sample", "sampling", lambda: bench.sampling(order(args.sample_variants), end_to_end=True))
    r["total_s"] = bench.elapsed()
    bench.save()
    print("\n" + table(r), flush=True)
    print(f"total {r['total_s']:.1f} s" + (f"; JSON written to {args.out}" if args.out else ""), flush=True)
    return 0 if all(c["pass"] for c in r["checks"]) and not r["errors"] else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

"""CPU training throughput of a config (default ``configs/mnist5k.yaml``): images/s of the full optimiser
step (noise, forward, L_simple, backward, clip, Adam, EMA) as the trainer runs it.

Warm-up steps first, then ``--repeats`` timed blocks of ``--steps`` steps each; the median block gives
images/s and seconds per step, and the projected wall time of ``train.total_steps``. With ``--compile`` the
same measurement is made a second time, in the same run, with the U-Net through ``torch.compile`` (the
trainer's ``compile="model"``; its compilation happens in the warm-up), and the ratio of the two is printed.
Prints a table and writes JSON (``--out``, default ``benchmarks/results/train_cpu.json``).

    python benchmarks/train_cpu.py [--config configs/mnist5k.yaml] [--set k=v ...] [--threads 2] [--compile]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion.checkpoint import git_info  # noqa: E402
from diffusion.config import build_diffusion, build_model, load_config  # noqa: E402
from diffusion.data import InfiniteBatches, load_dataset  # noqa: E402
from diffusion.ema import EMA  # noqa: E402
from diffusion.model_info import count_parameters, flops_per_image  # noqa: E402
from diffusion.train_step import make_train_step  # noqa: E402


def measure(cfg, data, steps: int, repeats: int, warmup: int, compiled: bool = False) -> dict:
    """Median images/s over ``repeats`` blocks of ``steps`` full training steps, after ``warmup`` steps (the
    model through ``torch.compile`` if ``compiled``; the warm-up then includes the compilation)."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = build_model(cfg, data)
    diffusion = build_diffusion(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tuple(tc.adam_betas))
    net = torch.compile(model) if compiled else model
    step = make_train_step(net, diffusion, optimizer, EMA(model, tc.ema_decay), grad_clip=tc.grad_clip,
                           p_uncond=tc.p_uncond, null_class=model.num_classes if cfg.model.class_cond else None,
                           grad_accum=tc.grad_accum)
    batches = InfiniteBatches(data, tc.batch_size, "cpu", torch.Generator().manual_seed(tc.seed), cfg.data.hflip)
    model.train()
    t0 = time.perf_counter()
    for _ in range(warmup):
        step(*next(batches))
    warmup_seconds = time.perf_counter() - t0
    block_times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step(*next(batches))
        step.stats.read()  # one synchronisation per block, as the trainer does at log time
        block_times.append(time.perf_counter() - t0)
    med = statistics.median(block_times)
    return {"compiled": compiled, "batch_size": tc.batch_size, "steps_per_block": steps, "repeats": repeats,
            "warmup_steps": warmup, "warmup_seconds": warmup_seconds, "block_seconds": block_times, "seconds_per_step": med / steps,
            "images_per_s": tc.batch_size * steps / med,
            "projected_minutes_for_total_steps": tc.total_steps * med / steps / 60,
            "total_steps": tc.total_steps, "parameters": count_parameters(model),
            "gflops_per_image_forward": flops_per_image(model, data.image_size, data.channels) / 1e9}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "mnist5k.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps")
    parser.add_argument("--compile", action="store_true",
                        help="also measure with the model through torch.compile, in the same run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_cpu.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    data = load_dataset(cfg.data.name, "train", root=cfg.data.root, image_size=cfg.data.image_size)
    result = measure(cfg, data, args.steps, args.repeats, args.warmup)
    if args.compile:
        result["compiled_model"] = measure(cfg, data, args.steps, args.repeats, args.warmup, compiled=True)
        result["compiled_over_eager"] = result["compiled_model"]["images_per_s"] / result["images_per_s"]
    result.update(config=str(args.config), overrides=args.set, threads=torch.get_num_threads(),
                  torch=str(torch.__version__), python=platform.python_version(), machine=platform.processor()
                  or platform.machine(), cpu_count=torch.multiprocessing.cpu_count(), git=git_info(ROOT),
                  created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    rows = [("config", f"{Path(args.config).name} {' '.join(args.set)}".strip()),
            ("threads", result["threads"]), ("batch", result["batch_size"]),
            ("parameters", f"{result['parameters']:,}"),
            ("GFLOPs/image (fwd)", f"{result['gflops_per_image_forward']:.3f}"),
            ("s/step (median)", f"{result['seconds_per_step']:.3f}"),
            ("images/s", f"{result['images_per_s']:.1f}"),
            (f"minutes for {result['total_steps']} steps", f"{result['projected_minutes_for_total_steps']:.1f}")]
    if args.compile:
        c = result["compiled_model"]
        rows += [("compiled: warm-up s", f"{c['warmup_seconds']:.0f} ({c['warmup_steps']} steps, compilation included)"),
                 ("compiled: s/step", f"{c['seconds_per_step']:.3f}"), ("compiled: images/s", f"{c['images_per_s']:.1f}"),
                 ("compiled / eager", f"{result['compiled_over_eager']:.2f}x")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

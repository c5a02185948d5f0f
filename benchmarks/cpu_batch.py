#!/usr/bin/env python
"""Which batch size samples fastest on the CPU: the cpu profile's compiled U-Nets, image-network-calls per second.

A sampler step is one forward pass of the ε-network; classifier-free guidance with 1 < w runs the conditional
and the unconditional prediction as one pass of twice the batch. So the question for the sampling budget is
whether a pass of 2B images is as fast per image as a pass of B, and whether batches smaller than 128 pay.
The networks are the cpu profile's (the table-2 layout at ch 32 with 8 GroupNorm groups: class-conditional
at 32×32, unconditional at 64×64), with random weights (the speed does not depend on them), compiled as the
notebooks compile them (``torch.compile(dynamic=False)``, one compilation per batch shape; its first call is
reported apart). Every batch size is timed interleaved with the others (``throughput.interleaved``), the
median round reported, and each as a ratio to batch 128 in the same run. Nothing else should run meanwhile.

    .venv/bin/python benchmarks/cpu_batch.py [--batches 64 100 125 128 250 256] [--size 32] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import throughput as tp  # noqa: E402  (interleaved timing)

from diffusion.unet import UNet  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=32, choices=(32, 64),
                   help="32: the class-conditional CIFAR-10 network; 64: the unconditional CelebA one")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 100, 125, 128, 250, 256])
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--inner", type=int, default=2, help="calls per timing")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if 128 not in a.batches:
        p.error("--batches must include 128, the reference of the ratios")
    if min(a.batches) < 1:
        p.error("--batches must be positive")
    torch.manual_seed(0)
    cond = a.size == 32
    net = UNet(in_channels=3, ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
               image_size=a.size, norm_groups=8, num_classes=10 if cond else None)
    tp.randomize_zero_init_(net)
    net.eval()
    dev = torch.device("cpu")
    calls, first = {}, {}
    with torch.no_grad():
        for b in a.batches:
            x = torch.randn(b, 3, a.size, a.size)
            t = torch.randint(0, 1000, (b,))
            kw = {"y": torch.randint(0, 11, (b,))} if cond else {}  # 10: the null token
            compiled = torch.compile(net, dynamic=False)
            calls[b] = lambda compiled=compiled, x=x, t=t, kw=kw: compiled(x, t, **kw)
            first[b] = tp.first_calls(calls[b], dev, warmup=1)
            print(f"batch {b:4d}: first call {first[b]:.1f} s", flush=True)
        rounds = tp.interleaved(calls, dev, a.repeats, a.inner)
    ms = {b: statistics.median(r) for b, r in rounds.items()}
    rate = {b: b / (v / 1e3) for b, v in ms.items()}
    for b in a.batches:
        spread = (min(rounds[b]), max(rounds[b]))
        print(f"batch {b:4d}: {rate[b]:7.1f} image-calls/s  x{rate[b] / rate[128]:.3f} vs batch 128  "
              f"(rounds {b / (spread[1] / 1e3):.1f}-{b / (spread[0] / 1e3):.1f})")
    if a.out:
        a.out.write_text(json.dumps({
            "size": a.size, "class_cond": cond, "ch": 32, "norm_groups": 8, "batches": a.batches,
            "repeats": a.repeats, "inner": a.inner, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "git_commit": tp.git_commit(),
            "first_call_s": first, "ms_per_call": ms, "image_calls_per_s": rate,
            "ratio_to_batch_128": {b: rate[b] / rate[128] for b in rate}, "rounds_ms": rounds}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

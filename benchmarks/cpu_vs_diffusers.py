#!/usr/bin/env python
"""CPU sampling speed of this project's U-Net against diffusers' ``UNet2DModel`` of the same layout, one run.

Sampling is ε-network forward passes under ``torch.no_grad`` in float32 (what every sampler step costs on a
CPU); reported as image-network-calls per second and as ratios to diffusers eager, for: diffusers eager, ours
eager, ours ``torch.compile``d (the first call, which compiles, is reported separately). The layout is the
table-2 U-Net at ``--ch`` base channels (default 32: the ``cpu`` profile's networks; 128 is the full CIFAR-10
network) and ``--size`` pixels. Every variant is warmed up, then timed interleaved (``throughput.interleaved``:
rounds, each timing every variant, the order rotated) and the median round is reported, so a drift of the
machine's speed affects all variants alike. The outputs are checked against each other (same weights,
converted with ``diffusion.convert.to_diffusers``). Nothing else should run on the machine meanwhile.

    .venv/bin/python benchmarks/cpu_vs_diffusers.py [--ch 32] [--batch 128] [--layouts] [--out benchmarks/results/<date>-cpu-vs-diffusers.json]
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

import throughput as tp  # noqa: E402  (interleaved timing, diffusers import)

from diffusion.convert import to_diffusers  # noqa: E402
from diffusion.unet import UNet  # noqa: E402


class ChannelsLastInput(torch.nn.Module):
    """``net`` (channels_last weights) called with its image input in channels_last too."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x.contiguous(memory_format=torch.channels_last), t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ch", type=int, default=32, help="base channels (32: the cpu profile; 128: table 2)")
    p.add_argument("--size", type=int, default=32, help="image size (32: CIFAR-10, 64: CelebA)")
    p.add_argument("--norm-groups", type=int, default=8, help="GroupNorm groups (8: the cpu profile)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--inner", type=int, default=2, help="forward passes per timed round")
    p.add_argument("--no-compile", action="store_true", help="leave out the compiled variants")
    p.add_argument("--layouts", action="store_true",
                   help="also ours in channels_last, and compiled with inductor's freezing (weights as constants, "
                        "prepacked for oneDNN), with and without channels_last")
    p.add_argument("--out", default=None, help="JSON output path")
    a = p.parse_args(argv)
    diffusers, why = tp.import_diffusers()
    if diffusers is None:
        print(f"cpu_vs_diffusers: diffusers is not importable ({why})", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    ours = UNet(in_channels=3, ch=a.ch, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                image_size=a.size, norm_groups=a.norm_groups)
    tp.randomize_zero_init_(ours)
    ours.eval()
    theirs = tp.DiffusersEps(to_diffusers(ours)).eval()
    x = torch.randn(a.batch, 3, a.size, a.size)
    t = torch.randint(0, 1000, (a.batch,))
    dev = torch.device("cpu")
    variants = {"diffusers_eager": theirs, "ours_eager": ours}
    if not a.no_compile:
        variants["ours_compiled"] = torch.compile(ours)
    if a.layouts:
        import copy

        ours_cl = copy.deepcopy(ours).to(memory_format=torch.channels_last)
        variants["ours_cl_eager"] = ChannelsLastInput(ours_cl)
        if not a.no_compile:
            variants["ours_cl_compiled"] = ChannelsLastInput(torch.compile(ours_cl))
            variants["ours_frozen"] = torch.compile(copy.deepcopy(ours), options={"freezing": True})
            variants["ours_cl_frozen"] = ChannelsLastInput(torch.compile(copy.deepcopy(ours_cl), options={"freezing": True}))
    first, outputs = {}, {}
    with torch.no_grad():
        for name, net in variants.items():
            first[name] = tp.first_calls(lambda net=net: net(x, t), dev, warmup=2)
            outputs[name] = net(x, t)
        checks = {name: tp.rel_err(out, outputs["ours_eager"]) for name, out in outputs.items()}
        rounds = tp.interleaved({n: (lambda net=net: net(x, t)) for n, net in variants.items()}, dev, a.repeats,
                                a.inner)
    ms = {n: statistics.median(r) for n, r in rounds.items()}
    rate = {n: a.batch / (v / 1e3) for n, v in ms.items()}
    ratio = {n: rate[n] / rate["diffusers_eager"] for n in rate}
    for n in variants:
        print(f"{n:16s} {rate[n]:8.1f} image-calls/s  x{ratio[n]:.2f} vs diffusers eager  "
              f"(first call {first[n]:.1f} s; output vs ours eager: rel. L2 {checks[n]:.1e})")
    result = {"ch": a.ch, "size": a.size, "norm_groups": a.norm_groups, "batch": a.batch, "repeats": a.repeats, "inner": a.inner,
              "torch": torch.__version__, "diffusers": diffusers.__version__, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "git_commit": tp.git_commit(),
              "ms_per_call": ms, "image_calls_per_s": rate, "ratio_to_diffusers_eager": ratio,
              "first_call_s": first, "rel_err_to_ours_eager": checks, "rounds_ms": rounds}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    bad = [n for n, e in checks.items() if e > 1e-3]
    if bad:
        print(f"outputs differ from ours eager beyond 1e-3: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

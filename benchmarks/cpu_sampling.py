"""CPU sampling speed of the MNIST-5k U-Net (the quick/long profiles' model): what pays on this machine.

Times ε-network forward passes under ``torch.no_grad`` (what every sampler step costs), per image, for
batch sizes, thread counts, fp32 against bf16 autocast, and NCHW against channels_last; every variant is
reported as a ratio to fp32 / NCHW / batch 256 / all threads measured in the same run. bf16 is also checked
for accuracy (relative L2 error of ε against fp32). Nothing else should run on the machine meanwhile.

    .venv/bin/python benchmarks/cpu_sampling.py [--out benchmarks/results/<date>-cpu-sampling.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build(config: str):
    from diffusion.config import build_model, load_config
    from diffusion.data import load_dataset

    cfg = load_config(ROOT / config)
    data = load_dataset(cfg.data.name, "test", root=cfg.data.root, image_size=cfg.data.image_size)
    model = build_model(cfg, data).eval()
    with torch.no_grad():  # the zero-initialised output layers would make every output 0 (no accuracy check)
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    return model, data


def per_image_seconds(model, batch: int, threads: int, bf16: bool, channels_last: bool, repeats: int,
                      c: int, s: int) -> float:
    torch.set_num_threads(threads)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, c, s, s).to(memory_format=fmt)
    t = torch.randint(0, 1000, (batch,))
    y = torch.randint(0, 10, (batch,))
    m = model.to(memory_format=fmt)
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        m(x, t, y=y)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            m(x, t, y=y)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/mnist5k.yaml")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.manual_seed(0)
    model, data = build(a.config)
    c, s = data.images.shape[1], data.images.shape[-1]
    cores = torch.get_num_threads()
    variants = [dict(batch=256, threads=cores, bf16=False, channels_last=False)]  # the reference
    variants += [dict(batch=b, threads=cores, bf16=False, channels_last=False) for b in (32, 64, 128, 1024)]
    variants += [dict(batch=256, threads=1, bf16=False, channels_last=False),
                 dict(batch=256, threads=cores, bf16=True, channels_last=False),
                 dict(batch=256, threads=cores, bf16=False, channels_last=True),
                 dict(batch=256, threads=cores, bf16=True, channels_last=True)]
    rows = []
    for v in variants:
        sec = per_image_seconds(model, repeats=a.repeats, c=c, s=s, **v)
        rows.append({**v, "ms_per_image_call": 1000 * sec})
        print(f"batch {v['batch']:5d} threads {v['threads']} bf16 {v['bf16']!s:5s} channels_last "
              f"{v['channels_last']!s:5s}: {1000 * sec:.3f} ms per image and call "
              f"(x{rows[0]['ms_per_image_call'] / (1000 * sec):.2f} vs reference)", flush=True)
    x = torch.randn(64, c, s, s)
    t, y = torch.randint(0, 1000, (64,)), torch.randint(0, 10, (64,))
    torch.set_num_threads(cores)
    with torch.no_grad():
        ref = model.to(memory_format=torch.contiguous_format)(x, t, y=y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, y=y).float()
    err = float((low - ref).norm() / ref.norm())
    finite = bool(torch.isfinite(low).all())
    print(f"bf16 autocast: relative L2 error of eps {err:.2e}" + ("" if finite else " (non-finite outputs)"))
    result = {"config": a.config, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "cores": cores, "reference": rows[0], "rows": rows,
              "bf16_relative_error": err if finite else None, "bf16_finite": finite}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

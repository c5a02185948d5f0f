"""Wall-clock sampling time per image (table 5): warm-up runs, then the median of timed repeats.

On CUDA the device is synchronised around each run and the time is taken from CUDA events, so
asynchronous kernel launches are not mistaken for finished work.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def time_per_image(fn: Callable[[], object], num_images: int, warmup: int = 1, repeats: int = 3,
                   device=None) -> dict:
    """Seconds per image of ``fn()``, which must generate ``num_images`` images per call.

    Runs ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; on a CUDA ``device`` uses
    ``torch.cuda.synchronize`` and CUDA events. Returns ``{"seconds_per_image" (median),
    "seconds_per_call" (all repeats), "num_images", "warmup", "repeats", "device"}``.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images}")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            with torch.cuda.device(device):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"seconds_per_image": statistics.median(times) / num_images, "seconds_per_call": times,
            "num_images": num_images, "warmup": warmup, "repeats": repeats, "device": str(device)}

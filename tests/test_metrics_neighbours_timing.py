"""Nearest neighbours on a toy set with a known answer; timing returns positive medians."""
from __future__ import annotations

import time

import pytest
import torch

from diffusion.metrics.neighbours import nearest_neighbours
from diffusion.metrics.timing import time_per_image


def test_nearest_neighbours_known_answer():
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (50, 1, 4, 4), generator=g, dtype=torch.uint8)
    picks = torch.tensor([7, 31, 0, 49])
    samples = train[picks].clone()
    samples[1, 0, 0, 0] = samples[1, 0, 0, 0] ^ 1  # one grey level off: distance 1/255
    idx, dist = nearest_neighbours(samples, train, k=3, chunk_size=7, progress=False)
    assert idx[:, 0].tolist() == picks.tolist()
    assert dist[0, 0] == pytest.approx(0.0, abs=1e-6) and dist[1, 0] == pytest.approx(1 / 255, rel=1e-6)
    # brute force over the whole set in [0, 1] pixel units
    full = torch.cdist(samples.flatten(1).double() / 255, train.flatten(1).double() / 255)
    ref_d, ref_i = full.topk(3, dim=1, largest=False)
    torch.testing.assert_close(dist, ref_d)
    assert torch.equal(idx, ref_i)
    assert (dist[:, 1:] >= dist[:, :-1]).all()


def test_nearest_neighbours_float_samples_are_quantised():
    train = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    train[1] = 255
    x = torch.full((1, 1, 2, 2), 0.999)  # -> 255 after quantisation
    idx, dist = nearest_neighbours(x, train, progress=False)
    assert idx.item() == 1 and dist.item() == pytest.approx(0.0)


def test_nearest_neighbours_rejects_bad_input():
    with pytest.raises(ValueError, match="C×H×W"):
        nearest_neighbours(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="k must"):
        nearest_neighbours(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, 1, 2, 2, dtype=torch.uint8), k=3)
    with pytest.raises(ValueError, match="2 NaN"):
        nearest_neighbours(torch.tensor([[[[float("nan"), 0.0], [0.0, float("nan")]]]]),
                           torch.zeros(2, 1, 2, 2, dtype=torch.uint8))


def test_time_per_image_positive_median():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    out = time_per_image(fn, num_images=4, warmup=2, repeats=3)
    assert len(calls) == 5 and len(out["seconds_per_call"]) == 3
    assert out["seconds_per_image"] > 0
    assert out["seconds_per_image"] == pytest.approx(sorted(out["seconds_per_call"])[1] / 4)
    assert out["seconds_per_image"] >= 0.01 / 4
    calls.clear()
    defaults = time_per_image(fn, num_images=1)  # one warm-up run, three timed ones
    assert len(calls) == 4 and (defaults["warmup"], defaults["repeats"]) == (1, 3)


def test_time_per_image_rejects_bad_counts():
    with pytest.raises(ValueError, match="num_images"):
        time_per_image(lambda: None, num_images=0)
    with pytest.raises(ValueError, match="repeats"):
        time_per_image(lambda: None, num_images=1, repeats=0)


class _Clock:
    """A clock that only ``fn`` advances, by the next of ``durations`` (seconds) per call."""

    def __init__(self, durations):
        self.now, self.durations, self.log = 100.0, list(durations), []

    def fn(self):
        self.log.append("fn")
        self.now += self.durations.pop(0)


def test_time_per_image_on_a_controlled_clock(monkeypatch):
    clock = _Clock([9.0, 0.5, 0.25, 2.0])
    monkeypatch.setattr(time, "perf_counter", lambda: clock.now)
    out = time_per_image(clock.fn, num_images=2, warmup=1, repeats=3)
    assert out == {"seconds_per_image": 0.25, "seconds_per_call": [0.5, 0.25, 2.0], "num_images": 2, "warmup": 1,
                   "repeats": 3, "device": "cpu"}
    clock = _Clock([3.0])
    out = time_per_image(clock.fn, num_images=1, warmup=0, repeats=1, device="cpu")
    assert (out["seconds_per_call"], out["warmup"], out["repeats"], out["device"]) == ([3.0], 0, 1, "cpu")


def test_time_per_image_on_cuda_uses_synchronised_events(monkeypatch):
    """The CUDA branch against a stand-in for ``torch.cuda`` that records the calls: synchronise before the
    start event and after the end event, inside the device's context, timing-enabled events, milliseconds."""
    from types import SimpleNamespace

    import diffusion.metrics.timing as timing_mod

    clock = _Clock([1.0, 0.5, 0.125])

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing is True
            self.at = None

        def record(self):
            clock.log.append("record")
            self.at = clock.now

        def elapsed_time(self, end):
            return (end.at - self.at) * 1000.0

    class DeviceContext:
        def __init__(self, device):
            assert device == torch.device("cuda:1")

        def __enter__(self):
            clock.log.append("enter")

        def __exit__(self, *exc):
            clock.log.append("exit")

    cuda = SimpleNamespace(Event=Event, device=DeviceContext, synchronize=lambda: clock.log.append("sync"))
    monkeypatch.setattr(timing_mod, "torch", SimpleNamespace(device=torch.device, cuda=cuda))
    out = time_per_image(clock.fn, num_images=4, warmup=1, repeats=2, device="cuda:1")
    assert out == {"seconds_per_image": 0.3125 / 4, "seconds_per_call": [0.5, 0.125], "num_images": 4,
                   "warmup": 1, "repeats": 2, "device": "cuda:1"}
    assert clock.log == ["fn"] + ["enter", "sync", "record", "fn", "record", "sync", "exit"] * 2


def test_time_per_image_messages():
    with pytest.raises(ValueError, match=r"^num_images must be a positive integer, got 0$"):
        time_per_image(lambda: None, num_images=0)
    for warmup, repeats in ((-1, 1), (0, 0)):
        with pytest.raises(ValueError, match=rf"^warmup must be >= 0 and repeats >= 1, got warmup={warmup}, "
                                             rf"repeats={repeats}$"):
            time_per_image(lambda: None, num_images=1, warmup=warmup, repeats=repeats)


def test_nearest_neighbours_edge_arguments_and_dtypes():
    g = torch.Generator().manual_seed(5)
    train = torch.randint(0, 256, (7, 1, 3, 3), generator=g, dtype=torch.uint8)
    samples = torch.randint(0, 256, (4, 1, 3, 3), generator=g, dtype=torch.uint8)
    idx, dist = nearest_neighbours(samples, train, k=7, progress=False)  # k may be the whole training set
    assert idx.dtype == torch.long and dist.dtype == torch.float64
    full = ((samples.double().flatten(1)[:, None] - train.double().flatten(1)[None]) / 255.0).norm(dim=2)
    torch.testing.assert_close(dist, full.sort(1).values, rtol=1e-12, atol=1e-12)
    one_by_one = nearest_neighbours(samples, train, k=7, chunk_size=1, progress=False)
    assert torch.equal(one_by_one[0], idx) and torch.allclose(one_by_one[1], dist, rtol=1e-12, atol=1e-12)


def test_nearest_neighbours_progress_bar_by_default(capsys):
    train = torch.zeros(5, 1, 2, 2, dtype=torch.uint8)
    nearest_neighbours(train[:2], train, chunk_size=2)
    err = capsys.readouterr().err
    assert err.startswith("\rnearest neighbours:   0%|") and "0/3" in err
    assert err.split("\r")[-1].strip() == ""  # a finished bar is removed
    nearest_neighbours(train[:2], train, progress=False)
    assert capsys.readouterr().err == ""


def test_nearest_neighbours_messages_name_the_argument():
    ok = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"^samples must be a torch\.Tensor \(uint8 or float in \[-1, 1\]\), got list$"):
        nearest_neighbours([0], ok)
    with pytest.raises(ValueError, match=r"^train_images must be NCHW \(4 dimensions\), got shape \(2, 2\)$"):
        nearest_neighbours(ok, torch.zeros(2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"^samples \(1, 2, 2\) and train_images \(3, 2, 2\) must have the same C×H×W$"):
        nearest_neighbours(ok, torch.zeros(2, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"^k must lie in \[1, 2\] \(the training set size\), got 3$"):
        nearest_neighbours(ok, ok, k=3)
    for chunk_size in (0, -1):
        with pytest.raises(ValueError, match=rf"^chunk_size must be a positive integer, got {chunk_size}$"):
            nearest_neighbours(ok, ok, chunk_size=chunk_size)

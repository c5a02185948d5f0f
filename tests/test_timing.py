"""diffusion.timing: the time of one network call per image, on a fake clock that the network advances (no
wall time is measured here)."""

from types import SimpleNamespace

import pytest
import torch

from diffusion import timing
from diffusion.experiments import TrainedModel
from diffusion.gaussian_diffusion import create_diffusion

PER_IMAGE = 1e-3   # seconds the fake network "takes" per image per call
COMPILE = 5.0      # extra seconds of its first call


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeNet(torch.nn.Module):
    """Predicts zero noise; every call advances the clock by PER_IMAGE per image (COMPILE more the first time)."""

    def __init__(self, clock, class_cond):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.in_channels, self.image_size = 3, 4
        self.clock, self.calls, self.labels = clock, 0, []
        self.class_cond = class_cond

    def forward(self, x, t, y=None):
        self.clock.now += PER_IMAGE * x.shape[0] + (COMPILE if self.calls == 0 else 0.0)
        self.calls += 1
        self.labels.append(None if y is None else y.clone())
        return torch.zeros_like(x)


def fake_model(clock, class_cond=True, sampling_batch=6):
    net = FakeNet(clock, class_cond)
    tm = SimpleNamespace(diffusion=create_diffusion("linear", 100), network=lambda use_ema=True: net, model=net,
                         raw_model=net, cfg=SimpleNamespace(model=SimpleNamespace(class_cond=class_cond)),
                         data=SimpleNamespace(num_classes=3), null_class=3 if class_cond else None,
                         sampling_batch=sampling_batch)
    tm.images_per_batch = lambda guidance_scale=None, per_call=None: TrainedModel.images_per_batch(
        tm, guidance_scale, per_call)
    return tm, net


@pytest.mark.parametrize("w, per_call, batch", [(None, 6, 6), (1.0, 6, 6), (0.0, 6, 6), (3.0, 12, 6)])
def test_by_default_the_batch_generate_samples_in(monkeypatch, w, per_call, batch):
    """Timed at the profile's batch (``sampling.batch`` inputs per call; under guidance with 1 < w, half as many
    images in calls of twice their number), as the samples are drawn."""
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    tm, net = fake_model(clock, sampling_batch=12 if w == 3.0 else 6)
    sizes = []
    forward = net.forward
    net.forward = lambda x, t, y=None: (sizes.append(x.shape[0]), forward(x, t, y=y))[1]
    got = timing.seconds_per_call(tm, ["ddim"], probe_steps=2, rounds=1, guidance_scale=w)
    assert set(sizes) == {per_call}
    # per image and sampler step: PER_IMAGE per network input, two inputs per image under guidance
    assert got == {"ddim": pytest.approx(PER_IMAGE * per_call / batch)}


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp2m"])
def test_one_call_per_step_and_the_warm_up_left_out(monkeypatch, sampler):
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    tm, net = fake_model(clock)
    got = timing.seconds_per_call(tm, [sampler], batch_size=8, probe_steps=5, rounds=2)
    assert got == {sampler: pytest.approx(PER_IMAGE)}  # not × 8 (per batch), nor × 5 (per run), nor the compile
    assert net.calls == (1 + 2) * 5  # warm-up and two timed runs of five steps: one call per step


def test_conditional_models_get_labels_cycling_through_the_classes(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    tm, net = fake_model(clock)
    timing.seconds_per_call(tm, "ddim", batch_size=7, probe_steps=2, rounds=1)
    assert net.labels[0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    tm, net = fake_model(clock, class_cond=False)
    timing.seconds_per_call(tm, "ddim", batch_size=7, probe_steps=2, rounds=1)
    assert net.labels[0] is None


def test_rounds_interleave_the_samplers_so_a_slow_spell_falls_on_all(monkeypatch):
    """The machine runs at half speed through the warm-ups and the first round: timed one after the other, the first
    sampler's runs would all fall in the slow spell; interleaved, every sampler has a run outside it and all three,
    which cost the same per call, get the same time."""
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    tm, net = fake_model(clock)
    samplers = ["ancestral", "ddim", "dpmpp2m"]
    slow_calls = 2 * len(samplers) * 4  # warm-ups and round one, four steps each
    forward = FakeNet.forward

    def drifting(self, x, t, y=None):
        before = self.clock.now
        out = forward(self, x, t, y)
        if self.calls <= slow_calls:
            self.clock.now += self.clock.now - before  # twice as long
        return out

    monkeypatch.setattr(FakeNet, "forward", drifting)
    got = timing.seconds_per_call(tm, samplers, batch_size=4, probe_steps=4, rounds=3)
    assert got == {s: pytest.approx(PER_IMAGE) for s in samplers}
    assert net.calls == (1 + 3) * len(samplers) * 4


def test_rounds_rotate_the_order_of_the_samplers(monkeypatch):
    order = []
    monkeypatch.setattr(timing.time, "perf_counter", Clock())
    tm, _ = fake_model(Clock())
    import diffusion.samplers as samplers_module

    def record(diffusion, model, shape, *, sampler, **kwargs):
        order.append(sampler)
    monkeypatch.setattr(samplers_module, "sample", record)
    timing.seconds_per_call(tm, ["a", "b", "c"], batch_size=2, probe_steps=1, rounds=3)
    assert order == ["a", "b", "c"] + ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # warm-ups, then three rounds


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"probe_steps": 0}, {"rounds": 0}, {"probe_steps": 101},
                                    {"batch_size": 2.5}])
def test_bad_settings_are_refused(kwargs):
    tm, _ = fake_model(Clock())
    with pytest.raises(ValueError):
        timing.seconds_per_call(tm, "ddim", **kwargs)


@pytest.mark.parametrize("samplers", [[], ["ddim", "ddim"], [3]])
def test_bad_sampler_lists_are_refused(samplers):
    tm, _ = fake_model(Clock())
    with pytest.raises(ValueError, match="samplers must be distinct sampler names"):
        timing.seconds_per_call(tm, samplers)

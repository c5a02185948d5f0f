"""Details of classifier-free guidance (eq. 18) and of the β schedules that end-to-end tests do not see:
the passes the guided model makes, keyword arguments reaching the network, the validation messages, the
schedules' default arguments and the cosine ᾱ(u) of Nichol & Dhariwal written out."""
import math

import numpy as np
import pytest
import torch

from diffusion.guidance import ClassifierFreeGuidance, inputs_per_image
from diffusion.schedules import cosine_alpha_bar, cosine_beta_schedule, linear_beta_schedule, quadratic_beta_schedule


class Net:
    """ε(x, t, y) = x·(1 + y) + scale, recording the batch size and labels of every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, y=None, scale=0.0):
        self.calls.append((x.shape[0], y.tolist()))
        return x * (1.0 + y.to(x.dtype)).reshape(-1, 1) + scale


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_guidance_passes_and_keyword_arguments(w):
    net = Net()
    x, t, y = torch.randn(3, 2), torch.tensor([4, 5, 6]), torch.tensor([0, 1, 2])
    out = ClassifierFreeGuidance(net, w, null_class=3)(x, t, y=y, scale=0.25)
    cond, uncond = x * (1.0 + y).reshape(-1, 1) + 0.25, x * 4.0 + 0.25
    torch.testing.assert_close(out, uncond + w * (cond - uncond))
    if w == 1.0:  # the plain conditional model: one pass of size B
        assert net.calls == [(3, [0, 1, 2])]
    elif w == 0.0:  # the unconditional model: one pass of size B with the null token
        assert net.calls == [(3, [3, 3, 3])]
    else:  # one batched pass of size 2B: conditional half, then null half
        assert net.calls == [(6, [0, 1, 2, 3, 3, 3])]


@pytest.mark.parametrize("w", [None, 0.0, 1.0, 0, 1, 0.5, 2.5, 3.0, -1.0])
def test_inputs_per_image_is_what_guidance_passes_the_network(w):
    """The batch ``experiments.generate`` samples in is halved exactly where a call holds twice the images."""
    if w is None:
        assert inputs_per_image(w) == 1  # no guidance: the model itself
        return
    net = Net()
    ClassifierFreeGuidance(net, w, null_class=3)(torch.randn(3, 2), torch.tensor([4, 5, 6]), y=torch.tensor([0, 1, 2]))
    assert [size for size, _ in net.calls] == [3 * inputs_per_image(w)]


def test_guidance_validation_messages():
    ClassifierFreeGuidance(Net(), 2.0, null_class=1)  # K = 1 (one class and ∅) is allowed
    for bad in (0, -2, "3", 2.0):
        with pytest.raises(ValueError, match="null_class must be the positive index K"):
            ClassifierFreeGuidance(Net(), 2.0, null_class=bad)
    with pytest.raises(ValueError, match=r"^guidance_scale must be a number, got NaN$"):
        ClassifierFreeGuidance(Net(), float("nan"), null_class=3)
    with pytest.raises(ValueError, match=r"^classifier-free guidance needs class labels y$"):
        ClassifierFreeGuidance(Net(), 2.0, null_class=3)(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))


def test_schedule_defaults_are_ddpm_endpoints():
    np.testing.assert_array_equal(linear_beta_schedule(7), np.linspace(1e-4, 0.02, 7))
    np.testing.assert_allclose(quadratic_beta_schedule(7), np.linspace(0.01, math.sqrt(0.02), 7) ** 2, rtol=1e-15)
    assert linear_beta_schedule(7).dtype == quadratic_beta_schedule(7).dtype == np.float64


def test_cosine_alpha_bar_written_out():
    s = 0.008
    u = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    f = np.cos((u + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
    np.testing.assert_allclose(cosine_alpha_bar(u), f, rtol=1e-13, atol=1e-300)
    assert cosine_alpha_bar(np.array([0.0]))[0] == 1.0
    T = 10
    g = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2  # ᾱ up to its normalisation
    np.testing.assert_allclose(cosine_beta_schedule(T), np.minimum(1 - g[1:] / g[:-1], 0.999), rtol=1e-12)

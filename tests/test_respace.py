"""Which timesteps a respaced sampler keeps: both spacings at their boundaries (1 and T steps), and the
messages for steps outside [1, T] or an unreadable spacing."""
import numpy as np
import pytest
import torch

from diffusion.gaussian_diffusion import create_diffusion
from diffusion.respace import SpacedDiffusion, space_timesteps

T = 10


@pytest.mark.parametrize("k, expected", [
    (1, [9]),                 # one step: the last index, where sampling starts
    (2, [0, 9]),              # two steps: both ends
    (4, [0, 3, 6, 9]),        # linspace(0, 9, 4)
    (T, list(range(T))),      # every step
])
def test_even_spacing_at_its_boundaries(k, expected):
    assert space_timesteps(T, k) == expected
    assert space_timesteps(T, str(k)) == expected


@pytest.mark.parametrize("k, expected", [(1, [0]), (3, [0, 3, 6]), (T, list(range(T)))])
def test_ddim_spacing_at_its_boundaries(k, expected):
    assert space_timesteps(T, f"ddim{k}") == expected


@pytest.mark.parametrize("spec", [0, T + 1, "0", "11", "ddim0", "ddim11", -3])
def test_steps_outside_one_to_t_are_named(spec):
    k = int(str(spec).removeprefix("ddim"))
    with pytest.raises(ValueError, match=rf"^steps must lie in \[1, {T}\], got {k}$"):
        space_timesteps(T, spec)


def test_unreadable_spacing_is_named():
    with pytest.raises(ValueError, match=r"^timestep spacing must be an int 'K' or 'ddimK', got 'fast'$"):
        space_timesteps(T, "fast")


@pytest.mark.parametrize("use", [[], [-1, 3], [0, T], [0, 1, T], [T - 1, T + 5]])
def test_spaced_diffusion_refuses_indices_outside_the_schedule(use):
    base = create_diffusion("linear", T)
    with pytest.raises(ValueError, match=rf"^use_timesteps must be a non-empty subset of \[0, {T}\)$"):
        SpacedDiffusion(base, use)


@pytest.mark.parametrize("decoder_variance", ["paper", "ddpm_code"])
def test_every_index_kept_is_the_base_diffusion_including_its_decoder_variance(decoder_variance):
    base = create_diffusion("linear", T, 1e-3, 0.2, decoder_variance=decoder_variance)
    spaced = SpacedDiffusion(base, [0, T - 1] + list(range(T)))  # repeats collapse
    assert spaced.base is base
    assert spaced.decoder_variance is base.decoder_variance
    np.testing.assert_allclose(spaced.model_variance, base.model_variance, rtol=1e-12)
    assert spaced.timestep_map.dtype == torch.long and spaced.timestep_map.tolist() == list(range(T))


def test_wrapped_model_gets_original_indices_on_their_device_and_every_keyword():
    spaced = SpacedDiffusion(create_diffusion("linear", T), [0, 4, 9])
    seen = []
    net = spaced.wrap_model(lambda x, t, **kw: seen.append((t, kw)) or x)
    y = torch.tensor([1, 0])
    net(torch.zeros(2, 1), torch.tensor([2, 0]), y=y)
    assert seen[-1][0].tolist() == [9, 0] and seen[-1][1] == {"y": y}
    net(torch.zeros(2, 1, device="meta"), torch.tensor([2, 0], device="meta"))  # an accelerator's stand-in
    assert seen[-1][0].device.type == "meta"

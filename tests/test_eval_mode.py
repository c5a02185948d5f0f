"""The functions that measure a trained network refuse one left in training mode (dropout on)."""

import pytest
import torch
from torch import nn

from diffusion.eval_mode import check_eval_mode
from diffusion.gaussian_diffusion import create_diffusion
from diffusion.likelihood import bpd_for_variances
from diffusion.metrics.eps_error import eps_error_by_timestep
from diffusion.metrics.nll import bits_per_dim


class DropoutEps(nn.Module):
    """An ε-model whose output is random in training mode (dropout), as the U-Net's is."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Dropout(0.5))

    def forward(self, x, t, y=None):
        return self.inner(x)


def half_in_training_mode() -> DropoutEps:
    """The top module in eval mode, a submodule in training mode: what a wrapper's train() left behind."""
    model = DropoutEps().eval()
    model.inner.train()
    return model


def test_check_eval_mode_names_the_first_module_in_training_mode():
    check_eval_mode(DropoutEps().eval(), "x")
    check_eval_mode(lambda x, t: x, "x")  # a function has no mode
    with pytest.raises(ValueError, match=r"the ε-error needs the network in eval mode, but 3 of its modules .*'inner'"):
        check_eval_mode(half_in_training_mode(), "the ε-error")
    with pytest.raises(ValueError, match=r"4 of its modules .*first: 'DropoutEps'.*model.eval\(\)"):
        check_eval_mode(DropoutEps().train(), "x")


@pytest.mark.parametrize("measure", ["eps_error", "bpd_for_variances", "bits_per_dim"])
def test_measurements_refuse_a_network_in_training_mode_and_are_deterministic_in_eval_mode(measure):
    d = create_diffusion(num_timesteps=4)
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1

    def run(model):
        g = torch.Generator().manual_seed(0)
        if measure == "eps_error":
            return torch.as_tensor(eps_error_by_timestep(d, model, x0, [1, 3], generator=g)["mse"])
        if measure == "bpd_for_variances":
            return bpd_for_variances({"a": d}, model, x0, generator=g)["a"]["total_bpd"]
        return torch.tensor(bits_per_dim(d, model, x0, generator=g, progress=False)["bpd"])

    with pytest.raises(ValueError, match="eval mode"):
        run(half_in_training_mode())
    model = DropoutEps().eval()
    assert torch.equal(run(model), run(model))

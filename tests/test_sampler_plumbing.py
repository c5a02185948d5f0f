"""What the samplers do around the arithmetic (the recurrences themselves are pinned in
test_sampler_recurrences): progress bars, the device x_T is drawn on, the trajectory when none of the
requested steps is visited, the checks of ``sample``'s arguments and their messages, its defaults."""
import warnings

import numpy as np
import pytest
import torch

from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.samplers import dpmpp2m_sample_loop, sample

SHAPE = (2, 1, 2, 2)


def diffusion():
    return GaussianDiffusion(np.linspace(1e-3, 0.2, 20))


def model(x, t, **_):
    return torch.tanh(x)


def test_progress_bar_is_named_shown_only_when_asked_and_cleared(capsys):
    dpmpp2m_sample_loop(diffusion(), model, SHAPE, 4)
    assert capsys.readouterr().err == ""  # off by default
    dpmpp2m_sample_loop(diffusion(), model, SHAPE, 4, progress=False)
    assert capsys.readouterr().err == ""
    dpmpp2m_sample_loop(diffusion(), model, SHAPE, 4, progress=True)  # also when stderr is not a terminal
    err = capsys.readouterr().err
    assert "\rdpm-solver++(2M):" in err and "0/4" in err
    assert err.endswith("\r") and not err.endswith("\n")  # leave=False: the finished bar is wiped


@pytest.mark.parametrize("via_sample", [False, True])
def test_x_T_is_drawn_on_the_requested_device(via_sample):
    # the meta device stands in for an accelerator: a draw on the default device would come back on the CPU
    if via_sample:
        x = sample(diffusion(), model, SHAPE, sampler="dpmpp2m", steps=4, device="meta")
    else:
        x = dpmpp2m_sample_loop(diffusion(), model, SHAPE, 4, device=torch.device("meta"))
    assert x.device.type == "meta" and x.shape == SHAPE


def test_trajectory_without_a_visited_step_is_empty():
    x, traj = dpmpp2m_sample_loop(diffusion(), model, SHAPE, 4, trajectory_steps=[],
                                  generator=torch.Generator().manual_seed(0))
    assert traj == {"t": [], "x_t": None, "pred_x0": None}
    assert x.shape == SHAPE


class MetaNet(torch.nn.Module):
    """A network whose parameters live on the meta device (an accelerator's stand-in)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1, device="meta"))

    def forward(self, x, t, **_):
        assert t.device == x.device and t.dtype == torch.long
        return torch.tanh(x) * self.w


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp2m"])
def test_without_a_device_samples_follow_the_noise_then_the_network(sampler):
    x = sample(diffusion(), MetaNet(), SHAPE, sampler=sampler, steps=4)  # the network's parameters
    assert x.device.type == "meta"
    x = sample(diffusion(), model, SHAPE, sampler=sampler, steps=4, noise=torch.zeros(SHAPE, device="meta"))
    assert x.device.type == "meta"  # the given x_T
    x = sample(diffusion(), model, SHAPE, sampler=sampler, steps=4, generator=torch.Generator().manual_seed(0))
    assert x.device.type == "cpu"  # neither: the CPU


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp2m"])
def test_sample_defaults_no_progress_bar_no_cuda_graph(sampler, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a CUDA graph asked for on the CPU would warn and fall back
        sample(diffusion(), model, SHAPE, sampler=sampler, steps=4, generator=torch.Generator().manual_seed(0))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp2m"])
def test_one_step_and_all_steps_are_allowed(sampler):
    for steps in (1, 20):
        x = sample(diffusion(), model, SHAPE, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
        assert x.shape == SHAPE and torch.isfinite(x).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), r"^steps must lie in \[1, 20\], got 0$"),
    (dict(steps=21), r"^steps must lie in \[1, 20\], got 21$"),
    (dict(sampler="ddim", eta=-0.5), r"^eta must be >= 0, got -0.5$"),
    (dict(y=[0, 1, 2], null_class=3), r"^y must hold one class index per sample, shape \(2,\), got \(3,\)$"),
    (dict(y=[0, 4], null_class=3),
     r"^class indices y must lie in \[0, 3\] \(the last is the null token\), got values in \[0, 4\]$"),
    (dict(y=[-1, 1]), r"^class indices y must lie in \[0, None\] \(the last is the null token\), got values in "
                      r"\[-1, 1\]$"),
    (dict(guidance_scale=2.0, y=[0, 1]), r"^guidance_scale needs class labels y and the null_class index$"),
    (dict(sampler="euler"), r"^sampler must be one of \('ancestral', 'ddim', 'dpmpp2m'\), got 'euler'$"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(diffusion(), model, SHAPE, **kwargs)


def test_class_labels_reach_the_network_as_long_indices():
    seen = []

    def net(x, t, y=None):
        seen.append(y)
        return torch.tanh(x)

    sample(diffusion(), net, SHAPE, sampler="ddim", steps=2, y=[1.0, 0.0])  # a list of floats
    assert all(y.dtype == torch.long and y.tolist() == [1, 0] for y in seen) and len(seen) == 2


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp2m"])
def test_unconditional_networks_get_no_class_argument(sampler):
    strict = lambda x, t: torch.tanh(x)  # noqa: E731  (no y, no **kwargs)
    sample(diffusion(), strict, SHAPE, sampler=sampler, steps=3)


def test_the_null_token_itself_is_a_valid_label():
    seen = []
    sample(diffusion(), lambda x, t, y: seen.append(y.tolist()) or torch.tanh(x), SHAPE, sampler="ddim", steps=2,
           y=[3, 0], null_class=3)
    assert seen == [[3, 0], [3, 0]]


class Recorder(torch.nn.Module):
    """Records whether it ran in training mode and under which autocast dtype (None: none)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        torch.nn.init.constant_(self.lin.weight, 0.7)
        torch.nn.init.constant_(self.lin.bias, 0.1)
        self.modes, self.dtypes = [], []

    def forward(self, x, t, **_):
        self.modes.append(self.training)
        self.dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return torch.tanh(self.lin(x.unsqueeze(-1)).squeeze(-1))


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp2m"])
def test_networks_sample_in_eval_mode_and_get_their_mode_back(sampler):
    net = Recorder().train()
    sample(diffusion(), net, SHAPE, sampler=sampler, steps=3)
    assert net.modes == [False] * 3 and net.training


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp2m"])
def test_bf16_flag_on_the_cpu(sampler):
    def run(bf16):
        net = Recorder()
        x = sample(diffusion(), net, SHAPE, sampler=sampler, steps=3, bf16=bf16,
                   generator=torch.Generator().manual_seed(0))
        return x, net

    plain, off, on = run(None), run(False), run(True)
    torch.testing.assert_close(plain[0], off[0], rtol=0, atol=0)  # off by default on the CPU
    assert off[1].dtypes == [None] * 3 and on[1].dtypes == [torch.bfloat16] * 3
    assert on[0].dtype == torch.float32 and 0 < (on[0] - off[0]).abs().max() < 0.05


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_trajectory_over_all_steps_has_ten_points(sampler):
    _, traj = sample(diffusion(), model, SHAPE, sampler=sampler, return_trajectory=True,
                     generator=torch.Generator().manual_seed(0))
    assert traj["t"] == [19, 17, 15, 13, 11, 8, 6, 4, 2, 0]  # round(linspace(0, 19, 10)), in the order visited


def test_all_steps_run_the_diffusion_itself_not_a_recomputed_copy():
    # a respaced copy keeping every index recomputes β from ᾱ, which differs in the last bits (float64)
    d = diffusion()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = sample(d, model, SHAPE, sampler="ancestral", noise=noise, clip_denoised=False,
                 generator=torch.Generator().manual_seed(1))
    want = d.p_sample_loop(model, SHAPE, noise=noise, clip_denoised=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_respaced_trajectories_report_original_timesteps(sampler):
    _, traj = sample(diffusion(), model, SHAPE, sampler=sampler, steps=5, return_trajectory=True,
                     generator=torch.Generator().manual_seed(0))
    assert traj["t"] == [19, 14, 10, 5, 0]  # space_timesteps(20, 5), every one of the five visited
    assert traj["x_t"].shape == (5, *SHAPE) and traj["pred_x0"].shape == (5, *SHAPE)
    _, traj = sample(diffusion(), model, SHAPE, sampler=sampler, steps=15, return_trajectory=True,
                     generator=torch.Generator().manual_seed(0))
    kept = [round(i) for i in np.linspace(0, 19, 15)]
    assert traj["t"] == [kept[i] for i in (14, 12, 11, 9, 8, 6, 5, 3, 2, 0)]  # ten of the fifteen


@pytest.mark.parametrize("steps", [4, 15])
def test_dpmpp2m_trajectory_takes_at_most_ten_of_its_steps(steps):
    from diffusion.samplers import dpmpp2m_timesteps

    d = diffusion()
    ts = dpmpp2m_timesteps(d.alpha_bar, steps)
    _, traj = sample(d, model, SHAPE, sampler="dpmpp2m", steps=steps, return_trajectory=True,
                     generator=torch.Generator().manual_seed(0))
    picks = np.unique(np.linspace(0, len(ts) - 1, min(10, len(ts))).round()).astype(int)
    assert traj["t"] == [ts[i] for i in picks] and len(traj["t"]) == min(10, len(ts))


def test_dpmpp2m_on_a_respaced_diffusion_runs_on_its_base_schedule():
    from diffusion.respace import SpacedDiffusion
    from diffusion.samplers import dpmpp2m_timesteps

    d = diffusion()
    spaced = SpacedDiffusion(d, [0, 5, 10, 15, 19])
    seen = []
    sample(spaced, lambda x, t: seen.append(int(t[0])) or torch.tanh(x), SHAPE, sampler="dpmpp2m", steps=3)
    assert seen == dpmpp2m_timesteps(d.alpha_bar, 3) and max(seen) == 19


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp2m"])
def test_sample_passes_its_progress_flag_on(sampler, capsys):
    sample(diffusion(), model, SHAPE, sampler=sampler, steps=4, progress=True)
    assert "0/4" in capsys.readouterr().err


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp2m"])
def test_cuda_graph_on_the_cpu_warns_and_samples_the_same(sampler):
    kw = dict(sampler=sampler, steps=3, y=[1, 0], null_class=2, guidance_scale=2.0)
    net = lambda x, t, y: torch.tanh(x) + 0.1 * y.view(-1, 1, 1, 1)  # noqa: E731
    plain = sample(diffusion(), net, SHAPE, generator=torch.Generator().manual_seed(0), **kw)
    with pytest.warns(RuntimeWarning, match="CUDA graphs need a CUDA device"):
        graphed = sample(diffusion(), net, SHAPE, generator=torch.Generator().manual_seed(0), cuda_graph=True, **kw)
    torch.testing.assert_close(graphed, plain, rtol=0, atol=0)

"""The interface of GaussianDiffusion around its equations (the equations are pinned in
test_gaussian_diffusion and test_bound_closed_form): timestep checks and their messages, argument names,
the dtype coefficients are gathered in, the parameterisations' conversions written out in NumPy, and the
sampling loops' progress bars, device and trajectories."""
import numpy as np
import pytest
import torch

from diffusion.gaussian_diffusion import create_diffusion, mean_flat

T = 10


def diffusion(**kw):
    return create_diffusion("linear", T, 1e-3, 0.2, **kw)


def model(x, t, **_):
    return torch.tanh(x) * 0.5


@pytest.mark.parametrize("t, message", [
    ([0, T], rf"^t must lie in \[0, {T}\), got values in \[0, {T}\]$"),
    ([-1, 3], rf"^t must lie in \[0, {T}\), got values in \[-1, 3\]$"),
    ([-2, T + 4], rf"^t must lie in \[0, {T}\), got values in \[-2, {T + 4}\]$"),
])
def test_timesteps_outside_the_schedule_are_named_with_their_range(t, message):
    with pytest.raises(ValueError, match=message):
        diffusion().check_timesteps(torch.tensor(t))


def test_timestep_type_checks_and_boundaries():
    d = diffusion()
    t = torch.tensor([0, T - 1])
    assert d.check_timesteps(t) is t
    empty = torch.zeros(0, dtype=torch.long)
    assert d.check_timesteps(empty) is empty
    with pytest.raises(ValueError, match=r"^t must hold integer timestep indices, got dtype torch.float32$"):
        d.check_timesteps(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"^t must hold integer timestep indices, got dtype torch.complex64$"):
        d.check_timesteps(torch.tensor([1j]))
    with pytest.raises(ValueError, match=r"^t must be a tensor of timestep indices, got list$"):
        d.check_timesteps([0, 1])
    x = torch.zeros(2, 1, 2, 2)
    for call in (lambda tt: d.q_mean_variance(x, tt), lambda tt: d.q_sample(x, tt), lambda tt: d.q_step_sample(x, tt),
                 lambda tt: d.q_posterior_mean_variance(x, x, tt), lambda tt: d.p_mean_variance(model, x, tt),
                 lambda tt: d.p_sample(model, x, tt), lambda tt: d.ddim_sample(model, x, tt),
                 lambda tt: d.vb_terms_bpd(model, x, x, tt), lambda tt: d.training_losses(model, x, tt)):
        call(torch.tensor([0, T - 1]))
        with pytest.raises(ValueError, match="t must lie in"):
            call(torch.tensor([0, T]))


@pytest.mark.parametrize("argument, value, choices", [
    ("mean_type", "score", ["eps", "x0", "v"]),
    ("var_type", "learned", ["fixed_small", "fixed_large"]),
    ("loss_type", "l1", ["simple", "weighted", "kl"]),
    ("decoder_variance", "beta", ["ddpm_code", "paper"]),
])
def test_unknown_names_list_the_choices(argument, value, choices):
    with pytest.raises(ValueError, match=rf"^{argument} must be one of \[.*\], got '{value}'$") as info:
        diffusion(**{argument: value})
    for c in choices:
        assert repr(c) in str(info.value)


def test_weighted_loss_refuses_other_parameterisations_by_name():
    d = diffusion(mean_type="x0", loss_type="weighted")
    with pytest.raises(ValueError, match=r"^loss_type 'weighted' \(eq. 13\) is defined for mean_type 'eps' only$"):
        d.training_losses(model, torch.zeros(2, 1, 2, 2), torch.tensor([1, 2]))


@pytest.mark.parametrize("dtype, expected", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                             (torch.bfloat16, torch.float32)])
def test_coefficients_are_gathered_in_float64_and_given_in_the_working_dtype(dtype, expected):
    d = diffusion()
    x = torch.zeros(3, 2, 1, 1, dtype=dtype)
    c = d._coef("alpha_bar", torch.tensor([0, 4, 9]), x)
    assert c.dtype == expected and c.shape == (3, 1, 1, 1)
    np.testing.assert_allclose(c.double().flatten().numpy(), d.alpha_bar[[0, 4, 9]], rtol=1e-7 if expected ==
                               torch.float32 else 0)


def test_parameterisations_convert_as_written(gen):
    d = diffusion()
    t = torch.tensor([0, 3, 9])
    ab = d.alpha_bar[[0, 3, 9]].reshape(-1, 1, 1, 1)
    x0 = torch.randn(3, 1, 2, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 1, 2, 2, generator=gen, dtype=torch.float64)
    x_t = np.sqrt(ab) * x0.numpy() + np.sqrt(1 - ab) * eps.numpy()
    v = np.sqrt(ab) * eps.numpy() - np.sqrt(1 - ab) * x0.numpy()
    xt = torch.from_numpy(x_t)
    np.testing.assert_allclose(d.velocity(x0, t, eps).numpy(), v, atol=1e-12)
    np.testing.assert_allclose(d.predict_x0_from_v(xt, t, torch.from_numpy(v)).numpy(), x0.numpy(), atol=1e-12)
    np.testing.assert_allclose(d.predict_eps_from_x0(xt, t, x0).numpy(), eps.numpy(), atol=1e-10)
    np.testing.assert_allclose(d.predict_x0_from_eps(xt, t, eps).numpy(), x0.numpy(), atol=1e-10)
    assert d.wrap_model(model) is model
    np.testing.assert_allclose(mean_flat(x0).numpy(), x0.numpy().reshape(3, -1).mean(1), atol=1e-15)


@pytest.mark.parametrize("loop, name", [("p_sample_loop", "ancestral"), ("ddim_sample_loop", "ddim(eta=0)")])
def test_loop_progress_bar_is_named_shown_only_when_asked_and_cleared(loop, name, capsys):
    run = getattr(diffusion(), loop)
    run(model, (2, 1, 2, 2))
    run(model, (2, 1, 2, 2), progress=False)
    assert capsys.readouterr().err == ""
    run(model, (2, 1, 2, 2), progress=True)
    err = capsys.readouterr().err
    assert f"\r{name}:" in err and f"0/{T}" in err and err.endswith("\r")
    d = diffusion()
    d.ddim_sample_loop(model, (2, 1, 2, 2), eta=0.5, progress=True)
    assert "\rddim(eta=0.5):" in capsys.readouterr().err


@pytest.mark.parametrize("loop", ["p_sample_loop", "ddim_sample_loop"])
def test_loops_draw_x_T_on_the_requested_device_and_keep_a_given_one(loop):
    run = getattr(diffusion(), loop)

    def model(x, t, **_):
        assert t.device == x.device and t.dtype == torch.long
        return torch.tanh(x) * 0.5

    assert run(model, (2, 1, 2, 2), device="meta").device.type == "meta"  # an accelerator's stand-in
    assert run(model, (2, 1, 2, 2), device=torch.device("meta")).device.type == "meta"
    assert run(model, (2, 1, 2, 2), noise=torch.zeros(2, 1, 2, 2, device="meta")).device.type == "meta"
    assert run(model, (2, 1, 2, 2)).device.type == "cpu"


@pytest.mark.parametrize("loop", ["p_sample_loop", "ddim_sample_loop"])
def test_loop_trajectories(loop, gen):
    d = diffusion()
    noise = torch.randn(2, 1, 2, 2, generator=gen)
    x, traj = getattr(d, loop)(model, (2, 1, 2, 2), noise=noise, trajectory_steps=[9, 0, 4.0],
                               generator=torch.Generator().manual_seed(1))
    assert traj["t"] == [9, 4, 0] and traj["x_t"].shape == (3, 2, 1, 2, 2)
    torch.testing.assert_close(traj["x_t"][0], noise)  # x_T itself, before the first step
    x2 = getattr(d, loop)(model, (2, 1, 2, 2), noise=noise, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x, x2)  # recording changes nothing
    _, none = getattr(d, loop)(model, (2, 1, 2, 2), trajectory_steps=[])
    assert none == {"t": [], "x_t": None, "pred_x0": None}

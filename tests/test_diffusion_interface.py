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


def big_x0_model(x, t, y=None):
    """Predicts ε so that x̂_0 lies far outside [−1, 1]; adds the class label when one is given."""
    return -3.0 * torch.ones_like(x) + (0.0 if y is None else 0.01 * y.view(-1, 1, 1, 1).to(x.dtype))


def test_single_steps_clip_by_default_pass_keywords_and_the_generator(gen):
    d = diffusion()
    x, t, y = torch.randn(2, 1, 2, 2, generator=gen), torch.tensor([5, 9]), torch.tensor([1, 0])
    out = d.p_mean_variance(big_x0_model, x, t)
    assert out["pred_x0"].abs().max() == 1.0  # clipped by default
    assert d.p_mean_variance(big_x0_model, x, t, clip_denoised=False)["pred_x0"].abs().max() > 1.5
    with_y = d.p_mean_variance(big_x0_model, x, t, model_kwargs={"y": y}, clip_denoised=False)
    assert not torch.equal(with_y["pred_eps"], d.p_mean_variance(big_x0_model, x, t, clip_denoised=False)["pred_eps"])
    for step in (d.p_sample, d.ddim_sample):
        clipped = step(big_x0_model, x, t)["pred_x0"]
        assert clipped.abs().max() == 1.0
        assert step(big_x0_model, x, t, clip_denoised=False)["pred_x0"].abs().max() > 1.5
        seen = []
        step(lambda x_, t_, **kw: seen.append(kw) or torch.zeros_like(x_), x, t, model_kwargs={"y": y})
        assert seen == [{"y": y}]
    a = d.p_sample(big_x0_model, x, t, generator=torch.Generator().manual_seed(3))["sample"]
    b = d.p_sample(big_x0_model, x, t, generator=torch.Generator().manual_seed(3))["sample"]
    c = d.p_sample(big_x0_model, x, t, generator=torch.Generator().manual_seed(4))["sample"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    a = d.ddim_sample(big_x0_model, x, t, eta=1.0, generator=torch.Generator().manual_seed(3))["sample"]
    b = d.ddim_sample(big_x0_model, x, t, eta=1.0, generator=torch.Generator().manual_seed(3))["sample"]
    assert torch.equal(a, b)
    torch.manual_seed(0)
    first = d.ddim_sample(big_x0_model, x, t)["sample"]  # η = 0 by default: no noise drawn
    assert torch.equal(first, d.ddim_sample(big_x0_model, x, t, eta=0.0)["sample"])
    assert torch.equal(first, d.ddim_sample(big_x0_model, x, t)["sample"])


@pytest.mark.parametrize("loop", ["p_sample_loop", "ddim_sample_loop"])
def test_loops_pass_keywords_and_their_generator(loop):
    d = diffusion()
    seen = []
    getattr(d, loop)(lambda x, t, **kw: seen.append(kw) or torch.zeros_like(x), (2, 1, 2, 2),
                     model_kwargs={"y": torch.tensor([1, 0])})
    assert len(seen) == T and all(torch.equal(kw["y"], torch.tensor([1, 0])) for kw in seen)
    extra = {"eta": 1.0} if loop == "ddim_sample_loop" else {}

    def run(seed):
        return getattr(d, loop)(model, (2, 1, 2, 2), generator=torch.Generator().manual_seed(seed), **extra)

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))


@pytest.mark.parametrize("mean_type, loss_type", [("eps", "simple"), ("x0", "simple"), ("v", "simple"),
                                                  ("eps", "weighted"), ("eps", "kl")])
def test_training_losses_return_loss_and_the_target_mse_and_pass_keywords(mean_type, loss_type, gen):
    d = diffusion(mean_type=mean_type, loss_type=loss_type)
    x0 = torch.rand(2, 1, 2, 2, generator=gen) * 2 - 1
    noise = torch.randn(2, 1, 2, 2, generator=gen)
    t = torch.tensor([0, 7])
    seen = []

    def net(x, t_, **kw):
        seen.append(kw)
        return torch.zeros_like(x)

    out = d.training_losses(net, x0, t, model_kwargs={"y": torch.tensor([1, 0])}, noise=noise)
    assert set(out) == {"loss", "mse"} and len(seen) == 1 and set(seen[0]) == {"y"}
    target = {"eps": noise, "x0": x0, "v": d.velocity(x0, t, noise)}[mean_type]
    torch.testing.assert_close(out["mse"], (target ** 2).mean(dim=(1, 2, 3)))


def test_one_forward_step_is_eq_2_with_the_given_noise(gen):
    d = diffusion()
    x, noise, t = torch.randn(3, 1, 2, 2, generator=gen), torch.randn(3, 1, 2, 2, generator=gen), torch.tensor([0, 4, 9])
    a, b = d.alphas[[0, 4, 9]].reshape(-1, 1, 1, 1), d.betas[[0, 4, 9]].reshape(-1, 1, 1, 1)
    want = np.sqrt(a) * x.double().numpy() + np.sqrt(b) * noise.double().numpy()
    np.testing.assert_allclose(d.q_step_sample(x, t, noise).double().numpy(), want, rtol=1e-6, atol=1e-6)


class Recording:
    """An ε-model recording what it is called with (x_t, t and its keyword arguments)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x, t, **kw):
        self.calls.append((x.clone(), t.clone(), kw))
        return self.fn(x, t, **kw)


@pytest.mark.parametrize("t_batch", [1, 4])
def test_bound_loop_mse_terms_keywords_and_default_clipping(t_batch, gen):
    d = diffusion()
    x0 = torch.rand(2, 1, 2, 2, generator=gen) * 2 - 1
    emb, y = torch.arange(6.0).reshape(2, 3), torch.tensor([1, 0])
    net = Recording(lambda x, t, **kw: big_x0_model(x, t, kw["y"]) + 0.001 * kw["emb"].sum(1).view(-1, 1, 1, 1))
    out = d.calc_bpd_loop(net, x0, model_kwargs={"y": y, "emb": emb, "scale": 0.5}, t_batch=t_batch,
                          generator=torch.Generator().manual_seed(0))
    assert set(out) == {"total_bpd", "prior_bpd", "vb", "mse"} and out["mse"].shape == (2, T)
    for x_t, t, kw in net.calls:
        k = len(t) // 2
        assert torch.equal(kw["y"], y.repeat(k)) and torch.equal(kw["emb"], emb.repeat(k, 1)) and kw["scale"] == 0.5
        for j in range(k):
            i, xt = int(t[2 * j]), x_t[2 * j:2 * j + 2]
            ab = float(d.alpha_bar[i])
            noise = (xt - ab ** 0.5 * x0) / (1 - ab) ** 0.5  # the ε this term drew, from x_t of eq. (3)
            tt = torch.tensor([i, i])
            pm = d.p_mean_variance(net.fn, xt, tt, model_kwargs={"y": y, "emb": emb})  # clipped by default
            torch.testing.assert_close(out["mse"][:, i], ((pm["pred_eps"] - noise) ** 2).mean(dim=(1, 2, 3)),
                                       rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out["vb"][:, i], d.vb_terms_bpd(net.fn, x0, xt, tt, {"y": y, "emb": emb}),
                                       rtol=1e-5, atol=1e-6)
    x_t, t, _ = net.calls[0]  # the noisiest term, where x̂_0 lies outside [−1, 1]
    unclipped = d.vb_terms_bpd(net.fn, x0, x_t[:2], t[:2], {"y": y, "emb": emb}, clip_denoised=False)
    assert not torch.allclose(unclipped, d.vb_terms_bpd(net.fn, x0, x_t[:2], t[:2], {"y": y, "emb": emb}))


def test_bound_loop_progress_bar(capsys):
    d = diffusion()
    d.calc_bpd_loop(model, torch.zeros(2, 1, 2, 2))
    assert capsys.readouterr().err == ""
    d.calc_bpd_loop(model, torch.zeros(2, 1, 2, 2), progress=True, t_batch=5)
    err = capsys.readouterr().err
    assert "\rbound terms:" in err and "0/2" in err and err.endswith("\r")


def test_stochastic_ddim_trajectory_and_device():
    d = diffusion()
    x, traj = d.ddim_sample_loop(model, (2, 1, 2, 2), eta=0.5, trajectory_steps=[9, 0],
                                 generator=torch.Generator().manual_seed(0))
    assert traj["t"] == [9, 0] and traj["pred_x0"].shape == (2, 2, 1, 2, 2)
    assert d.ddim_sample_loop(model, (2, 1, 2, 2), eta=0.5, device="meta").device.type == "meta"


@pytest.mark.parametrize("betas", [[], [[0.1, 0.2]], [0.1, 0.0], [0.1, 1.0], [-0.1], [0.5, 1.5]])
def test_betas_outside_zero_one_are_refused(betas):
    from diffusion.gaussian_diffusion import GaussianDiffusion

    with pytest.raises(ValueError, match=r"^betas must be a 1-D array with every entry in \(0, 1\)$"):
        GaussianDiffusion(betas)


def test_schedule_is_kept_in_float64_and_one_step_is_a_chain():
    from diffusion.gaussian_diffusion import GaussianDiffusion

    d = GaussianDiffusion(np.array([0.3], dtype=np.float32))
    assert d.num_timesteps == 1 and d.betas.dtype == np.float64 and d.alpha_bar.dtype == np.float64
    with pytest.raises(ValueError, match=r"^model_mean_type must be one of \['eps', 'x0', 'v'\], got 'score'$"):
        GaussianDiffusion([0.1], model_mean_type="score")


def test_create_diffusion_defaults_are_section_3_3_2():
    d = create_diffusion()
    assert d.num_timesteps == 1000 and d.betas[0] == pytest.approx(1e-4, rel=1e-12)
    assert d.betas[-1] == pytest.approx(0.02, rel=1e-12)
    assert create_diffusion(beta_end=0.05).betas[-1] == pytest.approx(0.05, rel=1e-12)


def test_coefficient_tables_are_built_once_per_device():
    d = diffusion()
    x = torch.zeros(2, 1, 1, 1)
    d._coef("alpha_bar", torch.tensor([0, 1]), x)
    table = d._device_cache[("alpha_bar", x.device)]
    d._coef("alpha_bar", torch.tensor([3, 4]), x)
    assert d._device_cache[("alpha_bar", x.device)] is table and table.dtype == torch.float64


def test_outputs_keep_the_dtype_of_x_t_whatever_the_network_returns():
    d = diffusion()
    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([3, 9])
    out = d.p_mean_variance(lambda x_, t_: torch.ones(2, 1, 2, 2, dtype=torch.float64), x, t)
    assert all(out[k].dtype == torch.float32 for k in ("mean", "pred_x0", "pred_eps"))


@pytest.mark.parametrize("argument, value", [("model_var_type", "learned"), ("loss_type", "l1"),
                                             ("decoder_variance", "beta")])
def test_the_class_names_its_own_arguments(argument, value):
    from diffusion.gaussian_diffusion import GaussianDiffusion

    with pytest.raises(ValueError, match=rf"^{argument} must be one of \[.*\], got '{value}'$"):
        GaussianDiffusion([0.1, 0.2], **{argument: value})


def test_one_and_two_step_chains():
    from diffusion.gaussian_diffusion import GaussianDiffusion

    one = GaussianDiffusion([0.3])  # β̃_1 = 0: the clipped log variance and σ_1² fall back to β_1
    np.testing.assert_allclose(one.posterior_log_variance_clipped, [np.log(0.3)], rtol=1e-15)
    np.testing.assert_allclose(one.model_variance, [0.3], rtol=1e-15)
    two = GaussianDiffusion([0.1, 0.2])  # β̃_2 = β_2 (1 − ᾱ_1)/(1 − ᾱ_2)
    pv2 = 0.2 * 0.1 / (1 - 0.9 * 0.8)
    np.testing.assert_allclose(two.posterior_log_variance_clipped, np.log([pv2, pv2]), rtol=1e-12)
    np.testing.assert_allclose(two.model_variance, [pv2, 0.2], rtol=1e-12)  # σ_1² = β̃_2 (DDPM's code)
    np.testing.assert_allclose(GaussianDiffusion([0.1, 0.2], decoder_variance="paper").model_variance, [0.1, 0.2])

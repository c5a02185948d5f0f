"""The fast path (bf16 autocast, channels_last, torch.compile, CUDA-graph wrapper) computes what the plain
fp32 path computes, within bf16 tolerance: the ε-prediction, the L_simple loss of eq. (14), its
gradient, one full training step, and the sampler with ``cuda_graph=True``."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffusion.cuda_graph import GraphedModel
from diffusion.ema import EMA
from diffusion.fast import Bf16Model, configure_backends, prepare_for_sampling
from diffusion.gaussian_diffusion import create_diffusion
from diffusion.samplers import sample
from diffusion.train_step import make_train_step
from diffusion.unet import UNet

ROOT = Path(__file__).resolve().parents[1]
REL_TOL = 2e-2  # bf16 has an 8-bit mantissa: ~4e-3 per rounding, a few layers deep
CFG = dict(in_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
           image_size=16)


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def make_model(seed=0, **kw):
    """A tiny U-Net whose zero-initialised output layers get random weights (else ε_θ ≡ 0 and every
    comparison would pass trivially)."""
    torch.manual_seed(seed)
    model = UNet(**{**CFG, **kw})
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return model


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def inputs(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 16, 16, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return x, t


def test_bf16_channels_last_forward_matches_fp32():
    model = make_model().eval()
    x, t = inputs()
    with torch.no_grad():
        ref = model(x, t)
        fast_model = make_model().eval().to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fast_model(x.contiguous(memory_format=torch.channels_last), t)
    assert ref.norm() > 0.1 * x.norm()  # not trivially zero
    assert out.shape == ref.shape
    err = rel_err(out.float(), ref)
    assert 0 < err < REL_TOL  # bf16 really was used (err > 0), and is faithful
    # The comparison would catch a wrong timestep: the output at another t differs by far more.
    with torch.no_grad():
        other = model(x, (t + 500) % 1000)
    assert rel_err(other, ref) > 3 * REL_TOL


def test_bf16_loss_and_gradient_match_fp32():
    diffusion = create_diffusion()
    x0 = inputs(seed=1)[0].clamp(-1, 1)
    t = torch.tensor([0, 10, 500, 999])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    results = []
    for fast in (False, True):
        model = make_model()
        xi = x0
        if fast:
            model = model.to(memory_format=torch.channels_last)
            xi = x0.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            loss = diffusion.training_losses(model, xi, t, noise=noise)["loss"].mean()
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((loss.detach(), grad))
    (loss32, g32), (loss16, g16) = results
    assert rel_err(loss16, loss32) < REL_TOL
    assert rel_err(g16, g32) < 3 * REL_TOL  # gradients pass through twice as many bf16 roundings
    cos = torch.nn.functional.cosine_similarity(g16.double(), g32.double(), dim=0)
    assert cos > 0.999


def test_full_training_step_fast_path_matches_fp32():
    """make_train_step with bf16 + channels_last weights vs fp32 from the same weights and the same random
    draws: same losses, and the weights and EMA after two steps agree. (The batch stays NCHW here because
    ``randn_like`` of a channels_last batch lays the same random numbers out in another order: equally
    distributed noise, but not the same draw.)"""
    diffusion = create_diffusion()
    x0 = inputs(seed=3)[0].clamp(-1, 1)
    out = []
    for fast in (False, True):
        model = make_model()
        if fast:
            model = model.to(memory_format=torch.channels_last)
        ema = EMA(model, 0.9)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        step = make_train_step(model, diffusion, opt, ema, grad_clip=1.0, bf16=fast)
        torch.manual_seed(7)
        losses = [step(x0) for _ in range(2)]
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        shadow = torch.cat([p.detach().flatten() for p in ema.module.parameters()])
        out.append((torch.stack(losses), params, shadow))
    (l32, p32, e32), (l16, p16, e16) = out
    assert rel_err(l16, l32) < REL_TOL
    start = torch.cat([p.detach().flatten() for p in make_model().parameters()])
    # The update itself (not only the unchanged bulk of the weights) points the same way. Adam's first
    # steps move every weight by about ±lr whatever its gradient's size, so weights with near-zero gradients
    # may move either way under bf16 rounding: compare directions, not element-wise values.
    cos = torch.nn.functional.cosine_similarity
    assert cos(p16 - start, p32 - start, dim=0) > 0.9
    assert cos(e16 - start, e32 - start, dim=0) > 0.9
    assert (p32 - start).abs().max() > 0  # the step did update the weights


def test_graphed_model_falls_back_on_cpu_with_a_warning_and_same_output():
    model = make_model().eval()
    x, t = inputs()
    with pytest.warns(RuntimeWarning, match="CUDA graphs need a CUDA device"):
        graphed = GraphedModel(model, x, t, autocast_dtype=torch.bfloat16)
    assert not graphed.graphed and "CUDA" in graphed.fallback_reason
    with torch.no_grad():
        out = graphed(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = model(x, t)
    torch.testing.assert_close(out, ref)


def test_graphed_model_bad_input():
    model = make_model().eval()
    x, t = inputs()
    with pytest.raises(ValueError, match="example_t"):
        GraphedModel(model, x, t[:2])
    with pytest.raises(ValueError, match="warmup"):
        GraphedModel(model, x, t, warmup=0)
    with pytest.raises(ValueError, match="model must be callable"):
        GraphedModel(None, x, t)
    with pytest.raises(ValueError, match="example_y"):
        GraphedModel(model, x, t, example_y=torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("sampler,steps", [("ddim", 3), ("dpmpp2m", 3), ("ancestral", 4)])
def test_sampler_with_cuda_graph_flag_matches_plain(sampler, steps):
    """On the CPU the flag falls back to eager calls: bit-identical samples (on a GPU the benchmark checks
    the replayed graph against the eager sampler)."""
    model = make_model().eval()
    diffusion = create_diffusion(num_timesteps=20)
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    plain = sample(diffusion, model, noise.shape, sampler=sampler, steps=steps, noise=noise,
                   generator=torch.Generator().manual_seed(6))
    with pytest.warns(RuntimeWarning, match="calling the model eagerly"):
        graphed = sample(diffusion, model, noise.shape, sampler=sampler, steps=steps, noise=noise,
                         generator=torch.Generator().manual_seed(6), cuda_graph=True)
    torch.testing.assert_close(graphed, plain, rtol=0, atol=0)


def test_bf16_model_matches_fp32_and_returns_float32():
    """Bf16Model: float32 output within bf16 tolerance of the fp32 model, but not bit-equal (autocast is on);
    channels_last weights get channels_last inputs."""
    model = make_model().eval()
    x, t = inputs()
    seen = []
    model.input_conv.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    with torch.no_grad():
        ref = model(x, t)
        out = Bf16Model(model)(x, t)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert 0 < rel_err(out, ref) < REL_TOL
    model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        out_cl = Bf16Model(model)(x, t)
    assert seen == [True, True, False]  # fp32 call, bf16 call, channels_last call
    assert rel_err(out_cl, ref) < REL_TOL
    with pytest.raises(ValueError, match="callable"):
        Bf16Model(3)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_sampler_bf16_default_off_on_cpu_and_close_when_on(sampler):
    """sample(bf16=None) is the plain fp32 path on the CPU (bit-identical); bf16=True stays within bf16
    tolerance of it after a few deterministic steps."""
    model = make_model().eval()
    diffusion = create_diffusion(num_timesteps=20)
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    run = lambda **kw: sample(diffusion, model, noise.shape, sampler=sampler, steps=3, noise=noise,  # noqa: E731
                              clip_denoised=False, **kw)
    plain, default, fast = run(bf16=False), run(), run(bf16=True)
    torch.testing.assert_close(default, plain, rtol=0, atol=0)
    assert fast.dtype == torch.float32 and 0 < rel_err(fast, plain) < REL_TOL


def test_configure_backends_and_prepare_for_sampling_on_cpu():
    """Backend flags are set for CUDA devices only; on the CPU prepare_for_sampling leaves the weights and
    returns the same module in eval mode."""
    old = (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision())
    try:
        torch.backends.cudnn.benchmark = False
        torch.set_float32_matmul_precision("highest")
        assert configure_backends("cpu") is False
        assert (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()) == (False, "highest")
        assert configure_backends(torch.device("cuda")) is True
        assert (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()) == (True, "high")
    finally:
        torch.backends.cudnn.benchmark = old[0]
        torch.set_float32_matmul_precision(old[1])
    model = make_model().train()
    prepared = prepare_for_sampling(model)
    assert prepared is model and not model.training and model.input_conv.weight.is_contiguous()
    with pytest.raises(ValueError, match="Module"):
        prepare_for_sampling(lambda x, t: x)


COMPILE_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    torch.set_num_threads(1)
    from tests.test_fast_path import make_model, inputs, rel_err
    model = make_model().eval()
    x, t = inputs()
    with torch.no_grad():
        ref = model(x, t)
        fast = torch.compile(make_model().eval().to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fast(x.contiguous(memory_format=torch.channels_last), t)
    print("REL_ERR", rel_err(out.float(), ref))
""")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DDPM_TEST_COMPILE") != "1",
                    reason="torch.compile on a CPU takes minutes (Inductor's C++ backend); set DDPM_TEST_COMPILE=1")
def test_compiled_bf16_channels_last_forward_matches_fp32():
    """torch.compile (Inductor, C++ backend on the CPU) of the bf16 + channels_last model; run in a
    subprocess and skipped if compilation takes longer than 60 s on this machine. (The GPU benchmark checks
    the compiled CUDA model against fp32 on every run.)"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(ROOT)], capture_output=True, text=True,
                              timeout=60, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.skip("torch.compile took longer than 60 s on this CPU")
    if proc.returncode and ("CppCompileError" in proc.stderr or "InvalidCxxCompiler" in proc.stderr):
        pytest.skip("no working C++ compiler for torch.compile on this machine")
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = float(proc.stdout.split("REL_ERR")[-1])
    assert err < REL_TOL

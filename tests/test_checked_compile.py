"""The compiled sampling network is checked against the eager one, shape by shape."""

import warnings

import pytest
import torch

from diffusion.checked_compile import CheckedCompile, outputs_agree


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.num_classes = 10

    def forward(self, x, t=None):
        return self.lin(x)


def broken_for_batches_over(limit):
    """A stand-in compiler that is right for small batches and returns NaN for larger ones (as inductor did for
    the 64×64 U-Net at batch 64 with AVX2 kernels), counting its calls."""
    calls = {"n": 0}

    def compile_fn(module):
        def run(x, *args, **kwargs):
            calls["n"] += 1
            out = module(x, *args, **kwargs)
            return torch.full_like(out, float("nan")) if x.shape[0] > limit else out + 1e-7
        return run
    return compile_fn, calls


def test_a_shape_the_compiler_gets_wrong_is_computed_eagerly_with_one_warning():
    net = Net()
    compile_fn, calls = broken_for_batches_over(8)
    checked = CheckedCompile(net, compile_fn=compile_fn)
    small, large = torch.randn(8, 4), torch.randn(64, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.allclose(checked(small), net(small), atol=1e-6)  # agreed: the compiled route
    with pytest.warns(RuntimeWarning, match="computed by the eager network"):
        out = checked(large)
    assert torch.equal(out, net(large)) and checked.rejected_shapes
    before = calls["n"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per shape only
        assert torch.equal(checked(large), net(large))
        checked(small)
    assert calls["n"] == before + 1  # the rejected shape no longer calls the compiled network; the good one does
    assert checked.num_classes == 10  # the network's attributes


@pytest.mark.parametrize("compiled, eager, agree", [
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-5]), True),
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.1]), False),
    (torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]), False),
    (torch.tensor([1.0, float("nan")]), torch.tensor([1.0, float("nan")]), True),  # NaN where eager is NaN too
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0]), False),
    (torch.tensor([1000.0]), torch.tensor([1000.5]), True),  # relative to the eager output's magnitude
])
def test_outputs_agree(compiled, eager, agree):
    assert outputs_agree(compiled, eager) == agree


def test_the_real_compiler_agrees_with_eager_on_a_small_network(monkeypatch):
    monkeypatch.setattr("diffusion.checked_compile.compiled_kernels_crash", lambda: False)  # a Linear does not crash
    net = Net().eval()
    checked = CheckedCompile(net)
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.allclose(checked(x), net(x), atol=1e-5)
    assert checked.rejected_shapes == []


@pytest.mark.parametrize("threads, capability, eager_only", [(1, "AVX512", True), (2, "AVX512", False),
                                                              (1, "AVX2", False)])
def test_one_thread_with_avx512_kernels_samples_eagerly(monkeypatch, threads, capability, eager_only):
    """Where inductor's kernels crash the process (one thread, AVX-512) the real compiler is never called; the
    network runs eagerly with one warning. A stand-in compiler (no kernels) is used as given."""
    calls = []

    def fake_compile(module, **kwargs):
        def run(*args, **kw):
            calls.append(1)
            return module(*args, **kw)
        return run
    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    net, x = Net(), torch.randn(3, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checked = CheckedCompile(net)
        assert torch.equal(checked(x), net(x)) and torch.equal(checked(x), net(x))
    assert (len(calls) == 0) == eager_only
    assert len([w for w in caught if "crash" in str(w.message)]) == (1 if eager_only else 0)
    stand_in = CheckedCompile(net, compile_fn=fake_compile)
    stand_in(x)
    assert len(calls) == (1 if eager_only else 3)


def test_sampling_through_the_wrapper_leaves_an_eval_network_in_eval_mode():
    """A sampler switches its network to eval mode and back; through the wrapper that must give back the
    network's own mode, not nn.Module's default (training), or dropout stays on in every later eager use."""
    from diffusion.gaussian_diffusion import create_diffusion
    from diffusion.samplers import sample

    class DropoutEps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.drop = torch.nn.Linear(4, 4), torch.nn.Dropout(0.5)

        def forward(self, x, t, y=None):
            return self.drop(self.lin(x.flatten(1))).view_as(x)

    for mode in (False, True):
        net = DropoutEps().train(mode)
        checked = CheckedCompile(net, compile_fn=lambda m: m)
        assert checked.training is mode
        sample(create_diffusion(num_timesteps=4), checked, (2, 1, 2, 2), sampler="ancestral",
               generator=torch.Generator().manual_seed(0))
        assert all(m.training is mode for m in net.modules())

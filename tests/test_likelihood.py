"""The bound under several reverse variances from shared network calls (diffusion.likelihood) against
``GaussianDiffusion.calc_bpd_loop`` run once per variance with the same noise: two routes, equal terms."""

import pytest
import torch

from diffusion.gaussian_diffusion import create_diffusion
from diffusion.likelihood import bpd_for_variances

T = 25


def _model(calls):
    def model(x, t, y=None):
        calls.append(x.shape[0])
        return torch.tanh(0.7 * x) + 0.01 * t.view(-1, 1, 1, 1) + (0 if y is None else 0.05 * y.view(-1, 1, 1, 1))
    return model


def _diffusions():
    return {"large": create_diffusion("linear", T, 1e-4, 0.05),
            "large_paper": create_diffusion("linear", T, 1e-4, 0.05, decoder_variance="paper"),
            "small": create_diffusion("linear", T, 1e-4, 0.05, var_type="fixed_small")}


@pytest.mark.parametrize("t_batch", [1, 4])
def test_each_variance_equals_its_own_loop_with_one_network_call_per_term(t_batch):
    x0 = torch.randint(0, 256, (5, 1, 4, 4), generator=torch.Generator().manual_seed(0)).float() / 127.5 - 1
    y = torch.arange(5)
    calls = []
    shared = bpd_for_variances(_diffusions(), _model(calls), x0, model_kwargs={"y": y}, t_batch=t_batch,
                               generator=torch.Generator().manual_seed(7))
    assert sum(calls) == 5 * T  # one ε-evaluation per image and term, whatever the number of variances
    for name, d in _diffusions().items():
        alone = d.calc_bpd_loop(_model([]), x0, model_kwargs={"y": y}, t_batch=t_batch,
                                generator=torch.Generator().manual_seed(7))
        for key in ("total_bpd", "prior_bpd", "vb"):
            torch.testing.assert_close(shared[name][key], alone[key], rtol=0, atol=0)
    # the variances do differ: fixed-small and fixed-large give different bounds
    assert not torch.allclose(shared["small"]["total_bpd"], shared["large"]["total_bpd"])
    torch.testing.assert_close(shared["large"]["vb"][:, 1:], shared["large_paper"]["vb"][:, 1:], rtol=0, atol=0)


def test_image_batches_give_the_terms_of_each_image_with_its_labels():
    """Chunking the images changes only the order of the noise draws: with a model that ignores the noise
    at index 0 (exact x_0 cannot be predicted, so compare the deterministic part) the prior is identical,
    and every term is finite; and labels follow their images through the chunks."""
    x0 = torch.randint(0, 256, (7, 1, 4, 4), generator=torch.Generator().manual_seed(1)).float() / 127.5 - 1
    y = torch.arange(7)
    seen = []

    def model(x, t, y=None):
        seen.append(y.clone())
        return torch.zeros_like(x)

    d = {"large": create_diffusion("linear", T, 1e-4, 0.05)}
    whole = bpd_for_variances(d, model, x0, model_kwargs={"y": y}, generator=torch.Generator().manual_seed(2))
    seen.clear()
    chunked = bpd_for_variances(d, model, x0, model_kwargs={"y": y}, batch_size=3,
                                generator=torch.Generator().manual_seed(2))
    assert [s.tolist() for s in seen[:1]] == [[0, 1, 2]] and seen[T].tolist() == [3, 4, 5] and seen[-1].tolist() == [6]
    torch.testing.assert_close(whole["large"]["prior_bpd"], chunked["large"]["prior_bpd"])
    assert torch.isfinite(chunked["large"]["vb"]).all() and chunked["large"]["vb"].shape == (7, T)
    # ε̂ = 0 with σ_t fixed: the KL terms are a deterministic function of (x_0, x_t); their means over the
    # noise agree between the two routes within Monte Carlo error only, so check the sizes are alike
    assert abs(whole["large"]["total_bpd"].mean() - chunked["large"]["total_bpd"].mean()) < 0.5


def test_refuses_diffusions_that_cannot_share_x_t():
    with pytest.raises(ValueError, match="another noise schedule"):
        bpd_for_variances({"a": create_diffusion("linear", T), "b": create_diffusion("cosine", T)},
                          _model([]), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="at least one"):
        bpd_for_variances({}, _model([]), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="batch_size"):
        bpd_for_variances(_diffusions(), _model([]), torch.zeros(1, 1, 2, 2), batch_size=0)


def test_an_interrupted_bound_resumes_after_its_last_saved_chunk_with_the_uninterrupted_result(tmp_path):
    """With progress_dir each finished chunk of images is saved with the generator's state after it; a rerun
    computes only the chunks not saved (a damaged one again) and returns exactly what one call returns."""
    x0 = torch.randint(0, 256, (7, 1, 4, 4), generator=torch.Generator().manual_seed(0)).float() / 127.5 - 1
    y = torch.arange(7)
    whole = bpd_for_variances(_diffusions(), _model([]), x0, model_kwargs={"y": y}, batch_size=3,
                              generator=torch.Generator().manual_seed(7))

    class Interrupted(Exception):
        pass

    calls = []

    def dies_in_the_third_chunk(x, t, y=None):
        if len(calls) == 2 * T + 3:
            raise Interrupted
        return _model(calls)(x, t, y)

    with pytest.raises(Interrupted):
        bpd_for_variances(_diffusions(), dies_in_the_third_chunk, x0, model_kwargs={"y": y}, batch_size=3,
                          generator=torch.Generator().manual_seed(7), progress_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("chunk_*.pt")) == ["chunk_0000000.pt", "chunk_0000003.pt"]
    calls = []
    resumed = bpd_for_variances(_diffusions(), _model(calls), x0, model_kwargs={"y": y}, batch_size=3,
                                generator=torch.Generator().manual_seed(7), progress_dir=tmp_path)
    assert calls == [1] * T  # only the last chunk (one image) was computed
    for name in whole:
        for key in ("total_bpd", "prior_bpd", "vb"):
            torch.testing.assert_close(resumed[name][key], whole[name][key], rtol=0, atol=0)
    (tmp_path / "chunk_0000003.pt").write_bytes(b"truncated")  # a damaged chunk and those after it: again
    calls = []
    again = bpd_for_variances(_diffusions(), _model(calls), x0, model_kwargs={"y": y}, batch_size=3,
                              generator=torch.Generator().manual_seed(7), progress_dir=tmp_path)
    assert calls == [3] * T + [1] * T
    torch.testing.assert_close(again["small"]["total_bpd"], whole["small"]["total_bpd"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="progress_dir needs a generator"):
        bpd_for_variances(_diffusions(), _model([]), x0, progress_dir=tmp_path)

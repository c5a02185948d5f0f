"""FID and the Fréchet distance: agreement with pytorch-fid, closed forms, caching, missing weights."""
from __future__ import annotations

import math
import os
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.metrics import fid as fid_mod
from diffusion.metrics.cache import cache_key
from diffusion.metrics.fid import (activation_statistics, cached_statistics, fid_from_images,
                                   frechet_distance)
from diffusion.metrics import inception as inception_mod
from diffusion.metrics.inception import (InceptionWeightsMissing, file_sha256, inception_features_and_logits,
                                         load_inception, weights_path)
from tests.messages import assert_points_at, exact


def _random_inception_state_dict(seed: int = 0) -> dict:
    """A randomly initialised state dict with the shapes of pytorch-fid's FID Inception (tests only).

    Convolutions get variance-preserving (He) initialisation so that activations neither explode nor
    vanish through the ~90 layers; batch-norm statistics stay at 0 / 1.
    """
    from pytorch_fid.inception import _inception_v3

    torch.manual_seed(seed)
    net = _inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net.state_dict()


def install_random_weights(home, monkeypatch, seed: int = 0, state: dict | None = None):
    """Random Inception weights in ``home``'s hub cache under a name carrying their own SHA-256 prefix
    (the loader verifies that prefix), with ``WEIGHTS_FILENAME`` pointed at them; returns the path."""
    (home / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    tmp = home / "hub" / "checkpoints" / "weights.tmp"
    torch.save(state if state is not None else _random_inception_state_dict(seed), tmp)
    name = f"pt_inception-random-{file_sha256(str(tmp))[:8]}.pth"
    tmp.rename(tmp.with_name(name))
    monkeypatch.setattr(inception_mod, "WEIGHTS_FILENAME", name)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return tmp.with_name(name)


@pytest.fixture
def random_torch_home(tmp_path, monkeypatch):
    """Random weights whose fc bias is far from zero (the IS logits must not use it)."""
    home = tmp_path / "torch_home"
    state = _random_inception_state_dict()
    state["fc.bias"] = torch.linspace(-8.0, 8.0, 1008)
    install_random_weights(home, monkeypatch, state=state)
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    return home


def _write_pngs(folder, images_uint8):
    folder.mkdir()
    for i, img in enumerate(images_uint8):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")


def _png_pair(tmp_path, n):
    """n real uint8 images and n float "samples" in [-1, 1], both also written as PNG folders."""
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (n, 3, 20, 20), generator=g, dtype=torch.uint8)
    # samples are floats in [-1, 1]; they must be quantised to uint8 exactly as the saved PNGs are
    fake_float = torch.rand(n, 3, 20, 20, generator=g) * 1.6 - 0.9
    fake_uint8 = ((fake_float + 1) * 127.5 + 0.5).floor().to(torch.uint8)
    _write_pngs(tmp_path / "real", real)
    _write_pngs(tmp_path / "fake", fake_uint8)
    return real, fake_float


def test_inception_statistics_match_pytorch_fid_on_png_folder(tmp_path, random_torch_home):
    """Our (mu, sigma) from tensors equal pytorch-fid's from the saved PNGs (quantisation, RGB, /255,
    resize, network); with the Fréchet-distance test below this is FID agreement, cheaply."""
    from pytorch_fid.fid_score import compute_statistics_of_path
    from pytorch_fid.inception import InceptionV3

    n = 4
    _, fake_float = _png_pair(tmp_path, n)
    net = load_inception("cpu", allow_download=False)
    mu_ref, sigma_ref = compute_statistics_of_path(str(tmp_path / "fake"), net.net, n, 2048, "cpu", 0)
    feats, logits = inception_features_and_logits(fake_float, net, batch_size=n, progress=False)
    mu, sigma = activation_statistics(feats)
    assert feats.shape == (n, 2048) and logits.shape == (n, 1008) and np.isfinite(logits).all()
    assert feats.std() > 0 and np.abs(mu_ref).max() > 0
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-5, atol=1e-7 * np.abs(mu_ref).max())
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-4, atol=1e-6 * np.abs(sigma_ref).max())
    _is_logits_check(net, feats, logits)
    assert isinstance(net.net, InceptionV3)
    assert net.weights_sha256 == file_sha256(weights_path())


def _is_logits_check(net, feats, logits):
    """The logits are pool @ fc.weight.T, as openai/improved-gan's matmul(pool3, w): the file's nonzero
    fc bias is not used, and the IS is that of the bias-free logits."""
    from diffusion.metrics.inception_score import inception_score

    state = torch.load(weights_path(), weights_only=True)
    w, b = state["fc.weight"].double().numpy(), state["fc.bias"].double().numpy()
    assert np.abs(b).max() > 1.0
    np.testing.assert_allclose(logits, feats @ w.T, rtol=1e-4, atol=1e-5 * np.abs(feats @ w.T).max())
    assert np.abs(logits - (feats @ w.T + b)).max() > 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # compared as log IS = E KL (the IS of a random network is close to 1)
        ours, unbiased, biased = (math.log(inception_score(np.tile(z, (5, 1)), splits=len(z))[0])
                                  for z in (logits, feats @ w.T, feats @ w.T + b))
    assert ours > 0 and ours == pytest.approx(unbiased, rel=1e-4)
    assert ours != pytest.approx(biased, rel=1e-2)  # about 3 % apart for these weights and images


@pytest.mark.parametrize("n", [200, 20])  # full-rank and singular (N < D) covariances
def test_frechet_distance_matches_pytorch_fid(n):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, 48)) @ rng.normal(size=(48, 48))
    b = rng.normal(size=(n, 48)) * 1.5 + 0.3
    s_a, s_b = activation_statistics(a), activation_statistics(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = calculate_frechet_distance(*s_a, *s_b)
    assert frechet_distance(*s_a, *s_b) == pytest.approx(expected, rel=1e-6)


@pytest.mark.skipif(not os.environ.get("DDPM_SLOW_TESTS"),
                    reason="minutes on CPU (2048x2048 sqrtm twice); set DDPM_SLOW_TESTS=1")
def test_fid_matches_pytorch_fid_on_png_folders(tmp_path, random_torch_home):
    from pytorch_fid.fid_score import calculate_fid_given_paths

    n = 8
    real, fake_float = _png_pair(tmp_path, n)
    expected = calculate_fid_given_paths([str(tmp_path / "fake"), str(tmp_path / "real")],
                                         batch_size=n, device="cpu", dims=2048, num_workers=0)
    net = load_inception("cpu", allow_download=False)
    ref = activation_statistics(inception_features_and_logits(real, net, batch_size=n, progress=False)[0])
    with pytest.warns(UserWarning, match="biased"):
        ours = fid_from_images(fake_float, ref, net, batch_size=n, progress=False)
    assert np.isfinite(expected) and expected > 0
    assert ours == pytest.approx(expected, rel=1e-4)


def test_missing_weights_raise_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    with pytest.raises(InceptionWeightsMissing) as info:
        load_inception("cpu", allow_download=False)
    msg = str(info.value)
    assert weights_path() in msg and str(tmp_path / "empty_home") in msg
    assert "https://github.com/mseitzer/pytorch-fid/releases" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_frechet_distance_identical_stats_is_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16))
    mu, sigma = activation_statistics(a)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    # a rotation of both covariances leaves the distance unchanged (tests the matrix square root)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    got = frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mu1 and mu2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_activation_statistics_match_numpy():
    x = np.random.default_rng(2).normal(size=(50, 4))
    mu, sigma = activation_statistics(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, (x - x.mean(0)).T @ (x - x.mean(0)) / 49)


def test_statistics_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return np.arange(3.0), np.eye(3)

    first = cached_statistics("toy-key", compute)
    second = cached_statistics("toy-key", compute)
    assert len(calls) == 1 and (tmp_path / "fid_stats" / "toy-key.npz").is_file()
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_reference_statistics_keyed_by_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    seen = []
    monkeypatch.setattr(fid_mod, "inception_features_and_logits",
                        lambda images, net, bs, progress: (seen.append(1) or images.flatten(1).double().numpy(), None))

    class Data:
        name, split, digest = "toy", "train", "abc"
        images = torch.arange(24, dtype=torch.uint8).reshape(4, 1, 2, 3) ** 2

    class Net:
        weights_sha256 = "a" * 64

    fid_mod.reference_statistics(Data, net=Net)
    fid_mod.reference_statistics(Data, net=Net)
    assert len(seen) == 1
    Data.digest = "changed"
    fid_mod.reference_statistics(Data, net=Net)
    assert len(seen) == 2
    Net.weights_sha256 = "b" * 64  # other Inception weights: other statistics
    fid_mod.reference_statistics(Data, net=Net)
    assert len(seen) == 3
    fid_mod.reference_statistics(Data, net=Net)
    assert len(seen) == 3


def test_singular_product_default_regularisation():
    with pytest.warns(RuntimeWarning, match=r"^Fréchet distance: singular covariance product; adding 1e-06 to the "
                                            r"diagonals$") as record:
        d = fid_mod.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.array([[0.0, 1.0], [0.0, 0.0]]))
    assert_points_at(record[0], __file__, sys._getframe().f_lineno - 1)
    assert d == pytest.approx(2.0 - 4.0 * math.sqrt((1 + 1e-6) * 1e-6), rel=1e-9)


def test_few_samples_warning_points_at_the_caller_and_stops_at_2048(monkeypatch):
    """The warning names the line that called the metric (``fid_from_images`` here), not the metric's module."""
    monkeypatch.setattr(fid_mod, "inception_features_and_logits",
                        lambda images, net, batch_size, progress: (np.eye(3, 2), None))
    with pytest.warns(UserWarning, match=r"^FID from 3 < 2048 samples is biased") as record:
        fid_from_images(torch.zeros(3, 1, 2, 2), (np.zeros(2), np.eye(2)), None, progress=False)
    assert record[0].category is UserWarning
    assert_points_at(record[0], __file__, sys._getframe().f_lineno - 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid_mod.warn_if_few_samples(2048)


def test_activation_statistics_in_float64_and_its_shape_checks():
    feats = np.random.default_rng(3).normal(size=(40, 6)).astype(np.float32)
    mu, sigma = activation_statistics(feats)
    mu64, sigma64 = activation_statistics(feats.astype(np.float64))
    assert mu.dtype == sigma.dtype == np.float64
    assert np.array_equal(mu, mu64) and np.array_equal(sigma, sigma64)
    assert np.array_equal(sigma, np.cov(feats.astype(np.float64), rowvar=False))  # columns are the variables
    two = activation_statistics(np.array([[0.0, 1.0, 2.0], [2.0, 3.0, 6.0]]))  # N = 2 is enough
    assert np.array_equal(two[0], [1.0, 2.0, 4.0]) and two[1][2, 2] == 8.0
    assert activation_statistics(np.array([[1.0], [3.0], [5.0]]))[0] == [3.0]  # D = 1
    for shape in ((5,), (1, 3), (2, 2, 2)):
        with pytest.raises(ValueError, match=exact(f"features must be an (N, D) array with N >= 2, got shape "
                                                   f"{shape}")):
            activation_statistics(np.zeros(shape))


def test_frechet_distance_float64_throughout_and_its_checks():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(200, 64)), rng.normal(size=(200, 64)) + 0.1
    stats = [x.astype(np.float32) for x in (*activation_statistics(a), *activation_statistics(b))]
    assert frechet_distance(*stats) == frechet_distance(*(x.astype(np.float64) for x in stats))
    with pytest.raises(ValueError, match=exact("sigma1 and sigma2 must both be (2, 2), got (3, 3) and (3, 3)")):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(3))
    # a covariance with a negative eigenvalue: the square root has an imaginary diagonal of 0.1 > 1e-3
    with pytest.raises(ValueError, match=exact("Fréchet distance: matrix square root has an imaginary component "
                                               "of 0.1; the covariances are not valid")):
        frechet_distance(np.zeros(1), np.eye(1), np.zeros(1), -0.01 * np.eye(1))


def test_reference_statistics_key_and_features_written_out(monkeypatch):
    """Cached under the split's name, split, size, digest, the feature layer and the weights' SHA-256; computed
    from the Inception features with the given batch size and progress setting."""
    data = SimpleNamespace(name="fake", split="train", images=torch.zeros(5, 1, 2, 2, dtype=torch.uint8),
                           digest="d1g3st")
    net = SimpleNamespace(weights_sha256="ab" * 32)
    feats = np.random.default_rng(0).normal(size=(5, 3))
    seen = {}

    def fake_cached(key, compute, kind="fid_stats"):
        seen["key"], seen["kind"] = key, kind
        return compute()

    def fake_features(images, net_, batch_size, progress):
        seen["features"] = (images, net_, batch_size, progress)
        return feats, None

    monkeypatch.setattr(fid_mod, "cached_statistics", fake_cached)
    monkeypatch.setattr(fid_mod, "inception_features_and_logits", fake_features)
    mu, sigma = fid_mod.reference_statistics(data, net, batch_size=7, progress=False)
    assert seen["key"] == cache_key("fake", "train", 5, "d1g3st", "inception2048",
                                    params={"weights_sha256": "ab" * 32}, modules=["diffusion.metrics.fid"])
    assert seen["kind"] == "fid_stats" and seen["features"] == (data.images, net, 7, False)
    assert np.array_equal(mu, feats.mean(0)) and np.array_equal(sigma, np.cov(feats, rowvar=False))
    fid_mod.reference_statistics(data, net)
    assert seen["features"][2:] == (50, True)

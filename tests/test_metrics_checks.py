"""The metrics' pixel conversion, argument checks (whole messages) and the paths the larger metric tests do
not reach: grey images through the Inception wrapper, FID from images against given statistics, the
singular and complex branches of the Fréchet distance, and the classifier's augmentation written out."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffusion.data import ImageData
from diffusion.metrics import classifier as clf_mod
from diffusion.metrics.cache import cache_key
from diffusion.metrics.classifier import (ClassifierConfig, ProxyClassifier, SmallCNN, class_diversity,
                                          conditional_accuracy, train_classifier)
from diffusion.metrics.fid import activation_statistics, fid_from_images, frechet_distance
from diffusion.metrics.images import check_finite, to_uint8
from diffusion.metrics.inception import default_device, inception_features_and_logits
from diffusion.metrics.inception_score import inception_score
from diffusion.metrics.intervals import FrechetToReference, ci_decimals, proxy_metrics_ci
from diffusion.metrics.kid import KidToReference, kid_from_features, polynomial_kernel
from diffusion.metrics.neighbours import nearest_neighbours
from diffusion.metrics.nll import bits_per_dim
from tests.messages import exact


# ---------------------------------------------------------------- pixels

def test_to_uint8_rounds_to_the_nearest_level_like_a_saved_png():
    """uint8 = floor((x + 1)·127.5 + 0.5) after clamping to [-1, 1]; uint8 input is returned as it is."""
    k = torch.arange(256, dtype=torch.float64)
    levels = (k / 127.5 - 1).float()
    above, below = ((k[:-1] + 0.51) / 127.5 - 1).float(), ((k[:-1] + 0.49) / 127.5 - 1).float()
    x = torch.cat([torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]), levels, above, below])
    got = to_uint8(x.reshape(1, 1, 1, -1)).flatten()
    assert got.dtype == torch.uint8
    assert got[:5].tolist() == [0, 0, 128, 255, 255]
    assert torch.equal(got[5:261], k.to(torch.uint8))
    assert torch.equal(got[261:516], k[1:].to(torch.uint8))  # just above half a level: the next level
    assert torch.equal(got[516:], k[:-1].to(torch.uint8))  # just below: this one
    as_bytes = torch.arange(24, dtype=torch.uint8).reshape(1, 2, 3, 4)
    assert to_uint8(as_bytes) is as_bytes
    assert to_uint8(torch.zeros(1, 1, 2, 2, dtype=torch.float64)).dtype == torch.uint8


@pytest.mark.parametrize("images, message", [
    (np.zeros((1, 1, 2, 2)), "pixels must be a torch.Tensor (uint8 or float in [-1, 1]), got ndarray"),
    (torch.zeros(1, 2, 2), "pixels must be NCHW (4 dimensions), got shape (1, 2, 2)"),
    (torch.zeros(1, 1, 2, 2, dtype=torch.int32), "pixels must be uint8 or floating point in [-1, 1], got dtype "
                                                 "torch.int32"),
    (torch.tensor([[[[0.0, float("nan")], [float("inf"), 0.0]]]]),
     "pixels contain 2 NaN or infinite values (of 4); the model or sampler diverged — refusing to compute "
     "metrics on them"),
])
def test_to_uint8_errors_are_named(images, message):
    with pytest.raises(ValueError, match=exact(message)):
        to_uint8(images, "pixels")


def test_to_uint8_default_name():
    with pytest.raises(ValueError, match=exact("images must be NCHW (4 dimensions), got shape (2,)")):
        to_uint8(torch.zeros(2))


def test_check_finite_default_name_and_integer_input():
    with pytest.raises(ValueError, match=exact("samples contain 1 NaN or infinite values (of 3); the model or "
                                               "sampler diverged — refusing to compute metrics on them")):
        check_finite(torch.tensor([0.0, -float("inf"), 1.0]))
    check_finite(torch.tensor([1, 2, 3]))  # integers are always finite


# ---------------------------------------------------------------- Inception wrapper (a recording stand-in)

class RecordingNet(nn.Module):
    """Stands in for the FID Inception: features = per-channel means, logits = per-channel maxima; records
    every batch it is given."""

    weights_sha256 = "0" * 64

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.batches = []

    def forward(self, x):
        self.batches.append(x.clone())
        return x.mean(dim=(2, 3)) + self.anchor, x.amax(dim=(2, 3))


def test_grey_images_are_repeated_to_rgb_and_scaled_to_unit_range():
    grey = torch.arange(5 * 4 * 4, dtype=torch.uint8).reshape(5, 1, 4, 4)
    rgb = grey.expand(-1, 3, -1, -1).contiguous()
    net = RecordingNet()
    feats, logits = inception_features_and_logits(grey, net, batch_size=2, progress=False)
    assert [len(b) for b in net.batches] == [2, 2, 1]
    seen = torch.cat(net.batches)
    assert seen.dtype == torch.float32 and seen.shape == (5, 3, 4, 4)
    assert torch.equal(seen, rgb.float() / 255.0)
    assert feats.dtype == np.float64 and logits.dtype == np.float64 and feats.shape == (5, 3)
    feats_rgb, logits_rgb = inception_features_and_logits(rgb, RecordingNet(), batch_size=50, progress=False)
    np.testing.assert_array_equal(feats, feats_rgb)
    np.testing.assert_array_equal(logits, logits_rgb)
    np.testing.assert_allclose(logits[:, 0], grey.flatten(1).amax(1).double().numpy() / 255.0, rtol=1e-6)


def test_inception_batches_of_50_with_a_progress_bar_by_default(capsys):
    net = RecordingNet()
    feats, _ = inception_features_and_logits(torch.zeros(120, 3, 2, 2, dtype=torch.uint8), net)
    assert [len(b) for b in net.batches] == [50, 50, 20] and feats.shape == (120, 3)
    err = capsys.readouterr().err
    assert err.startswith("\rInception:   0%|") and "0/3" in err
    assert err.split("\r")[-1].strip() == ""  # a finished bar is removed
    inception_features_and_logits(torch.zeros(2, 3, 2, 2, dtype=torch.uint8), net, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("images, batch_size, message", [
    (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), 0, "batch_size must be a positive integer, got 0"),
    (torch.zeros(2, 2, 4, 4, dtype=torch.uint8), 1, "images must have 1 or 3 channels, got 2"),
])
def test_inception_input_errors_are_named(images, batch_size, message):
    with pytest.raises(ValueError, match=exact(message)):
        inception_features_and_logits(images, RecordingNet(), batch_size=batch_size, progress=False)


def test_default_device_without_cuda():
    assert default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_fid_from_images_against_given_statistics_and_a_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))  # the dataset's statistics are cached there
    gen = torch.Generator().manual_seed(0)
    samples = torch.randint(0, 256, (40, 3, 4, 4), generator=gen, dtype=torch.uint8)
    reference = torch.randint(0, 200, (30, 3, 4, 4), generator=gen, dtype=torch.uint8)
    feats = samples.double().mean(dim=(2, 3)).numpy() / 255.0
    ref_feats = reference.double().mean(dim=(2, 3)).numpy() / 255.0
    mu_ref, sigma_ref = activation_statistics(ref_feats)
    expected = frechet_distance(*activation_statistics(feats), mu_ref, sigma_ref)
    with pytest.warns(UserWarning, match=exact("FID from 40 < 2048 samples is biased (upwards) and not comparable "
                                               "with values computed from more samples")):
        given = fid_from_images(samples, (mu_ref, sigma_ref), RecordingNet(), batch_size=7, progress=False)
    assert given == pytest.approx(expected, rel=1e-6)
    data = ImageData(reference, torch.zeros(30, dtype=torch.long), 1, ("x",), "ref", "ref", "train")
    with pytest.warns(UserWarning):
        from_data = fid_from_images(samples, data, RecordingNet(), batch_size=7, progress=False)
    assert from_data == pytest.approx(expected, rel=1e-6)
    assert len(list(tmp_path.glob("fid_stats/ref-train-30-*.npz"))) == 1


@pytest.mark.filterwarnings("ignore:FID from 6 < 2048")
def test_fid_from_images_passes_batch_size_and_progress_on(monkeypatch):
    """Batches of 50 and a progress bar by default, for the samples and the reference alike."""
    import diffusion.metrics.fid as fid_mod

    calls = []
    feats = np.random.default_rng(2).normal(size=(6, 3))

    def features(images, net, batch_size=None, progress=None):
        calls.append(("samples", batch_size, progress))
        return feats, None

    def reference_statistics(data, net, batch_size=None, progress=None):
        calls.append(("reference", batch_size, progress))
        return activation_statistics(feats[::-1] ** 2)

    monkeypatch.setattr(fid_mod, "inception_features_and_logits", features)
    monkeypatch.setattr(fid_mod, "reference_statistics", reference_statistics)
    value = fid_from_images(torch.zeros(6, 3, 4, 4), "a dataset", RecordingNet())
    assert calls == [("reference", 50, True), ("samples", 50, True)]
    assert value == pytest.approx(frechet_distance(*activation_statistics(feats), *activation_statistics(feats ** 2)))
    calls.clear()
    fid_from_images(torch.zeros(6, 3, 4, 4), "a dataset", RecordingNet(), batch_size=3, progress=False)
    assert calls == [("reference", 3, False), ("samples", 3, False)]


# ---------------------------------------------------------------- Fréchet distance branches

def test_frechet_distance_regularises_a_singular_product():
    """Σ₁Σ₂ = [[0, 1], [0, 0]] has no square root: ε·I is added to both covariances; (Σ₁ + εI)(Σ₂ + εI) is
    (1 + ε) times a Jordan block of eigenvalue ε, whose square root has trace 2√((1 + ε)ε), while the traces
    of Σ₁ and Σ₂ themselves enter the distance."""
    eps = 1e-4
    with pytest.warns(RuntimeWarning, match=exact(f"Fréchet distance: singular covariance product; adding {eps} "
                                                  "to the diagonals")):
        d = frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.array([[0.0, 1.0], [0.0, 0.0]]), eps=eps)
    assert d == pytest.approx(2.0 - 4.0 * math.sqrt((1 + eps) * eps), rel=1e-9)


def test_frechet_distance_refuses_an_imaginary_square_root():
    with pytest.raises(ValueError, match=exact("Fréchet distance: matrix square root has an imaginary component "
                                               "of 2; the covariances are not valid")):
        frechet_distance(np.zeros(2), -np.eye(2), np.zeros(2), 4 * np.eye(2))


# ---------------------------------------------------------------- KID, intervals, IS

def test_kid_shape_errors_are_named():
    x, y = np.zeros((3, 2)), np.zeros((4, 5))
    with pytest.raises(ValueError, match=exact("x and y must be (M, D) and (N, D) with the same D, got (3, 2) "
                                               "and (4, 5)")):
        polynomial_kernel(x, y)
    with pytest.raises(ValueError, match=exact("x and y must be (M, D) and (N, D) with the same D, got (3,) "
                                               "and (4, 5)")):
        polynomial_kernel(np.zeros(3), y)
    with pytest.raises(ValueError, match=exact("features_x and features_y must have the same dimension, got 2 "
                                               "and 5")):
        kid_from_features(x, y)
    kid = KidToReference(y)
    for call in (kid, kid.on_indices):
        with pytest.raises(ValueError, match=exact("features must have dimension 5, got 2")):
            call(x)
    with pytest.raises(ValueError, match=exact("idx must select at least two samples, got 1")):
        kid.on_indices(np.zeros((3, 5)))([2])
    for call in (kid, kid.on_indices):  # one sample is no within-set term
        with pytest.raises(ValueError, match=exact("features must be an (N, D) array of features with N >= 2, got "
                                                   "shape (1, 5)")):
            call(np.zeros((1, 5)))
    for name, call in (("features_x", lambda a: kid_from_features(a, y)),
                       ("features_y", lambda a: kid_from_features(y, a)), ("reference_features", KidToReference)):
        with pytest.raises(ValueError, match=exact(f"{name} must be an (N, D) array of features with N >= 2, got "
                                                   "shape (5,)")):
            call(np.zeros(5))


def test_polynomial_kernel_written_out():
    gen = np.random.default_rng(0)
    x, y = gen.normal(size=(3, 4)), gen.normal(size=(2, 4))
    expected = [[(np.dot(a, b) / 4 + 1) ** 3 for b in y] for a in x]
    np.testing.assert_allclose(polynomial_kernel(x, y), expected, rtol=1e-12)


def test_interval_errors_are_named():
    with pytest.raises(ValueError, match=exact("mu_ref must be (D,) and sigma_ref (D, D), got (2,) and (2, 3)")):
        FrechetToReference(np.zeros(2), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=exact("mu_ref must be (D,) and sigma_ref (D, D), got (1, 2) and (2, 2)")):
        FrechetToReference(np.zeros((1, 2)), np.eye(2))
    fd = FrechetToReference(np.zeros(2), np.eye(2))
    for bad in (np.zeros((1, 2)), np.zeros((4, 3)), np.zeros(4)):
        with pytest.raises(ValueError, match=exact(f"features must be (n >= 2, 2), got {bad.shape}")):
            fd(bad)
    features = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(ValueError, match=exact("correct must hold one 0/1 value per sample, shape (6,), got (5,)")):
        proxy_metrics_ci(features, features, correct=np.ones(5), num_resamples=10)
    with pytest.raises(ValueError, match=exact("features and reference_features must be (n, D) and (N, D) with "
                                               "the same D, got (6, 2) and (6, 3)")):
        proxy_metrics_ci(features, np.zeros((6, 3)))


@pytest.mark.parametrize("low, high, decimals", [(1.0, 1.0, 1), (0.0, float("nan"), 1), (0.0, float("inf"), 1),
                                                 (0.0, 0.05, 4), (0.0, 0.1, 3), (0.0, 99.0, 1), (0.0, 999.0, 0),
                                                 (0.0, 5000.0, 0), (2.0, 1.0, 2)])
def test_ci_decimals_at_the_edges(low, high, decimals):
    assert ci_decimals({"low": low, "high": high}) == decimals


@pytest.mark.parametrize("logits, message", [
    (np.zeros(10), "logits must be (N, K) with K >= 2 classes, got shape (10,)"),
    (np.zeros((10, 1)), "logits must be (N, K) with K >= 2 classes, got shape (10, 1)"),
    (np.array([[0.0, np.nan]] * 10), "logits contain NaN or infinite values"),
])
def test_inception_score_input_errors_are_named(logits, message):
    with pytest.raises(ValueError, match=exact(message)):
        inception_score(logits, splits=1)


# ---------------------------------------------------------------- other checks

def test_other_argument_errors_are_named():
    images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match=exact("chunk_size must be a positive integer, got 0")):
        nearest_neighbours(images, images, chunk_size=0)
    with pytest.raises(ValueError, match=exact("batch_size must be a positive integer, got 0")):
        bits_per_dim(None, None, images, batch_size=0)
    with pytest.raises(ValueError, match=exact("modules must name the modules that compute the entry, got []")):
        cache_key("a", modules=[])


# ---------------------------------------------------------------- proxy classifier

def _untrained(num_classes=3):
    torch.manual_seed(0)
    return ProxyClassifier(SmallCNN(1, num_classes, 8).eval(), 0.5, "toy", "toy", num_classes,
                           ClassifierConfig(width=8))


def test_classifier_label_checks_and_device():
    clf = _untrained()
    assert clf.device == torch.device("cpu")
    samples = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=exact("labels must hold one class per sample, shape (4,), got (3,)")):
        conditional_accuracy(clf, samples, [0, 1, 2])
    with pytest.raises(ValueError, match=exact("labels must lie in [0, 2] (the null class cannot be classified), "
                                               "got values in [0, 3]")):
        conditional_accuracy(clf, samples, [0, 1, 2, 3])
    with pytest.raises(ValueError, match=exact("class_diversity needs at least two samples of some class")):
        class_diversity(clf, samples[:3], [0, 1, 2])
    result = class_diversity(clf, samples, [0, 0, 1, 2])
    assert result["per_class"][0] == 0.0 and math.isnan(result["per_class"][1]) and result["diversity"] == 0.0


def test_classifier_needs_labelled_data():
    data = ImageData(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 1, ("x",),
                     "one class", "one", "train")
    with pytest.raises(ValueError, match=exact("the proxy classifier needs a labelled dataset (num_classes >= 2); "
                                               "'one class' has num_classes=1")):
        train_classifier(data, data, device="cpu", progress=False)


def test_load_classifier_trains_on_the_train_split_and_scores_on_the_test_split(monkeypatch):
    import diffusion.data

    loaded, passed = [], []
    monkeypatch.setattr(diffusion.data, "load_dataset", lambda name, split, root: loaded.append((name, split, root))
                        or f"{name}:{split}")
    monkeypatch.setattr(clf_mod, "cached_classifier", lambda *args: passed.append(args) or "classifier")
    config = ClassifierConfig(width=8)
    assert clf_mod.load_classifier("digits", "/data", config, "cpu", False, True) == "classifier"
    assert loaded == [("digits", "train", "/data"), ("digits", "test", "/data")]
    assert passed == [("digits:train", "digits:test", config, "cpu", False, True)]


@pytest.mark.parametrize("hflip", [False, True])
def test_augmentation_written_out(hflip):
    """On linear ramps (bilinear sampling reproduces them exactly away from the border) the augmentation is
    the affine map it draws: source = R(angle)·target / scale + shift, mirrored in x for flipped images."""
    cfg = ClassifierConfig(max_shift=2.0, max_rotation=10.0, max_scale=0.1, hflip=hflip)
    b, size = 64, 16
    cols = torch.arange(size, dtype=torch.float32).expand(size, size)
    x = torch.stack([cols, cols.T])[None].expand(b, -1, -1, -1).contiguous()  # channel 0: column, 1: row
    out = clf_mod._augment(x, cfg, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    u = torch.rand(b, 4, generator=gen) * 2 - 1
    flip = torch.rand(b, generator=gen) < 0.5 if hflip else torch.zeros(b, dtype=torch.bool)
    if hflip:
        assert 0 < int(flip.sum()) < b
    angle, scale = u[:, 0] * math.radians(10.0), 1 + u[:, 1] * 0.1
    shift_x, shift_y = u[:, 2] * 2.0, u[:, 3] * 2.0  # pixels
    c = (size - 1) / 2
    j, i = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="xy")
    dx, dy = j - c, i - c
    sign = torch.where(flip, -1.0, 1.0)[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    src_x = (cos * sign * dx - sin * dy) / scale[:, None, None] + c + shift_x[:, None, None]
    src_y = (sin * sign * dx + cos * dy) / scale[:, None, None] + c + shift_y[:, None, None]
    inner = slice(6, 10)
    torch.testing.assert_close(out[:, 0, inner, inner], src_x[:, inner, inner], rtol=0, atol=1e-4)
    torch.testing.assert_close(out[:, 1, inner, inner], src_y[:, inner, inner], rtol=0, atol=1e-4)

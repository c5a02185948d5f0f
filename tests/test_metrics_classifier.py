"""The offline proxy classifier: training on a tiny set, caching, features, classifier FD, accuracy, diversity."""
from __future__ import annotations

import json
import math
import pickle
import re
import warnings
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffusion.data import ImageData
from diffusion.metrics import classifier as clf_mod
from diffusion.metrics.cache import cache_key
from diffusion.metrics.classifier import (ClassifierConfig, cached_classifier, class_diversity, classifier_fd,
                                          classifier_features, classifier_predict, conditional_accuracy)
from diffusion.metrics.fid import activation_statistics, frechet_distance
from diffusion.metrics.kid import classifier_kid, kid_from_features
from tests.messages import exact

TINY = ClassifierConfig(width=8, steps=60, batch_size=64, lr=1e-2)


def _digits():
    """scikit-learn's 8×8 digits (17 grey levels) as uint8 train / test ImageData."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy((d.images * (255 / 16)).round().astype(np.uint8))[:, None]
    labels = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1200], perm[1200:1500]
    names = tuple(str(i) for i in range(10))
    return (ImageData(images[tr], labels[tr], 10, names, "digits 8×8", "digits", "train"),
            ImageData(images[te], labels[te], 10, names, "digits 8×8", "digits", "test"))


def _entry_key(train, test, cfg):
    """The cache key of a classifier trained on the CPU, written out."""
    return cache_key(train.name, train.digest, test.digest, params={**asdict(cfg), "device": "cpu"},
                     modules=["diffusion.metrics.classifier"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("cache")
    mp.setenv("DDPM_CACHE", str(cache))
    train, test = _digits()
    threads = torch.get_num_threads()
    clf = cached_classifier(train, test, TINY, device="cpu", progress=False)
    assert torch.get_num_threads() == threads  # training on CPU uses one thread, then restores the setting
    yield clf, train, test, cache
    mp.undo()


def test_classifier_learns_and_reports_held_out_accuracy(trained):
    clf, train, test, _ = trained
    pred = classifier_predict(clf, test.images)
    assert clf.accuracy == pytest.approx(float((pred == test.labels).float().mean()))
    assert clf.accuracy > 0.6  # chance is 0.1; 60 steps on 1,200 digits
    assert clf.dataset_label == "digits 8×8"


def test_classifier_cache_reloads_without_training(trained, monkeypatch):
    clf, train, test, cache = trained
    monkeypatch.setenv("DDPM_CACHE", str(cache))
    assert len(list((cache / "classifier").glob("*.pt"))) == 1

    def boom(*a, **k):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(clf_mod, "train_classifier", boom)
    again = cached_classifier(train, test, TINY, device="cpu", progress=False)
    assert again.accuracy == clf.accuracy and not again.net.training
    assert (again.dataset_label, again.data_name, again.num_classes, again.config) == ("digits 8×8", "digits", 10,
                                                                                       TINY)
    np.testing.assert_allclose(classifier_features(again, test.images[:20]),
                               classifier_features(clf, test.images[:20]))
    # other hyper-parameters are another cache entry
    with pytest.raises(AssertionError, match="retrained"):
        cached_classifier(train, test, ClassifierConfig(width=8, steps=61), device="cpu", progress=False)


def test_a_cache_entry_is_read_as_weights_only(monkeypatch, tmp_path):
    """A cache file holding any pickled object other than tensors and plain containers is refused, not run."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    train, test = _digits()
    cfg = ClassifierConfig(width=4, steps=10)
    (tmp_path / "classifier").mkdir()
    torch.save({"state_dict": clf_mod.SmallCNN(1, 10, 4).state_dict(), "accuracy": 0.5,
                "dataset_label": SimpleNamespace(label="digits"), "in_channels": 1, "num_classes": 10},
               tmp_path / "classifier" / f"{_entry_key(train, test, cfg)}.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        cached_classifier(train, test, cfg, device="cpu", progress=False)


def test_features_and_float_inputs(trained):
    clf, _, test, _ = trained
    feats = classifier_features(clf, test.images[:10])
    assert feats.shape == (10, clf_mod.FEATURE_DIM) and feats.dtype == np.float64
    as_float = test.images[:10].float() / 127.5 - 1  # the model range; quantised back to the same uint8
    np.testing.assert_allclose(classifier_features(clf, as_float), feats, rtol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        classifier_features(clf, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 NaN"):
        classifier_features(clf, torch.tensor([float("nan")] * 3 + [0.0]).reshape(1, 1, 2, 2))


def test_classifier_fd_is_frechet_distance_of_features(trained):
    clf, train, test, _ = trained
    with pytest.warns(UserWarning, match="biased"):
        out = classifier_fd(clf, train.images[:300], test.images)
    mu1, s1 = activation_statistics(classifier_features(clf, train.images[:300]))
    mu2, s2 = activation_statistics(classifier_features(clf, test.images))
    assert out["cfd"] == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-9)
    assert out["classifier_accuracy"] == clf.accuracy and out["num_samples"] == 300
    # real vs real is far closer than real vs noise
    noise = torch.randint(0, 256, (300, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with pytest.warns(UserWarning):
        far = classifier_fd(clf, noise, (mu2, s2))["cfd"]
    assert far > 3 * out["cfd"]


def test_training_is_the_recipe_written_out():
    """Ten steps against the recipe written out: global seed, then AdamW (peak lr, weight decay) under a
    one-cycle schedule warming up over the first 20 % of the steps; batches from a permutation drawn by a CPU
    generator seeded with ``seed`` and drawn again only when fewer than a batch remain; augmentation from a second
    generator seeded with ``seed``. Weights compared bit for bit, both on one thread."""
    train, test = _digits()
    train = ImageData(train.images[:100], train.labels[:100], 10, train.class_names, train.label, train.name,
                      "train")
    cfg = ClassifierConfig(width=4, steps=10, batch_size=50, lr=5e-2, weight_decay=0.3, seed=3)
    clf = clf_mod.train_classifier(train, test, cfg, device="cpu", progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(3)
        net = clf_mod.SmallCNN(1, 10, 4)
        opt = torch.optim.AdamW(net.parameters(), lr=5e-2, weight_decay=0.3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-2, total_steps=10, pct_start=0.2)
        augment_gen, order_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        batches = []
        for _ in range(5):  # 100 images: two batches of 50 per permutation, the second ending at its last image
            order = torch.randperm(100, generator=order_gen)
            batches += [order[:50], order[50:]]
        net.train()
        for idx in batches:
            x = clf_mod._augment(train.images[idx].float() / 127.5 - 1, cfg, augment_gen)
            loss = torch.nn.functional.cross_entropy(net(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    trained_state, reference = clf.net.state_dict(), net.state_dict()
    assert list(trained_state) == list(reference)
    for key in reference:
        assert torch.equal(trained_state[key], reference[key]), key
    assert clf.config == cfg and (clf.num_classes, clf.data_name) == (10, "digits")


def test_augmentation_repeats_the_border_and_warns_nothing():
    """Shifted, rotated, scaled and flipped, a constant image stays constant: the pixels brought in from outside
    repeat the border instead of being zero. Both sampling calls name ``align_corners`` (torch warns otherwise)."""
    cfg = ClassifierConfig(max_shift=3.0, max_rotation=30.0, max_scale=0.3, hflip=True)
    x = torch.full((16, 1, 8, 8), 0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = clf_mod._augment(x, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x)
    ramp = torch.linspace(-1, 1, 8).expand(16, 1, 8, 8)
    assert (clf_mod._augment(ramp, cfg, torch.Generator().manual_seed(0)) - ramp).abs().amax() > 0.1


def _layer(m: torch.nn.Module) -> str:
    if isinstance(m, torch.nn.Conv2d):
        return f"conv {m.in_channels}->{m.out_channels} k{m.kernel_size[0]} p{m.padding[0]} bias={m.bias is not None}"
    if isinstance(m, torch.nn.BatchNorm2d):
        return f"bn {m.num_features}"
    if isinstance(m, torch.nn.MaxPool2d):
        return f"maxpool {m.kernel_size}"
    if isinstance(m, torch.nn.AdaptiveAvgPool2d):
        return f"avgpool {m.output_size}"
    if isinstance(m, torch.nn.Linear):
        return f"linear {m.in_features}->{m.out_features} bias={m.bias is not None}"
    if isinstance(m, torch.nn.Dropout):
        return f"dropout {m.p}"
    return type(m).__name__.lower()


def test_small_cnn_is_the_architecture_described():
    """Three conv stages of width w, 2w, 4w (3×3, padding 1, no bias, batch norm, ReLU; one, two and two convs),
    2×2 max pooling between them, global average pooling, a 128-d ReLU penultimate layer, dropout 0.2 and a
    linear head; the spatial size halves at each pooling only."""
    net = clf_mod.SmallCNN(3, 7, 4)
    block = ["conv {}->{} k3 p1 bias=False", "bn {1}", "relu"]
    stages = [(3, 4), "pool", (4, 8), (8, 8), "pool", (8, 16), (16, 16)]
    expected = []
    for s in stages:
        expected += ["maxpool 2"] if s == "pool" else [layer.format(*s) for layer in block]
    expected += ["avgpool 1", "flatten", "linear 16->128 bias=True", "relu"]
    assert [_layer(m) for m in net.body.modules() if not list(m.children())] == expected
    assert [_layer(m) for m in net.head.modules() if not list(m.children())] == ["dropout 0.2",
                                                                                 "linear 128->7 bias=True"]
    sizes = []
    for m in net.body.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: sizes.append(tuple(out.shape[1:])))
    net.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert net(x).shape == (2, 7) and net.features(x).shape == (2, 128)
    assert sizes[:5] == [(4, 32, 32), (8, 16, 16), (8, 16, 16), (16, 8, 8), (16, 8, 8)]
    assert (net.features(x) >= 0).all()  # after the ReLU
    assert clf_mod.SmallCNN(1, 10).body[0][0].out_channels == ClassifierConfig().width == 16  # the default width


def test_training_shows_a_progress_bar_and_clears_it(capsys):
    train, test = _digits()
    cfg = ClassifierConfig(width=4, steps=10, batch_size=50)
    clf_mod.train_classifier(train, test, cfg, device="cpu", progress=True)
    err = capsys.readouterr().err
    assert err.startswith("\rclassifier (digits 8×8):   0%|") and "0/10" in err
    assert err.split("\r")[-1].strip() == ""  # a finished bar is removed
    clf_mod.train_classifier(train, test, cfg, device="cpu", progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("steps", [5, 9, 0, 10.0])
def test_training_needs_ten_steps(steps):
    """With fewer, the one-cycle schedule's warm-up is shorter than a step (at 5 steps torch divides by zero)."""
    train, test = _digits()
    with pytest.raises(ValueError, match=exact("the proxy classifier needs steps >= 10 (its one-cycle learning rate "
                                               f"warms up over the first 20 % of the steps), got steps={steps!r}")):
        clf_mod.train_classifier(train, test, ClassifierConfig(width=4, steps=steps), device="cpu", progress=False)


def test_classifier_kid_of_images_is_kid_of_their_features(trained):
    clf, train, test, _ = trained
    out = classifier_kid(clf, train.images[:40], test.images[:30])
    expected = kid_from_features(classifier_features(clf, train.images[:40]),
                                 classifier_features(clf, test.images[:30]))
    assert out == {"kid": pytest.approx(expected, rel=1e-12), "num_samples": 40, "num_reference": 30, **clf.info()}
    features = classifier_features(clf, test.images[:30])
    assert classifier_kid(clf, train.images[:40], features)["kid"] == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match=exact("images must be a torch.Tensor (uint8 or float in [-1, 1]), got "
                                               "ndarray")):  # an image array is not taken for features
        classifier_kid(clf, train.images[:40].numpy(), features)


def test_load_classifier_trains_on_the_train_split_and_reports_on_the_test_split(monkeypatch):
    import diffusion.data

    monkeypatch.setattr(diffusion.data, "load_dataset", lambda name, split, root=None: (name, split, root))
    monkeypatch.setattr(clf_mod, "cached_classifier", lambda *args: args)
    assert clf_mod.load_classifier("mnist") == (("mnist", "train", None), ("mnist", "test", None), None, None,
                                                True, False)
    assert clf_mod.load_classifier("cifar10", "/data", TINY, "cpu", False, True) == (
        ("cifar10", "train", "/data"), ("cifar10", "test", "/data"), TINY, "cpu", False, True)


def test_conditional_accuracy_and_diversity(trained):
    clf, _, test, _ = trained
    acc = conditional_accuracy(clf, test.images, test.labels)
    assert acc["accuracy"] == pytest.approx(clf.accuracy)
    assert acc["classifier_accuracy"] == clf.accuracy and len(acc["per_class"]) == 10
    wrong = conditional_accuracy(clf, test.images, (test.labels + 1) % 10)
    assert wrong["accuracy"] < acc["accuracy"]
    with pytest.raises(ValueError, match="labels must lie"):
        conditional_accuracy(clf, test.images[:2], torch.tensor([0, 10]))

    div = class_diversity(clf, test.images, test.labels)
    f = torch.from_numpy(classifier_features(clf, test.images))
    sel = f[test.labels == 3]
    k = len(sel)
    brute = sum(float((sel[i] - sel[j]).norm()) for i in range(k) for j in range(k) if i != j) / (k * (k - 1))
    assert div["per_class"][3] == pytest.approx(brute, rel=1e-6)
    assert div["diversity"] == pytest.approx(np.mean(div["per_class"]))  # every class has two samples or more
    assert {k: v for k, v in div.items() if k not in ("diversity", "per_class")} == {
        "num_samples": len(test.images), "classifier_accuracy": clf.accuracy, "classifier_dataset": "digits 8×8"}
    # copies of one image per class have no diversity
    one = torch.stack([test.images[test.labels == c][0] for c in range(10) for _ in range(3)])
    lab = torch.arange(10).repeat_interleave(3)
    assert class_diversity(clf, one, lab)["diversity"] == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(class_diversity(clf, one[:4], lab[:4])["per_class"][5])


def test_per_class_accuracy_written_out_with_nan_for_absent_classes(trained):
    clf, _, test, _ = trained
    images, labels = test.images[:40], test.labels[:40].clone()
    labels[labels == 7] = 2  # class 7 absent, class 2 with some wrong labels
    out = conditional_accuracy(clf, images, labels.tolist())
    correct = (classifier_predict(clf, images) == labels).double()
    assert out["accuracy"] == float(correct.mean()) and out["num_samples"] == 40
    for c in range(10):
        if c == 7:
            assert math.isnan(out["per_class"][c])
        else:
            assert out["per_class"][c] == float(correct[labels == c].mean())
    assert len(set(out["per_class"][:7])) > 1  # the classes differ, so a class's own samples are averaged
    assert clf_mod._check_labels(clf, images[:2], [1.0, 3.0]).dtype == torch.long
    threes = test.images[test.labels == 3][:5]
    single = conditional_accuracy(clf, threes, torch.full((5,), 3))  # every sample of one class
    assert single["per_class"][3] == single["accuracy"] and sum(map(math.isnan, single["per_class"])) == 9


def test_classifier_fd_record_and_messages_in_full(trained):
    clf, train, test, _ = trained
    with pytest.warns(UserWarning, match=exact("classifier FD from 30 < 2048 samples is biased (upwards) and not "
                                               "comparable with values computed from more samples")):
        out = classifier_fd(clf, train.images[:30], test.images[:50])
    assert clf.info() == {"classifier_accuracy": clf.accuracy, "classifier_dataset": "digits 8×8"}
    assert set(out) == {"cfd", "num_samples", "num_reference", *clf.info()}
    assert (out["num_samples"], out["num_reference"]) == (30, 50)
    with pytest.raises(ValueError, match=exact("images have 3 channels but the classifier for digits 8×8 expects 1")):
        classifier_predict(clf, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_postfix_shows_the_loss_without_an_extra_refresh(monkeypatch):
    """Each step sets the bar's postfix to the loss with three decimals, leaving the redraw to tqdm's rate limit."""
    seen = []
    real_tqdm = clf_mod.tqdm

    class Recording(real_tqdm):
        def set_postfix(self, *args, **kwargs):
            seen.append((args, kwargs))
            return super().set_postfix(*args, **kwargs)

    monkeypatch.setattr(clf_mod, "tqdm", Recording)
    train, test = _digits()
    clf_mod.train_classifier(train, test, ClassifierConfig(width=4, steps=10, batch_size=50), device="cpu",
                             progress=False)
    assert len(seen) == 10
    for args, kwargs in seen:
        assert args == () and set(kwargs) == {"loss", "refresh"} and kwargs["refresh"] is False
        assert re.fullmatch(r"\d+\.\d{3}", kwargs["loss"])


def test_train_classifier_picks_the_device_and_passes_everything_on(monkeypatch):
    """Two classes are enough; the given device (or the CPU, without CUDA) and the progress setting (on by
    default) reach the training loop. The loop is a stand-in here."""
    calls = []
    monkeypatch.setattr(clf_mod, "_train", lambda *args: calls.append(args) or "trained")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train, test = SimpleNamespace(num_classes=2, label="two"), SimpleNamespace()
    cfg = ClassifierConfig(steps=10)
    assert clf_mod.train_classifier(train, test, cfg) == "trained"
    assert calls[-1] == (train, test, cfg, torch.device("cpu"), True)
    clf_mod.train_classifier(train, test, cfg, device="meta", progress=False)
    assert calls[-1] == (train, test, cfg, torch.device("meta"), False)
    clf_mod.train_classifier(train, test, cfg, device=torch.device("meta"))
    assert calls[-1][3] == torch.device("meta")
    with pytest.raises(ValueError, match=exact("the proxy classifier needs a labelled dataset (num_classes >= 2); "
                                               "'one' has num_classes=1")):
        clf_mod.train_classifier(SimpleNamespace(num_classes=1, label="one"), test, cfg)


def test_cached_classifier_shows_progress_by_default(monkeypatch, tmp_path):
    """On a cache miss the classifier is trained with a progress bar unless asked otherwise (training is a
    stand-in here)."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    train, test = _digits()
    seen = []

    def fake_train(train_, test_, cfg, device, progress):
        seen.append(progress)
        calls.append((cfg, device))
        return clf_mod.ProxyClassifier(clf_mod.SmallCNN(1, 10, 4), 0.5, train_.label, train_.name, 10, cfg)

    calls = []
    monkeypatch.setattr(clf_mod, "train_classifier", fake_train)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = ClassifierConfig(width=4, steps=10)
    cached_classifier(train, test, cfg, device="cpu")
    cached_classifier(train, test, cfg, device="cpu", progress=False, retrain=True)
    assert seen == [True, False]
    assert [p.name for p in (tmp_path / "classifier").iterdir()] == [f"{_entry_key(train, test, cfg)}.pt"]
    # the dataset's own configuration unless one is given; the given device, else the CPU without CUDA
    cached_classifier(train, test)
    assert calls[-1] == (ClassifierConfig(), torch.device("cpu"))  # "digits" has no configuration of its own
    train.name = "cifar10"  # (MNIST's configuration is the default one)
    cached_classifier(train, test, device=torch.device("meta"))
    assert calls[-1] == (clf_mod.DEFAULT_CONFIGS["cifar10"], torch.device("meta"))


def test_a_committed_classifier_fills_a_cache_miss_exactly(trained, monkeypatch, tmp_path):
    """export_classifier writes weights/classifier/<key>.pt with its key's inputs; a fresh cache takes the
    classifier from there without training, unless DDPM_RETRAIN=1 or the configuration differs."""
    clf, train, test, cache = trained
    monkeypatch.setenv("DDPM_CACHE", str(cache))
    monkeypatch.setenv("DDPM_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv("DDPM_RETRAIN", raising=False)
    path = clf_mod.export_classifier(train, test, TINY)
    key = _entry_key(train, test, TINY)
    assert path == tmp_path / "weights" / "classifier" / f"{key}.pt"
    inputs = json.loads(path.with_suffix(".json").read_text())
    assert clf_mod.key_of_inputs(inputs) == key and inputs["data"] == "digits"

    def boom(*a, **k):
        raise AssertionError("retrained although committed")

    monkeypatch.setattr(clf_mod, "train_classifier", boom)
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "fresh"))
    again = cached_classifier(train, test, TINY, device="cpu", progress=False)
    assert again.accuracy == clf.accuracy
    np.testing.assert_array_equal(classifier_features(again, test.images[:20]), classifier_features(clf, test.images[:20]))
    assert (tmp_path / "fresh" / "classifier" / f"{key}.pt").is_file()
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "fresh2"))
    monkeypatch.setenv("DDPM_RETRAIN", "1")
    with pytest.raises(AssertionError, match="retrained although committed"):
        cached_classifier(train, test, TINY, device="cpu", progress=False)
    monkeypatch.delenv("DDPM_RETRAIN")
    with pytest.raises(AssertionError, match="retrained although committed"):
        cached_classifier(train, test, ClassifierConfig(width=8, steps=61), device="cpu", progress=False)
    # a second export of the same dataset replaces the first; an uncached configuration is refused
    with pytest.raises(FileNotFoundError, match="no cached classifier of digits 8×8"):
        clf_mod.export_classifier(train, test, ClassifierConfig(width=8, steps=62))
    assert [p.name for p in sorted((tmp_path / "weights" / "classifier").iterdir())] == [f"{key}.json", f"{key}.pt"]

"""Every cache key covers what determines its entry: editing the code an entry depends on (in a copy of
the package), its configuration, its data or its weights gives a new key; unrelated code does not."""
from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from diffusion import experiments
from diffusion.fingerprint import training_fingerprint
from diffusion.report import cache as report_cache
from diffusion.report.paths import PACKAGE_DIR


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    """A copy of the ``diffusion`` sources that source_digest reads instead of the real package."""
    copy = tmp_path / "diffusion"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(report_cache, "PACKAGE_DIR", copy)
    return copy


def edit(pkg, rel):
    """Change the code of a module of the copy (a new statement)."""
    path = pkg / rel
    path.write_text(path.read_text() + "\n_EDITED = 1\n")


class _Captured(Exception):
    pass


class KeyRecorder:
    """Stands in for Artefacts: records what ``cached`` is asked for and stops there."""

    def __init__(self):
        self.calls = []

    def cached(self, key_parts, fn, kind, *, producer=None, modules=None, fingerprint=None):
        self.calls.append((key_parts, producer, modules, fingerprint))
        raise _Captured


def _train_key(spec):
    rec = KeyRecorder()
    with pytest.raises(_Captured):
        experiments.trained_model(rec, spec, "cond", dev=torch.device("cpu"))
    parts, producer, modules, fingerprint = rec.calls[0]
    assert modules is None and fingerprint == training_fingerprint()
    return lambda: report_cache.cache_key(parts, producer, fingerprint=fingerprint)[0], parts


SPEC = {"config": "configs/mnist5k.yaml", "set": {"data.name": "mnist5k", "model.class_cond": True},
        "stage": {"num": 4, "steps": 5, "sampler": "ancestral"}}


@pytest.mark.parametrize("rel", ["unet.py", "train.py", "gaussian_diffusion.py", "data.py", "experiments.py"])
def test_trained_model_key_is_not_the_source_text(pkg, rel):
    """A trained model is keyed on what training computes (tests/test_fingerprint.py), not on the text of
    the code: an edit that computes the same keeps the key (and so the cached and committed models)."""
    key, parts = _train_key(SPEC)
    before = key()
    edit(pkg, rel)
    assert key() == before
    assert "recipe" not in parts and set(parts) == {"which", "config", "data", "stage"}


def test_trained_model_key_leaves_out_bookkeeping():
    """When checkpoints are written or kept, and where the data are read from, decide nothing of the model."""
    key, parts = _train_key(SPEC)
    for change in ({"train.ckpt_every": 7}, {"train.keep_last": 9}, {"data.root": "/elsewhere"}):
        other, _ = _train_key(experiments.with_overrides(SPEC, change))
        assert other() == key(), change
    for change in ({"train.log_every": 7}, {"train.sample_every": [5]}, {"train.seed": 1}):
        other, _ = _train_key(experiments.with_overrides(SPEC, change))
        assert other() != key(), change
    assert "ckpt_every" not in parts["config"]["train"] and "root" not in parts["config"]["data"]


def test_trained_model_key_covers_config_data_and_torch(monkeypatch):
    key, parts = _train_key(SPEC)
    other, other_parts = _train_key(experiments.with_overrides(SPEC, {"train.lr": 1e-4}))
    assert other() != key() and other_parts["data"] == parts["data"]
    pooled, pooled_parts = _train_key(experiments.with_overrides(SPEC, {"data.image_size": 8}))
    assert pooled_parts["data"] != parts["data"] and pooled() != key()
    before = key()
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert key() != before


def test_generated_set_key_covers_the_sampler_code(pkg):
    rec = KeyRecorder()
    tm = type("TM", (), {"diffusion": None, "cfg": None, "entry": type("E", (), {"key": "model-key"})(),
                         "compile_sampling": False, "images_per_batch": lambda self, w=None, per_call=None: 2})()
    with pytest.raises(_Captured):
        experiments.generate(rec, tm, 4, sampler="ddim", steps=3)
    parts, producer, modules, _ = rec.calls[0]
    assert parts["model"] == "model-key" and parts["steps"] == 3 and parts["sampler"] == "ddim"
    assert parts["batch"] == 2  # images per batch: with the splitting rule (RECIPE), which noise each image gets
    before = report_cache.cache_key(parts, "05_guidance", modules)[0]
    for rel in ("samplers.py", "guidance.py", "metrics/images.py"):
        edit(pkg, rel)
        after = report_cache.cache_key(parts, "05_guidance", modules)[0]
        assert after != before, rel
        before = after


def test_the_sampling_recipe_is_the_code_of_experiments_not_its_text(tmp_path):
    """RECIPE (in every sample key) hashes experiments.py as code: a docstring or comment edit keeps every sampled
    entry, a changed statement gives new keys."""
    source = (PACKAGE_DIR / "experiments.py").read_text()
    assert experiments.RECIPE == hashlib.sha256(report_cache.code_of(PACKAGE_DIR / "experiments.py")).hexdigest()
    copy = tmp_path / "experiments.py"

    def recipe(text):
        copy.write_text(text)
        return hashlib.sha256(report_cache.code_of(copy)).hexdigest()

    assert '"""``n`` samples of ``tm``' in source and "STAGE_SAMPLES = 16" in source
    assert recipe(source.replace('"""``n`` samples of ``tm``', '"""The ``n`` samples of ``tm``') + "\n# note\n") \
        == experiments.RECIPE
    assert recipe(source.replace("STAGE_SAMPLES = 16", "STAGE_SAMPLES = 17")) != experiments.RECIPE


@pytest.mark.parametrize("rel, changes", [
    ("metrics/classifier.py", True), ("metrics/fid.py", True), ("metrics/images.py", True), ("data.py", True),
    ("train.py", False), ("samplers.py", False),
])
def test_proxy_classifier_is_retrained_after_a_code_change(pkg, tmp_path, monkeypatch, rel, changes):
    """The stale-classifier bug: the key held no code version, so an edited classifier reused an old entry."""
    from diffusion.data import ImageData
    from diffusion.metrics import classifier as clf_mod

    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    trained = []

    def fake_train(train, test, cfg, device, progress):
        trained.append(1)
        net = clf_mod.SmallCNN(1, 10, cfg.width)
        return clf_mod.ProxyClassifier(net.eval(), 0.5, train.label, train.name, 10, cfg)

    monkeypatch.setattr(clf_mod, "train_classifier", fake_train)
    images = torch.zeros(20, 1, 8, 8, dtype=torch.uint8)
    labels = torch.arange(20) % 10
    data = ImageData(images, labels, 10, tuple("0123456789"), "toy", "toy", "train")
    cfg = clf_mod.ClassifierConfig(width=4, steps=1)
    clf_mod.cached_classifier(data, data, cfg, device="cpu", progress=False)
    clf_mod.cached_classifier(data, data, cfg, device="cpu", progress=False)
    assert len(trained) == 1
    edit(pkg, rel)
    clf_mod.cached_classifier(data, data, cfg, device="cpu", progress=False)
    assert len(trained) == (2 if changes else 1)


@pytest.mark.parametrize("rel", ["metrics/fid.py", "metrics/inception.py", "metrics/images.py"])
def test_fid_reference_statistics_recomputed_after_a_code_change(pkg, tmp_path, monkeypatch, rel):
    import numpy as np

    from diffusion.metrics import fid as fid_mod

    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    computed = []
    monkeypatch.setattr(fid_mod, "inception_features_and_logits",
                        lambda images, net, bs, progress: (computed.append(1) or np.eye(3), None))
    data = type("D", (), {"name": "toy", "split": "train", "digest": "abc", "images": torch.zeros(3, 1, 2, 2)})
    net = type("N", (), {"weights_sha256": "f" * 64})
    fid_mod.reference_statistics(data, net)
    fid_mod.reference_statistics(data, net)
    assert len(computed) == 1
    edit(pkg, rel)
    fid_mod.reference_statistics(data, net)
    assert len(computed) == 2


def test_metrics_cache_key_needs_the_modules():
    from diffusion.metrics.cache import cache_key

    with pytest.raises(ValueError, match="modules"):
        cache_key("a", modules=[])
    with pytest.raises(ValueError, match="modules"):
        cache_key("a", modules="diffusion.metrics.fid")
    assert cache_key("a", modules=["diffusion.metrics.fid"]) != cache_key("a", params={"x": 1},
                                                                           modules=["diffusion.metrics.fid"])


def test_metrics_cache_key_is_the_recipe_written_out():
    """The parts joined by "-" (with "/" and " " made "_"), then the first 16 hex digits of the SHA-256 of the
    key-sorted JSON of the parameters (non-JSON values as text), the modules' source digest and torch's version."""
    import hashlib
    import json
    from pathlib import Path

    from diffusion.metrics.cache import cache_key

    modules = ["diffusion.metrics.fid", "diffusion.metrics.kid"]

    def digest(params):
        text = json.dumps({"params": params, "sources": report_cache.source_digest(modules),
                           "torch": str(torch.__version__)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    key = cache_key("cifar10", "a b", "c/d", 7, modules=modules, params={"z": 1, "a": Path("x/y")})
    assert key == "cifar10-a_b-c_d-7-" + digest({"a": "x/y", "z": 1})
    assert cache_key("toy", modules=modules) == "toy-" + digest({})


def test_metrics_cache_dir_is_created_inside_the_cache(tmp_path, monkeypatch):
    from diffusion.metrics.cache import cache_dir

    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "a" / "b"))
    assert cache_dir("classifier") == tmp_path / "a" / "b" / "classifier"
    assert cache_dir("classifier").is_dir()  # a second call finds it there


def test_decoded_dataset_cache_follows_the_decoder(tmp_path, monkeypatch):
    """Decoded offline copies are keyed by the file digest and by the decoding code and Pillow version."""
    import numpy as np
    import PIL

    from diffusion import data as data_mod

    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    decoded = []

    def compute():
        decoded.append(1)
        return np.zeros((2, 3), dtype=np.uint8)

    data_mod._cached_array("toy-abc", compute)
    data_mod._cached_array("toy-abc", compute)
    assert len(decoded) == 1
    copy = tmp_path / "data.py"
    copy.write_text(open(data_mod.__file__).read() + "\n# edited\n")
    monkeypatch.setattr(data_mod, "__file__", str(copy))
    data_mod._cached_array("toy-abc", compute)
    assert len(decoded) == 2
    monkeypatch.setattr(PIL, "__version__", "0.0.0-other")
    data_mod._cached_array("toy-abc", compute)
    assert len(decoded) == 3

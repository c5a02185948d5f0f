"""evaluate(): the JSON record, and every bad-input path with a clear message."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from diffusion.data import DatasetNotFoundError
from diffusion.gaussian_diffusion import create_diffusion
from diffusion.metrics import classifier as clf_mod
from diffusion.metrics.evaluate import evaluate, parse_metrics
from diffusion.metrics.inception import InceptionWeightsMissing


class TinyEps(nn.Module):
    def __init__(self, channels=1, num_classes=None, nan=False):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.num_classes, self.nan = num_classes, nan
        self.emb = nn.Embedding(num_classes + 1, channels) if num_classes else None

    def forward(self, x, t, y=None):
        h = 0.1 * self.conv(x)
        if self.emb is not None and y is not None:
            h = h + self.emb(y)[:, :, None, None]
        return h * float("nan") if self.nan else h


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no Inception weights there
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)


@pytest.fixture
def untrained_classifier(monkeypatch):
    """Stand-in for the trained proxy classifier: an untrained net, so no training happens here."""
    def fake(train, test, config=None, device=None, progress=True, retrain=False):
        net = clf_mod.SmallCNN(train.images.shape[1], train.num_classes, 4).eval()
        return clf_mod.ProxyClassifier(net, 0.5, train.label, train.name, train.num_classes, clf_mod.ClassifierConfig())

    monkeypatch.setattr(clf_mod, "cached_classifier", fake)


def test_parse_metrics():
    assert parse_metrics("cfd, accuracy,cfd") == ["cfd", "accuracy"]
    with pytest.raises(ValueError, match="unknown name.*'fdi'.*allowed: fid, is"):
        parse_metrics("fdi,cfd")
    with pytest.raises(ValueError, match="at least one"):
        parse_metrics("")


def test_evaluate_writes_json_with_every_number(tmp_path, untrained_classifier):
    diffusion = create_diffusion(num_timesteps=4)
    model = TinyEps(num_classes=10)
    out = tmp_path / "eval.json"
    with pytest.warns(UserWarning, match="2048"):
        rec = evaluate(model, diffusion, "mnist5k", metrics=("fid", "cfd", "accuracy", "diversity", "bpd", "nn"),
                       num_samples=20, sampler="ddim", steps=2, guidance_scale=3.0, batch_size=8, bpd_images=3,
                       allow_download=False, progress=False, out_json=out)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(rec, default=str))
    assert rec["dataset"] == "MNIST-5k" and rec["num_samples"] == 20 and rec["sampler"] == "ddim"
    assert rec["steps"] == 2 and rec["guidance_scale"] == 3.0 and rec["class_conditional"]
    m = rec["metrics"]
    assert m["fid"].startswith("unavailable: Inception weights not obtainable offline (expected at ")
    assert str(tmp_path / "torch_home") in m["fid"]
    assert math.isfinite(m["cfd"]["cfd"]) and m["cfd"]["classifier_accuracy"] == 0.5
    assert 0 <= m["accuracy"]["accuracy"] <= 1 and m["accuracy"]["num_samples"] == 20
    assert math.isfinite(m["diversity"]["diversity"])
    assert m["bpd"]["bpd"] == pytest.approx(m["bpd"]["prior_bpd"] + m["bpd"]["kl_bpd"] + m["bpd"]["decoder_bpd"])
    assert m["bpd"]["num_images"] == 3
    assert 0 <= m["nn"]["min_distance"] <= m["nn"]["median_distance"] and len(m["nn"]["first_indices"]) == 20
    assert rec["sampling_seconds_per_image"] > 0 and rec["classifier_accuracy"] == 0.5
    assert any("2048" in w for w in rec["warnings"])


def test_only_inception_metrics_without_weights_raise():
    with pytest.raises(InceptionWeightsMissing, match="pt_inception-2015-12-05-6726825d.pth"):
        evaluate(TinyEps(), create_diffusion(num_timesteps=2), "mnist5k", metrics="fid,is", num_samples=20,
                 allow_download=False, progress=False)


def test_unknown_metric_and_bad_arguments():
    model, diffusion = TinyEps(), create_diffusion(num_timesteps=2)
    with pytest.raises(ValueError, match="unknown name"):
        evaluate(model, diffusion, "mnist5k", metrics="nn,precision", num_samples=4)
    with pytest.raises(ValueError, match="class-conditional"):
        evaluate(model, diffusion, "mnist5k", metrics="accuracy", num_samples=4)
    with pytest.raises(ValueError, match="guidance_scale"):
        evaluate(model, diffusion, "mnist5k", metrics="nn", num_samples=4, guidance_scale=2.0)
    with pytest.raises(ValueError, match="num_samples"):
        evaluate(model, diffusion, "mnist5k", metrics="nn", num_samples=1)


def test_missing_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_DATA_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError):
        evaluate(TinyEps(3), create_diffusion(num_timesteps=2), "cifar10-jpeg", metrics="nn", num_samples=4,
                 progress=False)


def test_nan_samples_are_reported_with_a_count():
    with pytest.raises(ValueError, match=r"contain \d+ NaN"):
        evaluate(TinyEps(nan=True), create_diffusion(num_timesteps=2), "mnist5k", metrics="nn", num_samples=4,
                 progress=False)


def test_class_count_mismatch():
    with pytest.raises(ValueError, match="num_classes=5 but MNIST-5k has 10"):
        evaluate(TinyEps(num_classes=5), create_diffusion(num_timesteps=2), "mnist5k", metrics="nn", num_samples=4,
                 progress=False)


def test_is_refused_below_two_samples_per_split():
    class NeverSampled(TinyEps):
        def forward(self, x, t, y=None):
            raise AssertionError("sampled before the arguments were checked")

    with pytest.raises(ValueError, match=r"num_samples: .*at least 2 images per split.*N=19.*>= 20"):
        evaluate(NeverSampled(), create_diffusion(num_timesteps=2), "mnist5k", metrics="nn,is", num_samples=19,
                 progress=False)


def test_is_recorded_with_n_and_reportable_flag(monkeypatch):
    """The IS entry of the JSON: the score of the 10 in-order splits, n, and reportable: false below 5,000."""
    import numpy as np

    from diffusion.metrics import inception as inception_mod
    from diffusion.metrics.inception_score import inception_score

    logits = np.random.default_rng(0).normal(scale=2.0, size=(30, 1008))
    monkeypatch.setattr(inception_mod, "load_inception", lambda device, allow_download=True: object())
    monkeypatch.setattr(inception_mod, "inception_features_and_logits",
                        lambda images, net, progress=True: (np.zeros((len(images), 2048)), logits[:len(images)]))
    with pytest.warns(UserWarning, match="not reportable"):
        rec = evaluate(TinyEps(), create_diffusion(num_timesteps=2), "mnist5k", metrics="is", num_samples=30,
                       progress=False)
    entry = rec["metrics"]["is"]
    with pytest.warns(UserWarning):
        mean, std = inception_score(logits, splits=10)
    assert (entry["mean"], entry["std"]) == (mean, std)
    assert entry["n"] == 30 and entry["splits"] == 10 and entry["reportable"] is False
    assert any("not reportable" in w and "30 < 5000" in w for w in rec["warnings"])


def test_cli_evaluate_prints_only_json_on_stdout(tmp_path, monkeypatch, capsys):
    """Anything a library prints while evaluating goes to stderr; --no-download reaches evaluate()."""
    import types

    from diffusion import cli
    from diffusion.metrics import evaluate as evaluate_mod

    seen = {}

    def fake_evaluate(model, diffusion, data_name, **kwargs):
        print("Downloading: https://example.invalid/weights.pth")  # what torch.hub used to print
        seen.update(kwargs)
        return {"dataset": data_name, "metrics": {}}

    cfg = types.SimpleNamespace(data=types.SimpleNamespace(root=None, name="mnist5k", image_size=None),
                                model=types.SimpleNamespace(class_cond=False))
    monkeypatch.setattr(cli, "load_trained", lambda ckpt, device=None: (TinyEps(), None, cfg, {"step": 7}))
    monkeypatch.setattr(evaluate_mod, "evaluate", fake_evaluate)
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"")
    assert cli.main(["evaluate", "--ckpt", str(ckpt), "--metrics", "nn", "--device", "cpu", "--no-compile",
                     "--no-download"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"dataset": "mnist5k", "metrics": {}, "checkpoint": str(ckpt), "checkpoint_step": 7}
    assert "Downloading" in err and seen["allow_download"] is False

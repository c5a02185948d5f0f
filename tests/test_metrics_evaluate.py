"""evaluate(): the JSON record, and every bad-input path with a clear message."""
from __future__ import annotations

import json
import math
import sys
import time
import types
import warnings

import pytest
import torch
from torch import nn

from diffusion.data import DatasetNotFoundError
from diffusion.gaussian_diffusion import create_diffusion
from diffusion.metrics import classifier as clf_mod
from diffusion.metrics.evaluate import evaluate, parse_metrics
from diffusion.metrics.images import to_uint8
from diffusion.metrics.inception import InceptionWeightsMissing
from tests.messages import assert_points_at, exact


class TinyEps(nn.Module):
    def __init__(self, channels=1, num_classes=None, nan=False):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.num_classes, self.nan = num_classes, nan
        self.emb = nn.Embedding(num_classes + 1, channels) if num_classes else None
        self.eval()  # evaluated as a trained model is: in eval mode

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


def test_parse_metrics_messages_in_full():
    allowed = "fid, is, cfd, accuracy, diversity, bpd, nn"
    with pytest.raises(ValueError, match=exact(f"metrics: unknown name(s) 'fdi', 'nm'; allowed: {allowed}")):
        parse_metrics(["fdi", "cfd", "nm"])
    with pytest.raises(ValueError, match=exact(f"metrics must name at least one of {allowed}")):
        parse_metrics(" , ")


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


def test_bits_per_dim_of_a_network_in_training_mode_is_refused_before_any_sampling():
    class NeverSampled(TinyEps):
        def forward(self, x, t, y=None):
            raise AssertionError("sampled before the arguments were checked")

    with pytest.raises(ValueError, match=r"bits/dim needs the network in eval mode.*model.eval\(\)"):
        evaluate(NeverSampled().train(), create_diffusion(num_timesteps=2), "mnist5k", metrics="nn,bpd",
                 num_samples=4, progress=False)


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


def test_samples_depend_on_the_seed_only():
    """Batches of ``batch_size`` drawn with one generator seeded with ``seed``: the same images whatever the
    global seed, equal to the sampler called directly."""
    from diffusion.metrics.evaluate import _generate
    from diffusion.metrics.images import to_uint8
    from diffusion.samplers import sample

    diffusion, model = create_diffusion(num_timesteps=4), TinyEps()
    args = (diffusion, model, 5, (1, 4, 4), 3, "ancestral", None, 0.0, None, None, None, 7, torch.device("cpu"),
            False)
    torch.manual_seed(1)
    a, _ = _generate(*args)
    torch.manual_seed(2)
    b, _ = _generate(*args)
    g = torch.Generator().manual_seed(7)
    direct = torch.cat([to_uint8(sample(diffusion, model, (k, 1, 4, 4), generator=g, progress=False)) for k in (3, 2)])
    assert torch.equal(a, b) and torch.equal(a, direct)


# ---------------------------------------------------------------- evaluate() with its parts replaced by spies

class _Spies:
    """Stand-ins for everything ``evaluate`` calls, each recording its arguments: the dataset loader (a 40-image
    training and a 300-image test split of 1×4×4 digits-like data with 10 classes), the sampler (images from the
    generator it is given), the Inception network, the classifier and its metrics, bits/dim, nearest neighbours
    and the clock (each sampler call takes 2 s)."""

    def __init__(self, monkeypatch, inception_missing=False):
        import numpy as np

        import diffusion.data as data_mod
        import diffusion.metrics.fid as fid_mod
        import diffusion.metrics.inception as inception_mod
        import diffusion.metrics.inception_score as is_mod
        import diffusion.metrics.neighbours as nn_mod
        import diffusion.metrics.nll as nll_mod
        import diffusion.samplers as samplers_mod
        from diffusion.data import ImageData

        self.calls = {}
        self.now = 1000.0  # a clock that does not start at 0: durations are differences
        g = torch.Generator().manual_seed(0)
        self.data = {split: ImageData(torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8),
                                      torch.arange(n) % 10, 10, tuple("0123456789"), "Fake digits", "fake", split)
                     for split, n in (("train", 40), ("test", 300))}
        self.net, self.clf = object(), types.SimpleNamespace(accuracy=0.75)
        self.feats = np.random.default_rng(1).normal(size=(64, 3))

        def record(name, *args, **kwargs):
            self.calls.setdefault(name, []).append((args, kwargs))

        def load_dataset(name, split="train", root=None, download=None, image_size=None):
            record("load_dataset", name, split, root, download=download, image_size=image_size)
            return self.data[split]

        def sample(diffusion, model, shape, **kwargs):
            record("sample", diffusion, model, shape, **kwargs)
            self.now += 2.0
            return torch.rand(shape, generator=kwargs["generator"]) * 2 - 1

        def load_inception(device=None, allow_download=True, timeout=None):
            record("load_inception", device, allow_download=allow_download)
            if inception_missing:
                raise inception_mod.InceptionWeightsMissing("no weights here")
            return self.net

        def features(images, net, batch_size=50, progress=True):
            record("inception_features_and_logits", images, net, progress=progress)
            return self.feats[:len(images)], np.ones((len(images), 5))

        def reference_statistics(data, net, batch_size=50, progress=True):
            record("reference_statistics", data, net, progress=progress)
            return fid_mod.activation_statistics(self.feats[::-1])

        def is_record(logits, splits=10):
            record("inception_score_record", logits, splits)
            warnings.warn(f"Inception Score from N={len(logits)} < 5000 images is not reportable", UserWarning)
            return {"mean": 1.5, "reportable": False}

        def cached_classifier(train, test, config=None, device=None, progress=True, retrain=False):
            record("cached_classifier", train, test, device=device, progress=progress)
            return self.clf

        def metric(name):
            def fn(clf, samples, third):
                record(name, clf, samples, third)
                if name == "classifier_fd":  # as the real one warns (evaluate records it as a note instead)
                    warnings.warn(f"classifier FD from {len(samples)} < 2048 samples is biased (upwards)", UserWarning)
                return {name: len(samples)}
            return fn

        def bits_per_dim(diffusion, model, images, labels=None, **kwargs):
            record("bits_per_dim", diffusion, model, images, labels, **kwargs)
            return {"bpd": 3.5}

        def nearest_neighbours(samples, train_images, k=1, chunk_size=2048, device=None, progress=True):
            record("nearest_neighbours", samples, train_images, k=k, device=device, progress=progress)
            n = len(samples)
            return torch.arange(n)[:, None] % 7, torch.linspace(0.5, 1.0, n, dtype=torch.float64)[:, None]

        monkeypatch.setattr(data_mod, "load_dataset", load_dataset)
        monkeypatch.setattr(samplers_mod, "sample", sample)
        monkeypatch.setattr(inception_mod, "load_inception", load_inception)
        monkeypatch.setattr(inception_mod, "weights_path", lambda: "/weights/here.pth")
        monkeypatch.setattr(inception_mod, "inception_features_and_logits", features)
        monkeypatch.setattr(fid_mod, "reference_statistics", reference_statistics)
        monkeypatch.setattr(is_mod, "inception_score_record", is_record)
        monkeypatch.setattr(clf_mod, "cached_classifier", cached_classifier)
        for name in ("classifier_fd", "conditional_accuracy", "class_diversity"):
            monkeypatch.setattr(clf_mod, name, metric(name))
        monkeypatch.setattr(nll_mod, "bits_per_dim", bits_per_dim)
        monkeypatch.setattr(nn_mod, "nearest_neighbours", nearest_neighbours)
        monkeypatch.setattr(time, "perf_counter", lambda: self.now)

    def only(self, name):
        (call,) = self.calls[name]
        return call


def test_evaluate_passes_every_argument_on(monkeypatch, recwarn):
    import numpy as np

    from diffusion.metrics.fid import activation_statistics, frechet_distance

    spies = _Spies(monkeypatch)
    diffusion, model = create_diffusion(num_timesteps=4), TinyEps(num_classes=10)
    line = sys._getframe().f_lineno + 1
    rec = evaluate(model, diffusion, "fake", metrics="fid,is,cfd,accuracy,diversity,bpd,nn", num_samples=30,
                   sampler="ddim", steps=2, eta=0.5, guidance_scale=2.0, batch_size=16, bpd_images=5,
                   bpd_batch_size=3, seed=9, data_root="/data/root", allow_download=False, progress=False,
                   image_size=4)
    assert spies.calls["load_dataset"] == [(("fake", "train", "/data/root"), {"download": None, "image_size": 4}),
                                           (("fake", "test", "/data/root"), {"download": None, "image_size": 4})]
    assert spies.only("load_inception") == ((torch.device("cpu"),), {"allow_download": False})
    train, test = spies.data["train"], spies.data["test"]
    assert spies.only("cached_classifier") == ((train, test), {"device": torch.device("cpu"), "progress": False})
    labels = torch.arange(30) % 10
    g = torch.Generator().manual_seed(9)
    expected = []
    for (args, kwargs), (lo, hi) in zip(spies.calls["sample"], ((0, 16), (16, 30)), strict=True):
        assert args == (diffusion, model, (hi - lo, 1, 4, 4))
        assert torch.equal(kwargs.pop("y"), labels[lo:hi])
        assert kwargs.pop("generator").initial_seed() == 9
        assert kwargs == {"sampler": "ddim", "steps": 2, "eta": 0.5, "guidance_scale": 2.0, "null_class": 10,
                          "progress": False, "device": torch.device("cpu")}
        expected.append(torch.rand(hi - lo, 1, 4, 4, generator=g) * 2 - 1)
    samples = to_uint8(torch.cat(expected))
    (images, net), kw = spies.only("inception_features_and_logits")
    assert torch.equal(images, samples) and net is spies.net and kw == {"progress": False}
    assert spies.only("reference_statistics") == ((train, spies.net), {"progress": False})
    (logits, splits), _ = spies.only("inception_score_record")
    assert logits.shape == (30, 5) and splits == 10
    for name, third in (("classifier_fd", test.images), ("conditional_accuracy", labels),
                        ("class_diversity", labels)):
        (clf, s, t), _ = spies.only(name)
        assert clf is spies.clf and torch.equal(s, samples) and torch.equal(t, third), name
    (d, m, bpd_images, bpd_labels), kw = spies.only("bits_per_dim")
    idx = torch.randperm(300, generator=torch.Generator().manual_seed(9))[:5]
    assert (d, m) == (diffusion, model) and torch.equal(bpd_images, test.images[idx])
    assert torch.equal(bpd_labels, test.labels[idx]) and kw.pop("generator").initial_seed() == 9
    assert kw == {"batch_size": 3, "device": torch.device("cpu"), "progress": False}
    (s, train_images), kw = spies.only("nearest_neighbours")
    assert torch.equal(s, samples) and train_images is train.images
    assert kw == {"k": 1, "device": torch.device("cpu"), "progress": False}
    dist = torch.linspace(0.5, 1.0, 30, dtype=torch.float64)
    fid = frechet_distance(*activation_statistics(spies.feats[:30]), *activation_statistics(spies.feats[::-1]))
    notes = ["FID / classifier FD from 30 < 2048 samples are biased (upwards) and not comparable with values from "
             "more samples",
             "Inception Score from 30 < 5000 samples is not reportable (reportable: false); published values use "
             "50,000"]
    assert rec == {
        "dataset": "Fake digits", "data_name": "fake", "num_samples": 30, "sampler": "ddim", "steps": 2, "eta": 0.5,
        "guidance_scale": 2.0, "class_conditional": True, "seed": 9, "num_timesteps": 4, "device": "cpu",
        "sampling_seconds_per_image": 4.0 / 30, "classifier_accuracy": 0.75,
        "metrics": {"fid": fid, "is": {"mean": 1.5, "reportable": False}, "cfd": {"classifier_fd": 30},
                    "accuracy": {"conditional_accuracy": 30}, "diversity": {"class_diversity": 30},
                    "bpd": {"bpd": 3.5, "conditioned_on_true_labels": True},
                    "nn": {"min_distance": 0.5, "median_distance": float(dist.median()),
                           "mean_distance": float(dist.mean()), "distance": "L2 over pixels scaled to [0, 1]",
                           "first_indices": (torch.arange(30) % 7).tolist(), "first_distances": dist.tolist()}},
        "warnings": notes}
    assert [str(w.message) for w in recwarn] == notes
    for w in recwarn:
        assert w.category is UserWarning
        assert_points_at(w, __file__, line)
    assert np.isfinite(fid)


def test_evaluate_defaults(monkeypatch):
    """Defaults: η = 0, batches of 256, 256 bits/dim images in batches of 64, seed 0, downloads allowed, progress
    shown; 2,048 samples are enough for FID without a note."""
    spies = _Spies(monkeypatch)
    diffusion, model = create_diffusion(num_timesteps=4), TinyEps(num_classes=10)
    rec = evaluate(model, diffusion, "fake", metrics="fid,cfd,bpd")
    assert rec["warnings"] == [] and rec["seed"] == 0 and rec["eta"] == 0.0 and rec["steps"] == 4
    assert [args[2][0] for args, _ in spies.calls["sample"]] == [256] * 8
    _, kwargs = spies.calls["sample"][0]
    assert (kwargs["eta"], kwargs["generator"].initial_seed(), kwargs["progress"], kwargs["steps"]) == (0.0, 0, True,
                                                                                                         None)
    assert spies.calls["load_dataset"][0][0][2] is None and spies.calls["load_dataset"][0][1]["image_size"] is None
    assert spies.only("load_inception")[1] == {"allow_download": True}
    assert spies.only("cached_classifier")[1]["progress"] is True
    (_, _, images, _), kw = spies.only("bits_per_dim")
    assert len(images) == 256 and kw["batch_size"] == 64 and kw["generator"].initial_seed() == 0
    assert kw["progress"] is True
    with pytest.warns(UserWarning, match=r"^FID / classifier FD from 2047 < 2048 samples"):
        evaluate(model, diffusion, "fake", metrics="cfd", num_samples=2047)


@pytest.mark.filterwarnings("ignore:FID / classifier FD from 2 < 2048")
@pytest.mark.parametrize("metrics, splits", [("bpd", ["test"]), ("nn", ["train"]), ("cfd", ["train", "test"])])
def test_evaluate_loads_only_the_splits_it_needs(monkeypatch, metrics, splits):
    spies = _Spies(monkeypatch)
    rec = evaluate(TinyEps(num_classes=10), create_diffusion(num_timesteps=2), "fake", metrics=metrics,
                   num_samples=2, progress=False)
    assert [args[1] for args, _ in spies.calls["load_dataset"]] == splits
    assert "load_inception" not in spies.calls and rec["dataset"] == "Fake digits"
    assert ("sample" in spies.calls) == (metrics != "bpd")


@pytest.mark.parametrize("metrics", ["fid", "cfd"])
def test_evaluate_notes_small_fid_samples(monkeypatch, metrics):
    _Spies(monkeypatch)
    with pytest.warns(UserWarning, match="^FID / classifier FD from 30 < 2048 samples are biased"):
        evaluate(TinyEps(num_classes=10), create_diffusion(num_timesteps=2), "fake", metrics=metrics + ",nn",
                 num_samples=30, progress=False)


def test_evaluate_records_missing_inception_weights(monkeypatch):
    _Spies(monkeypatch, inception_missing=True)
    rec = evaluate(TinyEps(num_classes=10), create_diffusion(num_timesteps=2), "fake", metrics="is,nn",
                   num_samples=20, progress=False)
    assert rec["metrics"]["is"] == "unavailable: Inception weights not obtainable offline (expected at " \
                                   "/weights/here.pth)"
    assert list(rec["metrics"]) == ["is", "nn"] and rec["warnings"] == ["no weights here"]


@pytest.mark.filterwarnings("ignore:FID / classifier FD from 2 < 2048")
def test_evaluate_runs_on_the_models_device(monkeypatch):
    """The device of the model's parameters ("meta" stands in for an accelerator) reaches every part; a model
    without parameters is evaluated on the CPU."""
    from diffusion.metrics import evaluate as evaluate_mod

    spies = _Spies(monkeypatch)
    seen = []

    def fake_generate(diffusion, model, n, shape, batch_size, *args):
        seen.append(args[-2])
        return torch.zeros(n, *shape, dtype=torch.uint8), 0.0

    monkeypatch.setattr(evaluate_mod, "_generate", fake_generate)
    rec = evaluate(TinyEps(num_classes=10).to("meta"), create_diffusion(num_timesteps=2), "fake", metrics="cfd",
                   num_samples=2, progress=False)
    assert rec["device"] == "meta" and seen == [torch.device("meta")]
    assert spies.calls["cached_classifier"][-1][1]["device"] == torch.device("meta")

    def model(x, t, y=None):
        return x

    model.num_classes = 10
    rec = evaluate(model, create_diffusion(num_timesteps=2), "fake", metrics="cfd", num_samples=2, progress=False)
    assert rec["device"] == "cpu" and seen[-1] == torch.device("cpu")


def test_evaluate_argument_boundaries_and_messages(monkeypatch):
    _Spies(monkeypatch)
    model, diffusion = TinyEps(num_classes=10), create_diffusion(num_timesteps=2)
    rec = evaluate(model, diffusion, "fake", metrics="nn,bpd", num_samples=2, batch_size=1, bpd_images=1,
                   bpd_batch_size=1, progress=False)
    assert rec["num_samples"] == 2
    for bad in ((0, 1, 1), (1, 0, 1), (1, 1, 0)):
        with pytest.raises(ValueError, match=exact("batch_size, bpd_images and bpd_batch_size must be positive, got "
                                                   f"{bad[0]}, {bad[1]}, {bad[2]}")):
            evaluate(model, diffusion, "fake", metrics="nn", num_samples=2, batch_size=bad[0], bpd_images=bad[1],
                     bpd_batch_size=bad[2])
    with pytest.raises(ValueError, match=exact("num_samples must be an integer >= 2, got 1")):
        evaluate(model, diffusion, "fake", metrics="nn", num_samples=1)
    with pytest.raises(ValueError, match=exact("metrics ['accuracy'] need a class-conditional model (num_classes); "
                                               "this model is unconditional")):
        evaluate(TinyEps(), diffusion, "fake", metrics="nn,accuracy", num_samples=2)
    with pytest.raises(ValueError, match=exact("guidance_scale needs a class-conditional model (num_classes); this "
                                               "model is unconditional")):
        evaluate(TinyEps(), diffusion, "fake", metrics="nn", num_samples=2, guidance_scale=1.5)


def test_evaluate_names_the_batch_with_non_finite_samples(monkeypatch):
    import diffusion.samplers as samplers_mod

    _Spies(monkeypatch)
    calls = []

    def sample(diffusion, model, shape, **kwargs):
        calls.append(shape)
        return torch.full(shape, float("nan") if len(calls) == 2 else 0.0)

    monkeypatch.setattr(samplers_mod, "sample", sample)
    with pytest.raises(ValueError, match=exact("samples 3..4 contain 32 NaN or infinite values (of 32); the model or "
                                               "sampler diverged — refusing to compute metrics on them")):
        evaluate(TinyEps(num_classes=10), create_diffusion(num_timesteps=2), "fake", metrics="nn", num_samples=5,
                 batch_size=3, progress=False)


def test_evaluate_unconditional_samples_have_no_labels(monkeypatch):
    """``num_classes=0`` and a model without a ``num_classes`` attribute are unconditional: no labels, no null
    class."""
    spies = _Spies(monkeypatch)
    diffusion = create_diffusion(num_timesteps=2)
    rec = evaluate(TinyEps(), diffusion, "fake", metrics="nn", num_samples=2, num_classes=0, progress=False)
    assert rec["class_conditional"] is False
    rec = evaluate(lambda x, t, y=None: x, diffusion, "fake", metrics="nn", num_samples=2, progress=False)
    assert rec["class_conditional"] is False
    for _, kwargs in spies.calls["sample"]:
        assert kwargs["y"] is None and kwargs["null_class"] is None and kwargs["guidance_scale"] is None
    rec = evaluate(TinyEps(), diffusion, "fake", metrics="bpd", num_samples=2, bpd_images=4, progress=False)
    (_, _, images, labels), _ = spies.only("bits_per_dim")
    assert len(images) == 4 and labels is None and rec["metrics"]["bpd"]["conditioned_on_true_labels"] is False


def test_evaluate_writes_its_record_as_indented_json_creating_folders(monkeypatch, tmp_path):
    _Spies(monkeypatch)
    out = tmp_path / "new" / "deeper" / "eval.json"
    rec = evaluate(TinyEps(num_classes=10), create_diffusion(num_timesteps=2), "fake", metrics="nn", num_samples=2,
                   progress=False, out_json=str(out))
    assert out.read_text() == json.dumps(rec, indent=2) + "\n"

"""The offline proxy: a small classifier trained by this package, and the numbers derived from it.

FID needs Inception weights that cannot be downloaded everywhere. What this repository can always
measure is a Fréchet distance on the penultimate features of a small CNN trained here on the
dataset's training split — the **classifier FD** ("cfd"), same formula as FID (:func:`.fid.frechet_distance`)
but a different, dataset-specific feature space, so it is *not* FID and is never called that — and
the **conditional accuracy**: how often a sample generated for class c is classified as c, the
number that shows classifier-free guidance (eq. 18) working. A per-class **diversity** (mean pairwise
feature distance) shows what guidance costs. Every result carries the classifier's own held-out
accuracy, since a proxy is only as good as its classifier.

Trained classifiers are cached under ``<cache>/classifier`` keyed by dataset name, digests of both
splits, the hyper-parameters and the source digest of this module and what it imports (:mod:`.cache`), so
a change to the network or its training never reuses a stale classifier. A classifier too costly to retrain on
every clean clone (the CIFAR-10 one) is committed as ``weights/classifier/<key>.pt`` with its key's inputs in
``<key>.json`` (:func:`export_classifier`); a cache miss takes it from there unless ``DDPM_RETRAIN=1``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from diffusion.progress import tqdm

from ..data import to_model_range
from .cache import cache_dir, cache_key
from .fid import activation_statistics, frechet_distance, warn_if_few_samples
from .images import to_uint8

FEATURE_DIM = 128
KEY_MODULES = ["diffusion.metrics.classifier"]  # the code a classifier's cache key covers


@dataclass(frozen=True)
class ClassifierConfig:
    """Hyper-parameters of the proxy classifier and its training (part of the cache key)."""

    width: int = 16            # channels of the first stage; stages use width, 2·width, 4·width
    steps: int = 400           # optimiser steps (at least 10)
    batch_size: int = 128
    lr: float = 3e-3           # peak learning rate of the one-cycle schedule (AdamW)
    weight_decay: float = 5e-4
    max_shift: float = 2.0     # augmentation: random translation, pixels
    max_rotation: float = 10.0 # augmentation: random rotation, degrees
    max_scale: float = 0.1     # augmentation: random scale in [1 − s, 1 + s]
    hflip: bool = False        # augmentation: random horizontal flip (natural images only)
    seed: int = 0


DEFAULT_CONFIGS = {
    "mnist5k": ClassifierConfig(width=16, steps=400),  # 98.4 % held-out, about a minute on one CPU core
    # 20 epochs of the 50,000 training images; trained once and committed (weights/classifier/)
    "cifar10": ClassifierConfig(width=32, steps=8000, lr=2e-3, max_rotation=0.0, max_scale=0.0, hflip=True),
    "cifar10-jpeg": ClassifierConfig(width=32, steps=8000, lr=2e-3, max_rotation=0.0, max_scale=0.0, hflip=True),
}


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    """Three conv stages (max-pooled between), global average pooling, a 128-d penultimate layer
    (the feature space of the classifier FD) and a linear head. Input: float images in [-1, 1]."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_bn_relu(in_channels, w), nn.MaxPool2d(2),
            _conv_bn_relu(w, 2 * w), _conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2),
            _conv_bn_relu(2 * w, 4 * w), _conv_bn_relu(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * w, FEATURE_DIM), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(FEATURE_DIM, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class ProxyClassifier:
    """A trained proxy classifier with what is needed to report it honestly."""

    net: SmallCNN
    accuracy: float          # held-out (test split) accuracy, in [0, 1]
    dataset_label: str       # honest display label of the training data, e.g. "MNIST-5k"
    data_name: str
    num_classes: int
    config: ClassifierConfig

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def info(self) -> dict:
        """The fields every proxy number is reported with."""
        return {"classifier_accuracy": self.accuracy, "classifier_dataset": self.dataset_label}


def _augment(x: torch.Tensor, cfg: ClassifierConfig, generator: torch.Generator) -> torch.Tensor:
    """Random small affine transforms (shift, rotation, scale) and optional horizontal flips of a batch."""
    b, _, h, w = x.shape
    u = torch.rand(b, 4, generator=generator, device=x.device) * 2 - 1
    angle = u[:, 0] * math.radians(cfg.max_rotation)
    scale = 1 + u[:, 1] * cfg.max_scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * 2 * cfg.max_shift / w], 1),
                         torch.stack([sin, cos, u[:, 3] * 2 * cfg.max_shift / h], 1)], 1)
    if cfg.hflip:
        flip = torch.rand(b, generator=generator, device=x.device) < 0.5
        theta[:, 0, 0] = torch.where(flip, -theta[:, 0, 0], theta[:, 0, 0])
        theta[:, 1, 0] = torch.where(flip, -theta[:, 1, 0], theta[:, 1, 0])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


@torch.no_grad()
def _predict_logits(net: nn.Module, images: torch.Tensor, batch_size: int, features: bool = False) -> torch.Tensor:
    device = next(net.parameters()).device
    net.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_model_range(images[start:start + batch_size].to(device))
        out.append((net.features(x) if features else net(x)).float().cpu())
    return torch.cat(out)


def train_classifier(train, test, config: ClassifierConfig | None = None, device=None,
                     progress: bool = True) -> ProxyClassifier:
    """Train a :class:`SmallCNN` on ``train`` (an ``ImageData``) and measure its accuracy on ``test``.

    Uses AdamW with a one-cycle learning rate, light affine augmentation and a seeded generator. On
    CPU it runs with one intra-op thread (restored afterwards): these small convolutions were measured
    several times faster that way on shared cores than with two threads.
    """
    cfg = config or ClassifierConfig()
    if train.num_classes < 2:
        raise ValueError(f"the proxy classifier needs a labelled dataset (num_classes >= 2); "
                         f"{train.label!r} has num_classes={train.num_classes}")
    if not isinstance(cfg.steps, int) or cfg.steps < 10:
        raise ValueError(f"the proxy classifier needs steps >= 10 (its one-cycle learning rate warms up over the "
                         f"first 20 % of the steps), got steps={cfg.steps!r}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _train(train, test, cfg, device, progress)
    finally:
        torch.set_num_threads(threads)


def _train(train, test, cfg: ClassifierConfig, device: torch.device, progress: bool) -> ProxyClassifier:
    torch.manual_seed(cfg.seed)
    net = SmallCNN(train.images.shape[1], train.num_classes, cfg.width).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.2)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    cpu_gen = torch.Generator().manual_seed(cfg.seed)
    images, labels = train.images, train.labels
    n = len(images)
    perm, pos = torch.randperm(n, generator=cpu_gen), 0
    net.train()
    bar = tqdm(range(cfg.steps), desc=f"classifier ({train.label})", disable=not progress, leave=False)
    for _ in bar:
        if pos + cfg.batch_size > n:
            perm, pos = torch.randperm(n, generator=cpu_gen), 0
        idx = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        x = _augment(to_model_range(images[idx].to(device)), cfg, gen)
        loss = F.cross_entropy(net(x), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    pred = _predict_logits(net, test.images, 500).argmax(1)
    accuracy = float((pred == test.labels).float().mean())
    return ProxyClassifier(net.eval(), accuracy, train.label, train.name, train.num_classes, cfg)


def classifier_key(train, test, config: ClassifierConfig, device) -> tuple[str, dict]:
    """The cache key of the classifier of ``train``/``test`` with ``config`` trained on ``device``, and the
    inputs it is computed from (what :func:`export_classifier` records beside a committed classifier)."""
    inputs = {"data": train.name, "train": train.digest, "test": test.digest,
              "params": {**asdict(config), "device": torch.device(device).type}}
    return key_of_inputs(inputs), inputs


def key_of_inputs(inputs: dict) -> str:
    """The key this code gives recorded classifier ``inputs`` (stale once the code or torch changed)."""
    return cache_key(inputs["data"], inputs["train"], inputs["test"], params=inputs["params"], modules=KEY_MODULES)


def committed_dir() -> Path:
    """``weights/classifier`` (under ``$DDPM_WEIGHTS_DIR`` when set): committed classifiers."""
    from ..report.cache import weights_root

    return weights_root() / "classifier"


def export_classifier(train, test, config: ClassifierConfig | None = None, device="cpu") -> Path:
    """Copy the cached classifier of ``train``/``test`` to :func:`committed_dir` as ``<key>.pt`` with its
    key's inputs in ``<key>.json``; other committed classifiers of the same dataset are removed."""
    import json
    import shutil

    cfg = config or DEFAULT_CONFIGS.get(train.name, ClassifierConfig())
    key, inputs = classifier_key(train, test, cfg, device)
    src = Path(cache_dir("classifier")) / f"{key}.pt"
    if not src.is_file():
        raise FileNotFoundError(f"no cached classifier of {train.label} with this configuration at {src}; "
                                "train it first (make figures, or load_classifier)")
    out = committed_dir()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.json"):
        if old.stem != key and json.loads(old.read_text()).get("data") == train.name:
            old.unlink()
            old.with_suffix(".pt").unlink(missing_ok=True)
    shutil.copy2(src, out / f"{key}.pt")
    (out / f"{key}.json").write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n")
    return out / f"{key}.pt"


def cached_classifier(train, test, config: ClassifierConfig | None = None, device=None, progress: bool = True,
                      retrain: bool = False) -> ProxyClassifier:
    """:func:`train_classifier` with an on-disk cache keyed by dataset name, both splits' digests, ``config``,
    the device type it is trained on and the source digest of this module (see :mod:`.cache`); a miss is
    filled from a committed classifier of the same key (:func:`committed_dir`) unless ``retrain`` or
    ``DDPM_RETRAIN=1``."""
    import os
    import shutil

    cfg = config or DEFAULT_CONFIGS.get(train.name, ClassifierConfig())
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    key, _ = classifier_key(train, test, cfg, device)
    path = Path(cache_dir("classifier")) / f"{key}.pt"
    committed = committed_dir() / f"{key}.pt"
    if (not path.is_file() and not retrain and committed.is_file()
            and os.environ.get("DDPM_RETRAIN", "") in ("", "0")):
        shutil.copy2(committed, path)
    if path.is_file() and not retrain:
        state = torch.load(path, map_location=device, weights_only=True)
        net = SmallCNN(state["in_channels"], state["num_classes"], cfg.width).to(device)
        net.load_state_dict(state["state_dict"])
        return ProxyClassifier(net.eval(), state["accuracy"], state["dataset_label"], train.name,
                               state["num_classes"], cfg)
    clf = train_classifier(train, test, cfg, device, progress)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": clf.net.state_dict(), "accuracy": clf.accuracy, "dataset_label": clf.dataset_label,
                "in_channels": train.images.shape[1], "num_classes": clf.num_classes}, tmp)
    tmp.replace(path)
    return clf


def load_classifier(data_name: str, root=None, config: ClassifierConfig | None = None, device=None,
                    progress: bool = True, retrain: bool = False) -> ProxyClassifier:
    """The proxy classifier of dataset ``data_name`` (train split; accuracy on the test split), trained
    on first use and cached afterwards. Raises ``DatasetNotFoundError`` if the data is missing."""
    from ..data import load_dataset

    train, test = load_dataset(data_name, "train", root), load_dataset(data_name, "test", root)
    return cached_classifier(train, test, config, device, progress, retrain)


def _check_images(clf: ProxyClassifier, images: torch.Tensor, name: str) -> torch.Tensor:
    images = to_uint8(images, name)
    expected = clf.net.body[0][0].in_channels
    if images.shape[1] != expected:
        raise ValueError(f"{name} have {images.shape[1]} channels but the classifier for {clf.dataset_label} "
                         f"expects {expected}")
    return images


def classifier_features(clf: ProxyClassifier, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Penultimate (128-d) classifier features, float64 (N, 128), of NCHW images (uint8 or float in
    [-1, 1]; floats are quantised to uint8 first, as saved PNGs would be)."""
    images = _check_images(clf, images, "images")
    return _predict_logits(clf.net, images, batch_size, features=True).double().numpy()


def classifier_predict(clf: ProxyClassifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted class indices (N,) of NCHW images (uint8 or float in [-1, 1])."""
    images = _check_images(clf, images, "images")
    return _predict_logits(clf.net, images, batch_size).argmax(1)


def classifier_fd(clf: ProxyClassifier, samples: torch.Tensor, reference) -> dict:
    """Classifier FD: the Fréchet distance of :func:`.fid.frechet_distance` (the FID formula, section
    4.1.3) on this classifier's penultimate features, between ``samples`` and ``reference`` (images,
    or precomputed ``(mu, sigma)``). Not FID: a different, dataset-specific feature space.

    Returns ``{"cfd", "num_samples", "num_reference", "classifier_accuracy", "classifier_dataset"}``.
    """
    warn_if_few_samples(len(samples), "classifier FD")
    if isinstance(reference, tuple):
        (mu_ref, sigma_ref), num_ref = reference, None
    else:
        mu_ref, sigma_ref = activation_statistics(classifier_features(clf, reference))
        num_ref = len(reference)
    mu, sigma = activation_statistics(classifier_features(clf, samples))
    return {"cfd": frechet_distance(mu, sigma, mu_ref, sigma_ref), "num_samples": len(samples),
            "num_reference": num_ref, **clf.info()}


def _check_labels(clf: ProxyClassifier, samples: torch.Tensor, labels) -> torch.Tensor:
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    if labels.shape != (len(samples),):
        raise ValueError(f"labels must hold one class per sample, shape ({len(samples)},), got {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= clf.num_classes):
        raise ValueError(f"labels must lie in [0, {clf.num_classes - 1}] (the null class cannot be classified), "
                         f"got values in [{int(labels.min())}, {int(labels.max())}]")
    return labels


def conditional_accuracy(clf: ProxyClassifier, samples: torch.Tensor, labels) -> dict:
    """Fraction of class-conditional samples that the classifier assigns to the class they were
    generated for (the effect of guidance, eq. 18).

    Returns ``{"accuracy", "per_class" (list, NaN for absent classes), "num_samples",
    "classifier_accuracy", "classifier_dataset"}``.
    """
    labels = _check_labels(clf, samples, labels)
    correct = (classifier_predict(clf, samples) == labels).double()
    per_class = [float(correct[labels == c].mean()) if (labels == c).any() else float("nan")
                 for c in range(clf.num_classes)]
    return {"accuracy": float(correct.mean()), "per_class": per_class, "num_samples": len(samples), **clf.info()}


def class_diversity(clf: ProxyClassifier, samples: torch.Tensor, labels) -> dict:
    """Within-class diversity: for each class, the mean L2 distance between the classifier features of
    two different samples of that class; averaged over the classes with at least two samples.

    Returns ``{"diversity", "per_class" (NaN where < 2 samples), "num_samples", "classifier_accuracy",
    "classifier_dataset"}``.
    """
    labels = _check_labels(clf, samples, labels)
    feats = torch.from_numpy(classifier_features(clf, samples))
    per_class = []
    for c in range(clf.num_classes):
        f = feats[labels == c]
        k = len(f)
        per_class.append(float(torch.cdist(f, f).sum() / (k * (k - 1))) if k >= 2 else float("nan"))
    valid = [d for d in per_class if not math.isnan(d)]
    if not valid:
        raise ValueError("class_diversity needs at least two samples of some class")
    return {"diversity": float(np.mean(valid)), "per_class": per_class, "num_samples": len(samples), **clf.info()}

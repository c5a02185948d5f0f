"""What a training checkpoint holds, and how a run is put back where one left it.

:func:`checkpoint_state` is the payload ``Trainer.save`` writes (layout and file handling:
``diffusion.checkpoint``): the step, the raw and EMA weights, the optimiser state, the running statistics and
the elapsed time, each rank's RNG and data-order state, the world size, the full configuration, a description
of the data, the git state and the torch version. :func:`restore` resumes from such a payload: it compares the
saved configuration with the run's (``diffusion.runs.resume_config_changes``: the model and the diffusion must
match), checks that the weights fit the model, loads weights, optimiser and statistics, applies the setting
changes that were accepted, and restores the RNG and the data order (reseeded reproducibly when the number of
processes changed). On the CPU a resumed run then continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import torch

from diffusion import distributed
from diffusion.checkpoint import CheckpointError, check_weights_fit, get_rng_state, git_info, set_rng_state
from diffusion.config import config_from_checkpoint, config_to_dict
from diffusion.progress import tqdm
from diffusion.runs import resume_config_changes

__all__ = ["REQUIRED", "checkpoint_state", "restore"]

REQUIRED = ("step", "model", "ema", "optimizer", "train_state", "rank_states", "world_size", "config")


def checkpoint_state(trainer) -> dict:
    """The checkpoint payload of a ``diffusion.train.Trainer`` (collective under DDP: every rank must call it;
    rank 0's is complete)."""
    data = trainer.data
    rank_state = {"rng": get_rng_state(), "data": trainer.batches.state_dict()}
    return {
        "step": trainer.step,
        "model": trainer.model.state_dict(),
        "ema": trainer.ema.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "train_state": {"stats": trainer.stats.state_dict(), "elapsed_s": float(trainer.elapsed_s)},
        "rank_states": distributed.gather_objects(rank_state),
        "world_size": trainer.dist.world_size,
        "config": config_to_dict(trainer.cfg),
        "data": {"name": data.name, "label": data.label, "channels": int(data.channels),
                 "image_size": int(data.image_size), "num_classes": int(data.num_classes),
                 "class_names": [str(c) for c in data.class_names]},
        "git": git_info(),
        "torch_version": str(torch.__version__),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def restore(trainer, state: dict, path) -> dict:
    """Put ``trainer`` (set up, not yet trained) where the checkpoint ``state`` read from ``path`` left its run:
    weights, optimiser, statistics, elapsed time, step, RNG and data order. Returns the accepted configuration
    changes (``resume_config_changes``); raises ``CheckpointError`` naming ``path`` when the checkpoint does not
    fit this configuration or model."""
    try:
        saved = config_to_dict(config_from_checkpoint(state["config"]))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path} holds a configuration this code cannot read: {err}") from None
    changes = resume_config_changes(saved, config_to_dict(trainer.cfg), trainer.allow_config_change,
                                    source=str(path), fixed_error=CheckpointError)
    try:
        check_weights_fit(trainer.model, state["model"], path, "model weights")
        check_weights_fit(trainer.ema.module, state["ema"].get("module"), path, "EMA weights")
        trainer.model.load_state_dict(state["model"])
        trainer.ema.load_state_dict(state["ema"])
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError, AttributeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path} does not fit this model: {' '.join(str(err).split())}") from None
    tc = trainer.cfg.train  # accepted changes take effect: the run uses what config.json will say
    if "train.ema_decay" in changes or "train.ema_warmup" in changes:
        trainer.ema.decay, trainer.ema.warmup = float(tc.ema_decay), bool(tc.ema_warmup)
    optimizer = trainer.optimizer
    if any(k.startswith("train.adam_betas") for k in changes):
        for group in optimizer.param_groups:
            group["betas"] = tuple(tc.adam_betas)
    # Optimizer moments take their parameter's memory layout (channels_last) for the fused kernels.
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
        if trainer.compile == "step" and not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=trainer.device)
    trainer.stats.load_state_dict(state["train_state"]["stats"])
    trainer.elapsed_s = float(state["train_state"]["elapsed_s"])
    trainer.step = int(state["step"])
    dist = trainer.dist
    if int(state["world_size"]) == dist.world_size:
        mine = state["rank_states"][dist.rank]
        set_rng_state(mine["rng"])
        trainer.batches.load_state_dict(mine["data"])
    else:  # another world size: fresh, reproducible randomness for the new shards
        torch.manual_seed(tc.seed + 7919 * trainer.step + dist.rank)
        if trainer.is_main:
            tqdm.write(f"note: {path} was written by {state['world_size']} process(es), this run has "
                       f"{dist.world_size}; model and optimizer restored, data order reseeded", file=sys.stderr)
    return changes

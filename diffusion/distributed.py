"""Multi-process training with ``torchrun`` (DistributedDataParallel, the standard engine).

``torchrun --nproc_per_node=N -m diffusion train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` joins the process group (NCCL on CUDA, gloo on
CPU). Without those variables everything here is a no-op for a single process, so the trainer has one
code path. The helpers below are collectives: every rank must call them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_from_env", "all_reduce_sum", "all_reduce_min", "all_reduce_max", "gather_objects",
           "barrier", "is_initialized", "destroy"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env() -> DistInfo:
    """Join the process group described by torchrun's environment variables (once); a single process
    (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) gets ``DistInfo(0, 1, 0)``."""
    if is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank)


def destroy() -> None:
    """Leave the process group if one was joined."""
    if is_initialized():
        dist.destroy_process_group()


def _all_reduce(tensor: torch.Tensor, op) -> torch.Tensor:
    if not is_initialized():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=op)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the input is unchanged)."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """Minimum over ranks (a copy)."""
    return _all_reduce(tensor, dist.ReduceOp.MIN)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum over ranks (a copy)."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def gather_objects(obj) -> list | None:
    """Every rank's ``obj`` as a list on rank 0 (``None`` elsewhere); ``[obj]`` for a single process."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    """Wait for every rank (no-op for a single process)."""
    if is_initialized():
        dist.barrier()

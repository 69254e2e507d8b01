"""Data-parallel helpers (``torch.distributed``, gloo or nccl) for the trainer.

The trainer never initialises a process group itself (that is global state): run it under
``torchrun`` and call :func:`init_from_env` first (the CLI does), or initialise one yourself.
With a group of ``world_size`` ranks, every rank builds the same global batch, keeps the rows
:func:`rank_slice` gives it, and :func:`sync_gradients` sums the gradients (each rank's loss is
already divided by the *global* normaliser, so the sum equals the single-process gradient).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the data-parallel group."""

    rank: int = 0
    """This process's rank (0 when not distributed)."""
    world_size: int = 1
    """Number of processes (1 when not distributed)."""

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """The current process group's rank and size (``DistInfo()`` when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def init_from_env(backend: str = "gloo") -> bool:
    """Initialise the default process group from ``torchrun``'s env vars if ``WORLD_SIZE > 1``.

    Returns True when a group was initialised here (the caller should destroy it at the end).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend=backend)
    return True


def rank_slice(n_rows: int, info: DistInfo) -> slice:
    """Rows ``[rank * n / world, (rank + 1) * n / world)`` of a global batch of ``n_rows``."""
    if n_rows % info.world_size:
        raise ValueError(f"batch of {n_rows} rows does not split over world_size={info.world_size}")
    per = n_rows // info.world_size
    return slice(info.rank * per, (info.rank + 1) * per)


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    """Sum ``t`` over ranks in place (no-op when not distributed); returns ``t``."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def sync_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum gradients over ranks with one flat all-reduce (missing grads count as zero)."""
    if not info.enabled:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def barrier(info: DistInfo) -> None:
    """Wait for all ranks (no-op when not distributed)."""
    if info.enabled:
        dist.barrier()

"""Data-parallel training across processes and machines, set up from ``torchrun``'s environment.

``torchrun --nproc_per_node=N script.py`` (or ``--nnodes``/``--rdzv_endpoint`` for several
machines) exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; ``init_distributed``
reads them, picks the NCCL backend on CUDA and Gloo otherwise, and returns a
``DistributedContext``. Without those variables everything runs as a single process and every
helper here is a cheap no-op.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from cardiocore.errors import CardioInputError
from cardiocore.train.device import select_device

GLOO_DRAIN_SECONDS = 0.2
"""Pause (GIL released) between the final barrier and destroying a process group; see teardown."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a (possibly one-process) run.

    ``rank``: global index of this process; ``local_rank``: index on this machine (which GPU);
    ``world_size``: number of processes; ``device``: the device this process computes on;
    ``owns_group``: whether ``init_distributed`` created the process group (and so tears it down).
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None
    owns_group: bool

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that logs and writes checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as error:
        raise CardioInputError(f"environment variable {name}", f"{value!r} is not an integer") from error


def init_distributed(device_preference: str | None = None, timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group described by torchrun's environment variables (if any).

    The device is ``cuda:LOCAL_RANK`` when CUDA is used (each process drives its own GPU);
    otherwise ``select_device(device_preference)``. A process group created elsewhere (e.g. by
    the caller) is reused and left for its creator to destroy.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    already = dist.is_available() and dist.is_initialized()
    if already:
        world_size, rank = dist.get_world_size(), dist.get_rank()
    if world_size < 1 or not 0 <= rank < world_size:
        raise CardioInputError(
            "environment variables RANK/WORLD_SIZE", f"rank {rank} does not fit world size {world_size}"
        )

    device = select_device(device_preference)
    if device.type == "cuda" and world_size > 1:
        if local_rank >= torch.cuda.device_count():
            raise CardioInputError(
                "environment variable LOCAL_RANK",
                f"{local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible",
                "start at most one process per GPU (torchrun --nproc_per_node)",
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)

    if world_size == 1:
        return DistributedContext(rank, local_rank, 1, device, None, owns_group=False)
    if already:
        return DistributedContext(rank, local_rank, world_size, device, dist.get_backend(), owns_group=False)
    if not dist.is_available():
        raise CardioInputError("WORLD_SIZE", f"is {world_size} but this PyTorch build has no torch.distributed")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise CardioInputError(f"environment variable {name}", "is not set", "launch with torchrun, which sets it")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return DistributedContext(rank, local_rank, world_size, device, backend, owns_group=True)


def wrap_model(model: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """The model wrapped in ``DistributedDataParallel`` when distributed, else unchanged.

    DDP broadcasts rank 0's parameters at wrap time, so every rank starts identical, and
    averages gradients over ranks in ``backward``.
    """
    if not context.is_distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_mean(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Element-wise mean of ``values`` over all ranks (a copy; the input is untouched)."""
    result = values.detach().clone()
    if context.is_distributed:
        dist.all_reduce(result, op=dist.ReduceOp.SUM)
        result /= context.world_size
    return result


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Element-wise sum of ``values`` over all ranks (a copy)."""
    result = values.detach().clone()
    if context.is_distributed:
        dist.all_reduce(result, op=dist.ReduceOp.SUM)
    return result


def gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """``value`` from every rank, in rank order, on every rank (picklable objects)."""
    if not context.is_distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistributedContext) -> None:
    """Wait until every rank gets here (no-op for one process)."""
    if context.is_distributed:
        if context.backend == "nccl":
            dist.barrier(device_ids=[context.device.index])
        else:
            dist.barrier()


def teardown(context: DistributedContext, wait: bool = True) -> None:
    """Leave the process group if this context created it (after a barrier when ``wait``)."""
    if context.owns_group and dist.is_initialized():
        if wait:
            barrier(context)
            # Gloo's worker thread frees finished collectives and needs the GIL to do so; the
            # group's destructor (also run later, when DDP's reducer is collected at exit) joins
            # that thread while holding the GIL. Letting the thread drain first avoids the
            # deadlock seen (rank 1 hung at exit under load, PyTorch 2.13).
            time.sleep(GLOO_DRAIN_SECONDS)
        dist.destroy_process_group()

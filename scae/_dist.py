"""The torchrun process group as seen by the fit: rank, shard of rows, reductions, gathers (torch.distributed).

A fit runs under torchrun when a process group of more than one process is initialized (``scae fit`` joins
the one torchrun describes in the environment, :func:`join`). Each rank then trains on its own contiguous
shard of the rows of a backed AnnData; DDP averages the gradients every step (gloo on CPU, NCCL on GPU), the
loss values that decide when to stop are averaged over ranks, and rank 0 receives every rank's output
chunks (the rank-0 gather sink of :mod:`scae._pipeline`).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


class _DDP(DistributedDataParallel):
    """DDP that also exposes the helpers of :class:`scae.nn.network.SAUCIENet` used by the loss
    (``encoder_input``, ``heads``, ``standardized_prediction``, ...); the forward pass goes through DDP so
    gradients are synchronized.
    """

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous rows ``[start, stop)`` of ``rank`` (sizes differ by at most one)."""
    return rank * n // world, (rank + 1) * n // world


@dataclass(frozen=True)
class ProcessGroup:
    """The place of this process in a torchrun job of ``world`` processes."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that clusters and writes."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of this rank out of ``n``."""
        return shard_bounds(n, self.rank, self.world)

    def wrap(self, net: torch.nn.Module) -> _DDP:
        """The network wrapped for data-parallel training."""
        return _DDP(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average of every value over the ranks (the same result on every rank)."""
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.cpu(), strict=True)}

    def max(self, value: int) -> int:
        """Largest ``value`` over the ranks."""
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 (in rank order); ``None`` elsewhere."""
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def current() -> ProcessGroup | None:
    """The initialized process group of more than one process, or ``None`` (a single-process fit)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    backend = dist.get_backend()
    if backend == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return ProcessGroup(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher) describes a job of more than one process in the environment."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def join(backend: str = "auto") -> ProcessGroup | None:
    """Join the process group torchrun describes (``auto``: NCCL when CUDA is available, else gloo)."""
    if not launched_by_torchrun():
        return None
    if not dist.is_initialized():
        use_cuda = backend == "nccl" or (backend == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return current()


def leave() -> None:
    """Destroy the process group joined by :func:`join` (no-op when none).

    Unreachable objects are collected first, so that anything of the fit still holding the group (a DDP
    reducer caught in a reference cycle of the fit's objects) lets go of it here rather than at interpreter
    exit (a gloo rank once aborted at exit with "terminate called without an active exception" after a
    finished fit; a mitigation, the abort was not reproduced).
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()

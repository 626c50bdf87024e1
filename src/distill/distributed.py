"""Data-parallel training with PyTorch's own engine (``torch.distributed`` + DDP), for when one
machine is not enough. Launch any training command under ``torchrun``::

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-endpoint HOST:29500 -m distill teacher --out runs/t

Every process loads the data, draws the same shuffled order and jitter from the run's seed,
and takes its own contiguous slice of each global batch (:func:`shard`); DDP averages the
gradients, weighted so that one step equals the single-process step on the whole batch
(:func:`shard_weight`). Process 0 alone evaluates, logs and writes checkpoints. Backend: NCCL
when training on CUDA, gloo on the CPU (:func:`init_from_env`). Nothing here is a home-made
communication layer.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(backend: str | None = None, device=None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Returns True when running
    distributed. ``backend`` None: NCCL when the work runs on CUDA (``device``, else
    ``$DISTILL_DEVICE``, names a cuda device and a GPU is visible; each process then takes GPU
    ``LOCAL_RANK`` as its ``cuda`` device), gloo otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend is None:
        name = str(device or os.environ.get("DISTILL_DEVICE") or "cpu")
        backend = "nccl" if name.startswith("cuda") and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return True


def shutdown() -> None:
    """Leave the process group (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(idx: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This process's contiguous slice of a global batch ``idx`` of length b:
    ``idx[floor(r*b/w) : floor((r+1)*b/w)]``. The w slices partition the batch in order and
    their lengths differ by at most one (some are empty when b < w)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in 0..{world_size - 1}, got {rank}")
    b = idx.shape[0]
    return idx[rank * b // world_size:(rank + 1) * b // world_size]


def shard_weight(shard_size: int, batch_size: int, world_size: int) -> float:
    """Factor on a shard's mean loss so that DDP's gradient average over the w processes,
    ``(1/w) * sum_r f_r * grad(mean_r)``, equals the gradient of the global batch mean
    ``sum_r (n_r / b) * grad(mean_r)``: ``f_r = w * n_r / b``."""
    if batch_size <= 0:
        raise ValueError("batch_size must be > 0")
    return world_size * shard_size / batch_size


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed of the dropout RNG of process ``rank`` in ``epoch``: distinct per process (so the
    processes do not draw the same masks) and re-derived every epoch, so that a resumed run
    draws exactly what an uninterrupted one would without storing every process's RNG."""
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2 ** 63)


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over all processes (``x`` itself when not distributed)."""
    if world()[1] > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def from_process_0(obj):
    """Process 0's ``obj`` on every process (``obj`` itself when not distributed): how process
    0's view of the run folder (skip, resume, error) reaches processes on other machines."""
    if world()[1] <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()

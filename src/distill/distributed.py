"""Data-parallel training with PyTorch's own engine (``torch.distributed`` + DDP), for when one
machine is not enough. Launch any training command under ``torchrun``::

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-endpoint HOST:29500 -m distill teacher --out runs/t

Every process loads the data, draws the same shuffled order and jitter from the run's seed,
and takes its own contiguous slice of each global batch (:func:`shard`); DDP averages the
gradients, weighted so that one step equals the single-process step on the whole batch
(:func:`shard_weight`). Process 0 alone evaluates, logs and writes checkpoints. Backend: NCCL
when training on CUDA, gloo on the CPU (:func:`init_from_env`). Nothing here is a home-made
communication layer.

With ``TrainConfig(parallel="fsdp")`` the student is sharded with FSDP2 instead
(:func:`fsdp_twin`: ``torch.distributed.fsdp.fully_shard`` on every transformer block, then on the
root): each process keeps 1/w of the parameters, gradients and optimiser state, and every forward
gathers a block's parameters for as long as it runs. The full weights and optimiser state are
gathered (:func:`full_state`, :func:`full_optimizer_state`) for process 0 to save, and for the
trained model handed back.
"""
from __future__ import annotations

import copy
import inspect
import os

import torch
import torch.distributed as dist
from torch import nn


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


# ---------------------------------------------------------------- FSDP2
def transformer_blocks(module: nn.Module) -> nn.ModuleList | None:
    """The list of repeated blocks FSDP2 shards one by one: the ``nn.ModuleList`` holding the most
    parameters (a :class:`distill.models.GPT`'s ``blocks``, a Hugging Face decoder's layers, e.g.
    ``model.layers`` or ``transformer.h``); None when the model has none."""
    best, size = None, 0
    for m in module.modules():
        if isinstance(m, nn.ModuleList) and len(m):
            n = sum(q.numel() for q in m.parameters())
            if n > size:
                best, size = m, n
    return best


#: the oldest torch whose FSDP2 trains on the CPU (gloo) as one process does: 2.6 lacks the CPU
#: stream's record_event that fully_shard's all-gather calls, and 2.7.1 trained, but to other weights
#: than one process (the 2-process tests of tests/train/test_lm_distributed.py); 2.9.1 and 2.13 pass
FSDP_CPU_MIN_TORCH = (2, 9)


def _torch_release() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def fsdp_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` sharded with FSDP2 over all processes (``fully_shard`` on each of its
    :func:`transformer_blocks`, then on the root), for training. The copy starts with the very
    parameter and buffer tensors of ``model`` (which keeps its class, hooks and tied weights
    untouched); once sharded, ``model``'s parameters are emptied (0 elements) so that each process
    holds only its shards. :func:`unshard_into` gives ``model`` the trained weights back."""
    from torch.distributed.fsdp import fully_shard

    first = next(model.parameters(), None)
    if first is not None and first.device.type == "cpu" and _torch_release() < FSDP_CPU_MIN_TORCH:
        need = ".".join(map(str, FSDP_CPU_MIN_TORCH))
        raise ValueError(f"parallel='fsdp' on the CPU needs torch >= {need} (FSDP2 over gloo fails or trains to "
                         f"other weights than one process before it); this is torch {torch.__version__}: use "
                         "parallel='ddp' or a newer torch")
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    try:
        twin = copy.deepcopy(model, shared)  # new modules over the same tensors: no copy of the weights
    except Exception as e:  # any attribute that deepcopy cannot copy
        raise ValueError(f"parallel='fsdp' copies the module structure of {type(model).__name__} before sharding "
                         f"it, and that failed ({type(e).__name__}: {e}); use parallel='ddp'") from None
    blocks = transformer_blocks(twin)
    for block in blocks if blocks is not None else ():
        fully_shard(block)
    fully_shard(twin)
    for q in model.parameters():  # the twin now holds this process's shards; free the full tensors
        q.data = torch.empty(0, dtype=q.dtype, device=q.device)
    return twin


def _full(t: torch.Tensor) -> torch.Tensor:
    """``t`` whole: a DTensor all-gathered (a collective: every process calls it), else itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(module: nn.Module, device="cpu", keep: bool = True) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every sharded (DTensor) entry gathered whole, copied to
    ``device``, one tensor at a time (at most one whole parameter on the training device). A
    collective: every process calls it; ``keep=False`` drops what this process gathered (for the
    processes that do not save). Entries of one tied parameter are gathered once and stay one tensor."""
    out: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor | None] = {}
    for k, v in module.state_dict(keep_vars=True).items():
        if id(v) not in done:
            whole = _full(v.detach())
            done[id(v)] = whole.to(device, copy=True) if keep else None
        if keep:
            out[k] = done[id(v)]
    return out


def full_optimizer_state(optimizer: torch.optim.Optimizer, device="cpu", keep: bool = True) -> dict:
    """The ``"state"`` of ``optimizer.state_dict()`` (per parameter index, e.g. momentum buffers)
    with every sharded entry gathered whole on ``device``: the state the same optimiser over the
    unsharded model holds. A collective, as :func:`full_state`."""
    out: dict = {}
    for i, st in sorted(optimizer.state_dict()["state"].items()):
        for k, v in st.items():
            whole = _full(v) if isinstance(v, torch.Tensor) else v
            if keep:
                out.setdefault(i, {})[k] = whole.to(device, copy=True) if isinstance(whole, torch.Tensor) else whole
    return out


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load ``saved``, an ``optimizer.state_dict()`` of the same optimiser over the unsharded
    parameters (the same on every process), into ``optimizer`` over FSDP2-sharded ones: every state
    tensor shaped like its parameter is cut as that parameter is (this process's slice, no
    communication); the others (e.g. Adam's step count) load as they are."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not saved.get("state"):
        return
    params = [q for group in optimizer.param_groups for q in group["params"]]
    # src_data_rank=None (torch >= 2.7): each process cuts its own slice; older releases broadcast
    # process 0's copy, which is the same tensor here (every process loaded the same file)
    local = {"src_data_rank": None} if "src_data_rank" in inspect.signature(distribute_tensor).parameters else {}
    state = {}
    for i, st in saved["state"].items():
        q = params[int(i)]
        state[i] = {k: distribute_tensor(v.to(q.device), q.device_mesh, q.placements, **local)
                    if isinstance(q, DTensor) and isinstance(v, torch.Tensor) and v.shape == q.shape else v
                    for k, v in st.items()}
    optimizer.load_state_dict(dict(saved, state=state))


def unshard_into(model: nn.Module, state: dict[str, torch.Tensor], device) -> None:
    """Give ``model`` (emptied by :func:`fsdp_twin`) whole weights again, on ``device``: each
    parameter (a tied one stays one parameter) gets storage of its full shape, then ``state`` (the
    full state dict, buffers included) is loaded."""
    for name, q in model.named_parameters():
        q.data = torch.empty(state[name].shape, dtype=q.dtype, device=device)
    model.load_state_dict(state)

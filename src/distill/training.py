"""One training loop for teachers, hard-label students and distilled students.

Read top to bottom: :func:`fit` shuffles in-memory tensors with a seeded generator, optionally
jitters the batch, computes the loss (hard labels, distillation or logit matching), steps the
optimiser, applies the model's weight constraint, evaluates on the test set every epoch and
checkpoints the whole state (weights, optimiser, RNGs, history) so an interrupted run resumes
and ends exactly where an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from distill import distributed, losses
from distill.augment import jitter
from distill.checkpoints import atomic_write_json, load_tensors, save_checkpoint, save_tensors
from distill.errors import DistillError
from distill.metrics import classification_metrics, predict_logits

LOSSES = ("auto", "hard", "distill", "logits")
SCHEDULES = ("constant", "cosine", "exponential")
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run's result (and so keys its checkpoints).

    ``loss="auto"`` means hard labels without a teacher and ``distill`` with one.
    ``jitter`` is the maximum translation in pixels (0 = off).
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    lr_decay: float = 0.95
    jitter: int = 0
    loss: str = "auto"
    temperature: float = 1.0
    hard_weight: float = losses.DEFAULT_HARD_WEIGHT
    soft_weight: float = losses.DEFAULT_SOFT_WEIGHT
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name, value, allowed in (("optimizer", self.optimizer, OPTIMIZERS),
                                     ("schedule", self.schedule, SCHEDULES), ("loss", self.loss, LOSSES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.jitter < 0:
            raise ValueError("jitter must be >= 0 pixels")
        losses._check_temperature(self.temperature)

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate for 0-based ``epoch``: constant; cosine ``lr * (1 + cos(pi*e/E)) / 2``;
    or exponential ``lr * lr_decay**e``."""
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    return config.lr * config.lr_decay ** epoch


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (weight init, dropout). Data order and jitter use their own
    generator inside :func:`fit`."""
    torch.manual_seed(seed)


@dataclass
class FitResult:
    model: nn.Module
    metrics: dict
    history: list = field(default_factory=list)
    wall_seconds: float = 0.0
    run_dir: Path | None = None
    resumed_from: int = 0
    skipped: bool = False


def run_key(config: TrainConfig, model: nn.Module, data_fingerprint: str, teacher_id: str | None) -> str:
    """Identity of a run: config + architecture + data fingerprint + teacher identity."""
    blob = json.dumps(dict(config=config.to_dict(), arch=getattr(model, "arch", None),
                           data=data_fingerprint, teacher=teacher_id), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _batch_loss(config: TrainConfig, logits, yb, tb, teacher_kind):
    if config.loss == "hard":
        return losses.hard_cross_entropy(logits, yb)
    if config.loss == "logits":
        return losses.logit_matching_loss(logits, tb)
    return losses.distillation_loss(logits, tb, yb, config.temperature, config.hard_weight,
                                    config.soft_weight, teacher_kind=teacher_kind)


def _state_tensors(model, optimizer, gen: torch.Generator) -> dict:
    t = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, st in optimizer.state_dict()["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                t[f"optim.{i}.{k}"] = v
    t["rng.torch"] = torch.get_rng_state()
    t["rng.data"] = gen.get_state()
    return t


def _restore_state(tensors: dict, model, optimizer, gen: torch.Generator) -> None:
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    sd = optimizer.state_dict()
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    sd["state"] = state
    optimizer.load_state_dict(sd)
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.data"])


def _restore_run(run_dir: Path, key: str, model, optimizer, gen, config, log):
    """Look in ``run_dir`` for this run: finished (load the weights; return its sidecar as
    ``skipped``) or interrupted (restore the whole state). Returns ``(skipped, history, start_epoch)``."""
    final = run_dir / "model.json"
    if final.is_file():
        done = json.loads(final.read_text())
        if done.get("run_key") == key:
            from distill.checkpoints import load_checkpoint

            trained, sidecar = load_checkpoint(run_dir / "model")
            model.load_state_dict(trained.state_dict())
            log(f"[skip] {run_dir} already holds this finished run")
            return sidecar, sidecar.get("history", []), 0
        raise DistillError(f"{run_dir} holds a different finished run; choose another output folder")
    if (run_dir / "state.json").is_file():
        tensors, side = load_tensors(run_dir / "state")
        if side.get("run_key") != key:
            raise DistillError(f"{run_dir} holds an unfinished different run; choose another output folder "
                               "or delete it")
        _restore_state(tensors, model, optimizer, gen)
        log(f"[resume] {run_dir}: continuing after epoch {side['epoch']}/{config.epochs}")
        return None, side["history"], side["epoch"]
    return None, [], 0


def _silent(*_args) -> None:
    pass


def resolve_device(device=None) -> torch.device:
    """The device :func:`fit` trains on: ``device`` if given, else ``$DISTILL_DEVICE``, else the CPU.
    An unknown name or an absent CUDA is a ``ValueError`` that says so."""
    name = device if device is not None else os.environ.get("DISTILL_DEVICE") or "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this torch sees no CUDA GPU")
    return dev


def fit(
    model: nn.Module,
    data,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    teacher_targets: torch.Tensor | None = None,
    teacher_kind: str = "logits",
    teacher_id: str | None = None,
    run_dir: str | Path | None = None,
    meta: dict | None = None,
    progress: bool = True,
    log=print,
    device=None,
) -> FitResult:
    """Train ``model`` on ``data`` (a :class:`distill.data.Dataset` or anything with
    ``x_train, y_train, x_test, y_test, fingerprint, image_shape``).

    Soft targets come from ``teacher_targets`` (one row per training example, looked up by the
    same shuffled indices as the inputs) or from ``teacher`` (an ``nn.Module``; without jitter its
    logits are computed once up front, with jitter it runs on every jittered batch in eval mode
    under ``no_grad``). Cached targets with jitter are refused: they would pair with other inputs.

    With ``run_dir`` the state is checkpointed every epoch; a second call with the same
    arguments resumes an interrupted run, or returns at once when the run had finished.

    Under ``torchrun`` (a process group is initialised, see :mod:`distill.distributed`) the model
    is wrapped in ``DistributedDataParallel`` and each process trains on its slice of every
    global batch of ``config.batch_size``; one step equals the single-process step on the whole
    batch. Process 0 alone evaluates each epoch, logs and writes ``run_dir``; the others return
    the same final model and metrics, with an empty history.

    ``device`` (default ``$DISTILL_DEVICE``, else the CPU) is where the steps run: the data stay
    in host memory and each batch is copied over, so the order, the jitter and everything keyed
    by the config are the same as on the CPU; the model comes back on the device it came in on.
    Resuming is exact on the CPU; on a GPU dropout draws from the GPU's own generator.
    """
    t_start = time.perf_counter()
    dev = resolve_device(device)
    home = next(model.parameters()).device
    has_teacher = teacher is not None or teacher_targets is not None
    if config.loss == "auto":
        config = TrainConfig(**{**config.to_dict(), "loss": "distill" if has_teacher else "hard"})
    if config.loss in ("distill", "logits") and not has_teacher:
        raise ValueError(f"loss={config.loss!r} needs a teacher or teacher_targets")
    if config.loss == "logits" and teacher_kind != "logits":
        raise ValueError("logit matching needs teacher logits, not probabilities")
    x, y = data.x_train, data.y_train
    needs_labels = config.loss == "hard" or (config.loss == "distill" and config.hard_weight > 0)
    if y is None and needs_labels:
        raise ValueError("this transfer set has no labels: use a teacher with hard_weight=0")
    if config.jitter and data.image_shape is None:
        raise ValueError("jitter needs image data (data.image_shape is None)")
    if teacher_targets is not None:
        if config.jitter:
            raise ValueError("cached teacher targets cannot be used with jitter: the student would see "
                             "shifted inputs paired with targets of unshifted ones; pass the teacher module")
        if teacher_targets.shape[0] != x.shape[0]:
            raise ValueError(f"teacher_targets has {teacher_targets.shape[0]} rows for {x.shape[0]} examples")
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        if teacher_targets is None and not config.jitter:
            teacher_targets = predict_logits(teacher, x)
            teacher_kind = "logits"

    model_id = teacher_id
    key = run_key(config, model, data.fingerprint, model_id)
    run_dir = Path(run_dir) if run_dir is not None else None
    gen = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    history: list[dict] = []
    start_epoch = 0
    rank, world_size = distributed.world()
    skipped = None
    error = None
    if run_dir is not None and rank == 0:  # under DDP process 0 alone reads run_dir and tells the rest
        try:
            skipped, history, start_epoch = _restore_run(run_dir, key, model, optimizer, gen, config, log)
        except DistillError as e:
            error = e
    if world_size > 1:
        got = distributed.from_process_0(dict(
            error=str(error) if error else None, skipped=skipped, history=history, start_epoch=start_epoch,
            model=model.state_dict(), optim=optimizer.state_dict(), gen=gen.get_state()))
        error = DistillError(got["error"]) if got["error"] else None
        if rank and not error:
            skipped, history, start_epoch = got["skipped"], got["history"], got["start_epoch"]
            model.load_state_dict(got["model"])
            optimizer.load_state_dict(got["optim"])
            gen.set_state(got["gen"])
    if error:
        raise error
    if skipped is not None:
        return FitResult(model, skipped["metrics"], history, skipped.get("wall_seconds", 0.0), run_dir,
                         skipped=True)

    model.to(dev)
    teacher_home = None
    if teacher is not None and teacher_targets is None:  # run on every (jittered) batch
        teacher_home = next(teacher.parameters()).device
        teacher.to(dev)
    net = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)  # broadcasts process 0's weights
        progress = progress and rank == 0
        if rank:
            log = _silent
    n = x.shape[0]
    steps = math.ceil(n / config.batch_size)
    constrain = getattr(model, "constrain", None)
    show_bar = progress and sys.stderr.isatty()
    bar = tqdm(total=steps * config.epochs, initial=steps * start_epoch, disable=not show_bar,
               desc=str(meta.get("name", "train")) if meta else "train", unit="batch", leave=False,
               mininterval=1.0)
    model.train()
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        lr = lr_at(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if world_size > 1:
            torch.manual_seed(distributed.epoch_seed(config.seed, rank, epoch))
        perm = torch.randperm(n, generator=gen)
        total = torch.zeros((), device=dev)
        for i in range(0, n, config.batch_size):
            idx = perm[i:i + config.batch_size]
            xb = x[idx]
            if config.jitter:  # the whole global batch, so every process draws the same shifts
                xb = jitter(xb, data.image_shape, config.jitter, gen)
            weight = 1.0
            if world_size > 1:
                b = len(idx)
                idx, xb = distributed.shard(idx, rank, world_size), distributed.shard(xb, rank, world_size)
                weight = distributed.shard_weight(len(idx), b, world_size)
            xb = xb.to(dev)  # only this process's slice travels
            yb = y[idx].to(dev) if y is not None else None
            if teacher_targets is not None:
                tb = teacher_targets[idx].to(dev)
            elif teacher is not None:
                with torch.no_grad():
                    tb = teacher(xb)
            else:
                tb = None
            if len(idx):
                loss = _batch_loss(config, net(xb), yb, tb, teacher_kind)
            else:  # an empty slice still joins DDP's gradient all-reduce, with zero gradient
                loss = net(x[:1].to(dev)).sum() * 0.0
            optimizer.zero_grad(set_to_none=True)
            (loss * weight).backward()
            optimizer.step()
            if constrain is not None:
                constrain()
            total += loss.detach() * len(idx)
            bar.update(1)
        total = distributed.all_sum(total)
        t_train = time.perf_counter() - t0
        if rank:
            continue  # process 0 evaluates, logs and checkpoints
        metrics = classification_metrics(predict_logits(model, data.x_test), data.y_test)
        rec = dict(epoch=epoch + 1, lr=lr, train_loss=float(total) / n, train_seconds=t_train, test_errors=metrics["errors"],
                   test_accuracy=metrics["accuracy"], test_nll=metrics["nll"],
                   seconds=time.perf_counter() - t0)
        history.append(rec)
        msg = (f"epoch {epoch + 1}/{config.epochs}  loss {rec['train_loss']:.4f}  test errors "
               f"{metrics['errors']}/{metrics['n']}  nll {metrics['nll']:.4f}  lr {lr:.4g}  {rec['seconds']:.1f}s")
        if progress:
            (bar.write if show_bar else log)(msg)
        if run_dir is not None:
            save_tensors(run_dir / "state", _state_tensors(model, optimizer, gen),
                         dict(run_key=key, epoch=epoch + 1, history=history, config=config.to_dict()))
    bar.close()
    model.eval()
    model.to(home)
    if teacher_home is not None:
        teacher.to(teacher_home)
    metrics = classification_metrics(predict_logits(model, data.x_test), data.y_test)
    wall = time.perf_counter() - t_start + sum(h["seconds"] for h in history[:start_epoch])
    result = FitResult(model, metrics, history, wall, run_dir, resumed_from=start_epoch)
    if run_dir is not None and rank == 0:
        save_checkpoint(run_dir / "model", model, dict(
            meta or {}, run_key=key, config=config.to_dict(), data_fingerprint=data.fingerprint,
            seed=config.seed, teacher=teacher_id, metrics=metrics, history=history, wall_seconds=wall))
        (run_dir / "state.json").unlink(missing_ok=True)
        (run_dir / "state.safetensors").unlink(missing_ok=True)
    distributed.barrier()  # no process returns before process 0 has written the model
    return result

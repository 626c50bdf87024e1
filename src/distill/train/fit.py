"""``fit``: one training loop for teachers, hard-label students and distilled students.

It composes small parts, each in its own module, and reads top to bottom:

    source    = as_source(train)                    distill.data.sources   tensors, arrays, Dataset, DataLoader
    objective = config.objective_for(teacher)       distill.losses    HardLabels | Distillation | ... | callable
    teacher   = as_teacher(teacher, objective's T)  distill.teachers.teacher  module | Ensemble | store | outputs
    run       = RunDir(run_dir, key)                distill.train.rundir      lock, skip, resume, atomic save
    per epoch:  batches -> jitter|augment -> teacher.targets -> objective -> step -> evaluate val/test -> save state

Every epoch's whole state (weights, optimiser, RNGs, history, best weights) is saved in the run
folder, so an interrupted run resumes and ends exactly where an uninterrupted one would.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from distill import distributed, losses
from distill.data.augment import jitter
from distill.checkpoints import check_checkpointable, resolve_factory
from distill.errors import DistillError
from distill.checks import check_number
from distill.metrics import evaluate
from distill.train.rundir import RunDir, run_key
from distill.data.files import FileData
from distill.digest import ExampleDigest, model_signature
from distill.data.sources import Source, as_source, dataset_test_split
from distill.teachers.teacher import as_teacher, module_id
from distill.train.augmenter import Augmenter, mixup_loss

SCHEDULES = ("constant", "cosine", "exponential")
OPTIMIZERS = ("sgd", "adam")
SELECT = ("last", "best")
#: ``TrainConfig.precision``: float32 throughout, or bfloat16 autocast for the forward passes
PRECISIONS = ("fp32", "bf16")
#: default learning rates (SGD): hard labels, and distillation, where the soft term is scaled by
#: T**2 and SGD at 0.1 is at the edge of stability (it killed the 800-800 MNIST student at T = 20)
DEFAULT_LR = 0.1
DEFAULT_DISTILL_LR = 0.03


class TrainingDiverged(DistillError):
    """The loss or the outputs became non-finite, or the loss exploded or stuck and stayed there; the
    state after the last finished epoch is kept in the run folder (the message says which and its loss)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run's result (and so keys its run folder).

    ``objective``: the loss, a callable ``(student_out, teacher_out, labels) -> scalar`` (see
    :mod:`distill.losses`); None means :class:`~distill.losses.HardLabels` without a teacher and
    ``Distillation(temperature, hard_weight, soft_weight)`` with one (the shorthand fields).
    ``lr`` None means 0.1 on hard labels and 0.03 when a teacher is used. ``jitter``: maximum
    translation in pixels (0 = off), applied once per batch, the same view going to the teacher.
    ``select``: return the ``last`` epoch's weights, or the ``best`` on the validation set.
    ``precision``: ``"fp32"``, or ``"bf16"``: the student's forward pass (and so its backward) and a
    teacher's per-batch forward pass run under ``torch.autocast(device, bfloat16)``, with float32
    master weights, optimiser state and loss (the logits are cast to float32 before the objective);
    evaluation and teacher outputs computed once stay float32.
    ``augment``: an :class:`~distill.data.augment.Augment` (mixup, shift, crop, flip; fixed views),
    applied once per batch, the same augmented batch going to the teacher (consistent teaching);
    ``jitter=s`` is its shorthand for the paper's translations (give one or the other).
    ``divergence``: the divergence guard, ``"stop"`` (default): a non-finite loss, or one that rises
    well above its best and stays there, or returns to a constant prediction's cost after it had
    fallen well below it, stops the run with :class:`TrainingDiverged` (see :func:`divergence`); a loss
    that has sat at a constant prediction's cost from the start is only a warning (:func:`stuck`).
    ``None`` turns the guard off (no stop, no warning); non-finite model outputs still stop the run,
    as no step can follow them. It is not part of the run key.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    lr_decay: float = 0.95
    jitter: int = 0
    temperature: float = 1.0
    hard_weight: float = losses.DEFAULT_HARD_WEIGHT
    soft_weight: float = losses.DEFAULT_SOFT_WEIGHT
    objective: object = None
    select: str = "last"
    seed: int = 0
    precision: str = "fp32"
    augment: object = None
    divergence: str | None = "stop"

    def __post_init__(self):
        ints = dict(epochs=1, batch_size=1, jitter=0, seed=0)
        for name, lo in ints.items():
            object.__setattr__(self, name, check_number(name, getattr(self, name), minimum=lo, integer=True))
        if self.lr is not None:
            object.__setattr__(self, "lr", check_number("lr", self.lr, positive=True))
        for name in ("momentum", "weight_decay", "hard_weight", "soft_weight"):
            object.__setattr__(self, name, check_number(name, getattr(self, name), minimum=0))
        if self.momentum >= 1:
            raise ValueError(f"momentum must be < 1, got {self.momentum}")
        object.__setattr__(self, "lr_decay", check_number("lr_decay", self.lr_decay, positive=True))
        object.__setattr__(self, "temperature", losses.check_temperature(self.temperature))
        for name, value, allowed in (("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES),
                                     ("select", self.select, SELECT), ("precision", self.precision, PRECISIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.divergence not in ("stop", None):
            raise ValueError(f"divergence must be one of ('stop', None), got {self.divergence!r}")
        if self.objective is not None:
            if not callable(self.objective):
                raise ValueError(f"objective must be a callable (student_out, teacher_out, labels) -> loss, "
                                 f"got {type(self.objective).__name__}")
            shorthand = {f.name: f.default for f in fields(self) if f.name in ("temperature", "hard_weight",
                                                                               "soft_weight")}
            changed = [k for k, v in shorthand.items() if getattr(self, k) != v]
            if changed:
                raise ValueError(f"{', '.join(changed)} are the shorthand for Hinton's loss; with an explicit "
                                 "objective, give them to the objective instead")

        if self.augment is not None:
            from distill.data.augment import Augment

            if not isinstance(self.augment, Augment):
                raise ValueError(f"augment must be a distill.data.augment.Augment, got {type(self.augment).__name__}")
            if self.jitter:
                raise ValueError("jitter is the shorthand for Augment(shift=...); with augment=, give the shift to "
                                 "the Augment instead")

    def objective_for(self, has_teacher: bool):
        """The training objective: ``objective``, else the shorthand (see the class docstring)."""
        if self.objective is not None:
            return self.objective
        if has_teacher:
            return losses.Distillation(self.temperature, self.hard_weight, self.soft_weight)
        return losses.HardLabels()

    def resolved(self, objective) -> "TrainConfig":
        """This config with ``lr`` filled in (:data:`DEFAULT_LR` / :data:`DEFAULT_DISTILL_LR`)."""
        if self.lr is not None:
            return self
        return replace(self, lr=DEFAULT_DISTILL_LR if losses.needs(objective, "teacher") else DEFAULT_LR)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["objective"] = None if self.objective is None else losses.objective_spec(self.objective)
        if self.augment is None:  # absent, not None: runs keyed before augment existed keep their keys
            del d["augment"]
        return d


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate for 0-based ``epoch``: constant; cosine ``lr * (1 + cos(pi*e/E)) / 2``;
    or exponential ``lr * lr_decay**e``."""
    lr = config.lr if config.lr is not None else DEFAULT_LR
    if config.schedule == "constant":
        return lr
    if config.schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    return lr * config.lr_decay ** epoch


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (weight init, dropout). Data order and jitter use their own
    generator inside :func:`fit`."""
    torch.manual_seed(seed)


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


#: part of every run key: bump it by hand when a change alters what a finished run would hold
#: (2: keys cover every example of a Dataset or DataLoader, the module tree and factory arguments)
RUN_KEY_VERSION = 2

#: the "stuck at a constant prediction" rule judges only after this many optimiser steps
MIN_STUCK_STEPS = 30
#: a return to a constant prediction's cost is divergence only once the loss had fallen this share of
#: what training can gain (``cost - floor``) below it: before that the run is still on its starting plateau
LEFT_PLATEAU = 0.2


def label_entropy(counts) -> float | None:
    """The class prior's cost: ``H = -sum_c p_c log p_c`` with ``p_c = counts_c / sum(counts)``, the
    cross-entropy of the best constant prediction (the label frequencies) on labels with these counts;
    None without any label."""
    counts = [float(c) for c in counts]
    total = sum(counts)
    if not total > 0:
        return None
    return -sum(c / total * math.log(c / total) for c in counts if c > 0)


def _constant_costs(chance, prior, floor: float) -> list[tuple[float, str]]:
    """The known costs of a constant prediction above ``floor``, each with its name: ``chance`` (a
    uniform prediction), then ``prior`` (the label frequencies) when it is lower."""
    costs = []
    for cost, name in ((chance, "the chance level"), (prior, "the class prior's cost")):
        if cost is not None and math.isfinite(cost) and cost > floor and all(cost < c for c, _ in costs):
            costs.append((cost, name))
    return costs


def _at_constant(values, chance, prior, floor: float) -> tuple[float, str] | None:
    """The constant prediction whose cost every loss in ``values`` sits at (or above), within 0.5 % of
    ``cost - floor``, with its name: the chance level if they all reach it, else the class prior's cost;
    None if they are below both."""
    for cost, name in _constant_costs(chance, prior, floor):
        if values and all(v >= cost - 0.005 * (cost - floor) for v in values):
            label = f"{name} ({cost:.4g}" + (", the entropy of the training labels)" if cost == prior != chance
                                             else ")")
            return cost, label
    return None


def _valid_floor(floor) -> float:
    return floor if floor is not None and math.isfinite(floor) and floor >= 0 else 0.0


def divergence(epoch_losses: list[float], chance: float | None, patience: int = 2, factor: float = 2.0,
               floor: float = 0.0, prior: float | None = None) -> str | None:
    """Why training has diverged, or None. ``chance`` is the loss of a constant, uniform prediction
    (``log C`` for hard labels, ``T**2 log C`` for the soft term); ``prior`` the class prior's cost, the
    entropy of the training labels (:func:`label_entropy`; the best constant prediction for hard
    labels, None = unknown); ``floor`` the loss of a model that copies its teacher (0 without one;
    ``T**2 H(p)`` for the soft term, which is near ``chance`` when the teacher's soft targets are nearly
    uniform), so ``cost - floor`` is what training can gain below a constant prediction's ``cost``.
    Diverged when the last epoch's mean loss is not finite; or the last ``patience`` epochs each exceed
    ``factor`` times the best loss before them and are no lower than the cheapest known constant
    prediction's cost less 1 % of ``cost - floor`` (exploded and stayed; a loss that rose but stays
    below that cost is the noise of a high learning rate); or the last ``patience`` epochs sit at a
    constant prediction's cost (within 0.5 % of ``cost - floor``) after the loss had fallen
    :data:`LEFT_PLATEAU` ``(cost - floor)`` below it (it learnt, then collapsed). A loss that has sat
    at that cost from the start has not diverged: it is :func:`stuck`, a warning."""
    if not epoch_losses:
        return None
    last = epoch_losses[-1]
    if not math.isfinite(last):
        return f"the loss is {last}"
    if len(epoch_losses) <= patience:
        return None
    floor = _valid_floor(floor)
    costs = _constant_costs(chance, prior, floor)
    cheapest = min((c for c, _ in costs), default=None)
    best = min(epoch_losses[:-patience])
    tail = epoch_losses[-patience:]
    if all(v > factor * best and (cheapest is None or v >= cheapest - 0.01 * (cheapest - floor)) for v in tail):
        known = chance is not None and math.isfinite(chance) and chance > floor
        return (f"the loss rose from {best:.4g} to {last:.4g} and stayed there for {patience} epochs"
                + (f" (a constant prediction costs {chance:.4g})" if known else ""))
    at = _at_constant(tail, chance, prior, floor)
    if at is not None and best <= at[0] - LEFT_PLATEAU * (at[0] - floor):
        return (f"the loss fell to {best:.4g} and came back to the cost of a constant prediction, {at[1]}, for "
                f"{patience} epochs (now {last:.4g}): the model gives every input the same output, as when its "
                "ReLUs have died")
    return None


def stuck(epoch_losses: list[float], chance: float | None, patience: int = 2, floor: float = 0.0,
          steps_per_epoch: int | None = None, prior: float | None = None) -> str | None:
    """Why the loss looks stuck at a constant prediction, or None: a warning, not divergence (a run that
    has not yet left its starting plateau may still learn). ``chance``, ``prior`` and ``floor`` as in
    :func:`divergence`. Stuck when the last ``patience + 1`` epochs, holding at least
    :data:`MIN_STUCK_STEPS` optimiser steps (``steps_per_epoch``, None = unknown = enough), all sit at
    (or above) the cost of a constant prediction: the chance level, or the class prior's cost, within
    0.5 % of ``cost - floor``."""
    if len(epoch_losses) <= patience or not all(math.isfinite(v) for v in epoch_losses[-patience - 1:]):
        return None
    if steps_per_epoch is not None and (patience + 1) * steps_per_epoch < MIN_STUCK_STEPS:
        return None
    at = _at_constant(epoch_losses[-patience - 1:], chance, prior, _valid_floor(floor))
    if at is None:
        return None
    return (f"the loss has stayed at the cost of a constant prediction, {at[1]}, for {patience + 1} epochs "
            f"(now {epoch_losses[-1]:.4g}): so far the model gives every input the same output")


def collapse_note(history: list[dict], kept_epoch: int, factor: float = 2.0) -> str | None:
    """What ``select="best"`` says when later epochs collapsed after the one it kept, or None: the
    last epoch's train loss is above ``factor`` times the kept epoch's, or its validation error rate
    is above ``factor`` times the kept epoch's and at least 5 points higher."""
    if not history or not 0 < kept_epoch < len(history):
        return None
    kept, last = history[kept_epoch - 1], history[-1]
    a, b = kept.get("train_loss"), last.get("train_loss")
    loss = a is not None and b is not None and math.isfinite(a) and not b <= factor * a
    errors = False
    if all(k in h for h in (kept, last) for k in ("val_errors", "val_accuracy")):
        ra, rb = 1 - kept["val_accuracy"], 1 - last["val_accuracy"]
        errors = rb > factor * ra and rb - ra >= 0.05
    head = f"kept epoch {kept_epoch} of {len(history)}: "
    if loss:
        return (head + f"the loss rose from {a:.4g} to {b:.4g} after it"
                + (f" (validation errors from {kept['val_errors']} to {last['val_errors']})" if errors else ""))
    if errors:
        return head + f"the validation errors rose from {kept['val_errors']} to {last['val_errors']} after it"
    return None


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model (on the device it came in on, eval mode), the
    per-epoch history, the final ``val`` and ``test`` metrics (None without those sets), the
    epoch whose weights were kept, and where the run folder is. ``note``: with ``select="best"``,
    what :func:`collapse_note` says when the kept epoch was followed by a collapse (also logged)."""

    model: nn.Module
    history: list = field(default_factory=list)
    val: dict | None = None
    test: dict | None = None
    epoch: int = 0
    wall_seconds: float = 0.0
    run_dir: Path | None = None
    resumed_from: int = 0
    skipped: bool = False
    sidecar: dict | None = None
    note: str | None = None


def _state_tensors(model, optimizer, gen: torch.Generator, best: dict | None) -> dict:
    t = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, st in optimizer.state_dict()["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                t[f"optim.{i}.{k}"] = v
    t["rng.torch"] = torch.get_rng_state()
    t["rng.data"] = gen.get_state()
    for k, v in (best or {}).items():
        t[f"best.{k}"] = v
    return t


def _restore_state(tensors: dict, model, optimizer, gen: torch.Generator) -> dict | None:
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
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return best or None


def _silent(*_args) -> None:
    pass


def _probe(model: nn.Module, source, dev, objective=None) -> tuple[int, list]:
    """Run the model on two training examples before epoch 1: a model that cannot take these
    inputs, or does not return class logits ``[B, C]`` (``[B, C, *S]`` for label masks ``[B, *S]``,
    dense prediction), is an error now, not after an epoch."""
    x, y, _ = next(iter(source.batches(2, None)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.to(dev))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"the model cannot take the training inputs of shape {tuple(x.shape[1:])} ({first})") from None
    finally:
        model.train(was)
    masks = y is not None and y.dim() > 1
    dense = isinstance(out, torch.Tensor) and out.dim() >= 3 and out.shape[0] == len(x) and (masks or y is None)
    if not dense and (not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(x) or masks):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if masks:
            raise ValueError(f"the labels are masks of shape {tuple(y.shape[1:])}, so the model must return class "
                             f"logits of shape (batch, classes, {', '.join(map(str, y.shape[1:]))}); it returned {shape}")
        raise ValueError(f"the model must return class logits of shape (batch, classes); it returned {shape}")
    num_classes = int(out.shape[1])
    labels = getattr(source, "y", None)
    if masks:
        if tuple(y.shape[1:]) != tuple(out.shape[2:]):
            raise ValueError(f"the label masks have shape {tuple(y.shape[1:])} but the model returns class scores "
                             f"over positions {tuple(out.shape[2:])}")
        if isinstance(objective, (losses.HardLabels, losses.Distillation, losses.LogitMatching)):
            raise ValueError(f"the labels are masks, which {type(objective).__name__} cannot take: pass a dense "
                             "objective, e.g. TrainConfig(objective=distill.losses.DenseHardLabels()) or "
                             "objective=distill.losses.PixelwiseDistillation(temperature, hard_weight)")
        ignore = getattr(objective, "ignore_index", losses.DEFAULT_IGNORE_INDEX)
        kept = labels[labels != ignore] if labels is not None else y[y != ignore]
        if kept.numel() and int(kept.max()) >= num_classes:
            raise ValueError(f"the training masks hold class {int(kept.max())} but the model predicts "
                             f"{num_classes} classes (and {ignore} is the ignore index)")
        return num_classes, list(x.shape[1:])
    if labels is not None and len(labels) and int(labels.max()) >= num_classes:
        raise ValueError(f"the training labels go up to {int(labels.max())} but the model predicts "
                         f"{num_classes} classes")
    return num_classes, list(x.shape[1:])


def _chance_loss(objective, out, tb, yb) -> tuple[float | None, float]:
    """For the divergence check, on one batch: the loss of a constant (all-zero) prediction, and the
    loss of copying the teacher's effective logits (0 without a teacher)."""
    try:
        with torch.no_grad():
            chance = float(objective(torch.zeros_like(out), tb, yb))
    except Exception:  # a user's objective may not accept constant logits; the check then skips the floor
        return None, 0.0
    floor = 0.0
    if isinstance(tb, torch.Tensor) and tb.shape == out.shape:
        try:
            with torch.no_grad():
                floor = float(objective(tb.to(out.dtype), tb, yb))
        except Exception:
            floor = 0.0
    return chance, floor


def fit(model: nn.Module, train, config: TrainConfig | None = None, *, teacher=None, val=None, test=None,
        run_dir: str | Path | None = None, device=None, factory=None, meta: dict | None = None,
        progress: bool = True, log=print, wait: bool = False, data_id: str | None = None) -> FitResult:
    """Train ``model`` (any ``nn.Module`` returning class logits) on ``train``.

    ``train``, ``val``, ``test``: anything :func:`distill.data.sources.as_source` accepts (``(x, y)``
    tensors or NumPy arrays, a Dataset, an IterableDataset, a DataLoader, a distill Dataset, which
    also brings its test split). ``teacher``: anything :class:`distill.Teacher` accepts; its
    outputs are computed once when they can be, and on every (jittered) batch otherwise.
    ``config.objective`` decides the loss (hard labels without a teacher, Hinton's with one).

    ``val`` is evaluated every epoch (and picks the weights with ``config.select="best"``); ``test``
    is reported every epoch and never chooses anything. With ``run_dir`` (which may contain
    ``{key}``), the folder is locked (``wait`` for another process instead of failing), every
    epoch's state is saved, a second call with the same arguments resumes an interrupted run or
    returns the finished one at once, and the model is saved at the end with its ``factory``
    (``"pkg.module:callable"`` or ``(that, kwargs)``, default: the model's ``distill_factory``).
    A diverging loss stops the run with :class:`TrainingDiverged`, keeping the last good state.

    Under ``torchrun`` (see :mod:`distill.distributed`) each process trains on its slice of every
    global batch of ``config.batch_size`` and one step equals the single-process step (without
    jitter or augment, which are drawn over the whole batch, it reads only that slice:
    :meth:`distill.data.sources.Source.parts`); process 0 alone evaluates, logs and writes ``run_dir``. ``device`` (default ``$DISTILL_DEVICE``, else the
    CPU) is where the steps run; the data stay on the host and each batch is copied over.
    """
    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = config if config is not None else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a distill.TrainConfig, got {type(config).__name__}")
    dev = resolve_device(device)
    home = next(model.parameters()).device if next(model.parameters(), None) is not None else torch.device("cpu")

    # the parts: data, objective, teacher
    if data_id is not None:
        if not isinstance(data_id, str) or not data_id.strip():
            raise ValueError(f"data_id must be a non-empty string that names the training data, got {data_id!r}")
        if isinstance(train, Source) or isinstance(train, FileData):
            raise ValueError("data_id= names data given as arrays, a Dataset or a DataLoader; this training set "
                             "already has its own identity (its file digests)")
    source = as_source(train, name="train", fingerprint=None if data_id is None else f"id:{data_id}")
    val_src = as_source(val, name="val") if val is not None else None
    test_src = as_source(test, name="test") if test is not None else dataset_test_split(train)
    objective = config.objective_for(teacher is not None)
    config = config.resolved(objective)
    teacher = as_teacher(teacher, getattr(objective, "temperature", None) or 1.0)
    if losses.needs(objective, "teacher") and teacher is None:
        raise ValueError(f"the objective {type(objective).__name__} needs a teacher; pass teacher=")
    if teacher is not None and not losses.needs(objective, "teacher"):
        raise ValueError(f"a teacher was given but the objective {type(objective).__name__} does not use one")
    if getattr(objective, "needs_logits", False) and teacher.kind != "logits":
        raise ValueError("logit matching needs teacher logits, not probabilities")
    if losses.needs(objective, "labels") and not source.labeled:
        raise ValueError("this transfer set has no labels: use a teacher with hard_weight=0")
    if config.jitter and getattr(source, "y", None) is not None and source.y.dim() > 1:
        raise ValueError("jitter shifts the images but not their label masks; use jitter=0 with dense labels")
    if config.jitter and source.image_shape is None:
        raise ValueError("jitter needs image data: examples of shape (H, W) or (C, H, W), or a distill Dataset "
                         "with an image_shape")
    augmenter = None
    if config.augment is not None:  # consistent teaching (issue 17): distill.train.augmenter
        augmenter = Augmenter(config.augment, source, objective)
    if config.select == "best" and val_src is None:
        raise ValueError('select="best" picks the epoch with the fewest validation errors; pass val=')
    for name, src in (("val", val_src), ("test", test_src)):
        if src is not None and not src.labeled:
            raise ValueError(f"{name} needs labels")
    num_classes, input_shape = _probe(model, source, home, objective)
    factory_spec = check_checkpointable(model, factory) if run_dir is not None else resolve_factory(model, factory)

    # the run folder: the key covers everything that decides the result
    # (precision joins the key only when it is not the default fp32, so that runs keyed before it
    # existed keep their keys)
    # (a Dataset's or DataLoader's fingerprint reads every example once, so only a run folder asks)
    key = None if run_dir is None else run_key(dict(version=RUN_KEY_VERSION, config={k: v for k, v in config.to_dict().items()
                               if k not in ("temperature", "hard_weight", "soft_weight", "objective", "divergence")
                               and not (k == "precision" and v == "fp32")},
                       objective=losses.objective_spec(objective), model=model_signature(model, factory_spec),
                       data=source.fingerprint, val=val_src.fingerprint if val_src else None,
                       teacher=teacher.id if teacher else None))
    rank, world_size = distributed.world()
    run = RunDir(run_dir, key, wait=wait, log=log) if run_dir is not None and rank == 0 else None
    with run if run is not None else contextlib.nullcontext():
        gen = torch.Generator().manual_seed(config.seed)
        optimizer = make_optimizer(model, config)
        history: list[dict] = []
        start_epoch, best, finished, error = 0, None, None, None
        init = module_id(model) if run is not None else None  # not in the key (see the warning below)
        if run is not None:  # under DDP process 0 alone reads run_dir and tells the rest
            try:
                finished = run.finished(model)
                side = None if finished else run.resume()
                recorded = (finished or (side[1] if side else None) or {}).get("init_weights")
                if recorded not in (None, init):
                    log(f"[warning] {run.path} holds a run that started from other initial weights than this "
                        "model's; it is used because the run key does not cover the initial weights. Seed them "
                        "with distill.seed_everything(config.seed) before building the model, or give "
                        "this run another run_dir (or another config.seed)")
                resumed = side
                if resumed is not None:
                    tensors, side = resumed
                    best = _restore_state(tensors, model, optimizer, gen)
                    history, start_epoch = side["history"], side["epoch"]
                    log(f"[resume] {run.path}: continuing after epoch {start_epoch}/{config.epochs}")
            except DistillError as e:
                error = e
        if world_size > 1:
            got = distributed.from_process_0(dict(
                error=str(error) if error else None, finished=finished, history=history, start_epoch=start_epoch,
                model=model.state_dict(), optim=optimizer.state_dict(), gen=gen.get_state(), best=best))
            error = DistillError(got["error"]) if got["error"] else None
            if rank and not error:
                finished, history, start_epoch, best = got["finished"], got["history"], got["start_epoch"], got["best"]
                model.load_state_dict(got["model"])
                optimizer.load_state_dict(got["optim"])
                gen.set_state(got["gen"])
        if error:
            raise error
        if finished is not None:
            model.eval()
            test_metrics = finished.get("test")
            if test_src is not None and finished.get("test_fingerprint") != test_src.fingerprint:
                test_metrics = evaluate(model, test_src)
            return FitResult(model, finished.get("history", []), finished.get("val"), test_metrics,
                             finished.get("epoch", config.epochs), finished.get("wall_seconds", 0.0),
                             run.path if run else None, skipped=True, sidecar=finished)

        # training
        model.to(dev)
        teacher_home = teacher.device if teacher is not None else None
        if teacher is not None:
            teacher.prepare(source, augmented=bool(config.jitter) or augmenter is not None, device=dev,
                            progress=progress and rank == 0, log=log)
            if augmenter is not None:  # fixed views with a store folder: the teacher's outputs per view, once
                augmenter.prepare(teacher, progress=progress and rank == 0, log=log)
            teacher.to(dev)
        net = model
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model)  # broadcasts process 0's weights
            progress = progress and rank == 0
            if rank:
                log = _silent
        constrain = getattr(model, "constrain", None)
        steps = math.ceil(source.n / (source.batch_size or config.batch_size)) if source.n else None
        show_bar = progress and sys.stderr.isatty()
        bar = tqdm(total=steps * config.epochs if steps else None, initial=(steps or 0) * start_epoch,
                   disable=not show_bar, desc=str((meta or {}).get("name", "train")), unit="batch", leave=False,
                   mininterval=1.0)
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
        chance = None
        epoch_losses = [h["train_loss"] for h in history]  # every process keeps these (divergence check)
        # the class prior's cost, the entropy of the training labels counted over the first epoch
        # trained here: a hard-label model stuck at it gives every input the label frequencies
        prior, warned = None, False
        counts = (torch.zeros(num_classes, device=dev) if config.divergence is not None
                  and isinstance(objective, losses.HardLabels) else None)

        def diverged(epoch: int, why: str, lr: float, switchable: bool = True) -> TrainingDiverged:
            bar.close()
            model.to(home)
            hint = (f" for the T²-scaled soft loss at T = {objective.temperature:g}"
                    if isinstance(objective, losses.Distillation) else "")
            # the state saved last (epoch ``epoch``) may already be part of an exploded tail: say
            # which one it is and its loss rather than calling it good
            kept = (f"; the state after epoch {epoch} (train loss {history[-1]['train_loss']:.4g}) is kept in "
                    f"{run.path}" if run is not None and epoch and history else "")
            # a loss curve can be misjudged; non-finite values cannot be trained past
            off = ("; if the run is in fact healthy, TrainConfig(divergence=None) (--no-guard) turns this check off"
                   if switchable else "")
            return TrainingDiverged(f"training diverged at epoch {epoch + 1}: {why}; the learning rate {lr:.3g} "
                                    f"is likely too high{hint}, try a lower lr (e.g. {config.lr / 3:.2g}){kept}{off}")

        model.train()
        identity_checked = False
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            # a fingerprint read from a Dataset or DataLoader holds only if the examples trained on in
            # the first epoch are those it read (random transforms in __getitem__ break that)
            check = (ExampleDigest(indexed=source.indexable)
                     if source.read_to_identify and not identity_checked and world_size == 1 else None)
            lr = lr_at(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if world_size > 1:
                torch.manual_seed(distributed.epoch_seed(config.seed, rank, epoch))
            if hasattr(objective, "set_epoch"):  # e.g. DKD's warm-up: it is told the 1-based epoch
                objective.set_epoch(epoch + 1)
                chance = None  # the loss's scale may change with the epoch: judge divergence at this one's
            total = torch.zeros((), device=dev)
            count = torch.zeros((), device=dev)
            # under DDP without per-batch augmentation each process reads only its slice of every
            # global batch (Source.parts: same order, so the single-process equivalence holds);
            # augmentation is drawn over the whole global batch, which is then sliced below
            streamed = world_size > 1 and not config.jitter and augmenter is None
            batches = (source.parts(config.batch_size, gen, rank, world_size) if streamed
                       else ((x, y, i, None) for x, y, i in source.batches(config.batch_size, gen)))
            for xb, yb, idx, b in batches:
                if check is not None:
                    check.update(xb, yb, idx)
                mixed = rows = None
                if config.jitter:  # the whole global batch, so every process draws the same shifts
                    xb = jitter(xb, source.image_shape, config.jitter, gen)
                elif augmenter is not None:  # likewise; mixed = (partner labels, lam), rows = stored views
                    xb, mixed, rows = augmenter(xb, yb, idx, gen)
                weight = 1.0
                if world_size > 1 and b is None:  # the whole global batch was read: take this process's slice
                    b = len(xb)
                    xb = distributed.shard(xb, rank, world_size)
                    yb = distributed.shard(yb, rank, world_size) if yb is not None else None
                    idx = distributed.shard(idx, rank, world_size) if idx is not None else None
                    if mixed is not None:
                        mixed = (distributed.shard(mixed[0], rank, world_size), mixed[1])
                    if rows is not None:
                        rows = distributed.shard(rows, rank, world_size)
                if world_size > 1:
                    weight = distributed.shard_weight(len(xb), b, world_size)
                xb = xb.to(dev)  # only this process's slice travels
                yb = yb.to(dev) if yb is not None else None
                if len(xb):
                    with autocast:  # bf16: the forward passes; float32 weights, logits and loss
                        tb = (None if teacher is None else teacher.targets(xb, idx) if rows is None
                              else augmenter.targets(rows, dev))
                        out = net(xb)
                    out = out.float()
                    tb = tb.float() if isinstance(tb, torch.Tensor) else tb
                    if not torch.isfinite(out.detach()).all():  # else the objective's input check fires
                        raise diverged(epoch, "the model's outputs became nan or infinite", lr, switchable=False)
                    loss = (objective(out, tb, yb) if mixed is None
                            else mixup_loss(objective, out, tb, yb, mixed[0].to(dev), mixed[1]))
                    if chance is None:
                        chance = _chance_loss(objective, out.detach(), tb, yb)
                    if counts is not None and yb.dim() == 1:  # class labels (not masks), checked by the objective
                        counts.index_add_(0, yb.long(), torch.ones_like(yb, dtype=counts.dtype))
                else:  # an empty slice still joins DDP's gradient all-reduce, with zero gradient
                    with autocast:
                        loss = net(source_example(source).to(dev)).float().sum() * 0.0
                optimizer.zero_grad(set_to_none=True)
                (loss * weight).backward()
                optimizer.step()
                if constrain is not None:
                    constrain()
                total += loss.detach() * len(xb)
                count += len(xb)
                bar.update(1)
            if check is not None:
                identity_checked = True
                if "sha256:" + check.hexdigest()[:16] != source.fingerprint:
                    bar.close()
                    model.to(home)
                    raise DistillError(
                        "the training data gave other examples in epoch 1 than in the pass that identified them "
                        "(random transforms in the Dataset, or a stream that changes), so a run folder cannot "
                        "tell whether it holds a run on these data; pass data_id='<a name you change whenever "
                        "the data change>' to fit, or train without run_dir (augment with config.augment)")
            train_loss = float(distributed.all_sum(total) / distributed.all_sum(count))
            t_train = time.perf_counter() - t0
            epoch_losses.append(train_loss)
            chance = distributed.from_process_0(chance)
            chance_loss, floor = chance if chance is not None else (None, 0.0)
            if counts is not None:
                prior, counts = label_entropy(distributed.all_sum(counts).tolist()), None
            if config.divergence is not None:
                why = divergence(epoch_losses, chance_loss, floor=floor, prior=prior)
                if why:
                    raise diverged(epoch, why, lr, switchable=math.isfinite(train_loss))
                # sitting at a constant prediction from the start is the plateau many runs leave: say so once
                why = None if warned else stuck(epoch_losses, chance_loss, floor=floor, steps_per_epoch=steps,
                                                prior=prior)
                if why:
                    warned = True
                    log(f"[warning] epoch {epoch + 1}: {why}; a run may sit there a few epochs before it learns, "
                        f"but if it stays, its ReLUs may have died or the learning rate {config.lr:.3g} is too high: "
                        f"try a lower lr (e.g. {config.lr / 3:.2g})")
            rec = dict(epoch=epoch + 1, lr=lr, train_loss=train_loss, train_seconds=t_train)
            if not rank:  # process 0 evaluates, logs and checkpoints
                msg = f"epoch {epoch + 1}/{config.epochs}  loss {train_loss:.4f}"
                for name, src in (("val", val_src), ("test", test_src)):
                    if src is not None:
                        m = evaluate(model, src)
                        rec.update({f"{name}_errors": m["errors"], f"{name}_accuracy": m["accuracy"],
                                    f"{name}_nll": m["nll"]})
                        msg += f"  {name} errors {m['errors']}/{m['n']}  nll {m['nll']:.4f}"
                if val_src is not None and config.select == "best":
                    prev = [h["val_errors"] for h in history]
                    if not prev or rec["val_errors"] < min(prev):
                        best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                        best["epoch"] = torch.tensor(epoch + 1)
                rec["seconds"] = time.perf_counter() - t0
                history.append(rec)
                if progress:
                    (bar.write if show_bar else log)(f"{msg}  lr {lr:.4g}  {rec['seconds']:.1f}s")
                if run is not None:
                    run.save_state(_state_tensors(model, optimizer, gen, best),
                                   dict(epoch=epoch + 1, history=history, config=config.to_dict(), init_weights=init))
        bar.close()
        kept_epoch = config.epochs
        if world_size > 1 and config.select == "best":
            best = distributed.from_process_0(best)
        if config.select == "best" and best is not None:
            kept_epoch = int(best["epoch"])
            model.load_state_dict({k: v for k, v in best.items() if k != "epoch"})
        # an earlier epoch kept because later ones collapsed: say so rather than hide it
        note = collapse_note(history, kept_epoch) if config.select == "best" else None
        if note:
            log(f"[note] {note}")
        model.eval()
        model.to(home)
        if teacher_home is not None:
            teacher.to(teacher_home)
        val_metrics = evaluate(model, val_src) if val_src is not None else None
        test_metrics = evaluate(model, test_src) if test_src is not None else None
        wall = time.perf_counter() - t_start + sum(h.get("seconds", 0.0) for h in history[:start_epoch])
        result = FitResult(model, history, val_metrics, test_metrics, kept_epoch, wall,
                           run.path if run is not None else None, resumed_from=start_epoch, note=note)
        if run is not None:
            sidecar = dict(meta or {}, config=config.to_dict(), seed=config.seed, init_weights=init,
                           num_classes=num_classes,
                           input_shape=input_shape, data_fingerprint=source.fingerprint,
                           test_fingerprint=test_src.fingerprint if test_src else None,
                           teacher=teacher.id if teacher else None, val=val_metrics, test=test_metrics,
                           epoch=kept_epoch, history=history, wall_seconds=wall)
            run.save_final(model, sidecar, factory=factory_spec and (factory_spec["target"], factory_spec["kwargs"]))
            result.sidecar = sidecar
    distributed.barrier()  # no process returns before process 0 has written the model
    return result


def source_example(source) -> torch.Tensor:
    """One input example as a batch of one (for the zero-gradient step of an empty DDP slice)."""
    x, _, _ = next(iter(source.batches(1, None)))
    return x

"""The training configuration: :class:`TrainConfig` (everything that decides a run's result, so
the run key), the learning-rate schedule, the optimiser, the device."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn

from distill.checks import check_number, check_temperature
from distill.data.augment import Augment
from distill.losses.functional import DEFAULT_HARD_WEIGHT, DEFAULT_SOFT_WEIGHT
from distill.losses.objectives import Distillation, HardLabels, NextTokenLoss, TokenDistillation, needs, \
    objective_spec
from distill.train.onpolicy import OnPolicy

SCHEDULES = ("constant", "cosine", "exponential")
OPTIMIZERS = ("sgd", "adam", "adamw")
SELECT = ("last", "best")
#: ``TrainConfig.precision``: float32 throughout, or bfloat16 autocast for the forward passes
PRECISIONS = ("fp32", "bf16")
#: ``TrainConfig.parallel``: how torchrun's processes share the student (one process ignores it)
PARALLEL = ("ddp", "fsdp")
#: default learning rates (SGD): hard labels, and distillation, where the soft term is scaled by
#: T**2 and SGD at 0.1 is at the edge of stability (it killed the 800-800 MNIST student at T = 20)
DEFAULT_LR = 0.1
DEFAULT_DISTILL_LR = 0.03
#: the default learning rate of Adam and AdamW (SGD's 0.1 makes them diverge)
DEFAULT_ADAM_LR = 1e-3
#: fields added after run keys existed: left out of :meth:`TrainConfig.to_dict` at these defaults, so
#: that the runs keyed before them keep their keys
LATER_FIELDS = dict(accumulate=1, warmup_steps=0, lr_per_step=False, parallel="ddp", log_every=50, tensorboard=False,
                    on_policy=None)
#: the fields that say how a run is watched, not what it computes: never part of a run key
LOGGING_FIELDS = ("divergence", "log_every", "tensorboard")


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
    ``augment``: an :class:`~distill.data.augment.Augment` (mixup, shift, crop, flip, rotation, scaling; fixed views),
    applied once per batch, the same augmented batch going to the teacher (consistent teaching);
    ``jitter=s`` is its shorthand for the paper's translations (give one or the other).
    ``divergence``: the divergence guard, ``"stop"`` (default): a non-finite loss, or one that rises
    well above its best and stays there, or returns to a constant prediction's cost after it had
    fallen well below it, stops the run with :class:`TrainingDiverged` (see :func:`distill.train.divergence.divergence`); a loss
    that has sat at a constant prediction's cost from the start is only a warning (:func:`distill.train.divergence.stuck`).
    ``None`` turns the guard off (no stop, no warning); non-finite model outputs still stop the run,
    as no step can follow them. It is not part of the run key.
    ``accumulate``: split every batch of ``batch_size`` into that many micro-batches, one backward
    each and one optimiser step per batch (for memory); the step's loss is the sum over all its
    counted positions (every micro-batch, every process) divided by their number, so the weights
    equal those of the whole batch at once.
    ``lr_per_step``: evaluate the schedule at every step (at the fractional epoch) rather than once
    per epoch, as language-model recipes do; ``warmup_steps``: a linear warm-up of the learning rate
    from 0 over the first steps of the run.
    ``parallel``: under ``torchrun``, ``"ddp"`` (every process holds the whole student,
    ``DistributedDataParallel``) or ``"fsdp"`` (FSDP2, ``fully_shard``: every transformer block's and
    then the rest's parameters, gradients and optimiser state are split over the processes); one
    process trains the same way with either (see docs/scale.md).
    ``log_every``: a ``metrics.csv`` row (loss, its terms, lr, examples/s) every that many optimiser
    steps, besides the row per epoch (0: epoch rows only); ``tensorboard``: also TensorBoard event
    files in the run folder (needs the ``tensorboard`` package and a ``run_dir``). Neither is part
    of the run key (see :mod:`distill.train.logs`).
    ``on_policy``: an :class:`~distill.train.onpolicy.OnPolicy` (language models on prompt/completion
    data): with probability λ per step the completions are the student's own samples, scored by the
    teacher (see :mod:`distill.train.onpolicy`).
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
    hard_weight: float = DEFAULT_HARD_WEIGHT
    soft_weight: float = DEFAULT_SOFT_WEIGHT
    objective: object = None
    select: str = "last"
    seed: int = 0
    precision: str = "fp32"
    augment: object = None
    divergence: str | None = "stop"
    accumulate: int = 1
    warmup_steps: int = 0
    lr_per_step: bool = False
    parallel: str = "ddp"
    log_every: int = 50
    tensorboard: bool = False
    on_policy: object = None

    def __post_init__(self):
        ints = dict(epochs=1, batch_size=1, jitter=0, seed=0, accumulate=1, warmup_steps=0, log_every=0)
        for name, lo in ints.items():
            object.__setattr__(self, name, check_number(name, getattr(self, name), minimum=lo, integer=True))
        if self.lr is not None:
            object.__setattr__(self, "lr", check_number("lr", self.lr, positive=True))
        for name in ("momentum", "weight_decay", "hard_weight", "soft_weight"):
            object.__setattr__(self, name, check_number(name, getattr(self, name), minimum=0))
        if self.momentum >= 1:
            raise ValueError(f"momentum must be < 1, got {self.momentum}")
        object.__setattr__(self, "lr_decay", check_number("lr_decay", self.lr_decay, positive=True))
        object.__setattr__(self, "temperature", check_temperature(self.temperature))
        for name, value, allowed in (("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES),
                                     ("select", self.select, SELECT), ("precision", self.precision, PRECISIONS),
                                     ("parallel", self.parallel, PARALLEL)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.accumulate > self.batch_size:
            raise ValueError(f"accumulate ({self.accumulate}) splits a batch of {self.batch_size} into micro-batches; "
                             "it cannot be larger than batch_size")
        for name in ("lr_per_step", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
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

        if self.on_policy is not None and not isinstance(self.on_policy, OnPolicy):
            raise ValueError(f"on_policy must be a distill.OnPolicy, got {type(self.on_policy).__name__}")
        if self.augment is not None:
            if not isinstance(self.augment, Augment):
                raise ValueError(f"augment must be a distill.data.augment.Augment, got {type(self.augment).__name__}")
            if self.jitter:
                raise ValueError("jitter is the shorthand for Augment(shift=...); with augment=, give the shift to "
                                 "the Augment instead")

    def objective_for(self, has_teacher: bool, tokens: bool = False):
        """The training objective: ``objective``, else the shorthand (see the class docstring); on
        next-token data (``tokens``) the token-level forms: ``TokenDistillation`` at ``temperature``
        (its own weights unless hard/soft weights were given) or ``NextTokenLoss``."""
        if self.objective is not None:
            return self.objective
        if tokens:
            if not has_teacher:
                return NextTokenLoss()
            weights = ({} if (self.hard_weight, self.soft_weight) == (DEFAULT_HARD_WEIGHT, DEFAULT_SOFT_WEIGHT)
                       else dict(hard_weight=self.hard_weight, soft_weight=self.soft_weight))
            return TokenDistillation(temperature=self.temperature, **weights)
        if has_teacher:
            return Distillation(self.temperature, self.hard_weight, self.soft_weight)
        return HardLabels()

    def resolved(self, objective) -> "TrainConfig":
        """This config with ``lr`` filled in (:data:`DEFAULT_LR` / :data:`DEFAULT_DISTILL_LR`)."""
        if self.lr is not None:
            return self
        if self.optimizer in ("adam", "adamw"):
            return replace(self, lr=DEFAULT_ADAM_LR)
        return replace(self, lr=DEFAULT_DISTILL_LR if needs(objective, "teacher") else DEFAULT_LR)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["objective"] = None if self.objective is None else objective_spec(self.objective)
        if self.augment is None:  # absent, not None: runs keyed before augment existed keep their keys
            del d["augment"]
        else:
            d["augment"] = self.augment.to_dict()
        for k, v in LATER_FIELDS.items():
            if d[k] == v:
                del d[k]
        return d


def lr_at(config: TrainConfig, epoch: float, step: int | None = None) -> float:
    """Learning rate at (0-based, possibly fractional) ``epoch`` e: constant; cosine
    ``lr * (1 + cos(pi*e/E)) / 2``; or exponential ``lr * lr_decay**e``; times ``min(1, (s+1)/W)``
    at the run's 0-based step s during a warm-up of W = ``warmup_steps`` steps."""
    lr = config.lr if config.lr is not None else DEFAULT_LR
    if config.schedule == "cosine":
        lr = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    elif config.schedule == "exponential":
        lr = lr * config.lr_decay ** epoch
    if config.warmup_steps and step is not None:
        lr *= min(1.0, (step + 1) / config.warmup_steps)
    return lr


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
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

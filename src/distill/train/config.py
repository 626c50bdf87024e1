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
from distill.losses.objectives import Distillation, HardLabels, needs, objective_spec

SCHEDULES = ("constant", "cosine", "exponential")
OPTIMIZERS = ("sgd", "adam")
SELECT = ("last", "best")
#: ``TrainConfig.precision``: float32 throughout, or bfloat16 autocast for the forward passes
PRECISIONS = ("fp32", "bf16")
#: default learning rates (SGD): hard labels, and distillation, where the soft term is scaled by
#: T**2 and SGD at 0.1 is at the edge of stability (it killed the 800-800 MNIST student at T = 20)
DEFAULT_LR = 0.1
DEFAULT_DISTILL_LR = 0.03


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
    fallen well below it, stops the run with :class:`TrainingDiverged` (see :func:`distill.train.divergence.divergence`); a loss
    that has sat at a constant prediction's cost from the start is only a warning (:func:`distill.train.divergence.stuck`).
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
    hard_weight: float = DEFAULT_HARD_WEIGHT
    soft_weight: float = DEFAULT_SOFT_WEIGHT
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
        object.__setattr__(self, "temperature", check_temperature(self.temperature))
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
            return Distillation(self.temperature, self.hard_weight, self.soft_weight)
        return HardLabels()

    def resolved(self, objective) -> "TrainConfig":
        """This config with ``lr`` filled in (:data:`DEFAULT_LR` / :data:`DEFAULT_DISTILL_LR`)."""
        if self.lr is not None:
            return self
        return replace(self, lr=DEFAULT_DISTILL_LR if needs(objective, "teacher") else DEFAULT_LR)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["objective"] = None if self.objective is None else objective_spec(self.objective)
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

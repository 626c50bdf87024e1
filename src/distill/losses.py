"""Distillation losses (Hinton, Vinyals & Dean 2015, section 2). Pure functions.

Notation used in every docstring: ``z`` are the student's logits, ``v`` the teacher's,
``T`` the temperature, ``q = softmax(z/T)`` the student's softened distribution, ``p``
the teacher's soft targets (``softmax(v/T)``, or given directly as probabilities), ``N``
the number of classes and ``B`` the batch size. Every loss is a mean over the ``B``
examples of a per-example sum over classes: nothing is divided by ``N`` unless stated.
"""
from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import asdict, dataclass, is_dataclass

import torch
import torch.nn.functional as F

#: Default weight of the soft (teacher) term in :func:`distillation_loss`.
DEFAULT_SOFT_WEIGHT = 1.0
#: Default weight of the hard-label term. The paper weights the hard term "considerably
#: lower"; with the soft term multiplied by T**2 a weight of 0.1 keeps it a small correction.
DEFAULT_HARD_WEIGHT = 0.1

TEACHER_KINDS = ("logits", "probs")


def check_number(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                 positive: bool = False, integer: bool = False) -> float:
    """``value`` as a float (or int with ``integer``) after checking that it is a real number (not a
    bool or a string), finite, ``> 0`` with ``positive`` and ``>= minimum`` when given. Every numeric
    setting of the toolkit goes through here, so a bad one is a ``ValueError`` naming ``name``."""
    import numpy as np

    if value is None or isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if integer:
        if v != int(v):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        if abs(v) >= 2 ** 63:
            raise ValueError(f"{name} is too large, got {value!r}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value!r}")
    return int(v) if integer else v


#: largest weight of a loss term (larger ones overflow float32 losses)
MAX_WEIGHT = 1e6
#: temperatures outside this range overflow or underflow ``z / T`` in float32
TEMPERATURE_RANGE = (1e-3, 1e6)


def check_temperature(temperature) -> float:
    """The one temperature validator: a real number in :data:`TEMPERATURE_RANGE` (bools and strings
    refused; outside the range ``z / T`` over- or underflows in float32)."""
    t = check_number("temperature", temperature, positive=True)
    lo, hi = TEMPERATURE_RANGE
    if not lo <= t <= hi:
        raise ValueError(f"temperature must lie in [{lo:g}, {hi:g}], got {temperature!r}")
    return t


def _check_logits(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, classes), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch; a mean over no examples is undefined")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values (nan or inf)")


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    _check_logits("student_logits", student)
    _check_logits("teacher_logits", teacher)
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"batch sizes differ: student has {student.shape[0]} rows, teacher {teacher.shape[0]}"
        )
    if student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"class counts differ: student has {student.shape[1]} classes, teacher {teacher.shape[1]}"
        )


def soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature softmax: ``q_i = exp(z_i / T) / sum_j exp(z_j / T)`` along the last axis.

    T = 1 is the ordinary softmax; T -> infinity tends to the uniform 1/N.
    """
    t = check_temperature(temperature)
    _check_logits("logits", logits)
    return torch.softmax(logits / t, dim=-1)


def teacher_distribution(teacher: torch.Tensor, temperature: float, kind: str = "logits") -> torch.Tensor:
    """The soft targets ``p``: ``softmax(v/T)`` for ``kind="logits"``; the rows as given for
    ``kind="probs"`` (already a distribution at the wanted temperature, e.g. an ensemble's mean).
    """
    if kind not in TEACHER_KINDS:
        raise ValueError(f"teacher kind must be one of {TEACHER_KINDS}, got {kind!r}")
    if kind == "logits":
        return soften(teacher, temperature)
    _check_logits("teacher probabilities", teacher)
    if (teacher < 0).any():
        raise ValueError("teacher probabilities contain negative values")
    sums = teacher.sum(dim=-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        raise ValueError(
            "teacher probabilities do not sum to 1 per row "
            f"(sums range {sums.min().item():.4f}..{sums.max().item():.4f}); pass kind='logits' for logits"
        )
    return teacher


def soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    *,
    teacher_kind: str = "logits",
) -> torch.Tensor:
    """Soft-target cross-entropy, already multiplied by T**2:

    ``L = T**2 * (1/B) * sum_b [ - sum_i p_bi * log q_bi ]``, ``q = softmax(z/T)``, ``p`` the
    teacher's soft targets. Its gradient is ``dL/dz_bi = T * (q_bi - p_bi) / B``, i.e. ``T**2``
    times the paper's ``(q_i - p_i)/T``, so gradient sizes stay comparable across T.
    """
    t = check_temperature(temperature)
    _check_pair(student_logits, teacher_logits)
    p = teacher_distribution(teacher_logits, t, teacher_kind)
    log_q = F.log_softmax(student_logits / t, dim=-1)
    return -(p * log_q).sum(dim=-1).mean() * (t * t)


def hard_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy at T = 1: ``(1/B) * sum_b -log softmax(z_b)[y_b]``."""
    _check_logits("student_logits", student_logits)
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool \
            or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    labels = labels.long()
    if labels.dim() != 1 or labels.shape[0] != student_logits.shape[0]:
        raise ValueError(
            f"labels must have shape ({student_logits.shape[0]},), got {tuple(labels.shape)}"
        )
    n = student_logits.shape[1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= n):
        raise ValueError(f"labels must lie in 0..{n - 1}")
    return F.cross_entropy(student_logits, labels)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    hard_weight: float = DEFAULT_HARD_WEIGHT,
    soft_weight: float = DEFAULT_SOFT_WEIGHT,
    *,
    teacher_kind: str = "logits",
) -> torch.Tensor:
    """The paper's objective: ``soft_weight * T**2 * CE(p_T, q_T) + hard_weight * CE(y, q_1)``.

    ``p_T`` are the teacher's soft targets at T, ``q_T`` the student's softmax at T and ``q_1``
    at T = 1. ``labels`` may be None only when ``hard_weight == 0`` (unlabeled transfer set).
    """
    hard_weight = check_number("hard_weight", hard_weight, minimum=0, maximum=MAX_WEIGHT)
    soft_weight = check_number("soft_weight", soft_weight, minimum=0, maximum=MAX_WEIGHT)
    loss = soft_weight * soft_cross_entropy(
        student_logits, teacher_logits, temperature, teacher_kind=teacher_kind
    )
    if hard_weight > 0:
        if labels is None:
            raise ValueError("labels are required when hard_weight > 0; pass hard_weight=0 for unlabeled data")
        loss = loss + hard_weight * hard_cross_entropy(student_logits, labels)
    return loss


def zero_mean(logits: torch.Tensor) -> torch.Tensor:
    """Per-example zero-meaned logits: ``z_i - (1/N) sum_j z_j``."""
    return logits - logits.mean(dim=-1, keepdim=True)


def logit_matching_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Logit matching, the high-temperature limit of distillation:

    ``L = (1/B) * sum_b (1/(2N)) * sum_i (z'_bi - v'_bi)**2`` with ``z'``, ``v'`` the per-example
    zero-meaned logits (half the mean squared error). Its gradient ``(z'_bi - v'_bi)/(N*B)`` is
    the limit of ``soft_cross_entropy``'s gradient as T -> infinity (paper, eq. 3-4).
    """
    _check_pair(student_logits, teacher_logits)
    d = zero_mean(student_logits) - zero_mean(teacher_logits)
    return 0.5 * (d * d).mean(dim=-1).mean()


# ---------------------------------------------------------------- objectives
# A training objective is any callable ``(student_out, teacher_out, labels) -> scalar tensor``.
# ``teacher_out`` is the teacher's logits for the batch (for a teacher given as probabilities, the
# effective logits ``T * log p``, whose softmax at T is ``p``); ``labels`` is None for an unlabeled
# transfer set. The built-in ones say what they need through three attributes, which a user's
# callable may also set (defaults: ``needs_teacher=True``, ``needs_labels=True``, ``temperature=1``).


@dataclass(frozen=True)
class HardLabels:
    """Cross-entropy with the true labels at T = 1 (a teacher, a hard-label student)."""

    needs_teacher = False
    needs_labels = True
    temperature = None

    def __call__(self, student_out, teacher_out, labels):
        return hard_cross_entropy(student_out, labels)


@dataclass(frozen=True)
class Distillation:
    """Hinton's loss, :func:`distillation_loss`:
    ``soft_weight * T**2 * CE(softmax(v/T), softmax(z/T)) + hard_weight * CE(y, softmax(z))``."""

    temperature: float = 1.0
    hard_weight: float = DEFAULT_HARD_WEIGHT
    soft_weight: float = DEFAULT_SOFT_WEIGHT

    needs_teacher = True

    def __post_init__(self):
        object.__setattr__(self, "temperature", check_temperature(self.temperature))
        for name in ("hard_weight", "soft_weight"):
            object.__setattr__(self, name, check_number(name, getattr(self, name), minimum=0, maximum=MAX_WEIGHT))
        if self.hard_weight == 0 and self.soft_weight == 0:
            raise ValueError("hard_weight and soft_weight are both 0: the loss would be constant")

    @property
    def needs_labels(self) -> bool:
        return self.hard_weight > 0

    def __call__(self, student_out, teacher_out, labels):
        return distillation_loss(student_out, teacher_out, labels, self.temperature, self.hard_weight,
                                 self.soft_weight)


@dataclass(frozen=True)
class LogitMatching:
    """:func:`logit_matching_loss`: half the MSE of zero-meaned logits (the high-T limit)."""

    needs_teacher = True
    needs_labels = False
    needs_logits = True
    temperature = None

    def __call__(self, student_out, teacher_out, labels):
        return logit_matching_loss(student_out, teacher_out)


def objective_spec(objective) -> dict:
    """What identifies an objective in a run key: a dataclass's class and fields; for any other
    callable its qualified name and a digest of its source code (when Python can read it)."""
    cls = type(objective)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if is_dataclass(objective):
        return dict(objective=name, **asdict(objective))
    fn = objective if inspect.isfunction(objective) or inspect.ismethod(objective) else cls
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"
    try:
        src = hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        src = None
    return dict(objective=name, source=src)


def needs(objective, what: str) -> bool:
    """``objective.needs_<what>`` (``teacher`` / ``labels``), True for a callable that does not say."""
    return bool(getattr(objective, f"needs_{what}", True))

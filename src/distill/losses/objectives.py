"""The objectives ``fit`` calls: small frozen dataclasses over the pure functions of
:mod:`distill.losses.functional`, each following the one declared protocol, :class:`Objective`.
A user's callable ``(student_out, teacher_out, labels) -> scalar`` still works:
:func:`as_objective` wraps it (:class:`UserObjective`).
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import asdict, dataclass, field, is_dataclass, replace

import torch.nn.functional as F

from distill.digest import key_name
from distill.checks import MAX_WEIGHT, check_number, check_temperature
from distill.losses.functional import (
    DEFAULT_HARD_WEIGHT,
    DEFAULT_IGNORE_INDEX,
    DEFAULT_SOFT_WEIGHT,
    FEATURE_LOSSES,
    STANDARDIZE_EPS,
    channel_wise_distillation_loss,
    dense_hard_cross_entropy,
    dense_labels,
    distillation_loss,
    dkd_loss,
    hard_cross_entropy,
    logit_matching_loss,
    pixelwise_distillation_loss,
    soft_cross_entropy,
    standardize_logits,
    check_token_settings,
    next_token_pairs,
    token_cross_entropy,
    token_divergence,
    valid_token_count,
)

# ---------------------------------------------------------------- the protocol

class Objective:
    """What ``fit`` calls on every batch, and what it may ask of it first.

    * ``needs_teacher`` / ``needs_labels``: whether ``teacher_out`` / ``labels`` must be given;
      ``needs_logits``: the teacher's logits, not probabilities (logit matching);
      ``temperature``: T, where the objective has one (it sets the teacher's; else None).
    * ``__call__(student_out, teacher_out, labels, *, mask=None, epoch=None) -> scalar``:
      ``student_out`` the student's logits; ``teacher_out`` the teacher's (effective) logits for the
      same batch (for probabilities ``p``, ``T log p``), None without a teacher; ``labels`` None for
      an unlabeled transfer set; ``mask`` a boolean tensor of the positions that count (the rows of
      a classification batch, ``(B,)``; None = all of them: dense objectives find theirs from the
      ignore index), the loss averaging over exactly those; ``epoch`` the 1-based epoch (None outside
      ``fit``), passed per call so that no objective holds hidden state (DKD's warm-up reads it).
    """

    needs_teacher: bool = True
    needs_labels: bool = True
    needs_logits: bool = False
    temperature: float | None = None
    #: whether the loss's scale may change with ``epoch`` (DKD's warm-up)
    epoch_dependent: bool = False

    def __call__(self, student_out, teacher_out, labels, *, mask=None, epoch=None):
        raise NotImplementedError

    def terms(self, student_out, teacher_out, labels, *, mask=None, epoch=None) -> dict:
        """The loss's weighted terms by name (they add up to the loss), for the logs; ``fit`` asks
        for them every ``log_every`` steps, without gradient. An objective of one term returns
        ``{}``."""
        return {}


def masked_rows(mask, student_out, teacher_out, labels):
    """The rows of a classification batch that ``mask`` (bool ``(B,)``, None = all) keeps."""
    if mask is None:
        return student_out, teacher_out, labels
    return (student_out[mask], None if teacher_out is None else teacher_out[mask],
            None if labels is None else labels[mask])


@dataclass(frozen=True)
class UserObjective(Objective):
    """A user's callable ``fn(student_out, teacher_out, labels) -> scalar`` as an :class:`Objective`:
    what it declares (``needs_teacher``, ``needs_labels``, ``needs_logits``, ``temperature``
    attributes) is read from it (defaults: it needs both, T = None); the mask selects the rows it
    sees; it is not told the epoch. Its run-key identity is the callable's (:func:`objective_spec`)."""

    fn: object

    @property
    def needs_teacher(self):
        return bool(getattr(self.fn, "needs_teacher", True))

    @property
    def needs_labels(self):
        return bool(getattr(self.fn, "needs_labels", True))

    @property
    def needs_logits(self):
        return bool(getattr(self.fn, "needs_logits", False))

    @property
    def temperature(self):
        return getattr(self.fn, "temperature", None)

    def __call__(self, student_out, teacher_out, labels, *, mask=None, epoch=None):
        return self.fn(*masked_rows(mask, student_out, teacher_out, labels))


def as_objective(objective) -> Objective:
    """``objective`` as an :class:`Objective`: itself when it is one, else a :class:`UserObjective`."""
    if isinstance(objective, Objective):
        return objective
    if not callable(objective):
        raise ValueError(f"an objective must be callable (student_out, teacher_out, labels) -> loss, got "
                         f"{type(objective).__name__}")
    return UserObjective(objective)


def _masked_labels(labels, mask, ignore_index: int):
    """Dense labels with the positions outside ``mask`` (bool, the labels' shape; None = all)
    set to ``ignore_index``, so they count for nothing, like unlabelled pixels."""
    if mask is None or labels is None:
        if mask is not None:
            raise ValueError("a dense objective masks positions through their labels; this batch has none")
        return labels
    return labels.masked_fill(~mask.to(labels.device), ignore_index)


def _check_soft_and_hard(obj) -> None:
    """The checks of an objective with a temperature and soft/hard weights (Hinton's, pixel-wise,
    channel-wise): T in range, weights in [0, MAX_WEIGHT], not both 0."""
    object.__setattr__(obj, "temperature", check_temperature(obj.temperature))
    for name in ("hard_weight", "soft_weight"):
        object.__setattr__(obj, name, check_number(name, getattr(obj, name), minimum=0, maximum=MAX_WEIGHT))
    if obj.hard_weight == 0 and obj.soft_weight == 0:
        raise ValueError("hard_weight and soft_weight are both 0: the loss would be constant")


# ---------------------------------------------------------------- classification


@dataclass(frozen=True)
class HardLabels(Objective):
    """Cross-entropy with the true labels at T = 1 (a teacher, a hard-label student)."""

    KEY_NAME = "distill.losses.HardLabels"  # its name in run keys (distill.digest.key_name)

    needs_teacher = False
    needs_labels = True
    temperature = None

    def __call__(self, student_out, teacher_out, labels, *, mask=None, epoch=None):
        z, _, y = masked_rows(mask, student_out, None, labels)
        return hard_cross_entropy(z, y)


@dataclass(frozen=True)
class Distillation(Objective):
    """Hinton's loss, :func:`distillation_loss`:
    ``soft_weight * T**2 * CE(softmax(v/T), softmax(z/T)) + hard_weight * CE(y, softmax(z))``."""

    KEY_NAME = "distill.losses.Distillation"  # its name in run keys (distill.digest.key_name)

    temperature: float = 1.0
    hard_weight: float = DEFAULT_HARD_WEIGHT
    soft_weight: float = DEFAULT_SOFT_WEIGHT

    needs_teacher = True

    def __post_init__(self):
        _check_soft_and_hard(self)

    @property
    def needs_labels(self) -> bool:
        return self.hard_weight > 0

    def __call__(self, student_out, teacher_out, labels, *, mask=None, epoch=None):
        return distillation_loss(*masked_rows(mask, student_out, teacher_out, labels), self.temperature,
                                 self.hard_weight, self.soft_weight)

    def terms(self, student_out, teacher_out, labels, *, mask=None, epoch=None) -> dict:
        """``soft`` (``soft_weight * T**2 * CE``) and ``hard`` (``hard_weight * CE``, when weighted)."""
        z, v, y = masked_rows(mask, student_out, teacher_out, labels)
        out = {"soft": self.soft_weight * soft_cross_entropy(z, v, self.temperature)}
        if self.hard_weight > 0 and y is not None:
            out["hard"] = self.hard_weight * hard_cross_entropy(z, y)
        return out


@dataclass(frozen=True)
class LogitMatching(Objective):
    """:func:`logit_matching_loss`: half the MSE of zero-meaned logits (the high-T limit)."""

    KEY_NAME = "distill.losses.LogitMatching"  # its name in run keys (distill.digest.key_name)

    needs_teacher = True
    needs_labels = False
    needs_logits = True
    temperature = None

    def __call__(self, student_out, teacher_out, labels, *, mask=None, epoch=None):
        z, v, _ = masked_rows(mask, student_out, teacher_out, None)
        return logit_matching_loss(z, v)


def objective_spec(objective) -> dict:
    """What identifies an objective in a run key: a dataclass's class and fields (or what its
    ``key_fields()`` returns, for one that holds another objective); for any other callable its
    qualified name and a digest of its source code (when Python can read it)."""
    if isinstance(objective, UserObjective):
        objective = objective.fn
    cls = type(objective)
    name = key_name(cls)
    if is_dataclass(objective):
        own = getattr(objective, "key_fields", None)  # an objective that holds another says how it is keyed
        return dict(objective=name, **(own() if callable(own) else asdict(objective)))
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


@dataclass(frozen=True)
class DenseHardLabels(Objective):
    """:func:`dense_hard_cross_entropy`: per-position cross-entropy with the label masks,
    averaged over the positions not labelled ``ignore_index`` (a dense teacher, a hard-label
    dense student)."""

    KEY_NAME = "distill.losses.DenseHardLabels"  # its name in run keys (distill.digest.key_name)

    ignore_index: int = DEFAULT_IGNORE_INDEX

    needs_teacher = False
    needs_labels = True
    temperature = None

    def __post_init__(self):
        object.__setattr__(self, "ignore_index", check_number("ignore_index", self.ignore_index, integer=True))

    def __call__(self, student_out, teacher_out, labels, *, mask=None, epoch=None):
        return dense_hard_cross_entropy(student_out, _masked_labels(labels, mask, self.ignore_index),
                                        self.ignore_index)


@dataclass(frozen=True)
class PixelwiseDistillation(Objective):
    """:func:`pixelwise_distillation_loss`, Hinton's loss at every labelled position:
    ``soft_weight * T**2 * CE(softmax(v/T), softmax(z/T)) + hard_weight * CE(y, softmax(z))``,
    each averaged over the positions not labelled ``ignore_index``."""

    KEY_NAME = "distill.losses.PixelwiseDistillation"  # its name in run keys (distill.digest.key_name)

    temperature: float = 1.0
    hard_weight: float = DEFAULT_HARD_WEIGHT
    soft_weight: float = DEFAULT_SOFT_WEIGHT
    ignore_index: int = DEFAULT_IGNORE_INDEX

    needs_teacher = True

    def __post_init__(self):
        _check_soft_and_hard(self)
        object.__setattr__(self, "ignore_index", check_number("ignore_index", self.ignore_index, integer=True))

    @property
    def needs_labels(self) -> bool:
        return self.hard_weight > 0

    def __call__(self, student_out, teacher_out, labels, *, mask=None, epoch=None):
        labels = _masked_labels(labels, mask, self.ignore_index)
        return pixelwise_distillation_loss(student_out, teacher_out, labels, self.temperature, self.hard_weight,
                                           self.soft_weight, ignore_index=self.ignore_index)


@dataclass(frozen=True)
class ChannelWiseDistillation(Objective):
    """``soft_weight * CWD_T(z, v) + hard_weight * CE(y, softmax(z))``: the channel-wise
    distillation term of :func:`channel_wise_distillation_loss` (over the positions not labelled
    ``ignore_index`` when labels are given) plus the per-position hard-label cross-entropy. The
    defaults are Shu et al.'s (T = 4, CWD weight 3, the task loss at weight 1)."""

    KEY_NAME = "distill.losses.ChannelWiseDistillation"  # its name in run keys (distill.digest.key_name)

    temperature: float = 4.0
    hard_weight: float = 1.0
    soft_weight: float = 3.0
    ignore_index: int = DEFAULT_IGNORE_INDEX

    needs_teacher = True

    def __post_init__(self):
        _check_soft_and_hard(self)
        object.__setattr__(self, "ignore_index", check_number("ignore_index", self.ignore_index, integer=True))

    @property
    def needs_labels(self) -> bool:
        return self.hard_weight > 0

    def __call__(self, student_out, teacher_out, labels, *, mask=None, epoch=None):
        labels = _masked_labels(labels, mask, self.ignore_index)
        mask = None
        if labels is not None:
            mask = dense_labels(student_out, labels, self.ignore_index) != self.ignore_index
        loss = self.soft_weight * channel_wise_distillation_loss(student_out, teacher_out, self.temperature, mask)
        if self.hard_weight > 0:
            if labels is None:
                raise ValueError("labels are required when hard_weight > 0; pass hard_weight=0 for unlabeled data")
            loss = loss + self.hard_weight * dense_hard_cross_entropy(student_out, labels, self.ignore_index)
        return loss


def _warmup_factor(epoch, warmup_epochs: int) -> float:
    """``min(epoch / W, 1)`` for the 1-based ``epoch`` (mdistiller's warm-up); 1 without one."""
    if not warmup_epochs or epoch is None:
        return 1.0
    return min(epoch / warmup_epochs, 1.0)


@dataclass(frozen=True)
class DKD(Objective):
    """Decoupled KD as trained in mdistiller:

    ``L = hard_weight * CE(y, softmax(z)) + w(e) * dkd_loss(z, v, y, T, alpha, beta)``

    with the warm-up ``w(e) = min(e / warmup_epochs, 1)`` for the 1-based epoch ``e`` (1 with
    ``warmup_epochs = 0``). :func:`distill.fit` passes the epoch with every call (``epoch=``);
    called without one, ``w = 1``.
    mdistiller's CIFAR-100 setting is T = 4, alpha = 1, beta = 8, hard weight 1 and a 20-epoch
    warm-up of 240 epochs; the default here has no warm-up, since ``fit``'s schedules are
    usually far shorter (give it explicitly, e.g. a tenth of the epochs). DKD reads the labels
    (the target class) even with ``hard_weight = 0``.
    """

    KEY_NAME = "distill.losses.DKD"  # its name in run keys (distill.digest.key_name)

    temperature: float = 4.0
    alpha: float = 1.0
    beta: float = 8.0
    hard_weight: float = 1.0
    warmup_epochs: int = 0

    needs_teacher = True
    needs_labels = True
    epoch_dependent = True

    def __post_init__(self):
        object.__setattr__(self, "temperature", check_temperature(self.temperature))
        for name in ("alpha", "beta", "hard_weight"):
            object.__setattr__(self, name, check_number(name, getattr(self, name), minimum=0, maximum=MAX_WEIGHT))
        object.__setattr__(self, "warmup_epochs",
                           check_number("warmup_epochs", self.warmup_epochs, minimum=0, integer=True))
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta are both 0: DKD would not use the teacher")

    def warmup(self, epoch: int | None) -> float:
        """The warm-up factor ``w(e)`` of the 1-based ``epoch`` (1 for None)."""
        return _warmup_factor(epoch, self.warmup_epochs)

    def __call__(self, student_out, teacher_out, labels, *, mask=None, epoch=None):
        if labels is None:
            raise ValueError("DKD needs the labels (its target class); this batch has none")
        z, v, y = masked_rows(mask, student_out, teacher_out, labels)
        loss = self.warmup(epoch) * dkd_loss(z, v, y, self.temperature, self.alpha, self.beta)
        if self.hard_weight > 0:
            loss = loss + self.hard_weight * hard_cross_entropy(z, y)
        return loss


@dataclass(frozen=True)
class Standardized(Objective):
    """Any teacher objective on standardized logits (Sun et al. 2024): the teacher term of
    ``inner`` sees ``standardize_logits(z)`` and ``standardize_logits(v)`` (z-scored per example,
    then divided by ``inner``'s temperature as usual), while its hard-label term, when it has a
    ``hard_weight``, stays on the raw student logits (as in the authors' code):

    ``L = inner_soft(Z(z), Z(v), y) + hard_weight * CE(y, softmax(z))``

    ``inner``: :class:`Distillation` (standardized KD), :class:`DKD`, or another dataclass
    objective that uses a teacher (its class and fields key the run). With a teacher given as
    probabilities the standardization acts on its effective logits ``T log p``.
    """

    KEY_NAME = "distill.losses.Standardized"  # its name in run keys (distill.digest.key_name)

    inner: object
    eps: float = STANDARDIZE_EPS
    inner_class: str = field(init=False, default="")

    needs_teacher = True

    def __post_init__(self):
        inner = self.inner
        if not is_dataclass(inner) or isinstance(inner, type) or not callable(inner):
            raise ValueError("Standardized wraps an objective instance that is a dataclass (Distillation, DKD, ...); "
                             f"got {type(inner).__name__}")
        if not needs(inner, "teacher"):
            raise ValueError(f"{type(inner).__name__} does not use a teacher: there are no teacher logits to "
                             "standardize")
        object.__setattr__(self, "eps", check_number("eps", self.eps, positive=True))
        object.__setattr__(self, "inner_class", key_name(type(inner)))
        hw = getattr(inner, "hard_weight", None)
        if hw:
            if getattr(inner, "soft_weight", 1) == 0:
                raise ValueError("the inner objective's soft_weight is 0: nothing would be standardized")
            soft = replace(inner, hard_weight=0.0)
        else:
            soft, hw = inner, 0.0
        object.__setattr__(self, "_soft", soft)
        object.__setattr__(self, "_hard_weight", float(hw))

    @property
    def temperature(self):
        return getattr(self.inner, "temperature", None)

    @property
    def hard_weight(self):
        return getattr(self.inner, "hard_weight", None)

    @property
    def needs_labels(self) -> bool:
        return needs(self.inner, "labels")

    @property
    def epoch_dependent(self) -> bool:
        return bool(getattr(self.inner, "epoch_dependent", False))

    def __call__(self, student_out, teacher_out, labels, *, mask=None, epoch=None):
        z, v, y = masked_rows(mask, student_out, teacher_out, labels)
        loss = self._soft(standardize_logits(z, eps=self.eps), standardize_logits(v, eps=self.eps), y, epoch=epoch)
        if self._hard_weight > 0:
            if y is None:
                raise ValueError("labels are required when hard_weight > 0; pass hard_weight=0 for unlabeled data")
            loss = loss + self._hard_weight * hard_cross_entropy(z, y)
        return loss


# ---------------------------------------------------------------- language models: token level


def _shared_vocabulary(student_logits, teacher):
    """Dense student and teacher logits restricted to their shared vocabulary prefix
    ``min(V_s, V_t)`` (a model's vocabulary is often padded, e.g. 152,064 vs 151,936 rows; the
    tokenizer must fit the prefix, which the run's plan checks). A top-k pair is returned as is
    (its ids must lie in the student's vocabulary: :func:`token_divergence` checks)."""
    if isinstance(teacher, (tuple, list)) or teacher is None:
        return student_logits, teacher
    v = min(student_logits.shape[-1], teacher.shape[-1])
    return student_logits[..., :v], teacher[..., :v]


@dataclass(frozen=True)
class TokenDistillation(Objective):
    """Token-level distillation of a causal LM over the next-token pairs of
    :func:`next_token_pairs` (logits at ``t`` against token ``t + 1``; the valid positions ``M``
    are those whose target is not -100 and that ``mask``, ``[B, L]`` or ``[B]``, keeps):

    ``L = soft_weight * T**2 * token_divergence(z, v, M) + hard_weight * token_cross_entropy(z, y, M)``

    ``divergence``, ``beta``, ``skew`` and ``tail`` as in :func:`token_divergence` (forward KL by
    default; ``"jsd"`` with ``beta`` for GKD, ``"skew_kl"`` with ``skew`` for DistiLLM). The teacher
    is dense logits ``[B, L, V_t]`` or a top-k pair ``(ids, logprobs)`` (each ``[B, L, k]``); dense
    logits of another vocabulary size than the student's are both restricted to the shared prefix
    ``min(V_s, V_t)`` for the divergence (the hard term keeps the student's full vocabulary); top-k
    ids outside the student's vocabulary are a ValueError. The labels carry the targets and the
    padding (-100), so they are always needed."""

    KEY_NAME = "distill.losses.TokenDistillation"  # its name in run keys (distill.digest.key_name)

    divergence: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    skew: float = 0.1
    hard_weight: float = 0.0
    soft_weight: float = 1.0
    tail: str = "renormalize"

    needs_teacher = True
    needs_labels = True

    def __post_init__(self):
        _check_soft_and_hard(self)
        _, _, beta, skew, _ = check_token_settings(self.divergence, self.temperature, self.beta, self.skew,
                                                   self.tail)
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "skew", skew)

    def count_tokens(self, labels, mask=None):
        """:func:`valid_token_count`: the scored target positions of a batch (an int64 tensor)."""
        return valid_token_count(labels, mask)

    def __call__(self, student_out, teacher_out, labels, *, mask=None, epoch=None):
        return sum(self.terms(student_out, teacher_out, labels, mask=mask, epoch=epoch).values())

    def terms(self, student_out, teacher_out, labels, *, mask=None, epoch=None) -> dict:
        """``soft`` (``soft_weight * T**2 * token_divergence``) and ``hard`` (``hard_weight *
        token_cross_entropy``), each where its weight is not 0; the loss is their sum."""
        if labels is None:
            raise ValueError("TokenDistillation needs the labels (the next-token targets, -100 at padding); "
                             "this batch has none")
        z, v, y, valid = next_token_pairs(student_out, teacher_out, labels, mask)
        out = {}
        if self.soft_weight > 0:
            if v is None:
                raise ValueError("TokenDistillation needs the teacher's logits or its top-k pair (ids, logprobs); "
                                 "this batch has none")
            # the unshifted (contiguous) logits with the last position uncounted: no copies
            zs, v = _shared_vocabulary(student_out, teacher_out)
            m = F.pad(valid, (0, 1), value=False)
            t = self.temperature
            out["soft"] = self.soft_weight * (t * t) * token_divergence(
                zs, v, m, divergence=self.divergence, temperature=t, beta=self.beta, skew=self.skew,
                tail=self.tail)
        if self.hard_weight > 0:
            out["hard"] = self.hard_weight * token_cross_entropy(z, y, valid)
        return out


@dataclass(frozen=True)
class NextTokenLoss(Objective):
    """The hard-label language-model objective: :func:`token_cross_entropy` of the logits at ``t``
    against token ``t + 1`` (:func:`next_token_pairs`), averaged over the valid target positions
    (not -100, kept by ``mask``). The teacher's objective, or a student's without one."""

    KEY_NAME = "distill.losses.NextTokenLoss"  # its name in run keys (distill.digest.key_name)

    needs_teacher = False
    needs_labels = True
    temperature = None

    def count_tokens(self, labels, mask=None):
        """:func:`valid_token_count`: the scored target positions of a batch (an int64 tensor)."""
        return valid_token_count(labels, mask)

    def __call__(self, student_out, teacher_out, labels, *, mask=None, epoch=None):
        if labels is None:
            raise ValueError("NextTokenLoss needs the labels (the next-token targets, -100 at padding); "
                             "this batch has none")
        z, _, y, valid = next_token_pairs(student_out, None, labels, mask)
        return token_cross_entropy(z, y, valid)


# ---------------------------------------------------------------- intermediate features


def _feature_pairs(pairs) -> tuple:
    """``pairs`` checked: ``(student_path, teacher_path, loss, weight)`` tuples, the paths strings
    (``nn.Module.get_submodule`` names), ``loss`` a name of :data:`FEATURE_LOSSES`, ``weight`` > 0."""
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__iter__"):
        raise ValueError("pairs must be a list of (student_path, teacher_path, loss, weight) tuples, got "
                         f"{type(pairs).__name__}")
    out = []
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 4:
            raise ValueError(f"a feature pair is (student_path, teacher_path, loss, weight), got {pair!r}")
        s, t, loss, weight = pair
        if not isinstance(s, str) or not isinstance(t, str):
            raise ValueError(f"a feature pair's module paths must be strings (e.g. 'layer3.1'), got {s!r} and {t!r}")
        if loss not in FEATURE_LOSSES:
            raise ValueError(f"a feature pair's loss must be one of {sorted(FEATURE_LOSSES)}, got {loss!r}")
        out.append((s, t, loss, check_number(f"the weight of the pair ({s!r}, {t!r})", weight, positive=True,
                                             maximum=MAX_WEIGHT)))
    if not out:
        raise ValueError("FeatureDistillation needs at least one (student_path, teacher_path, loss, weight) pair")
    return tuple(out)


@dataclass(frozen=True)
class FeatureDistillation(Objective):
    """A logit objective plus the teacher's intermediate features (FitNets, attention transfer,
    relational KD), matched at pairs of modules named by their dotted paths:

    ``L = objective(z, v, y) + sum_k weight_k * loss_k(P_k(s_k), t_k)``

    ``objective`` any logit objective (:class:`HardLabels`, :class:`Distillation`, ...); ``pairs`` a
    list of ``(student_path, teacher_path, loss, weight)``: ``s_k`` is the output of
    ``student.get_submodule(student_path)``, ``t_k`` the teacher's at ``teacher_path``, ``loss_k``
    one of :data:`~distill.losses.functional.FEATURE_LOSSES` (``"hint"``: :func:`hint_loss`,
    ``"attention"``: :func:`attention_transfer_loss`, ``"relational"``: :func:`relational_loss`,
    ``"channel_wise"``: :func:`channel_wise_feature_loss`, each at its defaults) and ``P_k`` the
    pair's learned projector (identity when it needs none).

    This class is the loss alone: ``fit`` (:mod:`distill.train.features`) captures the features with
    forward hooks, runs the teacher module on every batch, learns the projectors and adds
    :meth:`feature_terms` to the logit part. Called with ``features`` (one ``(P_k(s_k), t_k)`` pair of
    tensors per pair, in order) it returns the whole ``L``; without them, the logit objective alone.
    The run key holds the inner objective and the pairs.
    """

    KEY_NAME = "distill.losses.FeatureDistillation"  # its name in run keys (distill.digest.key_name)

    objective: object
    pairs: tuple = ()

    needs_teacher = True

    def __post_init__(self):
        if isinstance(self.objective, FeatureDistillation):
            raise ValueError("FeatureDistillation wraps a logit objective, not another FeatureDistillation: give "
                             "all the pairs to one")
        object.__setattr__(self, "objective", as_objective(self.objective))
        object.__setattr__(self, "pairs", _feature_pairs(self.pairs))
        names, seen = [], set()
        for i, (s, t, loss, _) in enumerate(self.pairs):
            name = f"{loss}:{s or '(model)'}"
            name = name if name not in seen else f"{name}#{i}"
            seen.add(name)
            names.append(name)
        object.__setattr__(self, "term_names", tuple(names))

    @property
    def needs_labels(self) -> bool:
        return needs(self.objective, "labels")

    @property
    def needs_logits(self) -> bool:
        return bool(getattr(self.objective, "needs_logits", False))

    @property
    def temperature(self):
        return getattr(self.objective, "temperature", None)

    @property
    def epoch_dependent(self) -> bool:
        return bool(getattr(self.objective, "epoch_dependent", False))

    @property
    def tokens(self) -> bool:
        return bool(getattr(self.objective, "tokens", False))

    def key_fields(self) -> dict:
        """Its run-key fields: the inner objective's spec and the pairs."""
        return dict(inner=objective_spec(self.objective), pairs=[list(p) for p in self.pairs])

    def feature_terms(self, features, mask=None) -> dict:
        """``{name: weight_k * loss_k(P_k(s_k), t_k)}`` for the pairs' ``features`` (a sequence of
        ``(projected student feature, teacher feature)``, one per pair, in order), named
        ``"<loss>:<student_path>"``. A row mask (bool ``(B,)``) keeps those rows of every feature;
        other masks (positions) leave the features whole."""
        features = list(features)
        if len(features) != len(self.pairs):
            raise ValueError(f"FeatureDistillation has {len(self.pairs)} pairs but got {len(features)} features")
        out = {}
        for name, (_, _, loss, weight), (s, t) in zip(self.term_names, self.pairs, features):
            if mask is not None and mask.dim() == 1 and mask.shape[0] == s.shape[0] == t.shape[0]:
                keep = mask.to(s.device)
                s, t = s[keep], t[keep]
            out[name] = weight * FEATURE_LOSSES[loss](s, t)
        return out

    def __call__(self, student_out, teacher_out, labels, *, mask=None, epoch=None, features=None):
        loss = self.objective(student_out, teacher_out, labels, mask=mask, epoch=epoch)
        if features is not None:
            loss = loss + sum(self.feature_terms(features, mask).values())
        return loss

    def terms(self, student_out, teacher_out, labels, *, mask=None, epoch=None, features=None) -> dict:
        """The inner objective's terms (``{"logits": its loss}`` when it has one term), then, with
        ``features``, :meth:`feature_terms`."""
        inner = self.objective
        out = dict(inner.terms(student_out, teacher_out, labels, mask=mask, epoch=epoch)) \
            if hasattr(inner, "terms") else {}
        if not out:
            out["logits"] = inner(student_out, teacher_out, labels, mask=mask, epoch=epoch)
        if features is not None:
            out.update(self.feature_terms(features, mask))
        return out

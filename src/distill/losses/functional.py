"""The losses as pure functions (Hinton, Vinyals & Dean 2015, section 2; dense and decoupled variants).
Each docstring states its formula; :mod:`distill.losses.objectives` wraps them as the objects ``fit`` calls.

Notation used in every docstring: ``z`` are the student's logits, ``v`` the teacher's,
``T`` the temperature, ``q = softmax(z/T)`` the student's softened distribution, ``p``
the teacher's soft targets (``softmax(v/T)``, or given directly as probabilities), ``N``
the number of classes and ``B`` the batch size. Every loss is a mean over the ``B``
examples of a per-example sum over classes: nothing is divided by ``N`` unless stated.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.checks import MAX_WEIGHT, check_number, check_temperature

#: Default weight of the soft (teacher) term in :func:`distillation_loss`.
DEFAULT_SOFT_WEIGHT = 1.0
#: Default weight of the hard-label term. The paper weights the hard term "considerably
#: lower"; with the soft term multiplied by T**2 a weight of 0.1 keeps it a small correction.
DEFAULT_HARD_WEIGHT = 0.1

TEACHER_KINDS = ("logits", "probs")


def check_logits(name: str, x: torch.Tensor) -> None:
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


def check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    check_logits("student_logits", student)
    check_logits("teacher_logits", teacher)
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
    check_logits("logits", logits)
    return torch.softmax(logits / t, dim=-1)


def teacher_distribution(teacher: torch.Tensor, temperature: float, kind: str = "logits") -> torch.Tensor:
    """The soft targets ``p``: ``softmax(v/T)`` for ``kind="logits"``; the rows as given for
    ``kind="probs"`` (already a distribution at the wanted temperature, e.g. an ensemble's mean).
    """
    if kind not in TEACHER_KINDS:
        raise ValueError(f"teacher kind must be one of {TEACHER_KINDS}, got {kind!r}")
    if kind == "logits":
        return soften(teacher, temperature)
    check_logits("teacher probabilities", teacher)
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
    check_pair(student_logits, teacher_logits)
    p = teacher_distribution(teacher_logits, t, teacher_kind)
    log_q = F.log_softmax(student_logits / t, dim=-1)
    return -(p * log_q).sum(dim=-1).mean() * (t * t)


def hard_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy at T = 1: ``(1/B) * sum_b -log softmax(z_b)[y_b]``."""
    check_logits("student_logits", student_logits)
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
    check_pair(student_logits, teacher_logits)
    d = zero_mean(student_logits) - zero_mean(teacher_logits)
    return 0.5 * (d * d).mean(dim=-1).mean()


# ---------------------------------------------------------------- dense prediction
# Logits of shape [B, C, *] (e.g. [B, C, H, W] for segmentation): one class distribution per
# position. ``M`` is the set of labelled positions (b, s): those whose label is not
# ``ignore_index`` (all positions when no labels are given); ``|M|`` its size. Ignored positions
# contribute nothing to any term, in value and in gradient. Notation as at the top of the module.

#: the label of positions that are neither trained on nor scored (as in Pascal VOC and Cityscapes)
DEFAULT_IGNORE_INDEX = 255


def _check_dense(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(f"{name} must have shape (batch, classes, *positions), e.g. (B, C, H, W), "
                         f"got {tuple(x.shape)}")
    if x.shape[0] == 0 or x[0, 0].numel() == 0:
        raise ValueError(f"{name} holds no positions (shape {tuple(x.shape)}); a mean over none is undefined")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values (nan or inf)")


def dense_labels(logits: torch.Tensor, labels, ignore_index: int) -> torch.Tensor:
    """``labels`` checked against ``logits`` ``(B, C, *S)``: an integer tensor ``(B, *S)`` whose
    values are classes ``0..C-1`` or ``ignore_index``."""
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool \
            or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    want = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(labels.shape) != want:
        raise ValueError(f"labels must have shape {want} (one class per position of the logits "
                         f"{tuple(logits.shape)}), got {tuple(labels.shape)}")
    labels = labels.long()
    n = logits.shape[1]
    kept = labels[labels != ignore_index]
    if kept.numel() and (kept.min() < 0 or kept.max() >= n):
        raise ValueError(f"labels must lie in 0..{n - 1} or be the ignore index {ignore_index}")
    return labels


def _pixels(logits: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B * prod(S), C)``: one row of class scores per position."""
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


def dense_hard_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor,
                             ignore_index: int = DEFAULT_IGNORE_INDEX) -> torch.Tensor:
    """Per-position cross-entropy at T = 1 averaged over the labelled positions:
    ``(1/|M|) * sum_{(b,s) in M} -log softmax(z_bs)[y_bs]`` (0, with zero gradient, when ``M`` is
    empty). Equals :func:`hard_cross_entropy` on the labelled positions as rows."""
    _check_dense("student_logits", student_logits)
    labels = dense_labels(student_logits, labels, ignore_index)
    keep = labels.reshape(-1) != ignore_index
    if not keep.any():
        return student_logits.sum() * 0.0
    return hard_cross_entropy(_pixels(student_logits)[keep], labels.reshape(-1)[keep])


def pixelwise_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    hard_weight: float = DEFAULT_HARD_WEIGHT,
    soft_weight: float = DEFAULT_SOFT_WEIGHT,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    teacher_kind: str = "logits",
) -> torch.Tensor:
    """Hinton's loss applied at every position of dense logits ``(B, C, *S)``:

    ``L = soft_weight * T**2 * (1/|M|) sum_{(b,s) in M} [ -sum_c p_bsc log q_bsc ]
    + hard_weight * (1/|M|) sum_{(b,s) in M} -log softmax(z_bs)[y_bs]``

    with ``q_bs = softmax(z_bs / T)``, ``p_bs = softmax(v_bs / T)`` (or given probabilities), both
    over the ``C`` classes, and ``M`` the positions whose label is not ``ignore_index`` (all
    positions when ``labels`` is None, which needs ``hard_weight == 0``). So it is exactly
    :func:`distillation_loss` on the labelled positions taken as a batch of ``|M|`` rows; its
    gradient is ``dL/dz_bsc = soft_weight * T * (q_bsc - p_bsc) / |M| + hard_weight *
    (softmax(z_bs)_c - [c = y_bs]) / |M|`` on ``M`` and exactly 0 at ignored positions. An empty
    ``M`` gives 0 with a zero gradient.
    """
    t = check_temperature(temperature)
    hard_weight = check_number("hard_weight", hard_weight, minimum=0, maximum=MAX_WEIGHT)
    soft_weight = check_number("soft_weight", soft_weight, minimum=0, maximum=MAX_WEIGHT)
    _check_dense("student_logits", student_logits)
    _check_dense("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    z, v = _pixels(student_logits), _pixels(teacher_logits)
    if labels is None:
        if hard_weight > 0:
            raise ValueError("labels are required when hard_weight > 0; pass hard_weight=0 for unlabeled data")
        return distillation_loss(z, v, None, t, 0.0, soft_weight, teacher_kind=teacher_kind)
    y = dense_labels(student_logits, labels, ignore_index).reshape(-1)
    keep = y != ignore_index
    if not keep.any():
        return student_logits.sum() * 0.0
    return distillation_loss(z[keep], v[keep], y[keep], t, hard_weight, soft_weight, teacher_kind=teacher_kind)


def channel_wise_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Channel-wise distillation (CWD; Shu et al., ICCV 2021) of dense logits ``(B, C, *S)``:
    each channel's map is turned into a distribution over the *positions* at temperature T,

    ``phi(z)_bcs = exp(z_bcs / T) / sum_{s'} exp(z_bcs' / T)``,

    and the student's matches the teacher's by KL divergence, averaged over images and channels:

    ``L = T**2 / (B * C) * sum_b sum_c sum_s phi(v)_bcs * [log phi(v)_bcs - log phi(z)_bcs]``.

    Its gradient is ``dL/dz_bcs = T * (phi(z)_bcs - phi(v)_bcs) / (B * C)``. ``mask`` (bool,
    ``(B, *S)``) keeps only the positions where it is True in both softmaxes (the others get
    probability 0 and gradient 0); an image without kept positions contributes 0.
    """
    t = check_temperature(temperature)
    _check_dense("student_logits", student_logits)
    _check_dense("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    b, c = student_logits.shape[:2]
    z = student_logits.reshape(b, c, -1) / t
    v = teacher_logits.reshape(b, c, -1) / t
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or \
                tuple(mask.shape) != (b,) + tuple(student_logits.shape[2:]):
            raise ValueError(f"mask must be a bool tensor of shape {(b,) + tuple(student_logits.shape[2:])}")
        keep = mask.reshape(b, 1, -1).expand_as(z)
        z = z.masked_fill(~keep, float("-inf"))
        v = v.masked_fill(~keep, float("-inf"))
        kept_images = mask.reshape(b, -1).any(1)
        if not kept_images.all():
            z, v, keep = z[kept_images], v[kept_images], keep[kept_images]
            if z.shape[0] == 0:
                return student_logits.sum() * 0.0
    log_q = F.log_softmax(z, dim=-1)
    log_p = F.log_softmax(v, dim=-1)
    kl = torch.exp(log_p) * (log_p - log_q)
    if mask is not None:
        kl = torch.where(keep, kl, torch.zeros_like(kl))
    return kl.sum() * (t * t) / (b * c)




# ---------------------------------------------------------------- beyond the paper
# Decoupled KD (Zhao et al., CVPR 2022; the conventions of mdistiller's ``dkd_loss``) and logit
# standardization (Sun et al., CVPR 2024). Notation as above; ``t = y_b`` is example b's label,
# ``p = softmax(v/T)``, ``q = softmax(z/T)``, and for the classes ``i != t``
# ``p^_i = p_i / (1 - p_t)`` (= softmax over the non-target logits ``v_i / T``), ``q^`` likewise.
# The binary distributions are ``b_p = (p_t, 1 - p_t)`` and ``b_q = (q_t, 1 - q_t)``. Exactly,
# for every example:
#
#     KL(p || q) = KL(b_p || b_q) + (1 - p_t) * KL(p^ || q^)
#
# DKD drops the ``(1 - p_t)`` factor and weights the two parts freely: ``alpha * TCKD + beta * NCKD``.



def check_class_labels(labels, logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool \
            or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    labels = labels.long()
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    n = logits.shape[1]
    if labels.min() < 0 or labels.max() >= n:
        raise ValueError(f"labels must lie in 0..{n - 1}")
    return labels


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DKD's two parts per example, each already multiplied by T**2, and the teacher's ``p_t``:

    ``TCKD_b = T**2 * KL(b_p || b_q) = T**2 * [p_t log(p_t/q_t) + (1-p_t) log((1-p_t)/(1-q_t))]``
    ``NCKD_b = T**2 * KL(p^ || q^)  = T**2 * sum_{i != t} p^_i log(p^_i / q^_i)``

    returned as ``(tckd, nckd, p_t)``, three ``(B,)`` tensors, so that
    ``tckd + (1 - p_t) * nckd == T**2 * KL(p || q)`` (the identity above; tested).
    The target class is *excluded exactly* from the non-target softmaxes (its logit is removed,
    not pushed down by 1000 as in mdistiller, whose result agrees up to ``exp(-1000)``): the
    non-target part neither reads the target logit nor sends it any gradient. Everything is
    computed in log space (``log(1 - q_t) = logsumexp_{i != t}(z_i/T) - logsumexp_i(z_i/T)``), so
    a confident student or teacher (``q_t -> 1``) gives no ``log 0``.
    """
    t = check_temperature(temperature)
    check_pair(student_logits, teacher_logits)
    n = student_logits.shape[1]
    if n < 2:
        raise ValueError("DKD needs at least two classes")
    labels = check_class_labels(labels, student_logits).to(student_logits.device)
    target = F.one_hot(labels, n).bool()
    b = student_logits.shape[0]

    def parts(logits):
        s = logits / t
        lse = torch.logsumexp(s, dim=1)
        s_t = s.gather(1, labels[:, None])[:, 0]
        s_nt = s[~target].view(b, n - 1)  # row-major: each row keeps its N-1 non-target logits in order
        lse_nt = torch.logsumexp(s_nt, dim=1)
        # log P(target), log P(non-target), log of the renormalised non-target distribution
        return s_t - lse, lse_nt - lse, s_nt - lse_nt[:, None]

    lq_t, lq_o, lq_hat = parts(student_logits)
    lp_t, lp_o, lp_hat = parts(teacher_logits.to(student_logits.dtype))
    p_t, p_o = lp_t.exp(), lp_o.exp()
    tckd = p_t * (lp_t - lq_t) + p_o * (lp_o - lq_o)
    nckd = (lp_hat.exp() * (lp_hat - lq_hat)).sum(dim=1)
    return tckd * (t * t), nckd * (t * t), p_t


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             temperature: float, alpha: float = 1.0, beta: float = 8.0) -> torch.Tensor:
    """Decoupled knowledge distillation (Zhao et al. 2022), as mdistiller's ``dkd_loss``:

    ``L = (1/B) * sum_b [ alpha * TCKD_b + beta * NCKD_b ]`` with the two terms of
    :func:`dkd_terms` (each ``T**2`` times a KL divergence summed over its classes).

    With ``alpha = beta = 1`` this is **not** Hinton's ``T**2 * KL(p || q)``: that one weights
    the non-target term by ``(1 - p_t)`` (``T**2 KL(p||q) = TCKD + (1 - p_t) NCKD``, per
    example), the factor DKD removes so that the non-target knowledge is not suppressed on the
    examples the teacher is sure of. The typical setting is T = 4, alpha = 1, beta = 8.
    """
    alpha = check_number("alpha", alpha, minimum=0, maximum=MAX_WEIGHT)
    beta = check_number("beta", beta, minimum=0, maximum=MAX_WEIGHT)
    tckd, nckd, _ = dkd_terms(student_logits, teacher_logits, labels, temperature)
    return (alpha * tckd + beta * nckd).mean()


#: Sun et al.'s code divides by ``eps + std``
STANDARDIZE_EPS = 1e-7


def standardize_logits(logits: torch.Tensor, base_temperature: float = 1.0, eps: float = STANDARDIZE_EPS
                       ) -> torch.Tensor:
    """Logit standardization (Sun et al. 2024), per row (example):

    ``Z(z) = (z - mean(z)) / (tau * (std(z) + eps))``

    with ``mean`` and the sample standard deviation ``std`` (``N - 1`` in the denominator, as
    ``torch.std`` and the authors' code) over the classes, and ``tau`` the base temperature
    (default 1: the objective's own temperature then divides ``Z`` as usual). ``Z`` is
    invariant to adding a constant to a row and to multiplying it by a positive number (up to
    ``eps``): only the *shape* of the logit vector reaches the loss, not its scale, so a student
    need not match the teacher's logit range. A constant row (std 0) maps to zeros.
    """
    tau = check_temperature(base_temperature)
    eps = check_number("eps", eps, positive=True)
    check_logits("logits", logits)
    if logits.shape[1] < 2:
        raise ValueError("standardizing logits needs at least two classes (a standard deviation)")
    centred = logits - logits.mean(dim=1, keepdim=True)
    return centred / (tau * (logits.std(dim=1, keepdim=True) + eps))



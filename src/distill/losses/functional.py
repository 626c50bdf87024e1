"""The losses as pure functions (Hinton, Vinyals & Dean 2015, section 2; dense and decoupled variants).
Each docstring states its formula; :mod:`distill.losses.objectives` wraps them as the objects ``fit`` calls.

Notation used in every docstring: ``z`` are the student's logits, ``v`` the teacher's,
``T`` the temperature, ``q = softmax(z/T)`` the student's softened distribution, ``p``
the teacher's soft targets (``softmax(v/T)``, or given directly as probabilities), ``N``
the number of classes and ``B`` the batch size. Every loss is a mean over the ``B``
examples of a per-example sum over classes: nothing is divided by ``N`` unless stated.
"""
from __future__ import annotations

import math
from functools import partial

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




# ---------------------------------------------------------------- language models: token level
# Logits ``[..., V]`` (``[B, L, V]`` for a causal LM): one next-token distribution per position.
# ``p = softmax(v/T)`` is the teacher's, ``q = softmax(z/T)`` the student's, each over the ``V``
# vocabulary entries (or over a top-k teacher's ``k`` ids, see :func:`token_divergence`); ``M`` is
# the set of positions that count (``mask``), ``|M|`` its size. Every loss is a mean over ``M`` of a
# per-position sum over the vocabulary; positions outside ``M`` are never read (index selection), so
# they change neither the value nor the gradient, whatever they hold. All is computed in float32 and
# in log space.

#: the label of target positions that are not scored (padding, prompts): PyTorch's and Hugging Face's
LM_IGNORE_INDEX = -100
#: the per-position divergences of :func:`token_divergence` (a CLI builds its choices from these)
TOKEN_DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")
#: how a top-k teacher's missing mass is treated (:func:`token_divergence`)
TOKEN_TAILS = ("renormalize", "bucket")
#: the integer types a top-k teacher's vocabulary ids may have
TOPK_ID_DTYPES = (torch.int64, torch.int32, torch.int16)
#: the least mass ``tail="bucket"`` gives the remainder category: float32's resolution of a sum near
#: one (2**-23), below which ``1 - sum_k p_k`` is rounding noise
BUCKET_FLOOR = 2.0 ** -23
#: a top-k teacher's probabilities may sum above one by this much (rounding of stored log-probs)
TOPK_SUM_TOLERANCE = 1e-2

_INF = float("inf")


def check_token_settings(divergence: str, temperature: float, beta: float, skew: float, tail: str):
    """The settings of :func:`token_divergence`, checked (one ValueError naming the setting) and
    returned as ``(divergence, temperature, beta, skew, tail)``. ``beta`` must lie strictly in
    (0, 1) for ``"jsd"``, ``skew`` in [0, 1) for the skew divergences (each is only range-checked
    where it is used), and ``tail="bucket"`` needs T = 1."""
    if not isinstance(divergence, str) or divergence not in TOKEN_DIVERGENCES:
        raise ValueError(f"divergence must be one of {TOKEN_DIVERGENCES}, got {divergence!r}")
    if not isinstance(tail, str) or tail not in TOKEN_TAILS:
        raise ValueError(f"tail must be one of {TOKEN_TAILS}, got {tail!r}")
    t = check_temperature(temperature)
    beta = check_number("beta", beta)
    skew = check_number("skew", skew)
    if divergence == "jsd" and not 0 < beta < 1:
        raise ValueError(f"jsd needs beta strictly between 0 and 1, got {beta!r}: at 0 and 1 it vanishes; its "
                         "limits there (divided by beta, or by 1 - beta) are divergence='forward_kl' (beta -> 0) "
                         "and divergence='reverse_kl' (beta -> 1)")
    if divergence in ("skew_kl", "skew_reverse_kl") and not 0 <= skew < 1:
        raise ValueError(f"{divergence} needs skew in [0, 1), got {skew!r} (at 1 the mixture is the first "
                         "distribution itself and the divergence is 0)")
    if tail == "bucket" and t != 1:
        raise ValueError(f"tail='bucket' needs temperature 1, got {t:g}: a top-k teacher's remainder "
                         "1 - sum_k p_k cannot be re-tempered without the rest of its distribution; use "
                         "tail='renormalize' at other temperatures")
    return divergence, t, beta, skew, tail


def _check_token_rows(name: str, x: torch.Tensor) -> None:
    """Rows ``[N, C]`` of (log-)scores: no NaN or +inf (-inf is allowed: an excluded entry), and no
    row that is -inf everywhere (it holds no distribution)."""
    if not (x < _INF).all():
        raise ValueError(f"{name} contains nan or +inf (-inf is allowed: an excluded vocabulary entry)")
    if x.numel() and (x.amax(dim=-1) == -_INF).any():
        raise ValueError(f"{name} is -inf at every entry of some counted position: it holds no distribution")


def _checked_log_softmax(name: str, x: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the last axis, checked through each row's logsumexp (one number per
    position, not a second pass over the vocabulary): NaN or +inf in a row, or a row of -inf only,
    make it non-finite, and :func:`_check_token_rows` then says which."""
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    if not bool(torch.isfinite(lse).all()):
        _check_token_rows(name, x)
        raise ValueError(f"{name} holds no finite distribution at some counted position")
    return x - lse


def _safe_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the last axis, -inf with a zero gradient (not NaN) for a row of -inf only."""
    empty = ~(x > -_INF).any(dim=-1)
    out = torch.logsumexp(torch.where(empty[..., None], 0.0, x), dim=-1)
    return torch.where(empty, -_INF, out)


def _safe_log_softmax(x: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the last axis; a row of -inf only stays -inf (no mass), with zero gradient."""
    lse = _safe_logsumexp(x)
    empty = (lse == -_INF)[..., None]
    return torch.where(empty, -_INF, torch.where(empty, 0.0, x) - torch.where(empty, 0.0, lse[..., None]))


def _kl_rows(log_a: torch.Tensor, log_b: torch.Tensor, plain: bool = False) -> torch.Tensor:
    """``KL(a || b) = sum_j a_j (log a_j - log b_j)`` per row, from log-probabilities. A term with
    ``a_j = 0`` is 0 (``0 log 0 = 0``), and so is one with ``b_j = 0`` (``log b_j = -inf``: an entry
    excluded from ``b``'s support) instead of making the sum +inf; both with zero gradient.
    ``plain``: the sum as written, NaN or inf in a row where an entry is -inf or NaN (for callers
    that then decide)."""
    rows = (log_a.exp() * (log_a - log_b)).sum(dim=-1)
    if plain or bool(torch.isfinite(rows).all()):  # the usual case: every term finite, so no entry is excluded
        return rows  # (a -inf on either side makes its row NaN or +inf)
    ok = (log_a > -_INF) & (log_b > -_INF)
    la, lb = torch.where(ok, log_a, 0.0), torch.where(ok, log_b, 0.0)
    return torch.where(ok, la.exp() * (la - lb), 0.0).sum(dim=-1)


def _log_mixture(log_a: torch.Tensor, log_b: torch.Tensor, w: float) -> torch.Tensor:
    """``log m = log(w * a + (1 - w) * b)`` for ``w`` in [0, 1), in log space: the same as
    ``logaddexp(log a + log w, log b + log(1 - w))``, written as ``hi + log1p(c * expm1(lo - hi))``
    (``hi``/``lo`` the larger/smaller of ``log a``, ``log b``, ``c`` the weight of the smaller), which
    is stable (``lo - hi <= 0``) and exact where ``a = b`` (then ``log m = log a`` to the bit, so equal
    distributions give exactly 0). -inf with a zero gradient where both are 0."""
    if w == 0:
        return log_b
    a_hi = log_a >= log_b
    hi, lo = torch.where(a_hi, log_a, log_b), torch.where(a_hi, log_b, log_a)
    c = torch.full_like(log_a, w).masked_fill(a_hi, 1.0 - w)
    both = hi == -_INF
    d = torch.where(both, 0.0, lo - hi)
    return torch.where(both, -_INF, hi + torch.log1p(c * torch.expm1(d)))


def _divergence_rows(log_p: torch.Tensor, log_q: torch.Tensor, divergence: str, beta: float, skew: float,
                     plain: bool = False) -> torch.Tensor:
    """The per-row divergence between the teacher's ``p`` and the student's ``q`` (log-probabilities);
    ``plain``: KL terms as written (see :func:`_kl_rows`), so a NaN or -inf entry shows in its row."""
    kl = partial(_kl_rows, plain=plain)
    if divergence == "forward_kl":
        return kl(log_p, log_q)
    if divergence == "reverse_kl":
        return kl(log_q, log_p)
    if divergence == "jsd":
        log_m = _log_mixture(log_p, log_q, beta)
        return beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)
    if divergence == "skew_kl":
        return kl(log_p, _log_mixture(log_p, log_q, skew))
    if divergence == "skew_reverse_kl":
        return kl(log_q, _log_mixture(log_q, log_p, skew))
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)  # tvd


def _log_remainder(x: torch.Tensor) -> torch.Tensor:
    """``log(max(1 - exp(x), BUCKET_FLOOR))`` for ``x = log sum_k p_k``: the log-mass outside the k
    ids, computed stably (``log(-expm1(x))`` near 0, ``log1p(-exp(x))`` below -log 2), with ``x``
    clamped so that the remainder is at least :data:`BUCKET_FLOOR` (finite value and gradient)."""
    x = x.clamp(max=math.log1p(-BUCKET_FLOOR))
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _zero_like_loss(student_logits: torch.Tensor) -> torch.Tensor:
    """0.0 (float32) with a grad_fn reaching ``student_logits`` (a sum over none of its entries), so
    ``backward`` works and gives zeros, whatever the logits hold (even -inf or NaN)."""
    return student_logits.reshape(-1)[:0].float().sum()


def _positions(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """``[..., C]`` -> ``[N, C]``: the rows of the positions ``keep`` (bool, flat) selects (all: None)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if keep is None else rows[keep]


#: the share of counted positions above which dense logits are scored in place (every position,
#: the uncounted ones then left out of the sum) instead of copying the counted rows out first
UNINDEXED_SHARE = 0.9


def _dense_unindexed(student_logits, teacher, keep, t: float, divergence: str, beta: float, skew: float):
    """:func:`token_divergence` of dense logits computed at every position, without copying the
    counted rows out: the mean of the per-position divergence over the positions ``keep`` (flat
    bool, None: all) selects, as ``sum(where(keep, D, 0)) / |M|`` (:func:`_masked_mean`: None when
    some position, counted or not, has a non-finite divergence, from NaN/inf logits, -inf entries or
    a row of -inf only, and the indexed path decides)."""
    z = student_logits.float()
    v = teacher.detach().to(z.device).float()
    log_q = F.log_softmax(z / t if t != 1 else z, dim=-1)
    log_p = F.log_softmax(v / t if t != 1 else v, dim=-1)
    return _masked_mean(_divergence_rows(log_p, log_q, divergence, beta, skew, plain=True), keep)


def _masked_mean(rows: torch.Tensor, keep):
    """The mean of ``rows`` over the positions ``keep`` (flat bool, None: all) selects; None when a
    row is non-finite (counted or not: its gradient would be NaN even with a zero weight) or none
    is counted, so that the indexed path decides."""
    if not bool(torch.isfinite(rows).all()):
        return None
    if keep is None:
        return rows.mean()
    count = keep.sum()
    if int(count) == 0:
        return None
    return torch.where(keep.view(rows.shape), rows, 0.0).sum() / count


def _topk_unindexed(student_logits, ids, logprobs, keep, t: float, tail: str, divergence: str, beta: float,
                    skew: float):
    """:func:`token_divergence` of a top-k teacher computed at every position (only the student's
    logsumexp and its gather at the ids touch the vocabulary axis), masked as in
    :func:`_dense_unindexed`. None, for the indexed path to decide (and raise), when an id at any
    position is out of range, a stored row sums above one (``"bucket"``) or a row is non-finite."""
    v_s = student_logits.shape[-1]
    ids = ids.detach().to(student_logits.device)
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= v_s:
        return None
    z = student_logits.float()
    lp = logprobs.detach().to(z.device).float()
    # log_softmax, then the gather: one fused pass over the vocabulary each way (a logsumexp and a
    # gather of the logits take two more in the backward)
    lq_k = F.log_softmax(z / t if t != 1 else z, dim=-1).gather(-1, ids.long())
    if tail == "renormalize":
        log_q = lq_k
        log_p = _safe_log_softmax(lp / t if t != 1 else lp)
    else:
        x_p = _safe_logsumexp(lp)
        if bool((x_p > math.log1p(TOPK_SUM_TOLERANCE)).any()):
            return None
        log_q = torch.cat([lq_k, _log_remainder(_safe_logsumexp(lq_k))[..., None]], dim=-1)
        log_p = torch.cat([lp, _log_remainder(x_p)[..., None]], dim=-1)
    return _masked_mean(_divergence_rows(log_p, log_q, divergence, beta, skew, plain=True), keep)


def token_divergence(student_logits: torch.Tensor, teacher, mask: torch.Tensor | None = None, *,
                     divergence: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
                     skew: float = 0.1, tail: str = "renormalize") -> torch.Tensor:
    """Token-level divergence between the teacher's and the student's next-token distributions,

    ``L = (1/|M|) * sum_{s in M} D(p_s, q_s)``,  ``p_s = softmax(v_s / T)``,  ``q_s = softmax(z_s / T)``,

    ``M`` the positions where ``mask`` (bool, ``student_logits.shape[:-1]``; None = all) is True.
    ``D`` is ``divergence``, one of :data:`TOKEN_DIVERGENCES`:

    * ``"forward_kl"``: ``KL(p || q) = sum_i p_i log(p_i / q_i)``; its gradient is
      ``dL/dz_si = (q_si - p_si) / (T |M|)``;
    * ``"reverse_kl"``: ``KL(q || p)``;
    * ``"jsd"``: the generalized Jensen-Shannon divergence (Agarwal et al. 2024, GKD)
      ``beta KL(p || m) + (1 - beta) KL(q || m)``, ``m = beta p + (1 - beta) q``, ``0 < beta < 1``
      (0.5: the symmetric JSD; its limits at 0 and 1, divided by beta or 1 - beta, are forward and
      reverse KL: pass those instead); ``log m`` is computed in log space, as
      ``logaddexp(log p + log beta, log q + log(1 - beta))`` but in a form exact where ``p = q``;
    * ``"skew_kl"``: ``KL(p || a p + (1 - a) q)``; ``"skew_reverse_kl"``: ``KL(q || a q + (1 - a) p)``,
      ``a = skew`` in [0, 1) (DistiLLM, Ko et al. 2024; a = 0 is plain forward / reverse KL);
    * ``"tvd"``: the total variation distance ``(1/2) sum_i |p_i - q_i|``.

    ``teacher`` is dense logits ``v`` of the student's shape (the same vocabulary ``V``), or a
    top-k pair ``(ids, logprobs)``, each ``[..., k]``: the teacher's ``k`` largest log-probabilities
    at T = 1 and their vocabulary ids (int64/int32/int16, distinct, in ``0..V-1``). The student's
    log-probabilities ``log_softmax(z/T)`` over its full vocabulary are then gathered at those ids,
    and ``tail`` (one of :data:`TOKEN_TAILS`) says what becomes of the mass outside them:

    * ``"renormalize"``: the teacher's k probabilities are re-tempered and renormalised,
      ``p_k ∝ p(k)**(1/T)`` (``softmax(logprobs / T)`` over the k); the student's are its full-
      vocabulary ``q_k = softmax(z / T)[ids]``, *not* renormalised, so that mass the student puts
      outside the teacher's k is not free (renormalising the student too would leave it unpenalised:
      a student trained so at k = 32 reached a test perplexity of 579 against 72 from full logits).
      With ``k = V`` this is exactly the dense result.
    * ``"bucket"`` (T = 1 only): one extra category on both sides holds the rest of the mass, the
      teacher's ``1 - sum_k p_k`` and the student's ``1 - sum_k q_k`` at the gathered ids (no
      renormalisation), each computed as ``log1p(-exp(logsumexp(.)))`` (``log(-expm1)`` near 0) and
      floored at :data:`BUCKET_FLOOR` (2**-23, float32's resolution of a sum near one), so the value
      and gradient stay finite; with ``k = V`` both remainders are the floor and the result equals
      the dense one (up to float32 rounding).

    Log space throughout: an entry whose logit is -inf (a masked or padded vocabulary entry) has
    probability 0, and a KL term ``a_i log(a_i / b_i)`` with ``a_i = 0`` is 0; one with ``b_i = 0``
    (``a`` puts mass on an entry ``b`` excludes) is dropped instead of making the value +inf (the
    convention of DistiLLM's and MiniLLM's ``inf_mask``): the KL then runs over the entries both sides
    allow. Neither case gives a NaN in the value or the gradient; JSD, TVD and skew KL with
    ``skew > 0`` never meet the second. NaN or +inf logits at a counted position, and a counted
    position whose logits are all -inf, are a ValueError. The result is a float32 scalar (inputs in
    bf16/fp16 are cast up); the teacher is detached. An empty ``M`` gives 0.0 with a grad_fn reaching
    ``student_logits`` (its gradient is zeros).
    """
    divergence, t, beta, skew, tail = check_token_settings(divergence, temperature, beta, skew, tail)
    if not isinstance(student_logits, torch.Tensor) or not student_logits.is_floating_point():
        raise ValueError("student_logits must be a floating-point torch.Tensor of shape (..., vocabulary), got "
                         f"{getattr(student_logits, 'dtype', type(student_logits).__name__)}")
    if student_logits.dim() < 1 or student_logits.shape[-1] == 0:
        raise ValueError("student_logits must have a non-empty last (vocabulary) axis, got "
                         f"{tuple(student_logits.shape)}")
    lead, v_s = tuple(student_logits.shape[:-1]), student_logits.shape[-1]
    keep = None
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != lead:
            raise ValueError(f"mask must be a bool tensor of shape {lead} (student_logits without its vocabulary "
                             f"axis), got {getattr(mask, 'dtype', type(mask).__name__)} "
                             f"{tuple(getattr(mask, 'shape', ()))}")
        keep = mask.to(student_logits.device).reshape(-1)

    topk = isinstance(teacher, (tuple, list))
    if topk:
        if len(teacher) != 2:
            raise ValueError(f"a top-k teacher is a pair (ids, logprobs), got {len(teacher)} items")
        ids, logprobs = teacher
        if not isinstance(ids, torch.Tensor) or ids.dtype not in TOPK_ID_DTYPES:
            raise ValueError(f"top-k teacher ids must be an integer tensor ({', '.join(map(str, TOPK_ID_DTYPES))}), "
                             f"got {getattr(ids, 'dtype', type(ids).__name__)}")
        if not isinstance(logprobs, torch.Tensor) or not logprobs.is_floating_point():
            raise ValueError("top-k teacher logprobs must be a floating-point tensor, got "
                             f"{getattr(logprobs, 'dtype', type(logprobs).__name__)}")
        if ids.shape != logprobs.shape or ids.dim() != len(lead) + 1 or tuple(ids.shape[:-1]) != lead:
            raise ValueError(f"top-k teacher ids {tuple(ids.shape)} and logprobs {tuple(logprobs.shape)} must both "
                             f"have shape {lead + ('k',)} (the student's positions, then k)")
        k = ids.shape[-1]
        if not 1 <= k <= v_s:
            raise ValueError(f"a top-k teacher needs 1 <= k <= V = {v_s} ids per position, got k = {k}")
    else:
        if not isinstance(teacher, torch.Tensor) or not teacher.is_floating_point():
            raise ValueError("the teacher must be floating-point logits (a tensor) or a top-k pair (ids, logprobs), "
                             f"got {getattr(teacher, 'dtype', type(teacher).__name__)}")
        if tuple(teacher.shape[:-1]) != lead or teacher.dim() != student_logits.dim():
            raise ValueError(f"teacher logits {tuple(teacher.shape)} and student logits "
                             f"{tuple(student_logits.shape)} must share their positions")
        if teacher.shape[-1] != v_s:
            raise ValueError(f"vocabulary sizes differ: student {v_s}, teacher {teacher.shape[-1]} "
                             "(TokenDistillation restricts both to the shared prefix)")

    if keep is None or int(keep.sum()) >= UNINDEXED_SHARE * keep.numel():
        fast = _topk_unindexed(student_logits, ids, logprobs, keep, t, tail, divergence, beta, skew) if topk \
            else _dense_unindexed(student_logits, teacher, keep, t, divergence, beta, skew)
        if fast is not None:
            return fast
    z = _positions(student_logits, keep)
    if z.shape[0] == 0:
        return _zero_like_loss(student_logits)
    z = z.float()
    if not topk:
        v = _positions(teacher.detach().to(z.device), keep).float()
        log_q = _checked_log_softmax("student_logits", z / t if t != 1 else z)
        log_p = _checked_log_softmax("teacher logits", v / t if t != 1 else v)
    else:
        ids = _positions(ids.detach().to(z.device), keep).long()
        lp = _positions(logprobs.detach().to(z.device), keep).float()
        if ids.min() < 0 or ids.max() >= v_s:
            raise ValueError(f"top-k teacher ids must lie in 0..{v_s - 1} (the student's vocabulary of {v_s}), "
                             f"got ids {int(ids.min())}..{int(ids.max())}")
        _check_token_rows("top-k teacher logprobs", lp)
        z_k = z.gather(-1, ids)
        _check_token_rows("student_logits", z_k)  # at the teacher's ids, what the loss reads
        if tail == "renormalize":
            zt = z / t if t != 1 else z
            log_q = (z_k / t if t != 1 else z_k) - torch.logsumexp(zt, dim=-1, keepdim=True)
            if not bool((log_q < _INF).all()):  # NaN, +inf, or a student row of -inf only
                _check_token_rows("student_logits", z)
            log_p = _safe_log_softmax(lp / t if t != 1 else lp)
        else:
            x_p = _safe_logsumexp(lp)
            if (x_p > math.log1p(TOPK_SUM_TOLERANCE)).any():
                raise ValueError("the top-k teacher's probabilities sum above 1 at some position: logprobs must be "
                                 "log-probabilities at T = 1 (log_softmax of the logits, then top-k)")
            lq_k = z_k - torch.logsumexp(z, dim=-1, keepdim=True)
            if not bool((lq_k < _INF).all()):  # NaN, +inf, or a student row of -inf only
                _check_token_rows("student_logits", z)
            log_q = torch.cat([lq_k, _log_remainder(_safe_logsumexp(lq_k))[:, None]], dim=-1)
            log_p = torch.cat([lp, _log_remainder(x_p)[:, None]], dim=-1)
    return _divergence_rows(log_p, log_q, divergence, beta, skew).mean()


def _valid_targets(labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``valid[b, t] = labels[b, t+1] != -100 (and mask[b, t+1])``, bool ``[B, L-1]``, after checks."""
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool \
            or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.dim() != 2:
        raise ValueError(f"labels must have shape (batch, length), got {tuple(labels.shape)}")
    valid = labels[:, 1:] != LM_IGNORE_INDEX
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or \
                tuple(mask.shape) not in (tuple(labels.shape), tuple(labels.shape[:1])):
            raise ValueError(f"mask must be a bool tensor of shape {tuple(labels.shape)} (tokens) or "
                             f"{tuple(labels.shape[:1])} (sequences), got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
        mask = mask.to(labels.device)
        valid = valid & (mask[:, 1:] if mask.dim() == 2 else mask[:, None])
    return valid


def next_token_pairs(student_logits: torch.Tensor, teacher_out, labels: torch.Tensor,
                     mask: torch.Tensor | None = None):
    """The causal-LM shift, in this one place: the logits at position ``t`` predict token ``t + 1``.

    ``student_logits`` ``[B, L, V]``, ``labels`` ``[B, L]`` (the input ids, with
    :data:`LM_IGNORE_INDEX` = -100 at positions that are not scored: padding, prompts), ``mask``
    bool ``[B, L]`` (the tokens that count, e.g. an attention mask; ``[B]`` keeps whole sequences;
    None = all). Returns ``(student_logits[:, :-1], teacher[:, :-1], targets, valid)`` with
    ``targets = labels[:, 1:]`` and ``valid = (targets != -100) & mask[:, 1:]`` (bool ``[B, L-1]``):
    logits ``[b, t]`` are scored against ``targets[b, t]`` where ``valid[b, t]``. ``teacher_out`` is
    dense logits ``[B, L, V_t]`` (any vocabulary size), a top-k pair ``(ids, logprobs)`` (each
    ``[B, L, k]``, each shifted) or None (returned as None).
    """
    if not isinstance(student_logits, torch.Tensor) or student_logits.dim() != 3:
        raise ValueError("student_logits must be a tensor of shape (batch, length, vocabulary), got "
                         f"{tuple(getattr(student_logits, 'shape', ())) or type(student_logits).__name__}")
    valid = _valid_targets(labels, mask)
    if tuple(labels.shape) != tuple(student_logits.shape[:2]):
        raise ValueError(f"labels {tuple(labels.shape)} must have the student's (batch, length) "
                         f"{tuple(student_logits.shape[:2])}")

    def shift(x, what):
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or tuple(x.shape[:2]) != tuple(student_logits.shape[:2]):
            raise ValueError(f"{what} must have shape {tuple(student_logits.shape[:2]) + ('*',)}, got "
                             f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}")
        return x[:, :-1]

    if teacher_out is None:
        teacher = None
    elif isinstance(teacher_out, (tuple, list)):
        if len(teacher_out) != 2:
            raise ValueError(f"a top-k teacher is a pair (ids, logprobs), got {len(teacher_out)} items")
        teacher = (shift(teacher_out[0], "top-k teacher ids"), shift(teacher_out[1], "top-k teacher logprobs"))
    else:
        teacher = shift(teacher_out, "teacher logits")
    return student_logits[:, :-1], teacher, labels[:, 1:], valid


def valid_token_count(labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The number of scored target positions after the shift (``valid.sum()`` of
    :func:`next_token_pairs`), an int64 scalar tensor on the labels' device (no host sync): what the
    training loop divides by to normalise gradient accumulation by tokens."""
    return _valid_targets(labels, mask).sum()


def token_cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy at T = 1 averaged over the valid positions:
    ``(1/|M|) * sum_{s in M} -log softmax(z_s)[y_s]`` with ``z`` ``[..., V]``, ``targets`` ``y``
    (integers, ``z.shape[:-1]``) and ``M`` where ``valid`` (bool, same shape; None = all) is True;
    ``y`` must lie in ``0..V-1`` on ``M`` (elsewhere it is never read). Float32; an empty ``M``
    gives 0.0 with a grad_fn reaching ``student_logits``."""
    if not isinstance(student_logits, torch.Tensor) or not student_logits.is_floating_point() \
            or student_logits.dim() < 2:
        raise ValueError("student_logits must be a floating-point tensor of shape (..., vocabulary)")
    lead = tuple(student_logits.shape[:-1])
    if not isinstance(targets, torch.Tensor) or targets.dtype.is_floating_point or targets.dtype == torch.bool \
            or targets.is_complex() or tuple(targets.shape) != lead:
        raise ValueError(f"targets must be an integer tensor of shape {lead}, got "
                         f"{getattr(targets, 'dtype', type(targets).__name__)} {tuple(getattr(targets, 'shape', ()))}")
    if valid is not None and (not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool
                              or tuple(valid.shape) != lead):
        raise ValueError(f"valid must be a bool tensor of shape {lead}")
    keep = None if valid is None else valid.to(student_logits.device).reshape(-1)
    z = _positions(student_logits, keep)
    if z.shape[0] == 0:
        return _zero_like_loss(student_logits)
    y = targets.to(student_logits.device).reshape(-1)
    y = (y if keep is None else y[keep]).long()
    v = student_logits.shape[-1]
    if y.min() < 0 or y.max() >= v:
        raise ValueError(f"targets at the valid positions must lie in 0..{v - 1}, got {int(y.min())}..{int(y.max())}")
    return F.cross_entropy(z.float(), y)


# ---------------------------------------------------------------- intermediate features
# Features are the outputs of a module inside each network (e.g. a convolution block's map
# ``[B, C, *S]``, an embedding ``[B, D]``), the student's already projected where a loss needs the
# teacher's shape (:mod:`distill.train.features`). ``s`` is the student's, ``t`` the teacher's, ``B``
# the batch size. The teacher side is computed as given: callers pass detached teacher features.


def _check_features(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 1 or x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); a mean over no values is undefined")


def hint_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FitNets' hint loss (Romero et al. 2015): the mean squared difference over every entry,

    ``L = (1/n) * sum_j (s_j - t_j)**2``, ``n`` the number of entries (``((s - t)**2).mean()``).

    ``student`` and ``teacher`` must have the same shape (project the student's first)."""
    _check_features("student features", student)
    _check_features("teacher features", teacher)
    if student.shape != teacher.shape:
        raise ValueError(f"hint_loss needs features of one shape: student {tuple(student.shape)}, teacher "
                         f"{tuple(teacher.shape)} (project the student's to the teacher's)")
    return ((student - teacher) ** 2).mean()


def attention_map(x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention map of features ``x`` ``[B, C, *S]``:

    ``a(x)_b = v_b / max(||v_b||_2, eps)``, ``v_b = flatten_s( (1/C) sum_c |x_bcs|**p )``,

    ``[B, prod(S)]``: the mean over channels of ``|x|**p``, flattened over the positions and
    L2-normalised per example (``F.normalize``, ``eps = 1e-12``)."""
    p = check_number("p", p, positive=True)
    return F.normalize(x.abs().pow(p).mean(dim=1).reshape(x.shape[0], -1), dim=1)


def attention_transfer_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017, their code's form) between features
    ``[B, C_s, *S]`` and ``[B, C_t, *S]``:

    ``L = (1/(B * P)) * sum_b sum_s (a(s)_bs - a(t)_bs)**2``

    with ``a`` the L2-normalised spatial attention map of :func:`attention_map` (mean over channels
    of ``|x|**p``, ``p = 2`` by default) and ``P = prod(S)`` the number of positions. The channel
    counts may differ; the batch and the positions ``S`` must match. ``a`` is invariant to a
    positive scaling of ``x`` (up to ``eps``), so only where a network attends counts, not how much."""
    _check_features("student features", student)
    _check_features("teacher features", teacher)
    for name, x in (("student", student), ("teacher", teacher)):
        if x.dim() < 3:
            raise ValueError(f"attention transfer needs features of shape (batch, channels, *positions); the "
                             f"{name}'s have shape {tuple(x.shape)}")
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(f"attention transfer needs one batch and one spatial size: student {tuple(student.shape)}, "
                         f"teacher {tuple(teacher.shape)} (channels may differ)")
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


#: squared distances below this count as 0 in :func:`pairwise_distances` (its square root's gradient stays finite)
DISTANCE_EPS = 1e-12


def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``d_ij = ||e_i - e_j||_2`` between the rows of ``e`` ``[B, D]``, ``[B, B]``,
    0 on the diagonal (``sqrt(max(||e_i - e_j||**2, 1e-12))`` elsewhere, a finite gradient)."""
    sq = (e[:, None, :] - e[None, :, :]).pow(2).sum(-1)
    off = ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return torch.where(off, sq.clamp_min(DISTANCE_EPS).sqrt(), torch.zeros_like(sq))


def _relational_parts(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RKD's two views of embeddings ``e`` ``[B, D]``: the distances divided by their mean over the
    ``B(B-1)`` distinct pairs, ``[B, B]``, and the angle cosines ``[B, B, B]`` (anchor first)."""
    d = pairwise_distances(e)
    off = ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    d = d / d[off].mean().clamp_min(DISTANCE_EPS)
    u = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # u[j, i] = (e_i - e_j) / ||e_i - e_j||
    return d, torch.bmm(u, u.transpose(1, 2))  # cos[j, i, k] = <u[j, i], u[j, k]>


def relational_loss(student: torch.Tensor, teacher: torch.Tensor, distance_weight: float = 25.0,
                    angle_weight: float = 50.0) -> torch.Tensor:
    """Relational knowledge distillation (Park et al. 2019, RKD-DA, as their code computes it) of
    embeddings ``[B, D_s]`` and ``[B, D_t]`` (extra dimensions are flattened; ``D_s`` may differ
    from ``D_t``):

    ``L = distance_weight * mean_ij huber(psi_D(s)_ij - psi_D(t)_ij)
    + angle_weight * mean_jik huber(psi_A(s)_jik - psi_A(t)_jik)``

    * distances: ``psi_D(e)_ij = ||e_i - e_j||_2 / mu``, ``mu`` the mean of ``||e_i - e_j||_2`` over
      the distinct pairs ``i != j`` (``psi_D(e)_ii = 0``), a ``[B, B]`` matrix;
    * angles: ``psi_A(e)_jik = <u_ji, u_jk>``, ``u_ji = (e_i - e_j) / ||e_i - e_j||_2`` (0 for
      ``i = j``, as ``F.normalize`` gives), the cosine of the angle at the anchor ``j`` between
      ``e_i - e_j`` and ``e_k - e_j``, a ``[B, B, B]`` tensor;
    * ``huber`` the smooth-L1 loss (``F.smooth_l1_loss``, ``beta = 1``), each mean over every entry.

    Both terms are invariant to scaling the embeddings by a positive number (and to translating
    them); the batch sizes must match and hold at least two examples. The angle term costs
    O(B³·D) a call (B³ cosines from batched products): 8× the time for twice the batch."""
    _check_features("student features", student)
    _check_features("teacher features", teacher)
    distance_weight = check_number("distance_weight", distance_weight, minimum=0, maximum=MAX_WEIGHT)
    angle_weight = check_number("angle_weight", angle_weight, minimum=0, maximum=MAX_WEIGHT)
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"relational_loss needs one batch: student has {student.shape[0]} rows, teacher "
                         f"{teacher.shape[0]}")
    if student.shape[0] < 2:
        raise ValueError("relational_loss compares pairs of examples: it needs a batch of at least 2")
    ds, cs = _relational_parts(student.reshape(student.shape[0], -1))
    dt, ct = _relational_parts(teacher.reshape(teacher.shape[0], -1))
    return (distance_weight * F.smooth_l1_loss(ds, dt, reduction="mean")
            + angle_weight * F.smooth_l1_loss(cs, ct, reduction="mean"))


#: the temperature of :func:`channel_wise_feature_loss` (Shu et al.'s)
CWD_FEATURE_TEMPERATURE = 4.0


def channel_wise_feature_loss(student: torch.Tensor, teacher: torch.Tensor,
                              temperature: float = CWD_FEATURE_TEMPERATURE) -> torch.Tensor:
    """Channel-wise distillation (Shu et al. 2021) between feature maps ``[B, C, *S]`` of one shape
    (project the student's first): :func:`channel_wise_distillation_loss` with the maps in place of
    dense logits, each channel a distribution over the positions at temperature T,

    ``L = T**2 / (B * C) * sum_b sum_c KL(phi(t)_bc || phi(s)_bc)``, ``phi(x)_bcs = softmax_s(x_bcs / T)``."""
    _check_features("student features", student)
    _check_features("teacher features", teacher)
    if student.dim() < 3 or student.shape != teacher.shape:
        raise ValueError(f"channel-wise distillation needs feature maps (batch, channels, *positions) of one shape: "
                         f"student {tuple(student.shape)}, teacher {tuple(teacher.shape)} (project the student's)")
    return channel_wise_distillation_loss(student, teacher, temperature)


#: the feature losses by the names :class:`~distill.losses.objectives.FeatureDistillation` pairs use
FEATURE_LOSSES = {"hint": hint_loss, "attention": attention_transfer_loss, "relational": relational_loss,
                  "channel_wise": channel_wise_feature_loss}

"""Transfer sets (what the student is shown) and the bias correction for classes it never saw.

Selections (each returns a new :class:`~distill.data.Dataset` whose fingerprint names the
selection, so checkpoints and soft-target stores never mix two transfer sets up):

* :func:`all_data` – the whole training set;
* :func:`without_classes` – every training example whose label is not in ``classes``;
* :func:`only_classes` – only the examples whose label is in ``classes``;
* :func:`random_fraction` – a class-stratified, seeded random fraction;
* :func:`unlabeled` – external inputs with no labels (train with ``hard_weight=0``).

Bias correction: a student distilled on a transfer set that lacks some classes learns their
relative logits from the soft targets but not their overall level (the output biases).
:func:`offset_vector` builds the paper's manual correction (e.g. +3.5 on class 3);
:func:`fit_offsets` estimates offsets automatically from **unlabeled calibration inputs and
the teacher's predictions on them** – no labels of any kind, test or training.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import torch

from distill.errors import DistillError

# ---------------------------------------------------------------- selection (pure index functions)

def _check_classes(classes, num_classes: int) -> list[int]:
    cs = sorted({int(c) for c in classes})
    if not cs:
        raise ValueError("give at least one class")
    bad = [c for c in cs if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"classes {bad} are outside 0..{num_classes - 1}")
    return cs


def indices_without(labels: torch.Tensor, classes, num_classes: int) -> torch.Tensor:
    """Sorted indices ``i`` with ``labels[i] not in classes``."""
    cs = _check_classes(classes, num_classes)
    keep = ~torch.isin(labels, torch.tensor(cs, dtype=labels.dtype))
    idx = torch.nonzero(keep).flatten()
    if idx.numel() == 0:
        raise DistillError(f"leaving out classes {cs} leaves no training examples")
    return idx


def indices_only(labels: torch.Tensor, classes, num_classes: int) -> torch.Tensor:
    """Sorted indices ``i`` with ``labels[i] in classes``."""
    cs = _check_classes(classes, num_classes)
    idx = torch.nonzero(torch.isin(labels, torch.tensor(cs, dtype=labels.dtype))).flatten()
    if idx.numel() == 0:
        raise DistillError(f"the training set has no examples of classes {cs}")
    return idx


def indices_fraction(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """A stratified random sample: from each class ``c`` with ``n_c`` examples, ``max(1, round(f*n_c))``
    indices drawn without replacement by a generator seeded with ``seed``; returned sorted."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    parts = []
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        k = max(1, int(round(fraction * members.numel())))
        parts.append(members[torch.randperm(members.numel(), generator=g)[:k]])
    return torch.sort(torch.cat(parts)).values


def _take(data, idx: torch.Tensor, tag: str):
    return replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx],
                   fingerprint=f"{data.fingerprint}:transfer[{tag}]")


def all_data(data):
    """The whole training set (fingerprint unchanged: it is the same data)."""
    return data


def without_classes(data, classes):
    """The training set with every example of ``classes`` removed (the paper's omit-3)."""
    cs = _check_classes(classes, data.num_classes)
    return _take(data, indices_without(data.y_train, cs, data.num_classes), "omit=" + ",".join(map(str, cs)))


def only_classes(data, classes):
    """Only the training examples of ``classes`` (the paper's 7s-and-8s transfer set)."""
    cs = _check_classes(classes, data.num_classes)
    return _take(data, indices_only(data.y_train, cs, data.num_classes), "only=" + ",".join(map(str, cs)))


def random_fraction(data, fraction: float, seed: int = 0):
    """A class-stratified random ``fraction`` of the training set (see :func:`indices_fraction`)."""
    return _take(data, indices_fraction(data.y_train, fraction, seed), f"frac={fraction:g},seed={seed}")


def repeat(data, times: int):
    """The transfer set repeated ``times`` times (rows ``i, i+n, i+2n, ...`` are the same example),
    so one training "epoch" makes ``times`` passes over a small set and the per-epoch test
    evaluation runs ``times`` times less often. Shuffling the repeated set each epoch is the same
    as ``times`` reshuffled passes except at the pass boundaries."""
    times = int(times)
    if times < 1:
        raise ValueError(f"times must be >= 1, got {times}")
    if times == 1:
        return data
    return replace(data, x_train=data.x_train.repeat(times, 1),
                   y_train=None if data.y_train is None else data.y_train.repeat(times),
                   fingerprint=f"{data.fingerprint}:repeat{times}")


def repeats_for(n: int, epoch_size: int) -> int:
    """``max(1, ceil(epoch_size / n))``: how often to repeat an ``n``-example set to reach ``epoch_size``."""
    return max(1, -(-int(epoch_size) // int(n)))


def unlabeled(data, x: torch.Tensor, name: str):
    """An external, unlabeled transfer set: inputs ``x`` replace the training set, ``y_train`` is
    None (train with a teacher and ``hard_weight=0``). ``name`` identifies the inputs in the
    fingerprint; give each distinct set its own name."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != data.num_features:
        raise ValueError(f"unlabeled inputs must be a (n, {data.num_features}) tensor, "
                         f"got {tuple(getattr(x, 'shape', ()))}")
    if x.shape[0] == 0:
        raise ValueError("the unlabeled transfer set is empty")
    return replace(data, x_train=x.float(), y_train=None,
                   fingerprint=f"{data.fingerprint}:transfer[unlabeled={name},n={x.shape[0]}]")


def absent_classes(data, transfer) -> list[int]:
    """Classes with training examples in ``data`` but none in ``transfer`` (labels needed)."""
    if transfer.y_train is None:
        raise ValueError("an unlabeled transfer set has no known classes")
    present = set(transfer.y_train.unique().tolist())
    return [c for c in range(data.num_classes) if c not in present]


# ---------------------------------------------------------------- bias correction

def offset_vector(num_classes: int, offsets: dict) -> torch.Tensor:
    """A per-class logit offset ``b`` with ``b[c] = offsets[c]`` and 0 elsewhere.
    E.g. the paper's omit-3 fix ``{3: 3.5}``; only-7-8 ``{7: -7.6, 8: -7.6}``."""
    b = torch.zeros(num_classes)
    for c, v in offsets.items():
        c = int(c)
        if not 0 <= c < num_classes:
            raise ValueError(f"class {c} is outside 0..{num_classes - 1}")
        b[c] = float(v)
    return b


def apply_offsets(logits: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Corrected logits ``z'_i = z_i + b_i`` (the same as adding ``b`` to the output biases)."""
    if offsets.dim() != 1 or logits.shape[-1] != offsets.shape[0]:
        raise ValueError(f"offsets of shape {tuple(offsets.shape)} do not fit logits {tuple(logits.shape)}")
    return logits + offsets.to(logits.dtype)


def with_offsets(model: torch.nn.Module, offsets: torch.Tensor) -> torch.nn.Module:
    """A copy of ``model`` whose output-layer bias is raised by ``offsets`` (the model itself is
    unchanged). The copy keeps ``arch``, so it can be checkpointed like any model."""
    m = copy.deepcopy(model)
    out = getattr(m, "output_layer", None)
    if out is None:
        lin = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
        out = lin[-1] if lin else None
    if out is None or out.bias is None or out.bias.shape != offsets.shape:
        raise ValueError("the model has no output layer bias of the offsets' shape")
    with torch.no_grad():
        out.bias.add_(offsets.to(out.bias.dtype))
    return m


def offset_objective(student_logits: torch.Tensor, teacher_probs: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``J(b) = (1/n) sum_x KL(p(x) || softmax(z(x) + b))`` up to a constant, i.e.
    ``(1/n) sum_x -sum_i p_i(x) log softmax(z(x) + b)_i``. Convex in ``b``; its gradient is
    ``mean_x softmax(z(x)+b) - mean_x p(x)``."""
    return -(teacher_probs * torch.log_softmax(student_logits + offsets, dim=-1)).sum(-1).mean()


def fit_offsets(student_logits: torch.Tensor, teacher_probs: torch.Tensor, classes=None,
                max_iter: int = 200, tol: float = 1e-7) -> torch.Tensor:
    """Automatic bias correction: the offsets ``b`` minimising ``J(b) = mean_x KL(p(x) || softmax(z(x)+b))``
    over an unlabeled calibration set (``student_logits`` z and ``teacher_probs`` p at T = 1 on the
    same inputs; no labels are used).

    Only the offsets of ``classes`` are free (default: all; the others stay 0). At the optimum
    the gradient vanishes, so for every free class ``c``:
    ``mean_x softmax(z(x)+b)_c = mean_x p_c(x)`` – minimising the KL *is* matching the student's
    mean predicted probability of each class to the teacher's. Solved by Newton's method on the
    free coordinates (Hessian ``mean_x diag(q) - q q^T`` restricted to them, a tiny ridge when
    all classes are free because adding a constant to every offset changes nothing); the result
    is returned with the non-free entries 0 (all free: centred to mean 0).
    """
    z = student_logits.detach().double()
    p = teacher_probs.detach().double()
    if z.dim() != 2 or z.shape != p.shape:
        raise ValueError(f"student logits {tuple(z.shape)} and teacher probabilities {tuple(p.shape)} "
                         "must have the same (n, classes) shape")
    if z.shape[0] == 0:
        raise ValueError("the calibration set is empty")
    if not torch.isfinite(z).all() or not torch.isfinite(p).all():
        raise ValueError("calibration logits or probabilities contain nan or inf")
    if (p < 0).any() or not torch.allclose(p.sum(-1), torch.ones(len(p), dtype=p.dtype), atol=1e-3):
        raise ValueError("teacher_probs must be probabilities (rows >= 0 summing to 1); pass softmax(teacher logits)")
    n_cls = z.shape[1]
    free = list(range(n_cls)) if classes is None else _check_classes(classes, n_cls)
    fi = torch.tensor(free)
    target = p.mean(0)[fi]
    if (target <= 0).any():
        raise ValueError("the teacher gives a free class zero probability on the whole calibration set")
    b = torch.zeros(n_cls, dtype=torch.float64)
    ridge = 1e-9 if len(free) == n_cls else 0.0
    obj = offset_objective(z, p, b)
    for _ in range(max_iter):
        q = torch.softmax(z + b, -1)
        grad = q.mean(0)[fi] - target
        if grad.abs().max() < tol:
            break
        qf = q[:, fi]
        hess = torch.diag(qf.mean(0)) - qf.T @ qf / len(qf) + ridge * torch.eye(len(free), dtype=z.dtype)
        step = torch.linalg.lstsq(hess, grad.unsqueeze(1)).solution.flatten()
        # damped Newton: halve the step until the convex objective decreases
        t = 1.0
        while t > 1e-8:
            cand = b.clone()
            cand[fi] -= t * step
            new = offset_objective(z, p, cand)
            if new <= obj:
                b, obj = cand, new
                break
            t /= 2
        else:
            break
    if len(free) == n_cls:
        b = b - b.mean()
    return b.float()


def mean_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``mean_x softmax(z(x))`` per class: what :func:`fit_offsets` matches to the teacher's."""
    return torch.softmax(logits, -1).mean(0)


# ---------------------------------------------------------------- small transfer sets, calibration, per-class errors

def epochs_for(config, n: int, min_steps: int) -> int:
    """``max(epochs, ceil(min_steps / ceil(n / batch_size)))`` for a :class:`distill.TrainConfig`
    ``config`` on ``n`` training rows: small transfer sets train for at least ``min_steps`` SGD
    steps (``min_steps`` 0: ``config.epochs``)."""
    if min_steps < 0 or n < 1:
        raise ValueError(f"need n >= 1 and min_steps >= 0, got n={n}, min_steps={min_steps}")
    steps = -(-int(n) // config.batch_size)
    return max(config.epochs, -(-int(min_steps) // steps)) if min_steps else config.epochs


def calibration_inputs(data, size: int, seed: int = 1234) -> torch.Tensor:
    """``size`` training inputs of ``data`` drawn uniformly at random without replacement by a
    generator seeded with ``seed`` (labels are never read): the unlabeled calibration set of
    :func:`fit_offsets`."""
    if size < 1:
        raise ValueError(f"the calibration set needs at least one input, got size={size}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=g)[:size]
    return data.x_train[idx]


def errors_on(logits: torch.Tensor, labels: torch.Tensor, classes) -> int:
    """Errors (``argmax z != y``) among the examples whose true label ``y`` is in ``classes``."""
    m = torch.isin(labels, torch.tensor(list(classes), dtype=labels.dtype))
    return int((logits[m].argmax(1) != labels[m]).sum())

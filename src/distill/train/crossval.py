"""Choosing among a few models by k-fold cross-validation on the training split: how ``distill
teacher``/``student`` pick a small table's model (linear or MLP, and its weight decay) when the
flags leave it open. The test split is never read; a candidate that diverges on a fold loses, and
the default stays unless another candidate makes fewer errors beyond the noise (:func:`best`)."""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from distill.train.divergence import TrainingDiverged


def stratified_folds(y: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """The fold ``0..k-1`` of every example: after a seeded shuffle, the j-th example of class c
    (c = 0, 1, ...) goes to fold ``(s_c + j) mod k``, where s_c is the number of examples of the
    classes before c; so each fold holds ``floor`` or ``ceil`` of ``n_c / k`` of every class and the
    fold sizes differ by at most one."""
    if k < 2:
        raise ValueError(f"cross-validation needs k >= 2 folds, got {k}")
    if len(y) < k:
        raise ValueError(f"{len(y)} examples cannot fill {k} folds")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    folds = torch.empty(len(y), dtype=torch.int64)
    start = 0
    for c in torch.unique(y):
        members = order[y[order] == c]
        folds[members] = (start + torch.arange(len(members))) % k
        start += len(members)
    return folds


@dataclasses.dataclass(frozen=True)
class CVScore:
    """A candidate's cross-validated result: every example's held-out negative log-likelihood
    ``losses`` (``inf`` on a fold where it diverged) and whether it was misclassified (``wrong``)."""

    losses: torch.Tensor
    wrong: torch.Tensor
    diverged: int = 0

    @property
    def n(self) -> int:
        return len(self.losses)

    @property
    def errors(self) -> int:
        return int(self.wrong.sum())

    @property
    def nll(self) -> float:
        """The mean held-out NLL (``inf`` after a diverged fold)."""
        return float(self.losses.double().mean())


def cross_validate(build: Callable, x: torch.Tensor, y: torch.Tensor, folds: torch.Tensor, train: Callable) -> CVScore:
    """``CVScore`` of one candidate: for every fold f, ``model = build(x[folds != f])`` (the rows it
    may take statistics of) is trained by ``train(model, (x_tr, y_tr), x_f)``, which returns its
    logits on fold f; example i of fold f scores ``-log softmax(logits_i)[y_i]`` and is wrong when
    ``argmax logits_i != y_i``. A fold that raises :class:`TrainingDiverged` scores ``inf`` and all
    wrong."""
    losses = torch.full((len(y),), math.inf, dtype=torch.float64)
    wrong = torch.ones(len(y), dtype=torch.bool)
    diverged = 0
    for f in range(int(folds.max()) + 1):
        held = folds == f
        if not held.any():
            continue
        xt, yt = x[~held], y[~held]
        try:
            logits = train(build(xt), (xt, yt), x[held]).double()
        except TrainingDiverged:
            diverged += 1
            continue
        nll = -torch.log_softmax(logits, dim=-1).gather(1, y[held][:, None]).squeeze(1)
        losses[held] = torch.where(torch.isfinite(nll), nll, torch.full_like(nll, math.inf))
        wrong[held] = logits.argmax(-1) != y[held]
    return CVScore(losses, wrong, diverged)


def beats(a: torch.Tensor, b: torch.Tensor, margin: float) -> bool:
    """Whether per-example values ``b`` are lower than ``a`` (the same examples) beyond ``margin``
    standard errors of the paired difference: mean(d) > margin sd(d) / sqrt(n), d = a - b (an
    infinite difference decides by its sign)."""
    d = a.double() - b.double()
    if not bool(torch.isfinite(d).all()):
        return bool(torch.isinf(d.mean())) and float(d.mean()) > 0
    se = float(d.std()) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    return float(d.mean()) > margin * se


def best(scores: dict, default: str | None = None, margin: float = 1.0) -> str:
    """The key of the fewest cross-validated errors among the candidates that never diverged (then
    the lowest mean NLL; then the first given). With a ``default`` candidate, that one is kept
    unless it diverged, or the fewest-errors candidate :func:`beats` its errors (per example,
    wrong = 1) by ``margin`` standard errors, or (returned then) the lowest-NLL candidate of no more
    errors beats its per-example NLL by ``margin`` standard errors: a default that fits the data
    far less well, though not by a countable number of errors, is replaced too."""
    ok = [k for k in scores if not scores[k].diverged] or list(scores)
    top = min(ok, key=lambda k: (scores[k].errors, scores[k].nll))
    if default is None or top == default or scores[default].diverged:
        return top
    if beats(scores[default].wrong, scores[top].wrong, margin):
        return top
    fits = [k for k in ok if scores[k].errors <= scores[default].errors]
    low = min(fits, key=lambda k: scores[k].nll)
    if low != default and beats(scores[default].losses, scores[low].losses, margin):
        return low
    return default

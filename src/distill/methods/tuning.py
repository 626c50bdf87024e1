"""Choosing a setting on the training set alone: a held-out split of the *training* examples,
and the distillation temperature chosen on it.

Both protocols train several models; each one goes through a ``fit_fn`` hook with the signature
of an experiment stage::

    fit_fn(name, data, build, config, teacher, extra) -> distill.FitResult

``name`` names the run (a caller that keeps run folders uses it in the folder's name), ``data`` is
the distill :class:`~distill.data.Dataset` to train on (its test split is what ``FitResult.test``
reports), ``build()`` makes the fresh model, ``config``/``teacher`` go to :func:`distill.fit` and
``extra`` holds descriptive fields for the caller's records. The default, :func:`fit_fresh`,
seeds, builds and fits in memory; the experiments pass one that trains through their stage cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from distill.errors import DistillError
from distill.checks import check_number, check_temperature
from distill.train.fit import FitResult, fit
from distill.train.config import TrainConfig, seed_everything
def fit_fresh(name: str, data, build, config: TrainConfig, teacher=None, extra: dict | None = None) -> FitResult:
    """The default ``fit_fn``: seed torch with ``config.seed``, ``build()`` the model and
    :func:`distill.fit` it on ``data`` with ``teacher``, in memory and quietly (``name`` and
    ``extra`` only describe the run)."""
    seed_everything(config.seed)
    return fit(build(), data, config, teacher=teacher, progress=False, meta=dict(name=name, **(extra or {})))


def holdout_split(data, holdout: int, seed: int = 0):
    """Split the *training* set of ``data`` (a distill :class:`~distill.data.Dataset`) at random
    (seeded) into ``holdout`` held-out examples and the rest.

    Returns ``(fit_idx, held_idx, tune)``: sorted indices into the training set, and the Dataset
    ``tune`` that trains on ``x_train[fit_idx]`` and whose *test* split is the held-out training
    examples ``x_train[held_idx]``. The original test set is not part of ``tune`` (it is never
    read); ``tune``'s fingerprint names the split, so its runs never mix with the full set's."""
    n = len(data.y_train)
    holdout = check_number("holdout", holdout, integer=True)
    if not 0 < holdout < n:
        raise ValueError(f"holdout must be between 1 and {n - 1} training examples, got {holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held, fit_idx = perm[:holdout].sort().values, perm[holdout:].sort().values
    tune = replace(data, name=f"{data.name}-tune", x_train=data.x_train[fit_idx], y_train=data.y_train[fit_idx],
                   x_test=data.x_train[held], y_test=data.y_train[held],
                   fingerprint=f"{data.fingerprint}:holdout{holdout}/s{seed}")
    return fit_idx, held, tune


@dataclass
class TemperatureChoice:
    """What :func:`tune_temperature` found: the chosen ``temperature``, one row per candidate
    (``temperature``, ``held_out_errors``, ``held_out_accuracy``, ``n``: held-out examples) in the
    order tried, and the candidates' :class:`~distill.FitResult` s."""

    temperature: float
    candidates: list[dict] = field(default_factory=list)
    results: list = field(default_factory=list)


def tune_temperature(build, data, config: TrainConfig, teacher, temperatures, *, holdout: int, seed: int = 0,
                     fit_fn=None, name: str = "heldout-student", extra: dict | None = None) -> TemperatureChoice:
    """Choose the distillation temperature on held-out TRAINING examples; the test set is never read.

    :func:`holdout_split` takes ``holdout`` examples out of ``data``'s training set (seeded by
    ``seed``); for every candidate ``T`` in ``temperatures`` a fresh ``build()`` model is trained on
    the rest with ``replace(config, temperature=T)`` and ``teacher`` (through ``fit_fn``, default
    :func:`fit_fresh`), and its errors on the held-out examples are counted. The chosen ``T`` is
    ``argmin_T (held-out errors(T), T)``: the fewest held-out errors, the lowest temperature on a tie.

    ``config`` uses Hinton's shorthand loss (no explicit ``objective``), whose ``temperature`` is
    the one tuned. The models see only ``tune`` (training rows and held-out training rows), so no
    decision here depends on ``data``'s test split.
    """
    temps = [check_temperature(t) for t in temperatures]
    if not temps:
        raise ValueError("give at least one candidate temperature")
    if len(set(temps)) != len(temps):
        raise ValueError(f"candidate temperatures repeat: {temps}")
    if teacher is None:
        raise ValueError("tuning the distillation temperature needs a teacher")
    if config.objective is not None:
        raise ValueError("tune_temperature tunes the shorthand loss's temperature; pass a config without objective=")
    fit_fn = fit_fn or fit_fresh
    _, _, tune = holdout_split(data, holdout, seed)
    rows, results = [], []
    for t in temps:
        res = fit_fn(name, tune, build, replace(config, temperature=t), teacher,
                     dict(extra or {}, held_out=holdout))
        if res.test is None:
            raise DistillError("the fit_fn returned no held-out metrics (FitResult.test is None); it must train "
                               "on the tune Dataset it is given, whose test split is the held-out examples")
        rows.append(dict(temperature=t, held_out_errors=res.test["errors"], held_out_accuracy=res.test["accuracy"],
                         n=res.test["n"]))
        results.append(res)
    best = min(rows, key=lambda r: (r["held_out_errors"], r["temperature"]))
    return TemperatureChoice(best["temperature"], rows, results)


__all__ = ["fit_fresh", "holdout_split", "tune_temperature", "TemperatureChoice"]

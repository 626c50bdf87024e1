"""Non-neural students: any scikit-learn regressor fit to a teacher's soft targets.

A classification tree grown to purity on noisy hard labels memorises the noise. The same tree
grown as a *regression* tree on a teacher's class probabilities copies the teacher's smooth
decision function instead, leaf by leaf (see ``distill reproduce trees``). Nothing here is
specific to trees: :class:`SoftTargetClassifier` wraps any regressor, fits it to one column of
targets per class and turns its outputs back into probabilities.

Teachers are run through :func:`distill.metrics.predict_logits` and softened by
:func:`distill.losses.soften`, the package's one batched forward pass and one softmax.
"""
from __future__ import annotations

import numpy as np
import torch

from distill.errors import require

require("sklearn", "experiments", "distill.methods.trees (soft-target trees)")  # a one-line hint when missing
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.multioutput import MultiOutputRegressor
from sklearn.tree import DecisionTreeRegressor
from sklearn.utils import get_tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d, validate_data

from distill.checks import check_temperature

from distill.losses.functional import soften
from distill.metrics import predict_logits
from distill.teachers.store import SoftTargetStore
from distill.teachers.teacher import Ensemble, Teacher

#: Rows of soft targets must sum to 1 within this tolerance (float32 softmax outputs sum to
#: 1 only up to ~1e-6 per class; ensembles averaged in float32 drift a little more).
SUM_TOLERANCE = 1e-4


def normalize_rows(raw: np.ndarray) -> np.ndarray:
    """Turn raw regressor outputs into distributions, row by row:

    ``p_ij = max(r_ij, 0) / sum_l max(r_il, 0)``, and ``p_ij = 1/k`` where that sum is 0
    (every output of the row <= 0). A regressor fit to probabilities can leave [0, 1] (linear
    models, boosting); clipping at 0 drops impossible negative mass, and dividing by the row
    sum fixes rows that do not add up to 1. Tree and forest leaves average targets that are
    already distributions, so for them this is the identity (up to rounding).
    """
    raw = np.asarray(raw, dtype=np.float64)
    clipped = np.clip(raw, 0.0, None)
    sums = clipped.sum(axis=1, keepdims=True)
    k = raw.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = np.where(sums > 0, clipped / np.where(sums > 0, sums, 1.0), 1.0 / k)
    return probs


def check_soft_targets(targets, n_samples: int | None = None, what: str = "soft targets") -> np.ndarray:
    """Validate a 2-D array of soft targets: finite, >= 0, each row summing to 1
    (within :data:`SUM_TOLERANCE`), ``n_samples`` rows if given. Returns it as float64."""
    try:
        targets = check_array(targets, dtype=np.float64, ensure_2d=False, input_name="y")
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    if targets.ndim != 2:
        raise ValueError(f"{what} must be 2-D (one row of class probabilities per example), "
                         f"got shape {targets.shape}")
    if n_samples is not None and targets.shape[0] != n_samples:
        raise ValueError(f"{what} have {targets.shape[0]} rows but X has {n_samples} samples; "
                         "pass one row of class probabilities per example")
    if targets.shape[1] < 2:
        raise ValueError(f"{what} need at least 2 columns (classes), got {targets.shape[1]}")
    if (targets < 0).any():
        raise ValueError(f"{what} contain negative values (min {targets.min():.4g}); they must be "
                         "class probabilities. For logits pass teacher=<logits>, teacher_kind='logits' "
                         "(or a torch module as teacher)")
    sums = targets.sum(axis=1)
    bad = np.abs(sums - 1.0) > SUM_TOLERANCE
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} of {len(sums)} rows do not sum to 1 (sums range "
                         f"{sums.min():.4g}..{sums.max():.4g}); each row must be a probability distribution")
    return targets


TEACHER_KINDS = ("logits", "probs")


def _as_numpy(out) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        return out.detach().cpu().double().numpy()
    return out


def _module_device(module: torch.nn.Module):
    p = next(module.parameters(), None)
    return p.device if p is not None else None


def _teacher_outputs(teacher, X: np.ndarray, temperature: float):
    """``(outputs, default kind)`` of a teacher for the rows of ``X`` (see :func:`teacher_targets`)."""

    if isinstance(teacher, (torch.nn.Module, Teacher)):
        xt = torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32)
        if isinstance(teacher, Teacher):
            t = teacher.at(temperature)
            if t.stored:  # its stored rows: probabilities (kind "probs") or logits
                return (t.table.all() if isinstance(t.table, SoftTargetStore) else t.table), t.kind
            return predict_logits(t.forward, xt, device=t.device), "logits"
        if isinstance(teacher, Ensemble):  # its combined distribution at T, not at T = 1 re-softened
            return predict_logits(lambda x: teacher.logits(x, temperature), xt,
                                  device=_module_device(teacher)), "logits"
        return predict_logits(teacher, xt), "logits"  # eval mode, no_grad; the mode is restored after
    if isinstance(teacher, SoftTargetStore):
        return teacher.all(), "logits"
    if callable(teacher) and not hasattr(teacher, "shape"):
        return teacher(X), "probs"
    return teacher, "probs"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(v / T)`` in float64, NumPy in and out: :func:`distill.losses.soften`."""
    return soften(torch.as_tensor(np.asarray(logits, dtype=np.float64)), temperature).numpy()


def teacher_targets(teacher, X: np.ndarray, temperature: float = 1.0, kind: str | None = None) -> np.ndarray:
    """The soft targets a ``teacher`` gives for the rows of ``X``.

    ``teacher`` is a torch ``nn.Module`` (its logits for ``X``, run by
    :func:`distill.metrics.predict_logits`; an :class:`distill.Ensemble` gives its effective logits
    at ``temperature``, so the targets are its combined distribution at T), a
    :class:`distill.Teacher` (the same, or its stored rows), a
    :class:`distill.teachers.store.SoftTargetStore` (its stored logits, one row per row of ``X``),
    a callable (``teacher(X)``) or an array / tensor with one row per row of ``X``. ``kind`` says
    what those numbers are: ``"logits"`` become ``softmax(v / temperature)``
    (:func:`distill.losses.soften`); ``"probs"`` are used as given (and validated). ``None`` means
    logits for modules and stores, probabilities for callables and arrays.
    """
    if kind is not None and kind not in TEACHER_KINDS:
        raise ValueError(f"teacher_kind must be one of {TEACHER_KINDS} or None, got {kind!r}")
    temperature = check_temperature(temperature)
    out, default = _teacher_outputs(teacher, X, temperature)
    kind = kind or default
    out = _as_numpy(out)
    if kind == "probs":
        return check_soft_targets(out, X.shape[0], what="teacher soft targets")
    try:
        out = check_array(out, dtype=np.float64, ensure_2d=False, input_name="teacher logits")
    except ValueError as e:
        raise ValueError(f"teacher logits: {e}") from None
    if out.ndim != 2 or out.shape[0] != X.shape[0]:
        raise ValueError(f"teacher gave logits of shape {out.shape} for {X.shape[0]} examples; "
                         "expected (n_samples, n_classes): one row per row of X")
    if out.shape[1] < 2:
        raise ValueError(f"teacher logits need at least 2 columns (classes), got {out.shape[1]}")
    return softmax(out, temperature)


class SoftTargetClassifier(ClassifierMixin, BaseEstimator):
    """A classifier that fits a regressor to class probabilities (soft targets).

    Parameters
    ----------
    regressor : regressor, default=None
        Any scikit-learn regressor; it is cloned in ``fit``. ``None`` means an unpruned
        ``DecisionTreeRegressor(random_state=0)``. A regressor without native multi-output
        support (``get_tags(regressor).target_tags.multi_output`` false, e.g.
        ``GradientBoostingRegressor``, ``SVR``) is wrapped in ``MultiOutputRegressor``: one
        model per class column.
    temperature : float, default=1.0
        Used only when the targets come from teacher *logits* (a module, a soft-target store,
        or ``teacher_kind="logits"``): the targets are ``softmax(logits / temperature)``.
        Labels, soft targets given as ``y`` and probabilities from a teacher are used as given.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The sorted labels for 1-D ``y``; ``arange(k)`` for soft targets with ``k`` columns.
    n_features_in_ : int
    feature_names_in_ : ndarray of str (only when ``X`` has string column names)
    regressor_ : the fitted clone of ``regressor`` (possibly inside ``MultiOutputRegressor``).

    Targets for ``fit``:

    * ``fit(X, y)`` with 1-D ``y`` of class labels: one-hot targets. For a regression tree the
      summed squared error of one-hot targets in a node is ``n (1 - sum_j p_j**2)``, the Gini
      impurity, so it grows the same tree as ``DecisionTreeClassifier`` (up to ties).
    * ``fit(X, Y)`` with 2-D ``Y`` of shape ``(n_samples, k)``, ``k >= 2``: soft targets; every
      row must be a probability distribution (>= 0, summing to 1). A column vector
      ``(n_samples, 1)`` is read as labels (with scikit-learn's ``DataConversionWarning``).
    * ``fit(X, teacher=...)``: a torch ``nn.Module`` (an :class:`~distill.Ensemble`: its combined
      distribution at ``temperature``), a :class:`~distill.Teacher`, or a
      :class:`~distill.teachers.store.SoftTargetStore` (logits, softened at ``temperature``), a
      callable returning probabilities for ``X``, or an array / tensor of probabilities with
      one row per row of ``X`` (``teacher_kind="logits"`` softens those too; see
      :func:`teacher_targets`). ``y`` may be given too (e.g. by ``GridSearchCV``); it must then
      be integer labels in ``0..k-1`` and is otherwise unused.
    """

    def __init__(self, regressor=None, temperature=1.0):
        self.regressor = regressor
        self.temperature = temperature

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, X, y=None, teacher=None, teacher_kind=None):
        """Fit the regressor to one-hot labels, soft targets, or a teacher's soft targets
        (``teacher_kind``: see :func:`teacher_targets`)."""
        temperature = check_temperature(self.temperature)
        if teacher is None:
            if y is None:
                raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None; "
                                 "pass class labels, soft targets, or teacher=")
            X, y = validate_data(self, X, y, multi_output=True, y_numeric=False)
            y = np.asarray(y)
            if y.ndim == 2 and y.shape[1] == 1:
                y = column_or_1d(y, warn=True)
            if y.ndim == 1:
                check_classification_targets(y)
                self.classes_, encoded = np.unique(y, return_inverse=True)
                targets = np.zeros((len(y), len(self.classes_)))
                targets[np.arange(len(y)), encoded] = 1.0
            else:
                targets = check_soft_targets(y, X.shape[0])
                self.classes_ = np.arange(targets.shape[1])
        else:
            X = validate_data(self, X)
            targets = teacher_targets(teacher, X, temperature, teacher_kind)
            self.classes_ = np.arange(targets.shape[1])
            if y is not None:
                y = column_or_1d(y)
                if len(y) != X.shape[0]:
                    raise ValueError(f"y has {len(y)} entries but X has {X.shape[0]} samples")
                if not np.isin(y, self.classes_).all():
                    raise ValueError(f"with a teacher, labels y must be integers in 0..{len(self.classes_) - 1} "
                                     "(the teacher's output columns)")

        self.regressor_ = self._make_regressor(targets.shape[1])
        fit_targets = targets[:, 0] if targets.shape[1] == 1 else targets
        self.regressor_.fit(X, fit_targets)
        return self

    def _make_regressor(self, n_outputs: int):
        base = DecisionTreeRegressor(random_state=0) if self.regressor is None else clone(self.regressor)
        if n_outputs > 1 and not get_tags(base).target_tags.multi_output:
            return MultiOutputRegressor(base)
        return base

    # -- prediction --------------------------------------------------------------------------
    def _raw(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        raw = np.asarray(self.regressor_.predict(X), dtype=np.float64)
        return raw.reshape(X.shape[0], len(self.classes_))

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities: the regressor's outputs clipped at 0 and divided by their row
        sum (uniform where nothing is left), see :func:`normalize_rows`."""
        return normalize_rows(self._raw(X))

    def predict_log_proba(self, X) -> np.ndarray:
        """``log(predict_proba(X))`` (``-inf`` where a probability is 0)."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        """``classes_[argmax(predict_proba(X))]`` (the first class on ties)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


def count_nodes(estimator) -> int:
    """Number of tree nodes in a fitted tree, forest, boosting model or a wrapper of them."""
    check_is_fitted(estimator)
    if hasattr(estimator, "tree_"):
        return int(estimator.tree_.node_count)
    total = 0
    for attr in ("estimators_", "regressor_"):
        sub = getattr(estimator, attr, None)
        if sub is None:
            continue
        items = np.ravel(np.asarray(sub, dtype=object)) if not isinstance(sub, BaseEstimator) else [sub]
        for est in items:
            try:
                total += count_nodes(est)
            except Exception:  # not fitted / not tree-based
                pass
    return total


__all__ = ["SoftTargetClassifier", "normalize_rows", "check_soft_targets", "count_nodes", "softmax",
           "teacher_targets"]

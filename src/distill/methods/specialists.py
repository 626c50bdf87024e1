"""Generalist + specialists (Hinton, Vinyals & Dean 2015, section 5).

Four parts, each a small function whose docstring states its formula:

1. **Confusable subsets** -- :func:`prediction_covariance`, :func:`cluster_classes`: K-means on the
   columns of the covariance (by default the correlation) matrix of the generalist's predicted
   probabilities over a possibly unlabeled set; optional overlap (a class also joins its
   second-nearest cluster when that is almost as near).
2. **Specialists** -- :func:`build_specialist_model` (hidden layers copied from the generalist, output
   rows of ``S_m`` copied, a dustbin row), :func:`specialist_indices` (half from ``S_m``, half from the
   rest), :func:`dustbin_correction` (the prior-shift correction added to the dustbin logit after
   training), :class:`Specialist` (a trained model + its subset + correction -> log-probabilities over
   ``S_m`` and the dustbin), :func:`train_specialists` (all of it, one :func:`distill.fit` per subset).
3. **Inference** -- :func:`active_specialists`, :func:`combine` (minimise
   ``KL(p_g||q) + sum_m KL(p_m||A_m q)`` over ``q = softmax(z)`` for a whole batch),
   :func:`predict_combined` (generalist -> active specialists -> combined ``q``).
4. **Reporting** -- :func:`coverage_counts`, :func:`accuracy_by_coverage`, :func:`format_subsets`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from distill.errors import DistillError, require
from distill.metrics import predict_logits
from distill.methods.tuning import fit_fresh
from distill.models.classifiers import MLP
from distill.teachers.teacher import Teacher, module_id

# ----------------------------------------------------------------------------------------------
# 1. confusable subsets
# ----------------------------------------------------------------------------------------------


def prediction_covariance(probs: torch.Tensor) -> torch.Tensor:
    """Sample covariance of the predicted class probabilities, ``C = (P - 1 pbar^T)^T (P - 1 pbar^T) / (n - 1)``
    for ``P`` of shape ``(n, classes)`` (rows are predicted distributions). Shape ``(classes, classes)``."""
    if probs.dim() != 2 or probs.shape[0] < 2:
        raise ValueError("probs must be (n >= 2, classes)")
    p = probs.double()
    centred = p - p.mean(0, keepdim=True)
    return centred.T @ centred / (p.shape[0] - 1)


def covariance_features(cov: torch.Tensor, normalize: str = "correlation") -> torch.Tensor:
    """Feature vector of every class for the clustering: column ``j`` of the covariance matrix
    (``normalize="covariance"``) or of the correlation matrix ``R_ij = C_ij / sqrt(C_ii C_jj)``
    (``"correlation"``, the default). Raw covariance columns are dominated by their own diagonal entry
    (a class's variance), so two confusable classes look no more alike than two unrelated ones;
    correlation puts every class on the same scale. Returns rows = classes."""
    if normalize == "covariance":
        return cov.T.clone()
    if normalize == "correlation":
        d = cov.diagonal().clamp_min(1e-12).sqrt()
        return (cov / d[:, None] / d[None, :]).T.clone()
    raise ValueError(f"normalize must be 'correlation' or 'covariance', got {normalize!r}")


@dataclass
class Clustering:
    """Result of :func:`cluster_classes`. ``subsets``: the specialists' class subsets (sorted tuples,
    possibly overlapping; clusters smaller than ``min_size`` dropped); ``labels``: every class's nearest
    cluster; ``distances``: ``(classes, clusters)`` distances to the centroids."""

    subsets: list[tuple[int, ...]]
    labels: np.ndarray
    distances: np.ndarray
    n_clusters: int
    overlap_added: list[tuple[int, int]] = field(default_factory=list)  # (class, cluster) pairs


def cluster_classes(probs: torch.Tensor, n_clusters: int | None = None, *, target_size: int | None = None,
                    overlap_ratio: float | None = None, normalize: str = "correlation", min_size: int = 2,
                    seed: int = 0) -> Clustering:
    """Cluster the classes into confusable subsets from predicted probabilities ``probs`` (n, classes).

    K-means (scikit-learn, ``n_init=10``, ``random_state=seed``) on :func:`covariance_features` of
    :func:`prediction_covariance`. ``n_clusters`` defaults to ``round(classes / target_size)``.
    Overlap: with ``overlap_ratio = r`` (> 1), class ``c`` also joins its second-nearest cluster
    ``k2`` when ``d(c, k2) <= r * d(c, k1)``. Subsets with fewer than ``min_size`` classes get no specialist.
    """
    KMeans = require("sklearn.cluster", "experiments", "clustering the classes").KMeans

    num_classes = probs.shape[1]
    if n_clusters is None:
        if target_size is None:
            raise ValueError("give n_clusters or target_size")
        if target_size < 1:
            raise ValueError(f"target_size must be >= 1, got {target_size}")
        n_clusters = max(1, round(num_classes / target_size))
    if not 1 <= n_clusters <= num_classes:
        raise ValueError(f"n_clusters must be in [1, {num_classes}], got {n_clusters}")
    if overlap_ratio is not None and overlap_ratio < 1:
        raise ValueError(f"overlap_ratio must be >= 1, got {overlap_ratio}")
    feats = covariance_features(prediction_covariance(probs), normalize).numpy()
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(feats)
    dist = km.transform(feats)  # (classes, clusters) Euclidean distances
    labels = km.labels_.copy()
    members: list[set[int]] = [set(np.flatnonzero(labels == k).tolist()) for k in range(n_clusters)]
    added = []
    if overlap_ratio is not None and n_clusters > 1:
        order = np.argsort(dist, axis=1)
        for c in range(num_classes):
            k1, k2 = order[c, 0], order[c, 1]
            if dist[c, k2] <= overlap_ratio * max(dist[c, k1], 1e-12):
                members[k2].add(c)
                added.append((c, int(k2)))
    subsets = sorted({tuple(sorted(m)) for m in members if len(m) >= min_size})
    return Clustering(subsets=subsets, labels=labels, distances=dist, n_clusters=n_clusters, overlap_added=added)


def adjusted_rand(labels_true, labels_pred) -> float:
    """Adjusted Rand index of two partitions (1 = identical, ~0 = chance)."""
    adjusted_rand_score = require("sklearn.metrics", "experiments", "the adjusted Rand index").adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(labels_true), np.asarray(labels_pred)))


def format_subsets(subsets, classes) -> list[str]:
    """One line per subset: ``S_m = {name, name, ...}``."""
    return [f"S_{m} = {{{', '.join(str(classes[c]) for c in s)}}}" for m, s in enumerate(subsets)]


# ----------------------------------------------------------------------------------------------
# 2. specialists
# ----------------------------------------------------------------------------------------------


def _check_subset(subset, num_classes: int) -> tuple[int, ...]:
    s = tuple(int(c) for c in subset)
    if not s:
        raise ValueError("a specialist needs a non-empty subset")
    if len(set(s)) != len(s) or min(s) < 0 or max(s) >= num_classes:
        raise ValueError(f"subset {s} must hold distinct classes in [0, {num_classes})")
    if len(s) >= num_classes:
        raise ValueError("a specialist subset must leave at least one class for the dustbin")
    return s


def remap_labels(y: torch.Tensor, subset, num_classes: int) -> torch.Tensor:
    """Specialist labels: class ``subset[i]`` -> ``i``; every other class -> the dustbin ``len(subset)``."""
    s = _check_subset(subset, num_classes)
    table = torch.full((num_classes,), len(s), dtype=torch.long)
    table[torch.tensor(s)] = torch.arange(len(s))
    return table[y]


def dustbin_init(weight: torch.Tensor, bias: torch.Tensor, subset) -> tuple[torch.Tensor, torch.Tensor]:
    """Output layer of a specialist from the generalist's ``weight`` (classes, h) and ``bias``:
    the rows of ``S_m`` copied, plus a dustbin row ``w_D = mean_{c not in S} w_c``,
    ``b_D = mean_{c not in S} b_c + log |rest|``.

    Why: the generalist's aggregated logit of "not in S" is ``LSE_{c not in S}(w_c.h + b_c)``, and
    ``LSE(a_1..a_k) >= mean(a) + log k`` with equality when the ``a_c`` are equal. The dustbin row is the
    linear function closest to that, so the specialist starts near the generalist's aggregated softmax."""
    s = _check_subset(subset, weight.shape[0])
    rest = [c for c in range(weight.shape[0]) if c not in set(s)]
    w = torch.cat([weight[list(s)], weight[rest].mean(0, keepdim=True)])
    b = torch.cat([bias[list(s)], bias[rest].mean(0, keepdim=True) + math.log(len(rest))])
    return w, b


def build_specialist_model(generalist: nn.Module, subset, full_softmax: bool = False) -> nn.Module:
    """A specialist initialised from ``generalist`` (an :class:`~distill.models.classifiers.MLP`): same
    architecture, hidden layers copied; the output layer has ``|S|+1`` rows from :func:`dustbin_init`,
    or (``full_softmax=True``, paper section 6) all the generalist's rows, an exact copy."""

    if not isinstance(generalist, MLP):
        raise DistillError("specialists are built from an MLP generalist")
    s = _check_subset(subset, generalist.arch["num_classes"])
    if full_softmax:
        model = copy.deepcopy(generalist).train()
        for p in model.parameters():  # a frozen generalist (e.g. one used as a teacher) trains as a copy
            p.requires_grad_(True)
        return model
    model = MLP(**dict(generalist.arch, num_classes=len(s) + 1))
    src = [m for m in generalist.net if isinstance(m, nn.Linear)]
    dst = [m for m in model.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for ls, ld in zip(src[:-1], dst[:-1]):
            ld.weight.copy_(ls.weight)
            ld.bias.copy_(ls.bias)
        w, b = dustbin_init(src[-1].weight, src[-1].bias, s)
        dst[-1].weight.copy_(w)
        dst[-1].bias.copy_(b)
    return model


def specialist_indices(y: torch.Tensor, subset, seed: int = 0, rest_ratio: float = 1.0) -> torch.Tensor:
    """Training examples of a specialist: every example of ``S`` plus ``round(rest_ratio * n_S)``
    drawn at random (seeded, without replacement while possible) from the rest -- half and half for
    ``rest_ratio = 1``. Sorted indices into ``y``."""
    if rest_ratio <= 0:
        raise ValueError(f"rest_ratio must be > 0, got {rest_ratio}")
    num_classes = int(y.max()) + 1
    s = _check_subset(subset, max(num_classes, max(subset) + 1))
    inside = torch.isin(y, torch.tensor(s))
    special, rest = torch.nonzero(inside).flatten(), torch.nonzero(~inside).flatten()
    if len(special) == 0 or len(rest) == 0:
        raise DistillError(f"subset {s}: needs examples both inside ({len(special)}) and outside ({len(rest)})")
    k = max(1, round(rest_ratio * len(special)))
    g = torch.Generator().manual_seed(seed)
    if k <= len(rest):
        pick = rest[torch.randperm(len(rest), generator=g)[:k]]
    else:
        pick = rest[torch.randint(0, len(rest), (k,), generator=g)]
    return torch.sort(torch.cat([special, pick])).values


def dustbin_correction(frac_special_natural: float, frac_special_train: float) -> float:
    """Log-odds added to the dustbin logit after training on a re-balanced set.

    Derivation: a classifier trained with class prior ``pi'`` learns ``p'(y|x) ∝ p(x|y) pi'(y)``; the
    posterior under the natural prior ``pi`` is ``p(y|x) ∝ p'(y|x) pi(y)/pi'(y)``. Every class of ``S``
    is over-sampled by the same factor ``f_S'/f_S`` (``f`` = fraction of examples in ``S``: natural
    ``f_S``, training ``f_S'``), the dustbin by ``(1-f_S')/(1-f_S)``. Softmax ignores a common shift, so
    only the ratio matters: add ``log [ ((1-f_S)/(1-f_S')) / (f_S/f_S') ] = log [ ((1-f_S)/f_S) / ((1-f_S')/f_S') ]``
    (the ratio of natural to training odds of "not in S") to the dustbin logit.
    With half/half training data (``f_S' = 1/2``) this is ``log((1 - f_S)/f_S) = log(n_rest/n_S)``.

    This is the product of the paper's factor (the proportion by which S is over-sampled, ``f_S'/f_S``)
    and the dustbin's under-sampling factor ``(1-f_S)/(1-f_S')``; either alone is only exact if the
    other is 1."""
    for name, f in (("frac_special_natural", frac_special_natural), ("frac_special_train", frac_special_train)):
        if not 0 < f < 1:
            raise ValueError(f"{name} must be in (0, 1), got {f}")
    fs, ft = frac_special_natural, frac_special_train
    return math.log(((1 - fs) / fs) / ((1 - ft) / ft))


def specialist_dataset(data, subset, seed: int = 0, rest_ratio: float = 1.0, relabel: bool = True):
    """The specialist's training set (:func:`specialist_indices`) as a Dataset, labels remapped to
    ``S`` + dustbin (test set relabelled the same way) unless ``relabel=False``. Returns
    ``(dataset, indices, correction)`` with the :func:`dustbin_correction` for this selection."""
    s = _check_subset(subset, data.num_classes)
    idx = specialist_indices(data.y_train, s, seed, rest_ratio)
    y_sel = data.y_train[idx]
    inside_sel = torch.isin(y_sel, torch.tensor(s)).float().mean().item()
    inside_nat = torch.isin(data.y_train, torch.tensor(s)).float().mean().item()
    corr = dustbin_correction(inside_nat, inside_sel)
    tag = f":spec{'-'.join(map(str, s))}/r{rest_ratio}/s{seed}" + ("" if relabel else "/full")
    if relabel:
        ds = replace(data, x_train=data.x_train[idx], y_train=remap_labels(y_sel, s, data.num_classes),
                     y_test=remap_labels(data.y_test, s, data.num_classes),
                     classes=tuple(data.classes[c] for c in s) + ("dustbin",), fingerprint=data.fingerprint + tag)
    else:
        ds = replace(data, x_train=data.x_train[idx], y_train=y_sel, fingerprint=data.fingerprint + tag)
    return ds, idx, corr


def specialist_soft_targets(p_g: torch.Tensor, y: torch.Tensor, subset) -> torch.Tensor:
    """Targets of the full-softmax specialist (paper section 6: "soft targets for the non-special
    classes in addition to hard targets"): the generalist's probabilities ``p_g`` for the classes outside
    ``S``; inside ``S`` the generalist's total mass ``p_g(S)`` goes to the true class when it is in ``S``
    (its hard target), so the fine distinctions inside ``S`` are learned from labels only:

    ``t_c = p_g(c)`` for ``c not in S``; for ``c in S``: ``t_c = p_g(S) [c = y]`` if ``y in S``, else ``p_g(c)``.
    Rows sum to 1."""
    s = torch.tensor(_check_subset(subset, p_g.shape[1]))
    t = p_g.clone()
    inside = torch.isin(y, s)
    if inside.any():
        mass = p_g[inside][:, s].sum(1)
        ts = torch.zeros(int(inside.sum()), len(s), dtype=p_g.dtype)
        pos = (y[inside][:, None] == s[None, :]).float().argmax(1)
        ts[torch.arange(len(pos)), pos] = mass
        rows = torch.nonzero(inside).flatten()
        t[rows[:, None], s[None, :]] = ts
    return t


def aggregate_logits(logits: torch.Tensor, subset) -> torch.Tensor:
    """Full-softmax logits (n, classes) -> logits over ``S`` + dustbin, (n, |S|+1): the logits of ``S``
    and ``LSE_{c not in S} z_c`` (so the softmax of the result sums the probabilities of the rest)."""
    s = _check_subset(subset, logits.shape[1])
    rest = [c for c in range(logits.shape[1]) if c not in set(s)]
    return torch.cat([logits[:, list(s)], torch.logsumexp(logits[:, rest], 1, keepdim=True)], 1)


def aggregate_probs(q: torch.Tensor, subset) -> torch.Tensor:
    """``A q``: probabilities (n, classes) -> (n, |S|+1): ``q_c`` for ``c in S``, then ``sum_{c not in S} q_c``."""
    s = _check_subset(subset, q.shape[1])
    qs = q[:, list(s)]
    return torch.cat([qs, (1 - qs.sum(1, keepdim=True)).clamp_min(0)], 1)


@dataclass
class Specialist:
    """A trained specialist: ``model`` outputs ``|S|+1`` logits (dustbin last) or, with
    ``full_softmax``, all classes (aggregated by :func:`aggregate_logits`). ``correction`` is added to
    the dustbin logit (:func:`dustbin_correction`)."""

    subset: tuple[int, ...]
    model: nn.Module
    correction: float = 0.0
    full_softmax: bool = False

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        z = predict_logits(self.model, x)
        if self.full_softmax:
            z = aggregate_logits(z, self.subset)
        z = z.clone()
        z[:, -1] += self.correction
        return z

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), 1)


VARIANTS = ("hard", "soft")


def specialist_run_name(variant: str, m: int, generalist_id: str) -> str:
    """Run name of specialist ``m``: ``specialist-<variant>-<m>-<first 8 hex of the generalist's id>``.

    A run key (:func:`distill.train.rundir.run_key`) covers the model's *structure*, not its initial
    weights, and a specialist starts from the generalist's weights: the generalist's id in the name
    gives specialists of different generalists different run folders, so none is ever reused for
    another generalist."""
    return f"specialist-{variant}-{m}-{generalist_id[:8]}"


def train_specialists(generalist: nn.Module, data, subsets, config, *, variant: str = "hard",
                      soft_temperature: float = 1.0, soft_hard_weight: float = 1.0, rest_ratio: float = 1.0,
                      fit_fn=None) -> tuple[list[Specialist], list]:
    """One specialist per subset ``S_m`` of ``subsets``, each started from ``generalist`` and trained
    with :func:`distill.fit` (through ``fit_fn``, see :mod:`distill.methods.tuning`; default
    :func:`distill.methods.tuning.fit_fresh`). Returns ``(specialists, fit_results)``.

    Specialist ``m`` trains on :func:`specialist_dataset` ``(data, S_m, seed=config.seed + m,
    rest_ratio)`` (every example of ``S_m`` plus as many from the rest), with ``config``, in one of
    two variants:

    * ``"hard"`` (paper section 5): :func:`build_specialist_model` (``|S_m|+1`` outputs, dustbin
      last) on hard labels remapped to ``S_m`` + dustbin (no teacher, cross-entropy). The dustbin
      correction is ``c = dustbin_correction(f_S, f_S')`` for the natural and training fractions.
    * ``"soft"`` (paper section 6): a full-softmax copy of the generalist trained with Hinton's loss
      ``T**2 * CE(t, q_T) + h * CE(y, q_1)`` (``T = soft_temperature``, ``h = soft_hard_weight``,
      soft weight 1) on the targets ``t`` of :func:`specialist_soft_targets` (the generalist's
      probabilities on the training rows outside ``S_m``), given as
      ``Teacher(t, kind="probs", id="generalist-nonspecial:<generalist id>")``. The model learns a
      mixture of the re-balanced posterior (hard share ``h/(h+1)``) and the generalist's natural one
      (soft share), so only the hard share is corrected: ``c = dustbin_correction(f_S, f_S') * h/(h+1)``
      (an approximation, exact at either end: ``h = 0`` or no soft term).

    Runs are named by :func:`specialist_run_name`; every call of ``fit_fn`` gets ``extra`` =
    ``dict(subset, variant, dustbin_correction, generalist)``.
    """

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    hard_share = soft_hard_weight / (soft_hard_weight + 1.0)
    fit_fn = fit_fn or fit_fresh
    gen_id = module_id(generalist)
    full = variant == "soft"
    p_g = torch.softmax(predict_logits(generalist, data.x_train), 1) if full else None
    if full:
        config = replace(config, temperature=soft_temperature, hard_weight=soft_hard_weight, soft_weight=1.0)
    specialists, results = [], []
    for m, subset in enumerate(subsets):
        s = _check_subset(subset, data.num_classes)
        ds, idx, corr = specialist_dataset(data, s, seed=config.seed + m, rest_ratio=rest_ratio, relabel=not full)
        teacher = None
        if full:
            corr = corr * hard_share
            teacher = Teacher(specialist_soft_targets(p_g[idx], data.y_train[idx], s), kind="probs",
                              id=f"generalist-nonspecial:{gen_id}")
        extra = dict(subset=list(s), variant=variant, dustbin_correction=corr, generalist=gen_id)
        res = fit_fn(specialist_run_name(variant, m, gen_id), ds,
                     lambda s=s: build_specialist_model(generalist, s, full_softmax=full), config, teacher, extra)
        results.append(res)
        specialists.append(Specialist(s, res.model.eval(), corr, full_softmax=full))
    return specialists, results


# ----------------------------------------------------------------------------------------------
# 3. inference: KL combination
# ----------------------------------------------------------------------------------------------


def membership(subsets, num_classes: int) -> torch.Tensor:
    """``B`` (specialists, classes) bool: ``B[m, c] = c in S_m``."""
    b = torch.zeros(len(subsets), num_classes, dtype=torch.bool)
    for m, s in enumerate(subsets):
        b[m, list(_check_subset(s, num_classes))] = True
    return b


def active_specialists(p_g: torch.Tensor, subsets, top_n: int = 1) -> torch.Tensor:
    """``a`` (n, specialists) bool: specialist ``m`` is active for input ``i`` when ``S_m`` meets the
    generalist's ``top_n`` most probable classes (paper: n = 1)."""
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    if not subsets:
        return torch.zeros(p_g.shape[0], 0, dtype=torch.bool)
    top = p_g.topk(min(top_n, p_g.shape[1]), 1).indices
    hit = torch.zeros_like(p_g, dtype=torch.bool).scatter_(1, top, True)
    return (hit.float() @ membership(subsets, p_g.shape[1]).float().T) > 0


def _pack(p_g, spec_probs, subsets, active):
    """Constant parts of the objective: ``T[n,c] = sum_m a_nm [c in S_m] p_m(c)``, ``pD[n,m] = a_nm p_m(D)``,
    ``k[n] = sum_m a_nm``, and ``notB = 1 - B`` (float)."""
    n, C = p_g.shape
    B = membership(subsets, C).to(p_g.dtype)
    T = torch.zeros_like(p_g)
    pD = torch.zeros(n, len(subsets), dtype=p_g.dtype)
    a = active.to(p_g.dtype)
    for m, (s, pm) in enumerate(zip(subsets, spec_probs)):
        if pm.shape != (n, len(s) + 1):
            raise ValueError(f"specialist {m}: probabilities of shape {tuple(pm.shape)}, expected {(n, len(s) + 1)}")
        pm = pm.to(p_g.dtype)
        T[:, list(s)] += a[:, m:m + 1] * pm[:, :-1]
        pD[:, m] = a[:, m] * pm[:, -1]
    return T, pD, a.sum(1), 1 - B


def combine_objective(q, p_g, spec_probs, subsets, active) -> torch.Tensor:
    """Per-row ``L(q) = KL(p_g||q) + sum_{m active} KL(p_m || A_m q)`` where ``A_m q`` keeps the classes
    of ``S_m`` and sums the rest into the dustbin (:func:`aggregate_probs`). Shape ``(n,)``."""
    def kl(p, r):
        return (torch.xlogy(p, p) - torch.xlogy(p, r.clamp_min(1e-300))).sum(1)

    out = kl(p_g, q)
    for m, (s, pm) in enumerate(zip(subsets, spec_probs)):
        out = out + active[:, m].to(q.dtype) * kl(pm.to(q.dtype), aggregate_probs(q, s))
    return out


def combine_gradient(q, p_g, T, pD, k, notB) -> torch.Tensor:
    """Closed-form gradient of :func:`combine_objective` w.r.t. the logits ``z`` (``q = softmax(z)``):

    ``dL/dz_c = (1 + k) q_c - p_g(c) - T_c - q_c * sum_m a_m [c not in S_m] p_m(D) / q(not S_m)``

    (from ``d/dz_c [-log sum_{c' in G} q_c'] = q_c - [c in G] q_c / q(G)``). With every model covering all
    classes it is ``sum_k (q - p_k)``, zero at the arithmetic mean of the ``p_k``."""
    qD = (notB @ q.T).T  # (n, M): q(not S_m)
    w = pD / qD.clamp_min(1e-300)
    return (1 + k)[:, None] * q - p_g - T - q * (w @ notB)


@dataclass
class CombineResult:
    q: torch.Tensor  # (n, classes) combined distribution
    iterations: int
    max_grad: float  # max |dL/dz| over the solved rows at the end
    converged: bool
    unconverged_rows: int = 0  # rows still above the tolerance after max_iter


def _em_step(q, pg, T, pD, k, notB):
    """One fixed-point (EM) step ``q <- q - grad_z / (1 + k)`` (stays on the simplex); also returns
    ``max_c |grad_z|`` of the input ``q`` per row."""
    g = combine_gradient(q, pg, T, pD, k, notB)
    qn = (q - g / (1 + k)[:, None]).clamp_min(0)
    return qn / qn.sum(1, keepdim=True), g.abs().amax(1)


def _objective_packed(q, pg, T, pD, notB):
    """``L(q)`` up to a constant per row: ``-sum_c (p_g + T)_c log q_c - sum_m pD_m log q(not S_m)``."""
    qD = (notB @ q.T).T
    return -((pg + T) * torch.log(q.clamp_min(1e-300))).sum(1) - (pD * torch.log(qD.clamp_min(1e-300))).sum(1)


def mean_of_full_coverage(probs) -> torch.Tensor:
    """``q* = (1/K) sum_k p_k``: the minimiser of ``sum_k KL(p_k||q)`` when every model covers all classes
    (the gradient ``sum_k (q - p_k)`` of :func:`combine_gradient` vanishes there), so :func:`combine`'s
    answer for models without a dustbin, in closed form."""
    probs = list(probs)
    if not probs:
        raise ValueError("need at least one distribution")
    return torch.stack(probs).mean(0)


def combine(p_g: torch.Tensor, spec_probs, subsets, active: torch.Tensor, tol: float = 1e-6,
            max_iter: int = 2000, accelerate: bool = True) -> CombineResult:
    """Minimise ``KL(p_g||q) + sum_{m active} KL(p_m||A_m q)`` over ``q = softmax(z)`` for every row at once.

    ``p_g`` (n, classes); ``spec_probs[m]`` (n, |S_m|+1), dustbin last (rows where ``m`` is inactive are
    ignored); ``active`` (n, M) bool. Rows with no active specialist return ``p_g`` unchanged.

    Solver: the objective is convex in ``q`` on the simplex; setting the gradient
    (:func:`combine_gradient`) to zero gives the fixed point ``q = (p_g + T + q * (w @ notB)) / (1 + k)``.
    Its map ``F`` is an EM step (an exponentiated-gradient step on ``z``: ``q_new = q - grad_z / (1 + k)``)
    that never increases the objective and keeps ``q`` on the simplex. From ``z = log p_g`` we iterate it,
    in float64, until ``max_c |dL/dz_c| <= tol`` on every row or ``max_iter`` iterations. With one active
    specialist per row (disjoint subsets) one step is exact. With overlapping specialists plain EM can
    crawl, so by default (``accelerate``) each iteration is a SQUAREM step (Varadhan & Roland 2008):
    ``q1 = F(q0)``, ``q2 = F(q1)``, ``r = q1 - q0``, ``v = q2 - q1 - r``, ``a = -max(1, |r|/|v|)``,
    ``q' = F(proj(q0 - 2 a r + a^2 v))``, falling back to ``q2`` on rows where ``q'`` has the higher objective
    (so the objective still never increases).
    """
    n, C = p_g.shape
    if active.shape != (n, len(subsets)):
        raise ValueError(f"active has shape {tuple(active.shape)}, expected {(n, len(subsets))}")
    if len(spec_probs) != len(subsets):
        raise ValueError("one probability tensor per specialist subset")
    q_out = p_g.clone()
    rows = torch.nonzero(active.any(1)).flatten() if len(subsets) else torch.zeros(0, dtype=torch.long)
    if len(rows) == 0:
        return CombineResult(q_out, 0, 0.0, True)
    pg = p_g[rows].double()
    sp = [pm[rows].double() for pm in spec_probs]
    T, pD, k, notB = _pack(pg, sp, subsets, active[rows])
    q = pg.clone()
    it = 0
    todo = torch.arange(len(rows))
    while True:
        args = (pg[todo], T[todo], pD[todo], k[todo], notB)
        q1, err = _em_step(q[todo], *args)
        keep = err > tol
        if not bool(keep.any()) or it >= max_iter:
            break
        todo, q0, q1 = todo[keep], q[todo][keep], q1[keep]
        args = (pg[todo], T[todo], pD[todo], k[todo], notB)
        if accelerate:
            q2, _ = _em_step(q1, *args)
            r, v = q1 - q0, q2 - 2 * q1 + q0
            a = -(r.norm(dim=1) / v.norm(dim=1).clamp_min(1e-300)).clamp_min(1.0)[:, None]
            qs = (q0 - 2 * a * r + a * a * v).clamp_min(1e-300)
            qs, _ = _em_step(qs / qs.sum(1, keepdim=True), *args)
            worse = _objective_packed(qs, pg[todo], T[todo], pD[todo], notB) > \
                _objective_packed(q2, pg[todo], T[todo], pD[todo], notB)
            q1 = torch.where(worse[:, None], q2, qs)
        q[todo] = q1
        it += 1
    _, err = _em_step(q, pg, T, pD, k, notB)
    gmax = float(err.max())
    q_out[rows] = q.to(p_g.dtype)
    return CombineResult(q_out, it, gmax, gmax <= tol, int((err > tol).sum()))


@torch.no_grad()
def predict_combined(generalist: nn.Module, specialists: list[Specialist], x: torch.Tensor, top_n: int = 1,
                     tol: float = 1e-6, max_iter: int = 200, batch_size: int = 10000):
    """Generalist + specialists on ``x``: ``p_g``; the active specialists (:func:`active_specialists`),
    each run only on the rows where it is active; then :func:`combine`. Returns ``(q, p_g, active,
    info)`` with ``info`` = dict(iterations, max_grad, converged) over the batches."""
    subsets = [sp.subset for sp in specialists]
    qs, pgs, acts = [], [], []
    info = dict(iterations=0, max_grad=0.0, converged=True, unconverged_rows=0)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        p_g = torch.softmax(predict_logits(generalist, xb), 1)
        a = active_specialists(p_g, subsets, top_n)
        probs = []
        for m, sp in enumerate(specialists):
            pm = torch.full((len(xb), len(sp.subset) + 1), 1.0 / (len(sp.subset) + 1))
            rows = torch.nonzero(a[:, m]).flatten()
            if len(rows):
                pm[rows] = sp.probs(xb[rows])
            probs.append(pm)
        res = combine(p_g, probs, subsets, a, tol, max_iter)
        info["iterations"] = max(info["iterations"], res.iterations)
        info["max_grad"] = max(info["max_grad"], res.max_grad)
        info["converged"] &= res.converged
        info["unconverged_rows"] += res.unconverged_rows
        qs.append(res.q)
        pgs.append(p_g)
        acts.append(a)
    return torch.cat(qs), torch.cat(pgs), torch.cat(acts), info


# ----------------------------------------------------------------------------------------------
# 4. reporting
# ----------------------------------------------------------------------------------------------


def coverage_counts(y: torch.Tensor, subsets, num_classes: int) -> torch.Tensor:
    """Number of specialists whose subset contains each example's true class."""
    if not subsets:
        return torch.zeros_like(y)
    return membership(subsets, num_classes).long().sum(0)[y]


def error_coverage(y: torch.Tensor, pred: torch.Tensor, subsets, num_classes: int) -> float:
    """Share of the misclassified examples (``pred != y``) whose true and predicted class lie in one
    subset: ``|{i : pred_i != y_i, exists m: y_i in S_m and pred_i in S_m}| / |{i : pred_i != y_i}|``.
    Only these errors can a specialist see (top-1 activation puts ``pred_i``'s specialists to work, and
    only one that also knows ``y_i`` can move the answer there), so it bounds what the specialists can
    fix. On training labels it is a way to choose the number of clusters without the test set."""
    wrong = pred != y
    if not bool(wrong.any()):
        return float("nan")
    if not subsets:
        return 0.0
    mem = membership(subsets, num_classes)  # (subsets, classes)
    both = (mem[:, y[wrong]] & mem[:, pred[wrong]]).any(0)
    return float(both.float().mean())


def accuracy_by_coverage(y: torch.Tensor, pred_g: torch.Tensor, pred_c: torch.Tensor, subsets,
                         num_classes: int) -> list[dict]:
    """Rows like the paper's Table 4: for each number ``k`` of specialists covering the true class,
    the number of test cases, the generalist's and the combined model's correct counts, the change
    ``delta_correct`` and the relative accuracy change ``(acc_c - acc_g) / acc_g``."""
    cov = coverage_counts(y, subsets, num_classes)
    rows = []
    for k in sorted(set(cov.tolist())):
        m = cov == k
        cg, cc = int((pred_g[m] == y[m]).sum()), int((pred_c[m] == y[m]).sum())
        rows.append(dict(covering=int(k), n=int(m.sum()), correct_generalist=cg, correct_combined=cc,
                         delta_correct=cc - cg, relative_accuracy_change=(cc - cg) / cg if cg else float("nan")))
    return rows

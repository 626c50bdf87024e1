"""Paper section 5: a generalist plus specialists on confusable subsets, combined by KL minimisation.

Pipeline: train the generalist; cluster the covariance of its predictions on the training inputs
(no labels used) into confusable subsets; train one specialist per subset (initialised from the
generalist, half its data from the subset, dustbin for the rest, prior correction) in two variants --
``hard`` (hard targets, |S|+1 softmax, paper section 5) and ``soft`` (full softmax trained on hard
targets plus the generalist's soft targets for the non-special classes, paper section 6); combine on the test set; report the
paper's Tables 3/4 (accuracy, relative improvement, accuracy by number of covering specialists).
``--distill-back`` distils the combined ``q`` into one net of the generalist's size.

**Settings chosen on held-out data** (issue 19). A preset with ``holdout`` and a ``grid`` of
candidate settings (number of clusters, overlap, specialist epochs, clustering temperature)
first holds ``holdout`` examples out of the *training* set (:func:`distill.methods.tuning.holdout_split`,
split seed 0) and, on the rest, trains a generalist (seed 0) and for every candidate the
specialists (and the control); the candidate whose generalist + specialists make the fewest
errors on the held-out examples is chosen (the first in grid order on a tie). Those runs never
see the test set. The chosen setting is then run on the full training set for every seed
(``--seeds``; the choice is made once, on seed 0's split, and applied to all seeds), and the
test set gives each reported row. Explicit ``--n-specialists`` / ``--overlap-ratio`` /
``--specialist-epochs`` / ``--cluster-temperature`` fix that dimension of the grid (a grid of
one candidate needs no choice); ``--no-select`` runs the preset's own fixed setting.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from distill.methods import specialists as S
from distill.atomic import atomic_write_json
from distill.errors import DistillError
from distill.experiments.common import Runner, Stage, mean_std
from distill.metrics import classification_metrics, predict_logits
from distill.models.classifiers import MLP, count_params
from distill.teachers.teacher import Teacher, module_id
from distill.train.fit import TrainConfig

DATASETS = ("fashion-mnist", "mnist", "synthetic", "double-mnist")
VARIANTS = S.VARIANTS
PAPER = dict(generalist_top1=25.0, combined_top1=26.1, relative_improvement=4.4)  # JFT, Table 3
#: the keys a grid candidate may set (``specialist_epochs`` is ``Preset.specialist.epochs``)
GRID_KEYS = ("n_clusters", "overlap_ratio", "specialist_epochs", "cluster_temperature")
#: issue 19's goal on double-MNIST: relative error reduction beyond the control, mean of the seeds
GOAL_BEYOND_CONTROL = 0.05


@dataclass(frozen=True)
class Preset:
    hidden: tuple = (512, 512)
    dropout_input: float = 0.1
    dropout_hidden: float = 0.3
    max_norm: float | None = None
    generalist: TrainConfig = TrainConfig(epochs=30, lr=0.05, momentum=0.9, schedule="cosine")
    specialist: TrainConfig = TrainConfig(epochs=10, lr=0.02, momentum=0.9, schedule="cosine")
    distill_back: TrainConfig = TrainConfig(epochs=10, lr=0.02, momentum=0.9, schedule="cosine")
    soft_temperature: float = 1.0  # soft variant: T of the loss on the (probability) soft targets
    soft_hard_weight: float = 1.0  # soft variant: weight of the hard-label term (soft term has weight 1)
    distill_back_hard_weight: float = 0.1
    n_clusters: int = 4
    overlap_ratio: float | None = None
    min_size: int = 2
    cluster_size: int = 20000  # training inputs whose predictions are clustered (labels unused)
    # the clustered probabilities are softmax(z / cluster_temperature): on its own training inputs a
    # well-fitted generalist is nearly one-hot, and softening exposes which classes it confuses
    cluster_temperature: float = 1.0
    top_n: int = 1
    tol: float = 1e-6
    train_size: int | None = None
    test_size: int | None = None
    synthetic: dict = field(default_factory=dict)
    double_mnist: dict = field(default_factory=dict)  # build arguments of double-mnist (pairs per class, seed)
    # held-out selection: training examples held out (None: no selection) and the candidate
    # settings, dicts over GRID_KEYS (unset keys: the preset's own values above)
    holdout: int | None = None
    grid: tuple = ()
    select_control: bool = True  # train the control on the tune split too (the held-out table shows it)
    seeds: tuple = (0,)


_IMG_QUICK = Preset(hidden=(256, 256), generalist=TrainConfig(epochs=8, lr=0.05),
                    specialist=TrainConfig(epochs=8, lr=0.05), distill_back=TrainConfig(epochs=3, lr=0.02),
                    train_size=10000, cluster_size=10000)
_SYN = dict(num_classes=100, group_size=5)
# Specialists restart from the generalist's weights at the generalist's initial learning rate (cosine to 0):
# at a small rate (0.02) they stayed too close to the generalist to add anything (quick preset:
# -1.8 % relative error vs +2.2 % at 0.05).
_IMG_SPEC = TrainConfig(epochs=6, lr=0.05, momentum=0.9, schedule="cosine")
_IMG_BACK = TrainConfig(epochs=5, lr=0.02, momentum=0.9, schedule="cosine")
# Fashion-MNIST, issue 19: the settings below (2 clusters, T = 3, 30 specialist epochs) were partly chosen
# while looking at test results; the grid re-chooses them on 10,000 held-out training examples. The preset's
# own values are the first candidate (and what --no-select runs, reproducing the README's earlier rows).
# Cost of the selection, from the measured 2-core times of the paper preset (generalist 5.9 s/epoch,
# a 30-epoch specialist ~165 s, the control 153 s), on 50,000 examples: the generalist ~300 s, each
# 30-epoch candidate ~280 s, the 15-epoch one ~140 s, two controls ~190 s: about 25 minutes.
_FASHION_GRID = (dict(), dict(n_clusters=3), dict(n_clusters=4, overlap_ratio=1.5), dict(specialist_epochs=15))
_FASHION_30 = Preset(specialist=replace(_IMG_SPEC, epochs=30), distill_back=_IMG_BACK, n_clusters=2,
                     cluster_temperature=3.0, holdout=10000, grid=_FASHION_GRID)

# Double-MNIST (issue 19): 100 classes of two MNIST digits side by side (distill.data.double_mnist).
# quick: 20,000 of the 60,000 training pairs, a 1568-256-256-100 generalist; selection on 5,000 held-out
# pairs over 5 candidates. Measured 2026-11-30 (one thread, OMP_NUM_THREADS=1, nice 10, another job on
# the 2-core machine): 273 s in all with both variants; the generalist 1.4 s per epoch on 20,000 pairs
# (1.1 s on the 15,000 of the tune split), per-epoch test evaluation included. Its 10-epoch generalist
# is far from converged (the control gains +16 %), so the quick preset checks the path, not the claim.
_DM_QUICK = Preset(hidden=(256, 256), generalist=TrainConfig(epochs=10, lr=0.05, momentum=0.9, schedule="cosine"),
                   specialist=replace(_IMG_SPEC, epochs=6), distill_back=replace(_IMG_BACK, epochs=3),
                   n_clusters=10, cluster_temperature=3.0, cluster_size=10000, train_size=20000,
                   holdout=5000, grid=(dict(), dict(n_clusters=20), dict(cluster_temperature=1.0),
                                       dict(overlap_ratio=1.1), dict(specialist_epochs=12)))
# paper: all 60,000 pairs, 1568-512-512-100, a 30-epoch generalist, 10-epoch specialists, selection on
# 10,000 held-out pairs over 5 candidates, 3 seeds. Budget in generalist-epochs on 60,000 pairs (a
# specialist epoch over a partition of the classes costs 2: every pair of S plus as many others; the
# control's epoch 1), variant hard only: per seed 30 + 2 x 10 + 10 = 60, three seeds 180; the selection
# on 50,000 pairs (30 + 4 x 20 + 40 + 10 + 20) x 5/6 = 150; in all about 330, plus ~30 % for the
# specialists' per-epoch evaluation of the whole test set and the combination (the quick run's measured
# overhead). Seconds per generalist-epoch, scaled from the quick run's measured 1.4 s by the
# multiply-adds (x 2.3 per example, x 3 examples): ~9.6 s on one thread, so ~70 min on one thread; at
# the README's measured 2-thread rate for a net of this size (the 800-800 MLP on 60,000 MNIST images,
# 4.2 s per epoch, 1.28 M multiply-adds per example vs 1.12 M here) ~3.7 s, so ~27 min on two.
# Estimates, not measured on this preset: the first paper run's generalist record has seconds_per_epoch.
# Each soft variant adds 2 x 10 generalist-epochs per seed.
_DM_PAPER = Preset(hidden=(512, 512), generalist=TrainConfig(epochs=30, lr=0.05, momentum=0.9, schedule="cosine"),
                   specialist=replace(_IMG_SPEC, epochs=10), distill_back=_IMG_BACK,
                   n_clusters=10, cluster_temperature=3.0, cluster_size=20000,
                   holdout=10000, grid=(dict(), dict(n_clusters=20), dict(cluster_temperature=1.0),
                                        dict(overlap_ratio=1.1), dict(specialist_epochs=20)),
                   seeds=(0, 1, 2))
PRESETS = {
    # 2 clusters of the T = 3 softened predictions: {T-shirt, Pullover, Dress, Coat, Shirt} and {Trouser,
    # Sandal, Sneaker, Bag, Ankle boot}, the same for the generalists of seeds 0-4, and holding true and
    # predicted class of 97-98 % of each one's *training* errors (train_error_coverage; chosen on that, not on
    # test results). The earlier 4 clusters with overlap 1.5 changed with the seed (Shirt in two subsets
    # or in one) and covered 57-87 %. Specialists train 30 epochs: after 6 they had not moved from the
    # generalist (within-subset test accuracy 84.5 % vs 84.4 %); after 30, 85.6 %.
    # The generalist trains 60 epochs: the control row (generalist+extra) showed a 30-epoch one is far
    # from converged (30 more epochs alone: 1044 -> 948 errors), which made the specialists look good.
    ("fashion-mnist", "paper"): replace(_FASHION_30, generalist=replace(_FASHION_30.generalist, epochs=60)),
    # the same with the earlier 30-epoch generalist (README's five-seed table)
    ("fashion-mnist", "paper-30"): _FASHION_30,
    ("fashion-mnist", "quick"): replace(_IMG_QUICK, n_clusters=5, holdout=2000,
                                        grid=(dict(), dict(n_clusters=2, cluster_temperature=3.0),
                                              dict(specialist_epochs=4))),
    ("mnist", "paper"): Preset(generalist=TrainConfig(epochs=20, lr=0.05, momentum=0.9, schedule="cosine"),
                               specialist=_IMG_SPEC, distill_back=_IMG_BACK, n_clusters=4, cluster_temperature=3.0),
    ("mnist", "quick"): replace(_IMG_QUICK, n_clusters=4, cluster_temperature=3.0),
    ("synthetic", "paper"): Preset(hidden=(64, 64), dropout_input=0.0, dropout_hidden=0.0,
                                   generalist=TrainConfig(epochs=40, lr=0.05),
                                   specialist=TrainConfig(epochs=20, lr=0.05),
                                   distill_back=TrainConfig(epochs=20, lr=0.02),
                                   n_clusters=20, overlap_ratio=1.1, synthetic=dict(_SYN, train_per_class=300)),
    ("synthetic", "quick"): Preset(hidden=(64, 64), dropout_input=0.0, dropout_hidden=0.0,
                                   generalist=TrainConfig(epochs=15, lr=0.05),
                                   specialist=TrainConfig(epochs=8, lr=0.05),
                                   distill_back=TrainConfig(epochs=5, lr=0.02),
                                   n_clusters=20, overlap_ratio=1.1, synthetic=dict(_SYN, train_per_class=150)),
    # tiny: the same code path in seconds, for tests (held-out selection over 3 candidates included)
    ("synthetic", "tiny"): Preset(hidden=(16,), dropout_input=0.0, dropout_hidden=0.0,
                                  generalist=TrainConfig(epochs=3, lr=0.05), specialist=TrainConfig(epochs=2, lr=0.05),
                                  distill_back=TrainConfig(epochs=1, lr=0.02), n_clusters=4, overlap_ratio=1.2,
                                  cluster_size=2000,
                                  synthetic=dict(num_classes=12, group_size=3, dim=8, train_per_class=40,
                                                 test_per_class=20),
                                  holdout=96, grid=(dict(), dict(n_clusters=3, overlap_ratio=None),
                                                    dict(specialist_epochs=1))),
    ("double-mnist", "quick"): _DM_QUICK,
    ("double-mnist", "paper"): _DM_PAPER,
    # tiny: 600 training and 200 test pairs, for tests (on a fake MNIST there) and smoke runs
    ("double-mnist", "tiny"): Preset(hidden=(16,), dropout_input=0.0, dropout_hidden=0.0,
                                     generalist=TrainConfig(epochs=2, lr=0.05), specialist=TrainConfig(epochs=1, lr=0.05),
                                     distill_back=TrainConfig(epochs=1, lr=0.02), n_clusters=5,
                                     cluster_temperature=3.0, cluster_size=1000,
                                     double_mnist=dict(train_per_class=6, test_per_class=2),
                                     holdout=100, grid=(dict(), dict(n_clusters=8)), seeds=(0,)),
}


def load_data(dataset: str, p: Preset, data_dir=None, log=print):
    if dataset == "synthetic":
        from distill.data.synthetic import make_synthetic

        data = make_synthetic(**p.synthetic)
    elif dataset == "double-mnist":
        from distill.data.double_mnist import load_double_mnist

        data = load_double_mnist(data_dir, log, **p.double_mnist)
    elif dataset in ("mnist", "fashion-mnist"):
        from distill import data as D
        data = D.load(dataset, data_dir, log=log)
    else:
        raise DistillError(f"unknown data set {dataset!r}; choose one of {DATASETS}")
    if p.train_size or p.test_size:
        data = data.subset(train=p.train_size, test=p.test_size)
    return data


def stage_fit(runner: Runner, records: list | None = None):
    """The ``fit_fn`` hook (see :mod:`distill.methods.tuning`) that trains through ``runner``'s stage cache
    and appends each stage's record to ``records``."""
    def fit_fn(name, data, build, config, teacher=None, extra=None):
        res = runner.train(data, Stage(name, build, config, teacher, dict(extra or {})))
        if records is not None:
            records.append(runner.records[-1])
        return res
    return fit_fn


def from_generalist(name: str, gen_id: str) -> str:
    """Stage name of a model that starts from the generalist's weights: ``<name>-<8 hex of its id>``.
    Run keys cover a model's structure, not its initial weights, so the generalist's id in the name
    keeps the stages of different generalists (e.g. the 30- and 60-epoch Fashion presets) apart."""
    return f"{name}-{gen_id[:8]}"


def _name_system(rec: dict, system: str) -> dict:
    """Name a generalist-initialised stage's record by its system (the tables' name); its stage
    name, which carries the generalist's id, stays in ``rec["stage"]``."""
    rec["stage"], rec["model"] = rec["model"], system
    return rec


def train_control(runner: Runner, p: Preset, data, dataset: str, generalist, gen_id: str, p_g_test: torch.Tensor,
                  seed: int = 0) -> tuple[dict, torch.Tensor]:
    """The control: a copy of the generalist trained on all classes as long as one specialist
    (``p.specialist``), averaged with the generalist like a specialist covering every class
    (:func:`distill.methods.specialists.mean_of_full_coverage` of ``p_g_test``, the generalist's
    probabilities on ``data.x_test``, and its own). Returns (its record, named
    ``generalist-extra``; the combined probabilities on ``data.x_test``)."""
    x = runner.train(data, Stage(from_generalist("generalist-extra", gen_id), lambda: copy.deepcopy(generalist).train(),
                                 replace(p.specialist, seed=seed),
                                 extra=dict(dataset=dataset, init="generalist", generalist=gen_id)))
    xrec = _name_system(runner.records[-1], "generalist-extra")
    return xrec, S.mean_of_full_coverage([p_g_test, torch.softmax(predict_logits(x.model, data.x_test), 1)])


def train_specialists(runner: Runner, p: Preset, data, generalist, subsets, variant: str, seed: int = 0):
    """:func:`distill.methods.specialists.train_specialists` with the preset's recipe, through the stage
    cache; returns (specialists, records, total training seconds)."""
    recs: list[dict] = []
    specs, _ = S.train_specialists(generalist, data, subsets, replace(p.specialist, seed=seed), variant=variant,
                                   soft_temperature=p.soft_temperature, soft_hard_weight=p.soft_hard_weight,
                                   fit_fn=stage_fit(runner, recs))
    return specs, recs, sum(r["wall_seconds"] for r in recs)


def measure_throughput(generalist, specialists, x, p: Preset, repeats: int = 3) -> float:
    """Test cases per second of the whole combined model (generalist, active specialists, solver);
    the best of ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        S.predict_combined(generalist, specialists, x, p.top_n, p.tol)
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


# ---------------------------------------------------------------------------------- settings


def setting_of(p: Preset) -> dict:
    """The preset's own values of the :data:`GRID_KEYS`."""
    return dict(n_clusters=p.n_clusters, overlap_ratio=p.overlap_ratio, specialist_epochs=p.specialist.epochs,
                cluster_temperature=p.cluster_temperature)


def with_setting(p: Preset, setting: dict) -> Preset:
    """``p`` with the values of ``setting`` (a dict over :data:`GRID_KEYS`)."""
    bad = sorted(set(setting) - set(GRID_KEYS))
    if bad:
        raise DistillError(f"unknown setting(s) {bad}; a candidate may set {list(GRID_KEYS)}")
    kw = {k: v for k, v in setting.items() if k != "specialist_epochs"}
    if "specialist_epochs" in setting:
        kw["specialist"] = replace(p.specialist, epochs=int(setting["specialist_epochs"]))
    return replace(p, **kw)


def candidates(p: Preset, fixed: dict | None = None) -> list[dict]:
    """The candidate settings: every grid entry completed with the preset's own values, then
    ``fixed`` (explicit flags) applied; duplicates dropped, grid order kept. No grid: one candidate."""
    out: list[dict] = []
    for point in (p.grid or ({},)):
        s = {**setting_of(p), **point, **(fixed or {})}
        if s not in out:
            out.append(s)
    return out


def describe_setting(s: dict) -> str:
    ov = s.get("overlap_ratio")
    return (f"{s['n_clusters']} clusters, overlap {'none' if not ov else f'{ov:g}'}, "
            f"specialists {s['specialist_epochs']} epochs, clustering T = {s['cluster_temperature']:g}")


def describe_pair_subsets(subsets) -> list[str]:
    """Double-MNIST classes ``10a + b``: which first digits ``a`` and second digits ``b`` each subset holds."""
    lines = []
    for m, s in enumerate(subsets):
        first, second = sorted({c // 10 for c in s}), sorted({c % 10 for c in s})
        lines.append(f"S_{m}: {len(s)} classes; first digit in {{{', '.join(map(str, first))}}}, "
                     f"second digit in {{{', '.join(map(str, second))}}}")
    return lines


# ---------------------------------------------------------------------------------- the pipeline's parts


def train_generalist(runner: Runner, p: Preset, data, dataset: str, seed: int):
    """The generalist of ``p`` on ``data`` through ``runner``: (model in eval mode, its record)."""
    gstage = Stage("generalist", lambda: MLP(data.num_features, p.hidden, data.num_classes, p.dropout_input,
                                             p.dropout_hidden, p.max_norm),
                   replace(p.generalist, seed=seed), extra=dict(dataset=dataset, hidden=list(p.hidden)))
    gres = runner.train(data, gstage)
    grec = runner.records[-1]
    grec["seconds_per_epoch"] = round(grec["wall_seconds"] / p.generalist.epochs, 2)
    return gres.model.eval(), grec


def cluster_logits(generalist, data, p: Preset, seed: int) -> torch.Tensor:
    """The generalist's logits on ``p.cluster_size`` training inputs (seeded pick; labels unused)."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(data.x_train), generator=g)[:p.cluster_size]
    return predict_logits(generalist, data.x_train[pick])


def find_subsets(logits: torch.Tensor, p: Preset, seed: int) -> S.Clustering:
    """K-means on the correlations of ``softmax(logits / p.cluster_temperature)``."""
    probs = torch.softmax(logits / p.cluster_temperature, 1)
    return S.cluster_classes(probs, p.n_clusters, overlap_ratio=p.overlap_ratio, min_size=p.min_size, seed=seed)


def _errors(q: torch.Tensor, y: torch.Tensor) -> int:
    return int((q.argmax(1) != y).sum())


def _heldout(rec: dict) -> dict:
    """A stage record of the selection: its ``test_*`` metrics are on the held-out training examples."""
    for k in ("errors", "accuracy", "nll"):
        if f"test_{k}" in rec:
            rec[f"heldout_{k}"] = rec.pop(f"test_{k}")
    rec["split"] = "heldout"
    return rec


def select_setting(runner: Runner, p: Preset, data, dataset: str, cands: list[dict], variant: str = "hard", *,
                   seed: int = 0, split_seed: int = 0, progress: bool = True, log=print) -> tuple[int, list[dict]]:
    """Choose among ``cands`` on held-out TRAINING examples; ``data``'s test split is never read.

    :func:`distill.methods.tuning.holdout_split` (``p.holdout`` examples, ``split_seed``) gives ``tune``,
    whose training split is the rest and whose *test* split is the held-out examples. On it: one
    generalist (``seed``); per candidate the clustering, the specialists (``variant``) and, with
    ``p.select_control``, the control; the held-out errors of the generalist + specialists. Returns
    ``(index of the chosen candidate, one row per candidate)``: the fewest held-out errors, the
    first in ``cands`` on a tie. Stages go through ``runner``'s cache; their records (metrics
    renamed ``heldout_*``) to ``runner.out / "selection"``."""
    from distill.methods.tuning import holdout_split

    if not p.holdout:
        raise DistillError("this preset holds out no training examples (holdout); nothing to select on")
    _, _, tune = holdout_split(data, p.holdout, split_seed)
    sel = Runner(runner.out / "selection", runner.cache, progress, log,
                 title=f"Held-out selection: {p.holdout} training examples held out (split seed {split_seed}); "
                       "the test set is not used")
    log(f"[select] {len(cands)} candidate settings on {len(tune.y_train)} training examples, scored on "
        f"{len(tune.y_test)} held-out ones ('test' in the stage lines below means held out)")
    generalist, grec = train_generalist(sel, p, tune, dataset, seed)
    _heldout(grec)
    gen_err = grec["heldout_errors"]
    logits = cluster_logits(generalist, tune, p, seed)
    pred_train = predict_logits(generalist, tune.x_train).argmax(1)
    p_g_held = torch.softmax(predict_logits(generalist, tune.x_test), 1)
    gen_id = module_id(generalist)
    controls: dict[int, int] = {}
    rows = []
    for i, cand in enumerate(cands):
        q = with_setting(p, cand)
        t0 = time.perf_counter()
        subsets = find_subsets(logits, q, seed).subsets
        row = dict(candidate=i, **cand, variant=variant, n=len(tune.y_test), generalist_heldout_errors=gen_err,
                   subsets=[list(s) for s in subsets], n_specialists=len(subsets))
        if not subsets:
            log(f"[select] candidate {i} ({describe_setting(cand)}): no subset of >= {p.min_size} classes; skipped")
            rows.append(dict(row, heldout_errors=None))
            continue
        row["train_error_coverage"] = S.error_coverage(tune.y_train, pred_train, subsets, tune.num_classes)
        specs, srecs, secs = train_specialists(sel, q, tune, generalist, subsets, variant, seed)
        for r in srecs:
            _heldout(r)
        qc, _, _, _ = S.predict_combined(generalist, specs, tune.x_test, q.top_n, q.tol)
        err = _errors(qc, tune.y_test)
        row.update(heldout_errors=err, relative_error_reduction=(gen_err - err) / gen_err if gen_err else None,
                   specialists_seconds=round(secs, 1))
        if p.select_control:
            e = q.specialist.epochs
            if e not in controls:
                xrec, qx = train_control(sel, q, tune, dataset, generalist, gen_id, p_g_held, seed)
                _heldout(xrec)
                controls[e] = _errors(qx, tune.y_test)
            ctrl = controls[e]
            row.update(control_heldout_errors=ctrl, gain_beyond_control=(ctrl - err) / ctrl if ctrl else None)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        log(f"[select] candidate {i} ({describe_setting(cand)}): {err} held-out errors "
            f"(generalist {gen_err}{'' if row.get('control_heldout_errors') is None else ', control ' + str(row['control_heldout_errors'])})")
    scored = [r for r in rows if r["heldout_errors"] is not None]
    if not scored:
        raise DistillError("no candidate setting left a subset to specialise on; change the grid")
    best = min(scored, key=lambda r: r["heldout_errors"])["candidate"]  # min keeps the first of equals
    for r in rows:
        r["chosen"] = r["candidate"] == best
    sel.table = lambda recs: selection_table(rows) + "\n" + _stage_table(recs)
    sel.write()
    return best, rows


def _stage_table(recs) -> str:
    lines = ["| stage | seed | held-out errors | epochs | wall s |", "|---|---|---|---|---|"]
    for r in recs:
        lines.append(f"| {r.get('stage', r['model'])} | {r['seed']} | {r.get('heldout_errors', '')} | "
                     f"{r.get('epochs', '')} | {r['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def selection_table(rows: list[dict]) -> str:
    """The candidates' held-out errors, the chosen one marked."""
    lines = ["| # | clusters | overlap | specialist epochs | clustering T | specialists | training errors covered | "
             "held-out errors: generalist | + specialists | control | beyond control | chosen |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ov = r.get("overlap_ratio")
        cov, gbc = r.get("train_error_coverage"), r.get("gain_beyond_control")
        lines.append(f"| {r['candidate']} | {r['n_clusters']} | {'none' if not ov else f'{ov:g}'} | "
                     f"{r['specialist_epochs']} | {r['cluster_temperature']:g} | {r['n_specialists']} | "
                     f"{'' if cov is None else f'{100 * cov:.1f} %'} | {r['generalist_heldout_errors']} | "
                     f"{'no subset' if r['heldout_errors'] is None else r['heldout_errors']} | "
                     f"{r.get('control_heldout_errors', '')} | {'' if gbc is None else f'{100 * gbc:+.1f} %'} | "
                     f"{'✓' if r.get('chosen') else ''} |")
    return "\n".join(lines) + "\n"


def run_seed(runner: Runner, p: Preset, data, dataset: str, seed: int, variants, *, control: bool = True,
             distill_back: bool = False, distill_back_variant: str = "hard", log=print) -> dict:
    """The whole pipeline for one seed on the full training set, test metrics per reported row;
    records go to ``runner``. Returns ``{variant: (specialists, record)}``."""
    out = runner.out
    # 1. generalist
    generalist, grec = train_generalist(runner, p, data, dataset, seed)
    gen_id = module_id(generalist)
    log(f"[generalist] seed {seed}: {grec['seconds_per_epoch']:.1f} s per epoch")

    # 2. confusable subsets from the predictions on (unlabeled) training inputs
    cl = find_subsets(cluster_logits(generalist, data, p, seed), p, seed)
    subsets = cl.subsets
    if not subsets:
        raise DistillError(f"the clustering left no subset with >= {p.min_size} classes; try another --n-specialists")
    named = S.format_subsets(subsets, data.classes)
    for line in named:
        log(line)
    grec["subsets"] = [list(s) for s in subsets]
    grec["subsets_named"] = named
    grec["n_clusters"] = p.n_clusters
    grec["cluster_temperature"] = p.cluster_temperature
    grec["overlap_ratio"] = p.overlap_ratio
    grec["specialist_epochs"] = p.specialist.epochs
    if dataset == "double-mnist":
        grec["subsets_described"] = describe_pair_subsets(subsets)
        for line in grec["subsets_described"]:
            log(line)
    # how many of the generalist's errors the subsets could fix (training labels; see S.error_coverage)
    pred_train = predict_logits(generalist, data.x_train).argmax(1)
    grec["train_error_coverage"] = S.error_coverage(data.y_train, pred_train, subsets, data.num_classes)
    log(f"the subsets hold true and predicted class of {100 * grec['train_error_coverage']:.1f} % of the "
        "generalist's training errors")
    if dataset == "synthetic":
        from distill.data.synthetic import planted_groups

        grec["clustering_ari"] = S.adjusted_rand(planted_groups(data.num_classes, p.synthetic.get("group_size", 5)),
                                                 cl.labels)
        log(f"clustering vs planted groups: adjusted Rand index {grec['clustering_ari']:.3f}")
    _write_subsets(out, seed, dict(subsets=grec["subsets"], named=named, clustering_ari=grec.get("clustering_ari"),
                                   described=grec.get("subsets_described")))
    runner.write()

    p_g_test = torch.softmax(predict_logits(generalist, data.x_test), 1)
    pred_g = p_g_test.argmax(1)
    grec["test_error_coverage"] = S.error_coverage(data.y_test, pred_g, subsets, data.num_classes)
    gen_err = grec["test_errors"]
    combined = {}
    for variant in variants:
        specs, srecs, secs = train_specialists(runner, p, data, generalist, subsets, variant, seed)
        t0 = time.perf_counter()
        q, p_g, active, info = S.predict_combined(generalist, specs, data.x_test, p.top_n, p.tol)
        t_inf = time.perf_counter() - t0
        cps = measure_throughput(generalist, specs, data.x_test, p)
        m = classification_metrics(torch.log(q.clamp_min(1e-30)), data.y_test)
        pred_c = q.argmax(1)
        rows = S.accuracy_by_coverage(data.y_test, pred_g, pred_c, subsets, data.num_classes)
        covered = S.coverage_counts(data.y_test, subsets, data.num_classes) > 0
        acc_cov_g = float((pred_g[covered] == data.y_test[covered]).float().mean()) if covered.any() else None
        acc_cov_c = float((pred_c[covered] == data.y_test[covered]).float().mean()) if covered.any() else None
        rec = dict(model="generalist+specialists", variant=variant, seed=seed, dataset=dataset,
                   test_errors=m["errors"], test_accuracy=m["accuracy"], test_nll=m["nll"],
                   wall_seconds=round(grec["wall_seconds"] + secs + t_inf, 2),
                   params=grec["params"] + sum(count_params(s.model) for s in specs),
                   relative_error_reduction=(gen_err - m["errors"]) / gen_err if gen_err else None,
                   n_specialists=len(specs), subsets=[list(s) for s in subsets], top_n=p.top_n,
                   active_fraction=float(active.any(1).float().mean()),
                   mean_active=float(active.sum(1).float().mean()),
                   covered_accuracy_generalist=acc_cov_g, covered_accuracy_combined=acc_cov_c,
                   by_coverage=rows, inference_cases_per_second=round(cps, 1),
                   inference_threads=torch.get_num_threads(), load_average_1min=os.getloadavg()[0],
                   solver_iterations=info["iterations"], solver_max_grad=info["max_grad"], solver_tol=p.tol,
                   solver_converged=info["converged"], solver_unconverged_rows=info["unconverged_rows"],
                   specialist_test_accuracy=[r["test_accuracy"] for r in srecs])
        log(f"[generalist+specialists/{variant}] seed {seed}: {m['errors']} test errors vs generalist {gen_err} "
            f"({100 * (rec['relative_error_reduction'] or 0):+.1f} % relative), {cps:,.0f} cases/s")
        runner.add(rec)
        combined[variant] = (specs, rec)

    def init():  # a model of the generalist's size that starts from its weights
        return copy.deepcopy(generalist).train()

    if control:
        # same extra training as one specialist, without specialising: is the gain the specialists' own?
        xrec, q = train_control(runner, p, data, dataset, generalist, gen_id, p_g_test, seed)
        m = classification_metrics(torch.log(q.clamp_min(1e-30)), data.y_test)
        rec = dict(model="generalist+extra", seed=seed, dataset=dataset, test_errors=m["errors"],
                   test_accuracy=m["accuracy"], test_nll=m["nll"], extra_epochs=p.specialist.epochs,
                   extra_model_test_errors=xrec["test_errors"],
                   wall_seconds=round(grec["wall_seconds"] + xrec["wall_seconds"], 2), params=2 * grec["params"],
                   relative_error_reduction=(gen_err - m["errors"]) / gen_err if gen_err else None)
        runner.add(rec)
        for _, crec in combined.values():
            crec["control_test_errors"] = m["errors"]
            crec["gain_beyond_control"] = (m["errors"] - crec["test_errors"]) / m["errors"] if m["errors"] else None
        log(f"[generalist+extra] seed {seed}: {m['errors']} test errors "
            f"(the extra-trained generalist alone: {xrec['test_errors']})")
        runner.write()

    if distill_back:
        specs, crec = combined[distill_back_variant]
        log("[distilled-back] combined q over the training set")
        q_train, _, _, _ = S.predict_combined(generalist, specs, data.x_train, p.top_n, p.tol)
        q_train = q_train.float()
        cfg = replace(p.distill_back, seed=seed, temperature=1.0, hard_weight=p.distill_back_hard_weight)
        # the teacher's id is the digest of q, which depends on the generalist (and the specialists)
        runner.train(data, Stage("distilled-back", init, cfg, teacher=Teacher(q_train, kind="probs"),
                                 extra=dict(dataset=dataset, variant=distill_back_variant, init="generalist",
                                            generalist=gen_id)))
        db = runner.records[-1]
        # control: the same extra epochs on hard labels only, so the gain is not just more training
        runner.train(data, Stage(from_generalist("generalist-finetuned", gen_id), init,
                                 replace(p.distill_back, seed=seed),
                                 extra=dict(dataset=dataset, init="generalist", generalist=gen_id)))
        _name_system(runner.records[-1], "generalist-finetuned")
        for r in (db, runner.records[-1]):
            r["relative_error_reduction"] = (gen_err - r["test_errors"]) / gen_err if gen_err else None
        gain = gen_err - crec["test_errors"]
        db["ensemble_gain_kept"] = (gen_err - db["test_errors"]) / gain if gain else None
        runner.write()
    runner.write()
    return combined


def _write_subsets(out: Path, seed: int, entry: dict) -> None:
    """``subsets.json``: the first seed's subsets at the top level (as before issue 19), every seed's
    under ``by_seed``."""
    import json

    path = Path(out) / "subsets.json"
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        old = {}
    by_seed = dict(old.get("by_seed") or {})
    by_seed[str(seed)] = entry
    first = by_seed[min(by_seed, key=int)]
    atomic_write_json(path, dict(first, by_seed=by_seed))


# ---------------------------------------------------------------------------------- tables and plot


def _main_records(records):
    return [r for r in records if r.get("model") != "selection" and r.get("split") != "heldout"]


def _seeds(records) -> list[int]:
    return sorted({r["seed"] for r in _main_records(records) if r["model"] == "generalist"})


def coverage_over_seeds(records: list[dict]) -> dict[str, list[dict]]:
    """Paper Table 4 summed over the seeds, per variant: for each number ``k`` of specialists
    covering the true class, the test cases, and the generalist's and the combined model's correct
    counts summed over the seeds' ``by_coverage`` rows; ``relative_accuracy_change`` of the sums."""
    out: dict[str, dict[int, dict]] = {}
    for c in _main_records(records):
        if c["model"] != "generalist+specialists":
            continue
        rows = out.setdefault(c["variant"], {})
        for row in c["by_coverage"]:
            acc = rows.setdefault(row["covering"], dict(covering=row["covering"], n=0, correct_generalist=0,
                                                         correct_combined=0, seeds=0))
            acc["n"] += row["n"]
            acc["correct_generalist"] += row["correct_generalist"]
            acc["correct_combined"] += row["correct_combined"]
            acc["seeds"] += 1
    result = {}
    for v, rows in out.items():
        result[v] = []
        for k in sorted(rows):
            r = rows[k]
            cg, cc = r["correct_generalist"], r["correct_combined"]
            result[v].append(dict(r, delta_correct=cc - cg,
                                  relative_accuracy_change=(cc - cg) / cg if cg else float("nan")))
    return result


def seed_summary(records: list[dict]) -> dict:
    """Mean and sample std over the seeds: test errors of the generalist and the control, and per
    variant of the generalist + specialists, its relative error reduction, its gain beyond the
    control and its inference cases/s. Each entry is ``dict(values, mean, std)`` (values in seed
    order; None where a seed has none)."""
    main = _main_records(records)
    seeds = _seeds(records)

    def stat(values):
        vals = [v for v in values if v is not None]
        if not vals:
            return None
        m, s = mean_std(vals)
        return dict(values=list(values), mean=m, std=s)

    def per_seed(model, key, variant=None):
        vals = []
        for s in seeds:
            r = next((r for r in main if r["model"] == model and r["seed"] == s
                      and (variant is None or r.get("variant") == variant)), None)
            vals.append(None if r is None else r.get(key))
        return vals

    variants = []
    for r in main:
        if r["model"] == "generalist+specialists" and r["variant"] not in variants:
            variants.append(r["variant"])
    out = dict(seeds=seeds, generalist=stat(per_seed("generalist", "test_errors")),
               control=stat(per_seed("generalist+extra", "test_errors")), variants={})
    for v in variants:
        out["variants"][v] = dict(
            test_errors=stat(per_seed("generalist+specialists", "test_errors", v)),
            relative_error_reduction=stat(per_seed("generalist+specialists", "relative_error_reduction", v)),
            gain_beyond_control=stat(per_seed("generalist+specialists", "gain_beyond_control", v)),
            inference_cases_per_second=stat(per_seed("generalist+specialists", "inference_cases_per_second", v)))
    return out


def _ms(st, scale=1.0, digits=1, sign=False, unit="") -> str:
    if st is None:
        return "–"
    f = f"{'+' if sign else ''}.{digits}f"
    if len([v for v in st["values"] if v is not None]) == 1:
        return f"{format(scale * st['mean'], f)}{unit}"
    return f"{format(scale * st['mean'], f)} ± {format(scale * st['std'], f'.{digits}f')}{unit}"


def summary_table(records: list[dict]) -> str:
    """The seeds' mean ± std table (:func:`seed_summary`)."""
    sm = seed_summary(records)
    gen, ctrl = sm["generalist"], sm["control"]
    lines = [f"**Mean ± std over seeds {', '.join(map(str, sm['seeds']))}** (test errors; relative error "
             "reductions against the generalist and beyond the control)\n",
             "| variant | generalist | generalist + specialists | relative error reduction | control "
             "(generalist+extra) | beyond control | cases/s |", "|---|---|---|---|---|---|---|"]
    for v, st in sm["variants"].items():
        lines.append(f"| {v} | {_ms(gen)} | {_ms(st['test_errors'])} | "
                     f"{_ms(st['relative_error_reduction'], 100, sign=True, unit=' %')} | {_ms(ctrl)} | "
                     f"{_ms(st['gain_beyond_control'], 100, sign=True, unit=' %')} | "
                     f"{_ms(st['inference_cases_per_second'], digits=0)} |")
    out = "\n".join(lines) + "\n"
    dataset = next((r.get("dataset") for r in _main_records(records) if r.get("dataset")), None)
    if dataset == "double-mnist":
        for v, st in sm["variants"].items():
            g = st["gain_beyond_control"]
            if g is not None:
                out += (f"\nGoal (issue 19): ≥ {100 * GOAL_BEYOND_CONTROL:.0f} % beyond the control, mean of the "
                        f"seeds: variant `{v}` {100 * g['mean']:+.1f} % -- "
                        f"{'reached' if g['mean'] >= GOAL_BEYOND_CONTROL else 'not reached'}.\n")
    return out


def coverage_table(rows: list[dict]) -> str:
    """Paper Table 4 as markdown: one line per number of specialists covering the true class."""
    out = ("| # covering | # test cases | generalist correct | combined correct | Δ correct | "
           "relative accuracy change |\n|---|---|---|---|---|---|\n")
    for row in rows:
        out += (f"| {row['covering']} | {row['n']} | {row['correct_generalist']} | {row['correct_combined']} | "
                f"{row['delta_correct']:+d} | {100 * row['relative_accuracy_change']:+.2f} % |\n")
    return out


def summarize(records: list[dict]) -> str:
    """Paper Tables 3 and 4 from the records; with several seeds also their mean ± std and Table 4
    summed over the seeds; the held-out selection, if any."""
    sel = next((r for r in records if r.get("model") == "selection"), None)
    records = _main_records(records)
    seeds = _seeds(records)
    multi = len(seeds) > 1
    combos = [r for r in records if r["model"] == "generalist+specialists"]
    out = ""
    if sel is not None:
        out += (f"Setting chosen on {sel['holdout']} held-out TRAINING examples (split seed {sel['split_seed']}, "
                f"seed {sel['seed']}, variant `{sel['variant']}`; the test set chose nothing): "
                f"**{describe_setting(sel['chosen'])}**"
                + (f", applied to all seeds ({', '.join(map(str, seeds))})" if multi else "") + ". "
                "Candidates below.\n\n")
    if multi:
        out += summary_table(records) + "\n"
    lines = ["| system | variant | seed | test errors | test accuracy | relative error reduction | "
             "params | cases/s | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["model"] in ("generalist", "generalist+specialists", "generalist+extra", "distilled-back",
                          "generalist-finetuned"):
            red = r.get("relative_error_reduction")
            cps = r.get("inference_cases_per_second")
            lines.append(f"| {r['model']} | {r.get('variant') or ''} | {r.get('seed', '')} | {r['test_errors']} | "
                         f"{100 * r['test_accuracy']:.2f} % | {'' if red is None else f'{100 * red:+.1f} %'} | "
                         f"{r['params']:,} | {'' if cps is None else f'{cps:,.0f}'} | {r['wall_seconds']:.0f} |")
    out += "\n".join(lines) + "\n"
    out += (f"\nPaper (JFT, Table 3): {PAPER['generalist_top1']} % -> {PAPER['combined_top1']} % top-1, "
            f"{PAPER['relative_improvement']} % relative improvement.\n")
    for ctrl in (r for r in records if r["model"] == "generalist+extra"):
        s = ctrl.get("seed")
        mine = [c for c in combos if c.get("seed") == s]
        out += (f"\n{f'Seed {s}: c' if multi else 'C'}ontrol `generalist+extra`: the generalist trained "
                f"{ctrl['extra_epochs']} more epochs on all "
                f"classes with the specialists' recipe (no subsets, no dustbin), averaged with the generalist "
                f"(the KL combination's optimum for two full-coverage models): {ctrl['test_errors']} test errors "
                f"(the extra-trained generalist alone: {ctrl['extra_model_test_errors']}). "
                + " ".join(f"Specialists (`{c['variant']}`) beyond it: {100 * c['gain_beyond_control']:+.1f} %."
                           for c in mine if c.get("gain_beyond_control") is not None) + "\n")
    if multi:
        for v, rows in coverage_over_seeds(records).items():
            out += (f"\n**Variant `{v}`** -- accuracy by number of specialists covering the true class "
                    f"(paper Table 4), summed over seeds {', '.join(map(str, seeds))}\n\n" + coverage_table(rows))
        out += "\n" + "".join(
            f"solver, seed {c['seed']} `{c['variant']}`: {c['solver_iterations']} iterations max, max |grad| "
            f"{c['solver_max_grad']:.1e} (tol {c['solver_tol']:.0e}), converged {c['solver_converged']}\n"
            for c in combos)
    else:
        for c in combos:
            out += (f"\n**Variant `{c['variant']}`** -- accuracy by number of specialists covering the true class "
                    f"(paper Table 4)\n\n" + coverage_table(c["by_coverage"]))
            out += (f"\nsolver: {c['solver_iterations']} iterations max, max |grad| {c['solver_max_grad']:.1e} "
                    f"(tol {c['solver_tol']:.0e}), converged {c['solver_converged']}"
                    f"{'' if c.get('solver_unconverged_rows') in (None, 0) else ' (' + str(c['solver_unconverged_rows']) + ' rows above tol)'}\n")
    for db in (r for r in records if r["model"] == "distilled-back"):
        s = db.get("seed")
        pre = f"Seed {s}: d" if multi else "D"
        if db.get("ensemble_gain_kept") is not None and db["ensemble_gain_kept"] < 0 and \
                next((c["relative_error_reduction"] for c in combos
                      if c["variant"] == db.get("variant") and c.get("seed") == s), 0) < 0.01:
            out += (f"\n{pre}istilled back into one net of the generalist's size: {db['test_errors']} test errors "
                    f"(the ensemble's own gain was under 1 %, so there was no gain to keep).\n")
        elif db.get("ensemble_gain_kept") is not None:
            ft = next((r for r in records if r["model"] == "generalist-finetuned" and r.get("seed") == s), None)
            out += (f"\n{pre}istilled back into one net of the generalist's size: {db['test_errors']} test errors, "
                    f"{100 * db['ensemble_gain_kept']:.0f} % of the generalist+specialists ({db.get('variant')}) gain kept"
                    + (f"; control (generalist fine-tuned on hard labels for the same epochs): {ft['test_errors']}"
                       if ft else "") + ".\n")
    for gen in (r for r in records if r["model"] == "generalist"):
        if gen.get("subsets_named"):
            which = f" (seed {gen.get('seed')})" if multi else ""
            out += f"\nConfusable subsets{which} (K-means on the generalist's prediction correlations):\n\n"
            out += "".join(f"- {line}\n" for line in gen["subsets_named"])
            if gen.get("subsets_described"):  # double-MNIST: the digits in each position
                out += "\n" + "".join(f"- {line}\n" for line in gen["subsets_described"])
            if gen.get("clustering_ari") is not None:
                out += f"\nAgreement with the planted groups: adjusted Rand index {gen['clustering_ari']:.3f}\n"
    if sel is not None:
        out += (f"\n**Held-out selection** ({sel['holdout']} training examples held out, the rest trains; "
                f"variant `{sel['variant']}`; details in `selection/results.md`)\n\n" + selection_table(sel["candidates"]))
    return out


def plot_gain(records: list[dict], path: Path) -> Path | None:
    """Bar chart: relative accuracy change vs number of specialists covering the true class
    (summed over the seeds when there are several)."""
    cov = coverage_over_seeds(records)
    if not cov:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = _seeds(records)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    width = 0.8 / len(cov)
    for i, (variant, rows) in enumerate(cov.items()):
        xs = [row["covering"] + (i - (len(cov) - 1) / 2) * width for row in rows]
        ys = [100 * row["relative_accuracy_change"] for row in rows]
        ax.bar(xs, ys, width, label=f"variant {variant}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("number of specialists covering the true class")
    ax.set_ylabel("relative accuracy change (%)")
    ax.set_xticks(sorted({row["covering"] for rows in cov.values() for row in rows}))
    ax.legend()
    title = next((r.get("dataset") for r in _main_records(records) if r.get("dataset")), "") or ""
    if len(seeds) > 1:
        title += f" (summed over seeds {', '.join(map(str, seeds))})"
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- run


def run(dataset: str = "fashion-mnist", preset: str = "quick", out="runs/specialists", cache=None, data_dir=None,
        variants=VARIANTS, distill_back: bool = False, distill_back_variant: str = "hard",
        n_clusters: int | None = None, overlap_ratio: float | None = None, top_n: int | None = None,
        seed: int | None = None, progress=True, log=print, control: bool = True, *, seeds=None,
        select: bool | None = None, specialist_epochs: int | None = None, cluster_temperature: float | None = None,
        holdout: int | None = None, data=None) -> list[dict]:
    """The experiment (module docstring). ``seeds`` (or one ``seed``; default the preset's) are the
    full-set runs; ``select``: None chooses on held-out data when the preset has a holdout and more
    than one candidate is left after the explicit settings (``n_clusters``, ``overlap_ratio``, 0 =
    none, ``specialist_epochs``, ``cluster_temperature``), True always (the candidates' held-out
    table even for one), False never (the preset's own setting and the explicit ones). ``data``: a
    ready :class:`~distill.data.Dataset` instead of loading ``dataset`` (tests)."""
    if (dataset, preset) not in PRESETS:
        raise DistillError(f"no preset {preset!r} for {dataset!r}; have "
                           f"{sorted(k[1] for k in PRESETS if k[0] == dataset)}")
    p = PRESETS[(dataset, preset)]
    if holdout is not None:
        p = replace(p, holdout=holdout)
    p = replace(p, top_n=top_n or p.top_n)
    if seeds is None:
        seeds = (seed,) if seed is not None else p.seeds
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise DistillError(f"--seeds must be distinct whole numbers >= 0, got {list(seeds)}")
    fixed = {}
    if n_clusters is not None:
        fixed["n_clusters"] = n_clusters
    if overlap_ratio is not None:
        fixed["overlap_ratio"] = overlap_ratio or None
    if specialist_epochs is not None:
        fixed["specialist_epochs"] = specialist_epochs
    if cluster_temperature is not None:
        fixed["cluster_temperature"] = cluster_temperature
    if distill_back and distill_back_variant not in variants:
        raise DistillError(f"--distill-back-variant {distill_back_variant} is not among the variants run")
    cands = candidates(p, fixed)
    if select is None:
        select = bool(p.holdout) and len(cands) > 1
    if select and not p.holdout:
        raise DistillError(f"preset {preset!r} of {dataset!r} holds out no training examples; give --holdout N")
    out = Path(out)
    runner = Runner(out, cache, progress, log, title=f"Generalist + specialists on {dataset} (preset {preset})",
                    table=summarize)
    if data is None:
        data = load_data(dataset, p, data_dir, log)

    if select:
        variant = "hard" if "hard" in variants else variants[0]
        t0 = time.perf_counter()
        best, rows = select_setting(runner, p, data, dataset, cands, variant, seed=0, split_seed=0,
                                    progress=progress, log=log)
        chosen = cands[best]
        runner.add(dict(model="selection", split="heldout", dataset=dataset, holdout=p.holdout, split_seed=0, seed=0,
                        variant=variant, chosen=chosen, chosen_index=best, candidates=rows,
                        wall_seconds=round(time.perf_counter() - t0, 1)))
        log(f"[select] chosen: candidate {best} ({describe_setting(chosen)})")
    else:
        chosen = dict(setting_of(p), **fixed)
    p = with_setting(p, chosen)

    for s in seeds:
        run_seed(runner, p, data, dataset, s, variants, control=control, distill_back=distill_back,
                 distill_back_variant=distill_back_variant, log=log)

    runner.write()
    # the numbers of results.md's seed table and summed Table 4, for scripts
    atomic_write_json(out / "summary.json", dict(seed_summary(runner.records),
                                                 by_coverage_summed=coverage_over_seeds(runner.records)))
    png = plot_gain(runner.records, out / "gain_vs_covering.png")
    if png:
        log(f"wrote {png}")
    log(summarize(runner.records))
    return runner.records


def add_arguments(p) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist",
                   help="double-mnist: two MNIST digits side by side, 100 classes (distill.data.double_mnist)")
    p.add_argument("--preset", choices=sorted({k[1] for k in PRESETS}), default="quick")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help="hard: |S|+1 softmax on hard targets (paper 5); soft: full softmax + generalist soft targets (6)")
    p.add_argument("--n-specialists", type=int, help="number of K-means clusters (default: the preset's, or chosen "
                                                     "on held-out data); fixes this setting for the selection")
    p.add_argument("--overlap-ratio", type=float,
                   help="also put a class in its 2nd-nearest cluster when d2 <= ratio*d1 (0 = no overlap); "
                        "fixes this setting for the selection")
    p.add_argument("--specialist-epochs", type=int, help="epochs of every specialist (and of the control); "
                                                         "fixes this setting for the selection")
    p.add_argument("--cluster-temperature", type=float,
                   help="T of the softened predictions that are clustered; fixes this setting for the selection")
    p.add_argument("--top-n", type=int, help="activate specialists meeting the generalist's top-n classes (default 1)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--select", dest="select", action="store_const", const=True, default=None,
                     help="choose the settings on held-out TRAINING examples (the preset's --holdout; split seed 0, "
                          "seed 0; the candidate with the fewest held-out errors of generalist + specialists, the "
                          "first on a tie), then run that setting for every seed. Default: on when the preset has "
                          "a grid and the flags above leave more than one candidate")
    sel.add_argument("--no-select", dest="select", action="store_const", const=False,
                     help="run the preset's own setting (with the flags above), no held-out selection")
    p.add_argument("--holdout", type=int, help="training examples held out for the selection (default: the preset's)")
    p.add_argument("--distill-back", action="store_true",
                   help="distil the combined q into one net of the generalist's size")
    p.add_argument("--distill-back-variant", choices=VARIANTS, default="hard")
    p.add_argument("--no-control", action="store_true",
                   help="skip the control: the generalist trained as long as a specialist, averaged with itself")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, nargs="+",
                       help="seeds of the full-training-set runs (default: the preset's, e.g. 0 1 2 for double-mnist "
                            "paper); with several, results.md adds mean ± std and Table 4 summed over the seeds")
    seeds.add_argument("--seed", type=int, help="one seed (= --seeds N)")
    p.add_argument("--out", default="runs/specialists", help="folder for results.json / results.md / plot")
    p.add_argument("--cache", help="folder of trained stages, shared between experiments (default OUT/stages)")
    p.add_argument("--data-dir")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> list[dict]:
    records = run(args.dataset, args.preset, args.out, args.cache, args.data_dir, tuple(args.variants),
                  args.distill_back, args.distill_back_variant, args.n_specialists, args.overlap_ratio,
                  args.top_n, args.seed, not args.no_progress, control=not args.no_control, seeds=args.seeds,
                  select=args.select, specialist_epochs=args.specialist_epochs,
                  cluster_temperature=args.cluster_temperature, holdout=args.holdout)
    print(f"wrote {args.out}/results.json, {args.out}/results.md and {args.out}/gain_vs_covering.png")
    return records

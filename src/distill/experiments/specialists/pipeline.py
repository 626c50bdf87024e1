"""The specialists experiment's pipeline: generalist, confusable subsets, specialists, their
combination, the control and the distilled-back net, each stage trained through the stage cache;
and the held-out selection of the setting. Every function with more than a few parameters takes
them by keyword."""
from __future__ import annotations

import copy
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from distill.atomic import atomic_write_json
from distill.errors import DistillError
from distill.experiments.common import Runner, Stage
from distill.experiments.specialists.presets import DATASETS, GRID_KEYS, PRESETS, VARIANTS, Preset
from distill.experiments.specialists.tables import (coverage_over_seeds, describe_pair_subsets, describe_setting,
                                                    plot_gain, seed_summary, selection_table, stage_table,
                                                    summarize)
from distill.methods import specialists as S
from distill.metrics import classification_metrics, predict_logits
from distill.models.classifiers import MLP, count_params
from distill.teachers.teacher import Teacher, module_id


def load_data(dataset: str, p: Preset, *, data_dir=None, log=print):
    """The data set of ``dataset`` built or loaded with ``p``'s arguments, subset to its sizes."""
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


def train_control(runner: Runner, p: Preset, *, data, dataset: str, generalist, gen_id: str,
                  p_g_test: torch.Tensor, seed: int = 0) -> tuple[dict, torch.Tensor]:
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


def train_specialists(runner: Runner, p: Preset, *, data, generalist, subsets, variant: str, seed: int = 0):
    """:func:`distill.methods.specialists.train_specialists` with the preset's recipe, through the stage
    cache; returns (specialists, records, total training seconds)."""
    recs: list[dict] = []
    specs, _ = S.train_specialists(generalist, data, subsets, replace(p.specialist, seed=seed), variant=variant,
                                   soft_temperature=p.soft_temperature, soft_hard_weight=p.soft_hard_weight,
                                   fit_fn=stage_fit(runner, recs))
    return specs, recs, sum(r["wall_seconds"] for r in recs)


def measure_throughput(generalist, specialists, *, x, p: Preset, repeats: int = 3) -> float:
    """Test cases per second of the whole combined model (generalist, active specialists, solver);
    the best of ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        S.predict_combined(generalist, specialists, x, top_n=p.top_n, tol=p.tol)
        best = min(best, time.perf_counter() - t0)
    return len(x) / best



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


def train_generalist(runner: Runner, p: Preset, *, data, dataset: str, seed: int):
    """The generalist of ``p`` on ``data`` through ``runner``: (model in eval mode, its record)."""
    gstage = Stage("generalist", lambda: MLP(data.num_features, p.hidden, data.num_classes, p.dropout_input,
                                             p.dropout_hidden, p.max_norm),
                   replace(p.generalist, seed=seed), extra=dict(dataset=dataset, hidden=list(p.hidden)))
    gres = runner.train(data, gstage)
    grec = runner.records[-1]
    grec["seconds_per_epoch"] = round(grec["wall_seconds"] / p.generalist.epochs, 2)
    return gres.model.eval(), grec


def cluster_logits(generalist, *, data, p: Preset, seed: int) -> torch.Tensor:
    """The generalist's logits on ``p.cluster_size`` training inputs (seeded pick; labels unused)."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(data.x_train), generator=g)[:p.cluster_size]
    return predict_logits(generalist, data.x_train[pick])


def find_subsets(logits: torch.Tensor, *, p: Preset, seed: int) -> S.Clustering:
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


def select_setting(runner: Runner, p: Preset, *, data, dataset: str, cands: list[dict], variant: str = "hard",
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
    sel = Runner(runner.out / "selection", runner.cache, progress=progress, log=log,
                 title=f"Held-out selection: {p.holdout} training examples held out (split seed {split_seed}); "
                       "the test set is not used")
    log(f"[select] {len(cands)} candidate settings on {len(tune.y_train)} training examples, scored on "
        f"{len(tune.y_test)} held-out ones ('test' in the stage lines below means held out)")
    generalist, grec = train_generalist(sel, p, data=tune, dataset=dataset, seed=seed)
    _heldout(grec)
    gen_err = grec["heldout_errors"]
    logits = cluster_logits(generalist, data=tune, p=p, seed=seed)
    pred_train = predict_logits(generalist, tune.x_train).argmax(1)
    p_g_held = torch.softmax(predict_logits(generalist, tune.x_test), 1)
    gen_id = module_id(generalist)
    controls: dict[int, int] = {}
    rows = []
    for i, cand in enumerate(cands):
        q = with_setting(p, cand)
        t0 = time.perf_counter()
        subsets = find_subsets(logits, p=q, seed=seed).subsets
        row = dict(candidate=i, **cand, variant=variant, n=len(tune.y_test), generalist_heldout_errors=gen_err,
                   subsets=[list(s) for s in subsets], n_specialists=len(subsets))
        if not subsets:
            log(f"[select] candidate {i} ({describe_setting(cand)}): no subset of >= {p.min_size} classes; skipped")
            rows.append(dict(row, heldout_errors=None))
            continue
        row["train_error_coverage"] = S.error_coverage(tune.y_train, pred_train, subsets, tune.num_classes)
        specs, srecs, secs = train_specialists(sel, q, data=tune, generalist=generalist, subsets=subsets,
                                                variant=variant, seed=seed)
        for r in srecs:
            _heldout(r)
        qc, _, _, _ = S.predict_combined(generalist, specs, tune.x_test, top_n=q.top_n, tol=q.tol)
        err = _errors(qc, tune.y_test)
        row.update(heldout_errors=err, relative_error_reduction=(gen_err - err) / gen_err if gen_err else None,
                   specialists_seconds=round(secs, 1))
        if p.select_control:
            e = q.specialist.epochs
            if e not in controls:
                xrec, qx = train_control(sel, q, data=tune, dataset=dataset, generalist=generalist, gen_id=gen_id,
                                         p_g_test=p_g_held, seed=seed)
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
    sel.table = lambda recs: selection_table(rows) + "\n" + stage_table(recs)
    sel.write()
    return best, rows


def run_seed(runner: Runner, p: Preset, *, data, dataset: str, seed: int, variants, control: bool = True,
             distill_back: bool = False, distill_back_variant: str = "hard", log=print) -> dict:
    """The whole pipeline for one seed on the full training set, test metrics per reported row;
    records go to ``runner``. Returns ``{variant: (specialists, record)}``."""
    out = runner.out
    # 1. generalist
    generalist, grec = train_generalist(runner, p, data=data, dataset=dataset, seed=seed)
    gen_id = module_id(generalist)
    log(f"[generalist] seed {seed}: {grec['seconds_per_epoch']:.1f} s per epoch")

    # 2. confusable subsets from the predictions on (unlabeled) training inputs
    cl = find_subsets(cluster_logits(generalist, data=data, p=p, seed=seed), p=p, seed=seed)
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
    _write_subsets(out, seed=seed, entry=dict(subsets=grec["subsets"], named=named,
                                              clustering_ari=grec.get("clustering_ari"),
                                              described=grec.get("subsets_described")))
    runner.write()

    p_g_test = torch.softmax(predict_logits(generalist, data.x_test), 1)
    pred_g = p_g_test.argmax(1)
    grec["test_error_coverage"] = S.error_coverage(data.y_test, pred_g, subsets, data.num_classes)
    gen_err = grec["test_errors"]
    combined = {}
    for variant in variants:
        specs, srecs, secs = train_specialists(runner, p, data=data, generalist=generalist, subsets=subsets,
                                                variant=variant, seed=seed)
        t0 = time.perf_counter()
        q, p_g, active, info = S.predict_combined(generalist, specs, data.x_test, top_n=p.top_n, tol=p.tol)
        t_inf = time.perf_counter() - t0
        cps = measure_throughput(generalist, specs, x=data.x_test, p=p)
        m = classification_metrics(torch.log(q.clamp_min(1e-30)), data.y_test)
        pred_c = q.argmax(1)
        rows = S.accuracy_by_coverage(data.y_test, pred_g, pred_c, subsets, num_classes=data.num_classes)
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
        xrec, q = train_control(runner, p, data=data, dataset=dataset, generalist=generalist, gen_id=gen_id,
                                p_g_test=p_g_test, seed=seed)
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
        q_train, _, _, _ = S.predict_combined(generalist, specs, data.x_train, top_n=p.top_n, tol=p.tol)
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


def _write_subsets(out: Path, *, seed: int, entry: dict) -> None:
    """``subsets.json``: the first seed's subsets at the top level (where single-seed runs kept
    them), every seed's under ``by_seed``."""
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


def run(*, dataset: str = "fashion-mnist", preset: str = "quick", out="runs/specialists", cache=None,
        data_dir=None, variants=VARIANTS, distill_back: bool = False, distill_back_variant: str = "hard",
        n_clusters: int | None = None, overlap_ratio: float | None = None, top_n: int | None = None,
        seed: int | None = None, seeds=None, select: bool | None = None, specialist_epochs: int | None = None,
        cluster_temperature: float | None = None, holdout: int | None = None, control: bool = True,
        data=None, progress=True, log=print) -> list[dict]:
    """The experiment (see :mod:`distill.experiments.specialists`). ``seeds`` (or one ``seed``;
    default the preset's) are the full-set runs; ``select``: None chooses on held-out data when the
    preset has a holdout and more than one candidate is left after the explicit settings
    (``n_clusters``, ``overlap_ratio``, 0 = none, ``specialist_epochs``, ``cluster_temperature``),
    True always (the candidates' held-out table even for one), False never (the preset's own setting
    and the explicit ones). ``data``: a ready :class:`~distill.data.Dataset` instead of loading
    ``dataset`` (tests)."""
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
    runner = Runner(out, cache, progress=progress, log=log,
                    title=f"Generalist + specialists on {dataset} (preset {preset})", table=summarize)
    if data is None:
        data = load_data(dataset, p, data_dir=data_dir, log=log)

    if select:
        variant = "hard" if "hard" in variants else variants[0]
        t0 = time.perf_counter()
        best, rows = select_setting(runner, p, data=data, dataset=dataset, cands=cands, variant=variant, seed=0,
                                    split_seed=0, progress=progress, log=log)
        chosen = cands[best]
        runner.add(dict(model="selection", split="heldout", dataset=dataset, holdout=p.holdout, split_seed=0, seed=0,
                        variant=variant, chosen=chosen, chosen_index=best, candidates=rows,
                        wall_seconds=round(time.perf_counter() - t0, 1)))
        log(f"[select] chosen: candidate {best} ({describe_setting(chosen)})")
    else:
        chosen = dict(setting_of(p), **fixed)
    p = with_setting(p, chosen)

    for s in seeds:
        run_seed(runner, p, data=data, dataset=dataset, seed=s, variants=variants, control=control,
                 distill_back=distill_back, distill_back_variant=distill_back_variant, log=log)

    runner.write()
    # the numbers of results.md's seed table and summed Table 4, for scripts
    atomic_write_json(out / "summary.json", dict(seed_summary(runner.records),
                                                 by_coverage_summed=coverage_over_seeds(runner.records)))
    png = plot_gain(runner.records, out / "gain_vs_covering.png")
    if png:
        log(f"wrote {png}")
    log(summarize(runner.records))
    return runner.records

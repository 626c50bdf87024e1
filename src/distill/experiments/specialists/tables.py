"""The specialists experiment's tables and plot: paper Tables 3 and 4 from the result records,
their mean ± std over seeds, the held-out selection's candidates, and the gain-by-coverage chart."""
from __future__ import annotations

from pathlib import Path

from distill.experiments.common import mean_std

PAPER = dict(generalist_top1=25.0, combined_top1=26.1, relative_improvement=4.4)  # JFT, Table 3
#: the goal on double-MNIST: relative error reduction beyond the control, mean of the seeds
GOAL_BEYOND_CONTROL = 0.05


def describe_setting(s: dict) -> str:
    """One candidate setting (a dict over the grid keys) in words."""
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


def stage_table(recs) -> str:
    """The selection's stages: their held-out errors, epochs and wall time."""
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
                out += (f"\nGoal: ≥ {100 * GOAL_BEYOND_CONTROL:.0f} % beyond the control, mean of the "
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
    from distill.tools.plots import pyplot

    plt = pyplot()  # matplotlib on Agg, or a one-line hint when it is not installed

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

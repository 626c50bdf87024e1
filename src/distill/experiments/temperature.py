"""Paper section 3, second paragraph: students of {800, 300, 30} units per layer distilled at
T in {1, 2, 2.5, 4, 8, 20} from the MNIST teacher; test errors against T."""
from __future__ import annotations

from dataclasses import dataclass, replace

from distill.experiments.common import (
    MNIST_PRESETS,
    Runner,
    fmt_mean_std,
    mean_std,
    mnist_student_stages,
    soft_teacher,
    student_set,
    teacher_and_data,
)
from distill.tools.plots import plot_lines

TEMPERATURES = (1.0, 2.0, 2.5, 4.0, 8.0, 20.0)
SIZES = (800, 300, 30)


@dataclass(frozen=True)
class Preset:
    base: str = "paper"               # the MNIST preset (common.MNIST_PRESETS) whose teacher and students we reuse
    sizes: tuple = SIZES
    temperatures: tuple = TEMPERATURES
    student_epochs: int | None = 20
    seeds: int = 1


PRESETS = {
    "paper": Preset(),
    "quick": Preset(base="quick", sizes=(300, 30), temperatures=(1.0, 4.0, 20.0), student_epochs=None),
    "tiny": Preset(base="tiny", sizes=(16,), temperatures=(1.0, 4.0), student_epochs=None),
}


def claims(records: list[dict]) -> list[str]:
    """The paper's two claims, checked on the measured mean errors.

    1. With >= 300 units per layer, all T above 8 give similar results: the errors at T >= 8
       differ by at most 15 % of the best of them (and the best T >= 8 is within 15 % of the best T).
    2. With 30 units, T between 2.5 and 4 works clearly better than higher or lower T: the best
       of T in [2.5, 4] beats the best T outside that band.
    """
    by = _means(records)
    out = []
    big = sorted({h for h, _ in by if h >= 300})
    for h in big:
        hi = {t: e for (hh, t), e in by.items() if hh == h and t >= 8}
        if len(hi) >= 2:
            spread = (max(hi.values()) - min(hi.values())) / min(hi.values())
            verdict = "holds" if spread <= 0.15 else "does not hold"
            out.append(f"{h} units, T ≥ 8 similar: {verdict} (errors {', '.join(f'T={t:g}: {e:.0f}' for t, e in sorted(hi.items()))}; spread {100 * spread:.0f} %)")
    if any(h == 30 for h, _ in by):
        mid = {t: e for (h, t), e in by.items() if h == 30 and 2.5 <= t <= 4}
        rest = {t: e for (h, t), e in by.items() if h == 30 and not 2.5 <= t <= 4}
        if mid and rest:
            bm, br = min(mid.values()), min(rest.values())
            verdict = "holds" if bm < br else "does not hold"
            out.append(f"30 units, T in [2.5, 4] best: {verdict} (best in band {bm:.0f} errors vs {br:.0f} outside, "
                       f"at T={min(rest, key=rest.get):g})")
    return out


def _means(records):
    groups: dict = {}
    for r in records:
        if r["model"] == "student-distilled":
            groups.setdefault((r["hidden"][0], r["temperature"]), []).append(r["test_errors"])
    return {k: mean_std(v)[0] for k, v in groups.items()}


def table(records: list[dict]) -> str:
    groups: dict = {}
    for r in records:
        if r["model"] == "student-distilled":
            groups.setdefault(r["hidden"][0], {}).setdefault(r["temperature"], []).append(r["test_errors"])
    temps = sorted({t for g in groups.values() for t in g})
    lines = ["| units per layer | " + " | ".join(f"T={t:g}" for t in temps) + " |", "|---|" + "---|" * len(temps)]
    for h in sorted(groups, reverse=True):
        lines.append(f"| {h} | " + " | ".join(fmt_mean_std(groups[h][t], 0) if t in groups[h] else ""
                                              for t in temps) + " |")
    teacher = [r["test_errors"] for r in records if r["model"] == "teacher"]
    out = "\n".join(lines) + "\n"
    if teacher:
        out += f"\nTeacher: {teacher[0]} test errors. Cells: test errors of the distilled student (out of 10,000).\n"
    c = claims(records)
    if c:
        out += "\n" + "\n".join(f"- {line}" for line in c) + "\n"
    return out


def run(preset="quick", *, out="runs/temperature", cache=None, data_dir=None, progress=True, log=print):
    p = PRESETS[preset]
    base = MNIST_PRESETS[p.base]
    if p.student_epochs:
        base = replace(base, student=replace(base.student, epochs=p.student_epochs))
    runner = Runner(out, cache, progress=progress, log=log, title=f"Temperature and student size (preset {preset})",
                    table=table)
    data, teacher = teacher_and_data(runner, base, data_dir=data_dir, log=log)
    data = student_set(base, data)
    teacher = soft_teacher(runner, teacher)  # one store of logits serves every T (the stage config sets T)
    for seed in range(p.seeds):
        for h in p.sizes:
            for t in p.temperatures:
                _, dist = mnist_student_stages(base, data, seed=seed, teacher=teacher, temperature=t, hidden=(h, h))
                runner.train(data, dist)
    runner.write()
    means = _means(runner.records)
    series = {f"{h}-{h}": [(t, e) for (hh, t), e in means.items() if hh == h] for h in p.sizes}
    png = plot_lines(series, "temperature T (log scale)", "test errors", "Distilled student errors vs T",
                     f"{out}/temperature_study.png", logx=True)
    log(table(runner.records))
    log(f"wrote {out}/results.json, {out}/results.md and {png}")
    return runner.records


def add_arguments(p) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--out", default="runs/temperature")
    p.add_argument("--cache", help="stage folder shared with `reproduce mnist` (reuses its teacher)")
    p.add_argument("--data-dir")
    p.add_argument("--no-progress", action="store_true")


def main(args):
    return run(args.preset, out=args.out, cache=args.cache, data_dir=args.data_dir, progress=not args.no_progress)

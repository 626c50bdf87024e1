"""Paper section 3 on MNIST: teacher 1200-1200 (dropout, max-norm, jitter), an 800-800 student
on hard labels, and the same student distilled at T = 20 with a small hard-label weight."""
from __future__ import annotations

from distill.experiments.common import (
    MNIST_PRESETS,
    Runner,
    fmt_mean_std,
    gap_closed,
    mean_std,
    mnist_student_stages,
    soft_teacher,
    student_set,
    teacher_and_data,
)

PAPER = {"teacher": 67, "student-hard": 146, "student-distilled": 74}
BLOG_2018 = {"teacher": 101, "student-hard": 196, "student-distilled": 137}
PAPER_GAP_CLOSED = 0.91

#: the presets (teacher, students, T, hard weight, sizes) live in common.MNIST_PRESETS, shared
#: with the experiments that reuse this teacher
PRESETS = MNIST_PRESETS


def summarize(records: list[dict]) -> str:
    """The paper-style table: mean ± std test errors per model beside the paper and the blog."""
    by = {}
    for r in records:
        by.setdefault(r["model"], []).append(r)
    lines = ["| model | test errors (ours) | seeds | paper | blog 2018 | params | wall s / run |",
             "|---|---|---|---|---|---|---|"]
    for name in ("teacher", "student-hard", "student-distilled"):
        rs = by.get(name, [])
        if not rs:
            continue
        errs = [r["test_errors"] for r in rs]
        lines.append(f"| {name} | {fmt_mean_std(errs)} | {len(rs)} | {PAPER[name]} | {BLOG_2018[name]} | "
                     f"{rs[0]['params']:,} | {mean_std([r['wall_seconds'] for r in rs])[0]:.0f} |")
    out = "\n".join(lines) + "\n"
    if all(by.get(k) for k in PAPER):
        t, h, d = (mean_std([r["test_errors"] for r in by[k]])[0] for k in ("teacher", "student-hard",
                                                                               "student-distilled"))
        out += (f"\nGap closed by distillation, (hard − distilled)/(hard − teacher): "
                f"**{100 * gap_closed(t, h, d):.0f} %** (paper: {100 * PAPER_GAP_CLOSED:.0f} %)\n")
    return out


def run(preset: str = "quick", seeds: int | None = None, out="runs/mnist", cache=None, data_dir=None,
        progress=True, log=print) -> list[dict]:
    p = PRESETS[preset]
    seeds = seeds or p.seeds
    runner = Runner(out, cache, progress, log, title=f"MNIST distillation (preset {preset})", table=summarize)
    data, teacher = teacher_and_data(runner, p, data_dir, log)
    students = student_set(p, data)
    teacher = soft_teacher(runner, teacher)  # its logits over the students' set: computed once, kept
    for seed in range(seeds):
        for stage in mnist_student_stages(p, students, seed, teacher):
            runner.train(students, stage)
    runner.write()
    log(summarize(runner.records))
    return runner.records


def add_arguments(p) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--seeds", type=int, help="student seeds (default: the preset's)")
    p.add_argument("--out", default="runs/mnist", help="folder for results.json / results.md")
    p.add_argument("--cache", help="folder of trained stages, shared between experiments (default OUT/stages)")
    p.add_argument("--data-dir")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> list[dict]:
    records = run(args.preset, args.seeds, args.out, args.cache, args.data_dir, not args.no_progress)
    print(f"wrote {args.out}/results.json and {args.out}/results.md")
    return records

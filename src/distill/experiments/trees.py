"""Soft targets regularise any learner: trees on a noisy 2-D problem, and a tiny MNIST student.

Part ``2d``: on a noisy, heavily overlapping two-class problem (scikit-learn's ``make_moons``
with large noise) a 128-128 MLP teacher learns a smooth boundary. An unpruned classification
tree fit to the hard labels memorises the noise; the same unpruned tree grown as a regression
tree on the teacher's class probabilities (:class:`distill.methods.trees.SoftTargetClassifier`) copies
the teacher's boundary instead. Writes ``decision_boundaries.png`` (teacher, hard tree, soft tree).

Part ``mnist``: a CNN teacher (32 3x3 filters, two fully connected layers of 1200 with
dropout) and an MLP student with two hidden layers of only 10 units, trained on hard labels
and on the teacher's soft targets. The temperature is chosen on a held-out part of the
*training* set (never the test set), then every student trains on the whole training set.

Reference numbers are those of the "neural-network-distillation" write-up (2-D: teacher 90 %,
hard tree 86.5 %, soft tree 90 %; MNIST: teacher 97.5 %, hard 86.3 %, soft 93.0 %).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from distill.checks import add_number_flag
from distill.methods import tuning as tuning
from distill.data import Dataset
from distill.errors import DistillError
from distill.experiments.common import Runner, Stage, fmt_mean_std, mean_std
from distill.metrics import predict_logits
from distill.models.classifiers import CNN, MLP
from distill.teachers.teacher import Teacher
from distill.train.config import TrainConfig
from distill.tools.plots import pyplot, save_figure

REFERENCE_2D = {"teacher": 90.0, "tree-hard": 86.5, "tree-soft": 90.0}
REFERENCE_MNIST = {"cnn-teacher": (97.5, 248), "student-hard": (86.3, 1366), "student-distilled": (93.0, 696)}
PARTS = ("2d", "mnist")


@dataclass(frozen=True)
class Preset:
    # -- part 2d: make_moons(n_samples, noise), half for training, half for testing --------------
    n_samples: int = 3000
    noise: float = 0.3
    mlp_hidden: tuple = (128, 128)
    mlp: TrainConfig = TrainConfig(epochs=60, batch_size=64, lr=0.1, momentum=0.9, schedule="cosine")
    tree_temperature: float = 1.0  # the soft tree learns the teacher's ordinary (T = 1) probabilities
    seeds_2d: int = 5
    # -- part mnist ------------------------------------------------------------------------------
    cnn_channels: int = 32
    cnn_hidden: tuple = (1200, 1200)
    cnn_dropout: float = 0.5
    cnn: TrainConfig = TrainConfig(epochs=1, batch_size=128, lr=0.05, momentum=0.9, schedule="cosine")
    student_hidden: tuple = (10, 10)
    # lr 0.03: at lr 0.1 the 10-10 student trained at T = 4 diverges (the soft term carries T² = 16)
    student: TrainConfig = TrainConfig(epochs=20, batch_size=128, lr=0.03, momentum=0.9, schedule="cosine")
    temperatures: tuple = (1.0, 2.0, 3.0, 4.0)  # candidates, chosen on the held-out part of the training set
    hard_weight: float = 0.1
    holdout: int = 10000
    train_size: int | None = None
    test_size: int | None = None
    seeds_mnist: int = 3


PRESETS = {
    # about 6.5 minutes of CPU time at one thread (measured), over half of it the CNN teacher:
    # one epoch of 60,000 images and its logits over the training set
    "paper": Preset(),
    # a few minutes: fewer points and seeds, MNIST on a 10,000-example training subset
    "quick": Preset(n_samples=1500, mlp=TrainConfig(epochs=40, batch_size=64, lr=0.1), seeds_2d=2,
                    cnn=TrainConfig(epochs=3, batch_size=128, lr=0.05, momentum=0.9, schedule="cosine"),
                    student=TrainConfig(epochs=10, lr=0.03), temperatures=(1.0, 3.0), holdout=2000,
                    train_size=10000, test_size=5000, seeds_mnist=1),
    # the same code path in seconds; used by the tests
    "tiny": Preset(n_samples=300, mlp=TrainConfig(epochs=5, batch_size=64, lr=0.1), seeds_2d=2,
                   cnn_channels=4, cnn_hidden=(32, 32), student=TrainConfig(epochs=2, lr=0.1),
                   temperatures=(2.0, 4.0), holdout=200, train_size=1000, test_size=500, seeds_mnist=1),
}


# ---------------------------------------------------------------------------------- part 2d
def moons_data(n_samples: int, noise: float, seed: int) -> Dataset:
    """``make_moons(n_samples, noise, random_state=seed)``, split half/half (stratified, seeded)
    and standardised with the training half's mean and standard deviation."""
    from sklearn.datasets import make_moons
    from sklearn.model_selection import train_test_split

    X, y = make_moons(n_samples, noise=noise, random_state=seed)
    xtr, xte, ytr, yte = train_test_split(X, y, test_size=0.5, random_state=seed, stratify=y)
    mu, sd = xtr.mean(0), xtr.std(0)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    h = hashlib.sha256()
    for a in (xtr, ytr, xte, yte):
        h.update(np.ascontiguousarray(a).tobytes())
    f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return Dataset(name=f"moons(n={n_samples}, noise={noise}, seed={seed})", x_train=f32(xtr),
                   y_train=torch.as_tensor(ytr, dtype=torch.int64), x_test=f32(xte),
                   y_test=torch.as_tensor(yte, dtype=torch.int64), classes=("0", "1"),
                   fingerprint=f"moons-{h.hexdigest()[:16]}", image_shape=None)


def _tree_record(name, *, seed, tree, X, y, teacher_pred, wall, temperature) -> dict:
    from distill.methods.trees import count_nodes

    pred = tree.predict(X)
    errors = int((pred != y).sum())
    reg = getattr(tree, "regressor_", tree)
    return dict(model=name, seed=seed, test_errors=errors, test_accuracy=1.0 - errors / len(y),
                wall_seconds=round(wall, 3), params=count_nodes(reg), leaves=int(reg.get_n_leaves()),
                depth=int(reg.get_depth()), temperature=temperature, part="2d",
                teacher_agreement=float((pred == teacher_pred).mean()))


def run_2d(runner: Runner, p: Preset, *, seed: int, plot: Path | None = None, log=print) -> list[dict]:
    """Teacher MLP, hard tree and soft tree on one seed of the 2-D problem (data and teacher
    seeded alike); with ``plot`` also draws their decision boundaries there."""
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    from distill.methods.trees import SoftTargetClassifier

    data = moons_data(p.n_samples, p.noise, seed)
    stage = Stage("teacher", lambda: MLP(2, p.mlp_hidden, 2), replace(p.mlp, seed=seed),
                  extra=dict(part="2d", hidden=list(p.mlp_hidden)))
    res = runner.train(data, stage)
    teacher = res.model.eval()
    Xtr, ytr = data.x_train.double().numpy(), data.y_train.numpy()
    Xte, yte = data.x_test.double().numpy(), data.y_test.numpy()
    teacher_pred = predict_logits(teacher, data.x_test).argmax(1).numpy()

    t0 = time.perf_counter()
    hard = DecisionTreeClassifier(random_state=seed).fit(Xtr, ytr)
    rec_hard = _tree_record("tree-hard", seed=seed, tree=hard, X=Xte, y=yte, teacher_pred=teacher_pred,
                            wall=time.perf_counter() - t0, temperature=None)
    t0 = time.perf_counter()
    # the regression tree on the teacher's probabilities softmax(v / T) over the training inputs
    soft = SoftTargetClassifier(DecisionTreeRegressor(random_state=seed),
                                temperature=p.tree_temperature).fit(Xtr, teacher=teacher)
    rec_soft = _tree_record("tree-soft", seed=seed, tree=soft, X=Xte, y=yte, teacher_pred=teacher_pred,
                            wall=time.perf_counter() - t0, temperature=p.tree_temperature)
    for rec in (rec_hard, rec_soft):
        log(f"[{rec['model']}] seed {seed}: {rec['test_errors']} test errors ({100 * rec['test_accuracy']:.2f}%), "
            f"{rec['params']} nodes, agrees with the teacher on {100 * rec['teacher_agreement']:.1f}%")
        runner.add(rec)
    if plot is not None:
        teacher_acc = runner.records[-3]["test_accuracy"]
        plot_decision_boundaries(teacher, hard, soft, X=Xtr, y=ytr, out=plot, accuracies=(
            teacher_acc, rec_hard["test_accuracy"], rec_soft["test_accuracy"]),
            nodes=(rec_hard["params"], rec_soft["params"]), hidden=p.mlp_hidden)
        log(f"wrote {plot}")
    return runner.records[-3:]


def plot_decision_boundaries(teacher, hard, soft, *, X, y, out, accuracies, nodes, hidden=(128, 128),
                             resolution: int = 300) -> Path:
    """Three panels: P(class 1) of the teacher, the hard tree and the soft tree over a grid
    (shaded), their decision boundary (P = 0.5, black) and the training points."""
    lo, hi = X.min(0) - 0.3, X.max(0) + 0.3
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution))
    grid = np.c_[gx.ravel(), gy.ravel()]
    p_teacher = torch.softmax(predict_logits(teacher, torch.as_tensor(grid, dtype=torch.float32)), 1)[:, 1].numpy()
    panels = [
        (f"teacher: MLP {'-'.join(map(str, hidden))}\ntest accuracy {100 * accuracies[0]:.1f}%", p_teacher),
        (f"tree on hard labels ({nodes[0]} nodes)\ntest accuracy {100 * accuracies[1]:.1f}%",
         hard.predict_proba(grid)[:, 1]),
        (f"tree on the teacher's probabilities ({nodes[1]} nodes)\ntest accuracy {100 * accuracies[2]:.1f}%",
         soft.predict_proba(grid)[:, 1]),
    ]
    fig, axes = pyplot().subplots(1, 3, figsize=(15, 5), sharex=True, sharey=True)
    for ax, (title, z) in zip(axes, panels):
        z = z.reshape(gx.shape)
        ax.contourf(gx, gy, z, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.45, vmin=0, vmax=1)
        ax.contour(gx, gy, z, levels=[0.5], colors="k", linewidths=1.2)
        for cls, color in ((0, "#1f3f8f"), (1, "#a01c1c")):
            m = y == cls
            ax.scatter(X[m, 0], X[m, 1], c=color, s=7, edgecolors="white", linewidths=0.3, alpha=0.9,
                       label=f"class {cls}")
        ax.set_title(title)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Decision boundaries on a noisy two-moons problem (training points shown)")
    fig.tight_layout()
    return save_figure(fig, out)


# ---------------------------------------------------------------------------------- part mnist
def load_mnist_data(p: Preset, data_dir=None, log=print):
    from distill.data import load_mnist

    data = load_mnist(data_dir, log=log)
    if p.train_size or p.test_size:
        data = data.subset(train=p.train_size, test=p.test_size)
    return data


def run_mnist(runner: Runner, p: Preset, *, seeds: int, data_dir=None, temperature: float | None = None,
              progress=True, log=print) -> list[dict]:
    data = load_mnist_data(p, data_dir, log)
    teacher_stage = Stage(
        "cnn-teacher", lambda: CNN(data.image_shape, p.cnn_channels, p.cnn_hidden, data.num_classes,
                                   dropout_hidden=p.cnn_dropout),
        replace(p.cnn, seed=0),
        extra=dict(part="mnist", hidden=list(p.cnn_hidden), channels=p.cnn_channels))
    res = runner.train(data, teacher_stage)
    # its logits over each training set are computed once, in the soft-target store of the stage cache
    teacher = Teacher(res.model, store=runner.cache / "soft-targets")
    extra = dict(part="mnist", hidden=list(p.student_hidden))

    def build():
        return MLP(data.num_features, p.student_hidden, data.num_classes)

    distill_config = replace(p.student, hard_weight=p.hard_weight)
    if temperature is None:
        temperature = choose_temperature(runner, p, data=data, build=build, config=distill_config, teacher=teacher,
                                         extra=extra, progress=progress, log=log)
    teacher_test = predict_logits(res.model, data.x_test, batch_size=1000).argmax(1)

    def with_diagnostics(fit_result):
        """Add the student's training-set accuracy (how far it under-fits) and its agreement
        with the teacher on the test set to the record just written."""
        rec = runner.records[-1]
        student = fit_result.model
        rec["train_accuracy"] = float((predict_logits(student, data.x_train).argmax(1) == data.y_train)
                                      .float().mean())
        rec["teacher_agreement"] = float((predict_logits(student, data.x_test).argmax(1) == teacher_test)
                                         .float().mean())
        runner.write()

    for seed in range(seeds):
        with_diagnostics(runner.train(data, Stage("student-hard", build, replace(p.student, seed=seed),
                                                  extra=extra)))
        with_diagnostics(runner.train(data, Stage("student-distilled", build,
                                                  replace(distill_config, seed=seed, temperature=temperature),
                                                  teacher=teacher, extra=extra)))
    return [r for r in runner.records if r.get("part") == "mnist"]


def choose_temperature(runner: Runner, p: Preset, *, data, build, config, teacher, extra, progress=True,
                       log=print) -> float:
    """:func:`distill.methods.tuning.tune_temperature` over the preset's candidates: the distilled student
    (seed 0) trained on the training set minus ``p.holdout`` examples, the temperature with the
    fewest errors on those held-out TRAINING examples (the test set is never read). The records go
    to ``OUT/tuning/results.{json,md}``."""
    tuner = Runner(runner.out / "tuning", runner.cache, progress=progress, log=log,
                   title=f"Temperature choice: distilled {'-'.join(map(str, p.student_hidden))} student, "
                         f"errors on {p.holdout} held-out TRAINING examples (the test set is not used)")

    def fit_fn(name, tune_data, build, config, teacher, extra):
        # "test" in this runner's log lines means the held-out training examples
        return tuner.train(tune_data, Stage(name, build, config, teacher, extra))

    choice = tuning.tune_temperature(build, data, replace(config, seed=0), teacher, p.temperatures,
                                     holdout=p.holdout, fit_fn=fit_fn, name="heldout-student-distilled",
                                     extra=extra)
    for r in tuner.records:
        r["held_out_errors"] = r.pop("test_errors")
        r["held_out_accuracy"] = r.pop("test_accuracy")
        r.pop("test_nll", None)
    tuner.table = lambda recs: _tuning_table(recs, choice.temperature)
    tuner.write()
    runner.tuning = tuner.records
    best = next(c for c in choice.candidates if c["temperature"] == choice.temperature)
    log(f"[tune] temperature {choice.temperature:g} ({best['held_out_errors']} held-out errors of {p.holdout})")
    return choice.temperature


def _tuning_table(records, chosen) -> str:
    lines = ["| temperature | held-out errors | held-out accuracy % |", "|---|---|---|"]
    for r in sorted(records, key=lambda r: r["temperature"]):
        mark = " (chosen)" if r["temperature"] == chosen else ""
        lines.append(f"| {r['temperature']:g}{mark} | {r['held_out_errors']} | {100 * r['held_out_accuracy']:.2f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- tables
def _percent(records, key, digits) -> str:
    """Mean ± std of ``100 * r[key]`` over the records that have it ("–" if none does yet)."""
    values = [100 * r[key] for r in records if r.get(key) is not None]
    return fmt_mean_std(values, digits) if values else "–"


def summarize(records: list[dict], tuning: list[dict] | None = None) -> str:
    """Mean ± std per model beside the write-up's numbers, and the goals."""
    by: dict = {}
    for r in records:
        by.setdefault((r.get("part"), r["model"]), []).append(r)
    acc = lambda rs: [100 * r["test_accuracy"] for r in rs]  # noqa: E731
    out = []
    if any(k[0] == "2d" for k in by):
        out += ["## Noisy two-moons (2-D)", "",
                "| model | test accuracy % (mean ± std) | seeds | write-up % | size | agrees with teacher % |",
                "|---|---|---|---|---|---|"]
        for name in ("teacher", "tree-hard", "tree-soft"):
            rs = by.get(("2d", name), [])
            if rs:
                size = (f"{rs[0]['params']:,} params" if name == "teacher"
                        else f"{fmt_mean_std([r['params'] for r in rs], 0)} nodes")
                agree = _percent(rs, "teacher_agreement", 1)
                out.append(f"| {name} | {fmt_mean_std(acc(rs))} | {len(rs)} | {REFERENCE_2D[name]:.1f} | {size} | {agree} |")
        t, h, s = (by.get(("2d", k)) for k in ("teacher", "tree-hard", "tree-soft"))
        if t and h and s:
            mt, mh, ms = (mean_std(acc(x))[0] for x in (t, h, s))
            out += ["", f"Soft tree − teacher: **{ms - mt:+.2f}** points (goal: within 1); soft tree − hard tree: "
                        f"**{ms - mh:+.2f}** points (goal: > 0)."]
        out.append("")
    if any(k[0] == "mnist" for k in by):
        out += ["## MNIST: tiny student (784-10-10-10) and a CNN teacher", "",
                "| model | test accuracy % (mean ± std) | test errors | seeds | write-up % (errors) | params | T "
                "| train accuracy % | agrees with teacher % |",
                "|---|---|---|---|---|---|---|---|---|"]
        for name in ("cnn-teacher", "student-hard", "student-distilled"):
            rs = by.get(("mnist", name), [])
            if rs:
                ref = REFERENCE_MNIST[name]
                temp = rs[0].get("temperature")
                train, agree = _percent(rs, "train_accuracy", 2), _percent(rs, "teacher_agreement", 2)
                out.append(f"| {name} | {fmt_mean_std(acc(rs), 2)} | {fmt_mean_std([r['test_errors'] for r in rs], 0)} | "
                           f"{len(rs)} | {ref[0]:.1f} ({ref[1]:,}) | {rs[0]['params']:,} | "
                           f"{'' if temp is None else f'{temp:g}'} | {train} | {agree} |")
        h, d = by.get(("mnist", "student-hard")), by.get(("mnist", "student-distilled"))
        if h and d:
            diff = mean_std(acc(d))[0] - mean_std(acc(h))[0]
            out += ["", f"Distilled − hard-label student: **{diff:+.2f}** points (goal: ≥ 5; write-up: +6.7)."]
        if tuning:
            out += ["", "Temperature chosen on held-out training examples: "
                    + ", ".join(f"T = {r['temperature']:g}: {r['held_out_errors']} errors" for r in
                                sorted(tuning, key=lambda r: r["temperature"]))
                    + " (of the training set's held-out part; see tuning/results.md)."]
        out.append("")
    return "\n".join(out)


def run(preset: str = "quick", *, parts=PARTS, seeds: int | None = None, out="runs/trees", cache=None,
        data_dir=None, temperature: float | None = None, progress=True, log=print) -> list[dict]:
    if preset not in PRESETS:
        raise DistillError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise DistillError(f"unknown part(s) {sorted(unknown)}; choose from {PARTS}")
    runner = Runner(out, cache, progress=progress, log=log,
                    title=f"Soft targets beyond neural students (preset {preset})")
    runner.tuning = None
    runner.table = lambda recs: summarize(recs, runner.tuning)
    if "2d" in parts:
        for seed in range(seeds or p.seeds_2d):
            run_2d(runner, p, seed=seed, plot=Path(out) / "decision_boundaries.png" if seed == 0 else None, log=log)
    if "mnist" in parts:
        run_mnist(runner, p, seeds=seeds or p.seeds_mnist, data_dir=data_dir, temperature=temperature,
                  progress=progress, log=log)
    runner.write()
    log(summarize(runner.records, runner.tuning))
    return runner.records


def add_arguments(parser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--part", choices=["all", *PARTS], default="all", help="run one part only")
    add_number_flag(parser, "--seeds", help="seeds per part (default: the preset's)", integer=True, minimum=1)
    add_number_flag(parser, "--temperature", positive=True,
                    help="distillation temperature for the MNIST student (default: chosen on held-out "
                         "training examples among the preset's candidates)")
    parser.add_argument("--out", default="runs/trees", help="folder for results.json / results.md / the PNG")
    parser.add_argument("--cache", help="folder of trained stages (default OUT/stages)")
    parser.add_argument("--data-dir")
    parser.add_argument("--no-progress", action="store_true")


def main(args) -> list[dict]:
    parts = PARTS if args.part == "all" else (args.part,)
    records = run(args.preset, parts=parts, seeds=args.seeds, out=args.out, cache=args.cache, data_dir=args.data_dir,
                  temperature=args.temperature, progress=not args.no_progress)
    print(f"wrote {args.out}/results.json, {args.out}/results.md"
          + (f" and {args.out}/decision_boundaries.png" if "2d" in parts else ""))
    return records

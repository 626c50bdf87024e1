"""A teacher that adds knowledge: an ensemble of residual CNNs (global pooling, trained with shifts,
rotations and scaling) distilled into an 800-800 MLP and into a small CNN, against controls
trained on hard labels with the same augmentation.

Rows (each student sees the same training subset, epochs, batch size and augmentation):

* ``mlp-hard-aug``    (a) the 800-800 MLP on hard labels + the augmentation: the control;
* ``mlp-kd``          (b) the MLP, Hinton KD from the CNN ensemble (``Distillation(T, hard_weight=0.1)``);
* ``mlp-consistent``  (c) the MLP, consistent teaching (function matching: pure KL at T = 1 on the
                      same augmented batch) with a patient schedule (``consistent_epochs``);
* ``mlp-hard-long``   (a') the control at (c)'s epochs: how much of (c)'s gain the longer schedule
                      alone gives;
* ``cnn-hard-aug``    (d) a small ResNet student (at most a tenth of a teacher member's parameters)
                      on hard labels + the augmentation;
* ``cnn-kd``          (e) the same student, logit KD;
* ``cnn-kd-features`` (f) logit KD (e's setting) + FitNets' hint or attention transfer between the
                      student's and the first member's ``layer3`` (chosen on validation);
* ``cnn-relational``  (g) logit KD (e's setting) + relational KD on the pooled embeddings.

The teacher on every batch (the augmentation changes every batch, and the feature rows read its
``members.0`` activations); the members are combined by the arithmetic mean of their softened
distributions (:class:`distill.teachers.teacher.Ensemble`).

How settings are chosen: ``val_size`` examples are held out of the training set before anything
trains (:func:`distill.methods.tuning.holdout_split`, seeded); the members and every student never
see them. Every candidate of a row's grid trains with seed 0 and is scored by its errors on them
(the first of equals in grid order); the chosen setting trains with the reported seeds (1, 2, 3),
whose test errors make the table; the test set chooses nothing. Each record keeps its per-epoch
test errors (``test_curve``) for the plot.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from distill import data as D
from distill.checks import check_number
from distill.data.augment import Augment
from distill.experiments.common import VERSUS_NOTE, Runner, Stage, add_image_experiment_arguments, choices_table, \
    fmt_mean_std, holdout_sets, mean_std, paired, versus
from distill.losses.objectives import Distillation, FeatureDistillation
from distill.metrics import classification_metrics, predict_logits
from distill.models.classifiers import MLP, ResNet, count_params
from distill.teachers.teacher import Ensemble, Teacher
from distill.tools.plots import pyplot, save_figure
from distill.train.config import TrainConfig
from distill.train.divergence import TrainingDiverged
from distill.train.recipes import CNN_TEACHER

ROWS = ("mlp-hard-aug", "mlp-kd", "mlp-consistent", "mlp-hard-long", "cnn-hard-aug", "cnn-kd", "cnn-kd-features", "cnn-relational")
LABELS = {"mlp-hard-aug": "(a) MLP, hard labels + augmentation (control)",
          "mlp-kd": "(b) MLP, Hinton KD from the CNN ensemble",
          "mlp-consistent": "(c) MLP, consistent teaching (patient)",
          "mlp-hard-long": "(a') MLP, hard labels + augmentation, (c)'s epochs",
          "cnn-hard-aug": "(d) small CNN, hard labels + augmentation",
          "cnn-kd": "(e) small CNN, logit KD",
          "cnn-kd-features": "(f) small CNN, logit KD + features",
          "cnn-relational": "(g) small CNN, logit KD + relational KD"}
SHORT = {"mlp-hard-aug": "(a) MLP\nhard+aug", "mlp-kd": "(b) MLP\nKD", "mlp-consistent": "(c) MLP\nconsistent",
         "mlp-hard-long": "(a') MLP\nhard, (c)'s epochs",
         "cnn-hard-aug": "(d) CNN\nhard+aug", "cnn-kd": "(e) CNN\nKD", "cnn-kd-features": "(f) CNN\nKD+feat.",
         "cnn-relational": "(g) CNN\nKD+RKD"}
#: the rows without a teacher, and the rows that reuse (e)'s logit setting
HARD = ("mlp-hard-aug", "mlp-hard-long", "cnn-hard-aug")
ON_KD = ("cnn-kd-features", "cnn-relational")
#: goals of the issue: the MLP distilled from the CNN ensemble makes at most this many MNIST test errors,
#: and the teacher (a member / the ensemble) at most these
GOAL_MLP_MNIST = 55
GOAL_TEACHER_MNIST, GOAL_ENSEMBLE_MNIST = 30, 25


@dataclass(frozen=True)
class Preset:
    """Sizes, budgets and grids. ``grids[row]`` lists the candidate settings tried on the held-out
    split; the hard-label rows choose ``lr``, the KD rows ``T``, (f) the feature loss and its layer."""

    teacher_width: int = CNN_TEACHER.width
    teacher_depth: int = CNN_TEACHER.depth
    members: int = CNN_TEACHER.members
    teacher: TrainConfig = CNN_TEACHER.config
    mlp_hidden: tuple = (800, 800)
    cnn_width: int = 4  # the small student's ResNet width (a tenth of a width-16 member's parameters)
    cnn_depth: int = 1
    student: TrainConfig = TrainConfig(epochs=60, lr=0.1, momentum=0.9, schedule="cosine", augment=Augment(shift=2))
    kd_lr: float = 0.05
    consistent_epochs: int = 120  # function matching wants a patient schedule
    val_size: int = 5000
    split_seed: int = 0
    train_size: int | None = None
    student_train_size: int | None = None
    seeds: tuple = (1, 2, 3)
    grids: dict = field(default_factory=lambda: {
        "mlp-hard-aug": [dict(lr=0.1), dict(lr=0.03)],
        "mlp-kd": [dict(T=2.0), dict(T=4.0)],
        "mlp-consistent": [dict(T=1.0, lr=0.1)],
        "mlp-hard-long": [dict(lr=0.1), dict(lr=0.03)],
        "cnn-hard-aug": [dict(lr=0.1), dict(lr=0.03)],
        "cnn-kd": [dict(T=2.0), dict(T=4.0)],
        "cnn-kd-features": [dict(loss="hint", weight=1.0), dict(loss="attention", weight=100.0)],
        "cnn-relational": [dict(loss="relational", weight=1.0)],
    })

    def check(self) -> "Preset":
        student = ResNet(1, 10, self.cnn_width, self.cnn_depth)
        member = ResNet(1, 10, self.teacher_width, self.teacher_depth)
        if 10 * count_params(student) > count_params(member):
            raise ValueError(f"the small CNN student ({count_params(student):,} parameters) must have at most a tenth "
                             f"of a teacher member's ({count_params(member):,})")
        return self


PRESETS = {
    # the scale: 5 members of 30 epochs on 55,000 images, 60-epoch students on all of them
    # (consistent teaching 120); many hours on 2 CPU cores, not run here
    "paper": Preset(),
    # 3 members of 6 epochs on 55,000 images, students of 10 epochs (15 for consistent teaching) on a
    # 10,000-image subset: measured at one thread per process, about 7.5 minutes a member, 0.6 (MLP) to 2
    # (CNN) minutes a hard-label student and 4-6.5 a student with the teacher on every batch: about 2.3
    # hours of one core in all (two processes sharing a --cache split it, e.g. --rows of the MLP and the CNN)
    "quick": Preset(members=3, teacher=replace(CNN_TEACHER.config, epochs=6),
                    student=TrainConfig(epochs=10, lr=0.1, momentum=0.9, schedule="cosine", augment=Augment(shift=2)),
                    consistent_epochs=15, student_train_size=10000),
    # the same code path in seconds (tests)
    "tiny": Preset(members=2, teacher_width=8, teacher=replace(CNN_TEACHER.config, epochs=2), mlp_hidden=(32, 32),
                   cnn_width=2, student=TrainConfig(epochs=2, lr=0.1, augment=Augment(shift=1)), consistent_epochs=3,
                   val_size=100, seeds=(1,),
                   grids={"mlp-hard-aug": [dict(lr=0.1)], "mlp-kd": [dict(T=2.0), dict(T=4.0)],
                          "mlp-consistent": [dict(T=1.0, lr=0.1)], "mlp-hard-long": [dict(lr=0.1)],
                          "cnn-hard-aug": [dict(lr=0.1)],
                          "cnn-kd": [dict(T=2.0)],
                          "cnn-kd-features": [dict(loss="hint", weight=1.0), dict(loss="attention", weight=100.0)],
                          "cnn-relational": [dict(loss="relational", weight=1.0)]}),
}

#: the student module and the teacher's (``members.0`` of the ensemble) each feature loss reads
FEATURE_AT = {"hint": ("layer3", "members.0.layer3"), "attention": ("layer3", "members.0.layer3"),
              "relational": ("pool", "members.0.pool")}


def setting_label(s: dict) -> str:
    """A short, file-name-safe name of a candidate setting."""
    return "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in s.items()) or "default"


def row_config(p: Preset, row: str, s: dict, kd: dict | None = None, flip: bool = False) -> TrainConfig:
    """The training config of ``row`` under candidate ``s``; ``kd`` is (e)'s chosen setting, on
    which the feature rows build (see the module docstring)."""
    base = p.student if not flip else replace(p.student, augment=replace(p.student.augment, flip=True))
    if row in HARD:
        return replace(base, lr=s["lr"], epochs=p.consistent_epochs if row == "mlp-hard-long" else base.epochs)
    if row in ("mlp-kd", "cnn-kd"):
        return replace(base, lr=p.kd_lr, objective=Distillation(s["T"], hard_weight=0.1))
    if row == "mlp-consistent":
        return replace(base, lr=s["lr"], epochs=p.consistent_epochs, objective=Distillation(s["T"], hard_weight=0.0))
    if row in ON_KD:
        if kd is None:
            raise ValueError(f"{row} builds on cnn-kd's setting; choose that first")
        student_path, teacher_path = FEATURE_AT[s["loss"]]
        return replace(base, lr=p.kd_lr, objective=FeatureDistillation(
            Distillation(kd["T"], hard_weight=0.1), [(student_path, teacher_path, s["loss"], s["weight"])]))
    raise ValueError(f"unknown row {row!r}; choose one of {ROWS}")


def summarize(records: list[dict]) -> str:
    """The teacher (members, ensemble), the rows' test errors over the final seeds against their
    controls, and the validation choices."""
    members = [r for r in records if r.get("role") == "member"]
    ens = [r for r in records if r.get("role") == "ensemble"]
    final = [r for r in records if r.get("role") == "final"]
    select = [r for r in records if r.get("role") == "select"]
    out = []
    if members:
        errs = [r["test_errors"] for r in members]
        out.append(f"Teacher: {len(members)} ResNet members ({members[0]['params']:,} parameters each), test errors "
                   f"{' / '.join(map(str, errs))} ({fmt_mean_std(errs)}), {sum(r['wall_seconds'] for r in members):.0f} s"
                   + (f"; their ensemble: **{ens[0]['test_errors']}** test errors (validation "
                      f"{ens[0]['val_errors']})" if ens else "") + ".\n")
    by = {}
    for r in final:
        by.setdefault(r["row"], []).append(r)
    control = {"mlp": [r["test_errors"] for r in by.get("mlp-hard-aug", [])],
               "cnn": [r["test_errors"] for r in by.get("cnn-hard-aug", [])]}
    logit = [r["test_errors"] for r in by.get("cnn-kd", [])]
    long = [r["test_errors"] for r in by.get("mlp-hard-long", [])]
    lines = ["| row | setting (chosen on validation) | params | epochs | test errors, mean ± std | per seed | "
             "vs its control | wall s / run |", "|---|---|---:|---:|---|---|---|---:|"]
    for row in ROWS:
        rs = by.get(row, [])
        if not rs:
            continue
        errs = [r["test_errors"] for r in rs]
        ref = control[row.split("-")[0]]
        parts = [] if row in HARD or not ref else [versus(errs, ref)]
        if row in ON_KD and logit:
            parts.append(f"vs (e): {versus(errs, logit)}, {paired(errs, logit)}".rstrip(", "))
        if row == "mlp-consistent" and long:
            parts.append(f"vs (a'), the same epochs: {versus(errs, long)}, {paired(errs, long)}".rstrip(", "))
        delta = "; ".join(parts)
        lines.append(f"| {LABELS[row]} | {rs[0]['setting']} | {rs[0]['params']:,} | {rs[0]['epochs']} | "
                     f"{fmt_mean_std(errs)} | {' / '.join(map(str, errs))} | {delta} | "
                     f"{mean_std([r['wall_seconds'] for r in rs])[0]:.0f} |")
    out.append("\n".join(lines) + "\n")
    out.append(VERSUS_NOTE)
    if select:
        out.append(choices_table(select, final, "row", LABELS, "row"))
    return "\n".join(out)


def plot(records: list[dict], out, title: str = "") -> None:
    """Test errors per epoch of every row (mean over the final seeds), the ensemble as a line."""
    final = [r for r in records if r.get("role") == "final" and r.get("test_curve")]
    if not final:
        return
    fig, ax = pyplot().subplots(figsize=(7.5, 4.2))
    for row in ROWS:
        curves = [r["test_curve"] for r in final if r["row"] == row]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        mean = [sum(c[i] for c in curves) / len(curves) for i in range(n)]
        ax.plot(range(1, n + 1), mean, label=SHORT[row].replace("\n", " "),
                ls="-" if row.startswith("mlp") else "--")
    ens = [r for r in records if r.get("role") == "ensemble"]
    if ens:
        ax.axhline(ens[0]["test_errors"], color="black", ls=":", label="teacher ensemble")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test errors (mean over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, out)


def run(dataset: str = "mnist", preset: str = "quick", *, out="runs/teacher-gap", cache=None, data_dir=None,
        progress=True, log=print, seeds=None, rows=None, data=None) -> list[dict]:
    """The experiment (module docstring). ``rows``: only these rows (the ones they build on are
    chosen too); ``data``: a distill Dataset to use instead of ``dataset``."""
    p = PRESETS[preset].check()
    if seeds is not None:
        p = replace(p, seeds=tuple(range(1, check_number("--seeds", seeds, minimum=1, integer=True) + 1)))
    wanted = tuple(rows or ROWS)
    if any(r in ON_KD for r in wanted) and "cnn-kd" not in wanted:
        wanted = wanted + ("cnn-kd",)
    full = data if data is not None else D.load(dataset, data_dir, log=log)
    if full.image_shape is None:
        raise ValueError(f"{full.name} has no image shape; the CNN teacher needs images")
    flip = dataset == "fashion-mnist"  # mirrored clothes are clothes; mirrored digits are not digits
    runner = Runner(out, cache, progress=progress, log=log,
                    title=f"A teacher that adds knowledge, {full.name} (preset {preset})", table=summarize)
    rest, val, students = holdout_sets(full, p)
    log(f"[teacher-gap] {len(val[1])} validation examples held out of the training set; teacher members on "
        f"{len(rest.y_train)}, students on {len(students.y_train)}")
    shape = tuple(full.image_shape[-2:])
    channels = full.num_features // (shape[0] * shape[1])

    # channels-last weights: the convolutions train 1.3-1.5x faster on the CPU (checkpoints are saved contiguous)
    def build_member():
        return ResNet(channels, full.num_classes, p.teacher_width, p.teacher_depth,
                      image_shape=shape).to(memory_format=torch.channels_last)

    teacher_cfg = p.teacher if not flip else replace(p.teacher, augment=replace(p.teacher.augment, flip=True))
    members = []
    for i in range(p.members):
        res = runner.train(rest, Stage(f"member-{i}", build_member, replace(teacher_cfg, seed=i),
                                       extra=dict(role="member", width=p.teacher_width, depth=p.teacher_depth)),
                           val=val)
        members.append(res.model.eval())
    t0 = time.perf_counter()
    ensemble = Ensemble(members).eval()
    m_test = classification_metrics(predict_logits(ensemble, full.x_test), full.y_test)
    m_val = classification_metrics(predict_logits(ensemble, val[0]), val[1])
    runner.add(dict(model="ensemble", role="ensemble", seed=None, members=p.members, test_errors=m_test["errors"],
                    test_accuracy=m_test["accuracy"], test_nll=m_test["nll"], val_errors=m_val["errors"],
                    params=sum(count_params(m) for m in members), wall_seconds=round(time.perf_counter() - t0, 2)))
    log(f"[teacher-gap] ensemble of {p.members}: {m_test['errors']} test errors, {m_val['errors']} validation errors")
    teacher = Teacher(ensemble)

    def build_mlp():
        return MLP(full.num_features, p.mlp_hidden, full.num_classes)

    def build_cnn():
        return ResNet(channels, full.num_classes, p.cnn_width, p.cnn_depth,
                      image_shape=shape).to(memory_format=torch.channels_last)

    def train(row, s, seed, role, kd=None):
        cfg = replace(row_config(p, row, s, kd, flip), seed=seed)
        label = setting_label(s)
        stage = Stage(f"{row}-{label}", build_mlp if row.startswith("mlp") else build_cnn, cfg,
                      teacher=None if row in HARD else teacher,
                      extra=dict(role=role, row=row, setting=label, choice=dict(s)))
        try:
            res = runner.train(students, stage, val=val)
        except TrainingDiverged as e:
            log(f"[teacher-gap] {stage.name} seed {seed} diverged: {e}")
            runner.add(dict(model=stage.name, seed=seed, diverged=True, **stage.extra))
            if role == "final":
                raise
            return None
        runner.records[-1]["test_curve"] = [h["test_errors"] for h in res.history if "test_errors" in h]
        runner.write()
        return res

    chosen = {}
    for row in ROWS:
        if row not in wanted:
            continue
        kd, grid = chosen.get("cnn-kd"), p.grids[row]
        if len(grid) == 1:  # nothing to choose
            s = grid[0]
        else:
            scores = []
            for s in grid:
                r = train(row, s, 0, "select", kd)
                scores.append((r.val["errors"] if r is not None else float("inf"), s))
            best, s = min(scores, key=lambda t: t[0])  # min keeps the first of equals: grid order breaks ties
            if best == float("inf"):
                raise TrainingDiverged(f"every candidate of {row} diverged on the validation split")
        chosen[row] = s
        log(f"[teacher-gap] {row}: chose {setting_label(s)}")
        for seed in p.seeds:
            train(row, s, seed, "final", kd)
    runner.write()
    plot(runner.records, runner.out / "teacher_gap.png",
         f"{full.name}, preset {preset}: test errors per epoch, seeds {','.join(map(str, p.seeds))}")
    log(summarize(runner.records))
    return runner.records


def add_arguments(p) -> None:
    add_image_experiment_arguments(p, PRESETS, "runs/teacher-gap", "results.json / results.md / teacher_gap.png")
    p.add_argument("--rows", nargs="+", choices=ROWS, help=f"only these rows (default: all {len(ROWS)})")


def main(args) -> list[dict]:
    records = run(args.dataset, args.preset, out=args.out, cache=args.cache, data_dir=args.data_dir,
                  progress=not args.no_progress, seeds=args.seeds, rows=args.rows)
    print(f"wrote {args.out}/results.json, {args.out}/results.md and {args.out}/teacher_gap.png")
    return records

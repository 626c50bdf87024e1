"""Dense prediction, the lecture's use case: a small MobileNet-style segmentation net learns from a
DeepLab-v3-style one, per pixel, on MNIST segmentation canvases (:mod:`distill.data.segmentation`).

Stages: the teacher (:class:`~distill.models.segmentation.DeepLabV3`, per-pixel cross-entropy), then,
for each seed, the student (:class:`~distill.models.segmentation.MobileNetSeg`) on the label masks alone,
distilled pixel-wise (:class:`~distill.losses.PixelwiseDistillation`: Hinton's loss at every
labelled pixel) and distilled channel-wise (:class:`~distill.losses.ChannelWiseDistillation`,
Shu et al. 2021). All train on the same canvases, the last ``val`` training canvases held out as
a validation split (reported, never used to pick weights); the test canvases come from MNIST's
test digits. The headline is the share of the teacher-student mIoU gap that distillation closes:

    closed = (mIoU_distilled - mIoU_hard) / (mIoU_teacher - mIoU_hard)

``--tune`` instead trains the students of one seed for a grid of settings on the same training
canvases and reports their *validation* mIoU, which is how the presets' settings were chosen
(the test canvases choose nothing).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from distill import losses
from distill.checks import add_number_flag
from distill.data.segmentation import load_mnist_seg
from distill.experiments.common import Runner, Stage, fmt_mean_std, gap_closed, mean_std
from distill.metrics import predict_logits
from distill.models.segmentation import DeepLabV3, MobileNetSeg
from distill.data.sources import as_source
from distill.teachers.teacher import Teacher
from distill.train.config import TrainConfig
ADAM = dict(optimizer="adam", lr=0.003, batch_size=32, schedule="cosine")
#: the students' learning rate, chosen on the validation split (``--tune``, step 1)
STUDENT_ADAM = dict(ADAM, lr=0.01)


@dataclass(frozen=True)
class Preset:
    """Canvas counts (``train`` includes the ``val`` held out), model widths, the teacher's and the
    students' schedules, the pixel-wise (``temperature``, ``hard_weight``) and channel-wise
    (``cwd_*``) settings, seeds, and the number of test canvases in the figure."""

    train: int = 3000
    val: int = 500
    test: int = 1000
    teacher_width: int = 32
    student_width: int = 16
    teacher: TrainConfig = TrainConfig(epochs=8, **ADAM)
    student: TrainConfig = TrainConfig(epochs=8, **STUDENT_ADAM)
    # chosen on the validation split (``--preset quick --tune``, runs/seg-tune): at the students' lr
    # 0.01, pixel-wise T = 1 with hard weight 1 (73.6 % validation mIoU) beat hard weight 0.5 (73.3)
    # and T = 2 (67.4); CWD at Shu et al.'s T = 4, soft weight 3 (79.9) beat T = 1 (77.6) and soft
    # weight 1 (78.2)
    temperature: float = 1.0
    hard_weight: float = 1.0
    cwd_temperature: float = 4.0
    cwd_hard_weight: float = 1.0
    cwd_soft_weight: float = 3.0
    seeds: int = 3
    figure: int = 6  # 0: no figure

    def pixelwise(self) -> losses.PixelwiseDistillation:
        return losses.PixelwiseDistillation(self.temperature, self.hard_weight)

    def cwd(self) -> losses.ChannelWiseDistillation:
        return losses.ChannelWiseDistillation(self.cwd_temperature, self.cwd_hard_weight, self.cwd_soft_weight)


PRESETS = {
    # 625 optimiser steps per model (2,500 canvases, 8 epochs of 32): teacher + 9 students, about
    # 30 minutes on 2 CPU cores shared with other work (docs/results.md, "Segmentation")
    "paper": Preset(),
    # one seed on 2,000 canvases, 10 epochs (the same 625 steps); --tune ran on these canvases
    "quick": Preset(train=2500, val=500, teacher=TrainConfig(epochs=10, **ADAM),
                    student=TrainConfig(epochs=10, **STUDENT_ADAM), seeds=1),
    # the same code path in seconds (tests)
    "tiny": Preset(train=16, val=4, test=4, teacher_width=4, student_width=4,
                   teacher=TrainConfig(epochs=1, **ADAM), student=TrainConfig(epochs=1, **ADAM), seeds=1, figure=0),
}

#: ``--tune``, step 1: the students' Adam learning rate, chosen by the hard-label student's
#: validation mIoU (the pixel-wise student at T = 1, hard weight 1 is trained beside it); step 2, at
#: that rate: pixel-wise (T, hard weight) and channel-wise (T, hard weight, soft weight) settings
TUNE_LR = (0.001, 0.003, 0.01, 0.03)
TUNE_PIXELWISE = ((1.0, 0.5), (2.0, 0.5))
TUNE_CWD = ((4.0, 1.0, 3.0), (1.0, 1.0, 3.0), (4.0, 1.0, 1.0), (4.0, 1.0, 10.0), (8.0, 1.0, 3.0))
#: ``--tune``, step 3: the student's width (25,707 parameters at 32, 1/16 of the teacher's; 7,739 at
#: 16), the hard-label and the chosen CWD student at each, over these seeds: one seed's gain is
#: within the seed spread of the hard-label student (1.5 mIoU points on the test canvases)
TUNE_WIDTHS = (16, 32)
TUNE_SEEDS = (0, 1, 2)

STUDENTS = ("student-hard", "student-pixelwise", "student-cwd")


def summarize(records: list[dict]) -> str:
    """Test mIoU (background included and excluded) and pixel accuracy, mean ± std over seeds,
    params, wall seconds per run; then the share of the gap that each distillation closes."""
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["model"], []).append(r)
    lines = ["| model | test mIoU % (11 classes) | mIoU % without background | pixel accuracy % | seeds | params | "
             "wall s / run |", "|---|---|---|---|---|---|---|"]
    for name in ("teacher",) + STUDENTS:
        rs = by.get(name, [])
        if not rs:
            continue

        def col(key):
            return fmt_mean_std([100 * r[key] for r in rs], 2)

        lines.append(f"| {name} | {col('test_miou')} | {col('test_miou_fg')} | {col('test_pixel_accuracy')} | "
                     f"{len(rs)} | {rs[0]['params']:,} | {mean_std([r['wall_seconds'] for r in rs])[0]:.0f} |")
    out = "\n".join(lines) + "\n"
    if by.get("teacher") and by.get("student-hard"):
        t, h = (mean_std([r["test_miou"] for r in by[k]])[0] for k in ("teacher", "student-hard"))
        for name in STUDENTS[1:]:
            if by.get(name):
                d = mean_std([r["test_miou"] for r in by[name]])[0]
                out += (f"\nmIoU gap closed by {name[8:]} distillation, (distilled − hard)/(teacher − hard): "
                        f"**{100 * gap_closed(t, h, d):.0f} %**")
        out += "\n"
    total = sum(r["wall_seconds"] for r in records)
    out += f"\nTotal training wall time of these runs: {total / 60:.1f} min.\n"
    return out


def tune_table(records: list[dict]) -> str:
    lines = ["| model | width | seed | lr | T | hard weight | soft weight | validation mIoU % | without background % "
             "| wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['model']} | {r.get('width', '')} | {r.get('seed', '')} | {r.get('lr') or ''} | {r.get('temperature') or ''} | "
                     f"{'' if r.get('hard_weight') is None else r['hard_weight']} | {r.get('soft_weight') or ''} | "
                     f"{100 * r['val_miou']:.2f} | {100 * r['val_miou_fg']:.2f} | {r['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def width_table(records: list[dict], lr: float, cwd: losses.ChannelWiseDistillation) -> str:
    """Step 3 of ``--tune``: per student width, the validation mIoU of the hard-label students at
    ``lr`` and of the ``cwd`` students (mean ± std over the seeds) and the share of the teacher's
    gap that CWD closes."""
    teacher = [r["val_miou"] for r in records if r["model"] == "teacher"]

    def chosen(r):
        if r.get("lr") != lr:
            return False
        return r["model"] == "student-hard" or (r.get("temperature"), r.get("hard_weight"), r.get("soft_weight")) == (
            cwd.temperature, cwd.hard_weight, cwd.soft_weight)

    lines = ["| width | params | hard-label val mIoU % | CWD val mIoU % | gap closed per seed | gap closed (means) |",
             "|---|---|---|---|---|---|"]
    for width in TUNE_WIDTHS:
        pick = {name: {r["seed"]: r for r in records if r["model"] == name and r.get("width") == width
                       and r.get("seed") in TUNE_SEEDS and chosen(r)}
                for name in ("student-hard", "student-cwd")}
        seeds = sorted(set(pick["student-hard"]) & set(pick["student-cwd"]))
        if not seeds or not teacher:
            continue
        h = [pick["student-hard"][s]["val_miou"] for s in seeds]
        c = [pick["student-cwd"][s]["val_miou"] for s in seeds]
        per = ", ".join(f"{100 * gap_closed(teacher[0], a, b):.0f} %" for a, b in zip(h, c))
        lines.append(f"| {width} | {pick['student-hard'][seeds[0]]['params']:,} | "
                     f"{fmt_mean_std([100 * v for v in h], 2)} | {fmt_mean_std([100 * v for v in c], 2)} | {per} | "
                     f"{100 * gap_closed(teacher[0], mean_std(h)[0], mean_std(c)[0]):.0f} % |")
    return "\n".join(lines) + "\n"


def _stages(p: Preset, image_shape, num_classes: int):
    def teacher_net():
        return DeepLabV3(num_classes, image_shape, width=p.teacher_width)

    def student_net(width: int = p.student_width):
        return lambda: MobileNetSeg(num_classes, image_shape, width=width)

    return teacher_net, student_net


def figure(out: Path, data, models: dict, n: int) -> Path:
    """``out/segmentation.png``: the first ``n`` test canvases, their masks, and each model's
    predicted masks (argmax per pixel), one row each."""
    from distill.tools import plots as report
    x = data.x_test[:n]
    rows = {"input": x, "truth": data.y_test[:n]}
    for name, model in models.items():
        rows[name] = predict_logits(model, x).argmax(1)
    return report.plot_segmentation(rows, out / "segmentation.png", classes=data.classes,
                                    ignore_index=data.ignore_index)


def run(preset: str = "quick", *, seeds: int | None = None, out="runs/segmentation", cache=None, data_dir=None,
        progress=True, log=print, tune: bool = False) -> list[dict]:
    p = PRESETS[preset]
    seeds = seeds or p.seeds
    out = Path(out)
    data = load_mnist_seg(data_dir, log=log, train=p.train, test=p.test)
    train, val = data.validation_split(p.val)
    log(f"[data] {len(train.x_train)} training, {len(val[0])} validation and {len(data.x_test)} test canvases "
        f"({data.fingerprint})")
    teacher_net, student_net = _stages(p, data.image_shape, data.num_classes)
    title = f"Segmentation distillation (preset {preset}{', tuning on the validation split' if tune else ''})"
    runner = Runner(out, cache, progress=progress, log=log, title=title, table=tune_table if tune else summarize)
    hard = losses.DenseHardLabels(data.ignore_index)
    res_t = runner.train(train, Stage("teacher", teacher_net, replace(p.teacher, objective=hard),
                                      extra=dict(width=p.teacher_width)), val=val)
    teacher = Teacher(res_t.model.eval())
    # its outputs over the training canvases, computed once here for every student (in memory)
    teacher.prepare(as_source(train), augmented=False, progress=progress, log=log)

    def student(name, objective, seed, lr=None, width=p.student_width, **extra):
        needs = losses.needs(objective, "teacher")
        config = replace(p.student, objective=objective, seed=seed, lr=lr or p.student.lr)
        stage = Stage(name, student_net(width), config,
                      teacher=teacher if needs else None,
                      extra=dict(width=width, soft_weight=getattr(objective, "soft_weight", None),
                                 lr=config.lr, **extra))
        return runner.train(train, stage, val=val)

    if tune:
        by_lr = {}
        for lr in TUNE_LR:
            by_lr[lr] = student("student-hard", hard, 0, lr=lr).val["miou"]
            student("student-pixelwise", losses.PixelwiseDistillation(1.0, 1.0), 0, lr=lr)
        lr = max(by_lr, key=by_lr.get)
        log(f"[tune] learning rate {lr:g}: the hard-label student's best validation mIoU ({100 * by_lr[lr]:.2f} %)")
        for t, hw in TUNE_PIXELWISE:
            student("student-pixelwise", losses.PixelwiseDistillation(t, hw), 0, lr=lr)
        for t, hw, sw in TUNE_CWD:
            student("student-cwd", losses.ChannelWiseDistillation(t, hw, sw), 0, lr=lr)
        for width in TUNE_WIDTHS:
            for seed in TUNE_SEEDS:
                student("student-hard", hard, seed, lr=lr, width=width)
                student("student-cwd", p.cwd(), seed, lr=lr, width=width)
        runner.write(f"Learning rate {lr:g} (step 1: the hard-label student's best validation mIoU), then T and "
                     "the weights at that rate (step 2), then the student's width, hard labels and the preset's "
                     f"CWD over seeds {', '.join(map(str, TUNE_SEEDS))} (step 3).\n\n" + width_table(runner.records, lr, p.cwd()))
        log(tune_table(runner.records))
        return runner.records
    shown = {"teacher": res_t.model}
    for seed in range(seeds):
        r_hard = student("student-hard", hard, seed)
        r_pix = student("student-pixelwise", p.pixelwise(), seed)
        r_cwd = student("student-cwd", p.cwd(), seed)
        if seed == 0:
            shown.update({"hard student": r_hard.model, "distilled: pixel-wise": r_pix.model,
                          "distilled: CWD": r_cwd.model})
    if p.figure:
        path = figure(out, data, shown, p.figure)
        runner.write(f"Figure: [{path.name}]({path.name}) (the first {p.figure} test canvases; seed 0 students).")
        log(f"wrote {path}")
    log(summarize(runner.records))
    return runner.records


def add_arguments(p) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    add_number_flag(p, "--seeds", help="student seeds (default: the preset's)", integer=True, minimum=1)
    p.add_argument("--tune", action="store_true",
                   help="train one seed of the students for a grid of settings and report validation mIoU "
                        "(how the presets' T and hard weights were chosen)")
    p.add_argument("--out", default="runs/segmentation", help="folder for results.json / results.md / the figure")
    p.add_argument("--cache", help="folder of trained stages (default OUT/stages)")
    p.add_argument("--data-dir")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> list[dict]:
    records = run(args.preset, seeds=args.seeds, out=args.out, cache=args.cache, data_dir=args.data_dir,
                  progress=not args.no_progress, tune=args.tune)
    print(f"wrote {args.out}/results.json and {args.out}/results.md")
    return records

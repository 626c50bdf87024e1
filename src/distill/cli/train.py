"""``distill teacher`` and ``distill student``: one path for both. The TrainConfig is built (and so
checked) before any data loads, then the data, the teacher (checkpoints or a soft-target store),
the model (a built-in ``--arch`` or the user's ``--model``), and :func:`distill.fit`.

The recipe defaults below are the paper's MNIST ones (section 3); the loss and optimiser defaults
come from the library (:mod:`distill.losses`, :class:`distill.train.config.TrainConfig`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from distill import distributed
from distill.checkpoints import load_tensors
from distill.cli import lm
from distill.cli.common import check_fits, defaults_of, dense_line, is_dense, load_any, log, run_on, user_model
from distill.data.files import first_inputs
from distill.data.sources import as_source
from distill.errors import DistillError
from distill.losses import objectives
from distill.models import classifiers, segmentation
from distill.models.classifiers import CNN, MLP
from distill.teachers.store import SoftTargetStore, unfinished_build
from distill.teachers.teacher import Teacher
from distill.train.config import TrainConfig, resolve_device, seed_everything
from distill.train.fit import fit
from distill.train.recipes import PAPER_MNIST


def _weights(defaults: dict) -> dict:
    """The loss settings among an objective's defaults."""
    return {k: defaults[k] for k in ("temperature", "hard_weight", "soft_weight")}


#: ``TrainConfig``'s defaults: ``--optimizer``, ``--schedule``, ``--batch-size``, ``--momentum``, ...
CONFIG = defaults_of(TrainConfig)

#: the paper's MNIST recipe (:data:`distill.train.recipes.PAPER_MNIST`): the defaults of the
#: epochs, the hidden sizes, the teacher's dropout, max-norm and jitter (on --dataset images; 0 on
#: --data and on label masks)
PAPER = PAPER_MNIST

#: ``--temperature`` / ``--hard-weight`` / ``--soft-weight`` defaults of a distilled student: one
#: label per example (Hinton's loss at the paper's T), label masks pixel-wise, and ``--cwd``
DISTILL = dict(temperature=PAPER.temperature, hard_weight=PAPER.hard_weight, soft_weight=PAPER.soft_weight)
PIXELWISE = dict(_weights(defaults_of(objectives.PixelwiseDistillation)),
                 temperature=segmentation.DISTILL_TEMPERATURE, hard_weight=segmentation.DISTILL_HARD_WEIGHT)
CWD = _weights(defaults_of(objectives.ChannelWiseDistillation))

#: ``--arch`` names: the classifiers, then the segmentation models (for label masks)
CLASSIFIER_ARCHS = tuple(classifiers.ARCHS)
SEGMENTATION_ARCHS = tuple(segmentation.ARCHS)
#: ``--width`` defaults of the segmentation models
WIDTHS = {name: defaults_of(cls)["width"] for name, cls in segmentation.ARCHS.items()}


def teacher(args) -> None:
    train(args, teacher_mode=True)


def student(args) -> None:
    train(args, teacher_mode=False)


def train(args, teacher_mode: bool) -> None:
    if args.task == "lm":
        return lm.train(args, teacher_mode)
    lm_only = [f for f in ("tokenizer", "block_size", "layers", "heads", "embd", "divergence_name", "beta", "skew",
                           "store", "top_k", "tail", "accumulate", "warmup_steps") if getattr(args, f, None) not in (None, 1)]
    if lm_only:
        raise DistillError(f"--{lm_only[0].replace('_name', '').replace('_', '-')} is for language models: add "
                           "--task lm")
    out = _check_out(args.out)
    if teacher_mode and args.jitter is None:
        # the paper's MNIST recipe; off on the user's files and on mnist-seg's label masks
        args.jitter = 0 if args.data is not None or args.dataset == "mnist-seg" else PAPER.jitter
    config = train_config(args, teacher_mode)
    resolve_device(args.device)
    data = load_any(args)
    config = dense_config(args, config, data, teacher_mode)  # label masks: the dense objectives
    teacher, teacher_classes = None, 0
    if not teacher_mode and args.teacher:
        teacher = _store_teacher(args.teacher, data)  # a store from `distill targets`
    if not teacher_mode and args.teacher and teacher is None:
        for path in args.teacher:
            side = load_tensors(path)[1]
            check_fits(f"teacher {path}", side, data)
            teacher_classes = side.get("num_classes") or teacher_classes
        teacher = Teacher(args.teacher, combine=args.combine, trust_factory=args.trust_factory)
        outputs = run_on("the teacher" if len(args.teacher) == 1 else "the teacher ensemble", teacher.forward,
                         first_inputs(data.train), data)
        teacher_classes = teacher_classes or int(outputs.shape[1])
    if not data.labeled:  # an unlabeled transfer set: the teacher's soft targets alone
        if teacher is None:
            raise DistillError(f"{data.name} has no training labels (an unlabeled transfer set); "
                               + ("a teacher needs labels" if teacher_mode else "distil from it with --teacher"))
        if not args.logit_matching:
            if args.hard_weight is None:
                log(f"[data] {data.name} has no training labels: the student learns the teacher's soft targets "
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
    model, factory = build_model(args, data, teacher_mode, num_classes)
    name = "teacher" if teacher_mode else ("student-distilled" if teacher is not None else "student-hard")
    res = fit(model, data.train, config, teacher=teacher, val=data.val, test=data.test, run_dir=out,
              device=args.device, factory=factory,
              meta=dict(name=name, teacher_checkpoint=getattr(args, "teacher", None), **_data_meta(args, data)),
              progress=not args.no_progress, log=log)
    if distributed.world()[0]:
        return  # process 0 reports
    m, split = (res.test, "test") if res.test is not None else (res.val, "validation")
    if m is None:
        print(f"{name}: {res.epoch} epochs, no test or validation split in {data.name} to report, "
              f"{res.wall_seconds:.0f}s -> {out / 'model.safetensors'}")
        return
    if "miou" in m:  # dense prediction
        print(f"{name}: {split} {dense_line(m)}, {res.wall_seconds:.0f}s -> {out / 'model.safetensors'}")
        return
    print(f"{name}: {m['errors']} {split} errors / {m['n']} ({100 * m['accuracy']:.2f}%), nll {m['nll']:.4f}, "
          f"{res.wall_seconds:.0f}s -> {out / 'model.safetensors'}")


def _check_out(out: str) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DistillError(f"--out {path} is a file; give a folder (it will hold the checkpoint and the "
                           "state for resuming)")
    return path


# ---------------------------------------------------------------- the config

def train_config(args, teacher_mode: bool) -> TrainConfig:
    """The TrainConfig of ``teacher``/``student``, built (and so checked) before any data loads."""
    # --epochs, --batch-size and --optimizer have a language model's defaults with --task lm
    common = dict(epochs=PAPER.epochs if args.epochs is None else args.epochs,
                  batch_size=CONFIG["batch_size"] if args.batch_size is None else args.batch_size,
                  optimizer=args.optimizer or CONFIG["optimizer"], lr=args.lr,
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
        return TrainConfig(objective=objectives.LogitMatching(), **common)
    config = TrainConfig(**_given_or(args, DISTILL), **common)
    try:
        config.objective_for(True)  # e.g. both weights 0
    except ValueError as e:
        raise _flag_error(e) from None
    return config


def dense_config(args, config: TrainConfig, data, teacher_mode: bool) -> TrainConfig:
    """For label masks, the config with the dense objective: per-pixel cross-entropy without a
    teacher; pixel-wise distillation (:data:`PIXELWISE`) or, with ``--cwd``, channel-wise
    distillation (:data:`CWD`) with one. Other data: ``config`` as it is (``--cwd`` and the
    segmentation ``--arch`` are then errors)."""
    cwd = getattr(args, "cwd", False)
    if not is_dense(data):
        if cwd or args.arch in SEGMENTATION_ARCHS:
            flag = "--cwd" if cwd else f"--arch {args.arch}"
            raise DistillError(f"{flag} is for segmentation: label masks such as --dataset mnist-seg or a --data .npz "
                               f"of images and masks; {data.name} has one label per example")
        return config
    if teacher_mode or not getattr(args, "teacher", None):
        if cwd:
            raise DistillError("--cwd needs --teacher (without one the student learns the masks)")
        objective = objectives.DenseHardLabels()
    elif args.logit_matching:
        raise DistillError("--logit-matching is for one label per example; for masks use pixel-wise distillation "
                           "(the default) or --cwd")
    else:
        kind, defaults = ((objectives.ChannelWiseDistillation, CWD) if cwd else
                          (objectives.PixelwiseDistillation, PIXELWISE))
        try:
            objective = kind(**_given_or(args, defaults))
        except ValueError as e:
            raise _flag_error(e) from None
    # the objective holds the loss settings now: the config's shorthand fields go back to their defaults
    shorthand = {k: CONFIG[k] for k in ("temperature", "hard_weight", "soft_weight")}
    lr = config.lr if config.lr is not None else segmentation.DEFAULT_LR[config.optimizer]
    return dataclasses.replace(config, objective=objective, lr=lr, **shorthand)


def _given_or(args, defaults: dict) -> dict:
    """``--temperature`` / ``--hard-weight`` / ``--soft-weight`` as given, else ``defaults``."""
    return {k: defaults[k] if getattr(args, k) is None else getattr(args, k) for k in defaults}


def _flag_error(e: ValueError) -> DistillError:
    """An objective's ValueError in the words of the command line."""
    return DistillError(str(e).replace("hard_weight", "--hard-weight").replace("soft_weight", "--soft-weight"))


# ---------------------------------------------------------------- the teacher

def _store_teacher(paths, data):
    """A ``--teacher`` that names a soft-target store folder (``distill targets --out``): a Teacher
    over it, checked against ``data``; None when the paths are checkpoints."""
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


# ---------------------------------------------------------------- the model

def build_model(args, data, teacher_mode: bool, num_classes: int):
    """``(model, factory)``: the user's ``--model`` (its factory recorded as given) or a built-in
    ``--arch`` (which carries its own factory, so None)."""
    if args.arch in SEGMENTATION_ARCHS or is_dense(data):
        return _segmentation_model(args, data, num_classes)
    given = [f for f, v in (("--arch", args.arch), ("--hidden", args.hidden),
                            ("--dropout-input", getattr(args, "dropout_input", None)),
                            ("--dropout-hidden", getattr(args, "dropout_hidden", None)),
                            ("--max-norm", getattr(args, "max_norm", None))) if v is not None]
    if args.model is not None:
        if given:
            raise DistillError(f"{', '.join(given)} configure{'s' if len(given) == 1 else ''} the built-in --arch "
                               "models; with --model give your model's settings in --model-args")
        return user_model(args.model, args.model_args)
    if args.model_args is not None:
        raise DistillError("--model-args are the keyword arguments of --model; give --model too")
    if num_classes < 2:
        raise DistillError(f"{data.name} has {num_classes or 'no'} class{'' if num_classes == 1 else 'es'} (labels "
                           "seen); a classifier needs two or more: list them in the .npz as `classes`, or distil from "
                           "a --teacher, whose checkpoint records them")
    hidden = args.hidden or args._hidden
    # only `teacher` has these flags: a student trains without dropout or max-norm
    dropout_input = PAPER.dropout_input if getattr(args, "dropout_input", None) is None else args.dropout_input
    dropout_hidden = PAPER.dropout_hidden if getattr(args, "dropout_hidden", None) is None else args.dropout_hidden
    max_norm = PAPER.max_norm if getattr(args, "max_norm", None) is None else args.max_norm
    if classifiers.ARCHS[args.arch or CLASSIFIER_ARCHS[0]] is CNN:
        if data.image_shape is None:
            raise DistillError(f"--arch cnn needs image data; {data.name} has no image shape")
        channels = data.input_shape[0] if len(data.input_shape) == 3 else 1
        return CNN(data.image_shape, hidden=hidden, num_classes=num_classes,
                   dropout_hidden=dropout_hidden if teacher_mode else 0.0,
                   max_norm=max_norm if teacher_mode else None, in_channels=channels), None
    if teacher_mode:
        return MLP(data.num_features, hidden, num_classes, dropout_input, dropout_hidden, max_norm), None
    return MLP(data.num_features, hidden, num_classes), None


def _segmentation_model(args, data, num_classes: int):
    """``(model, None)``: ``--arch deeplab`` (the default for a teacher) or ``mobilenet`` (a
    student's) for label masks; the models carry their factories."""
    if not is_dense(data):
        raise DistillError(f"--arch {args.arch} is for segmentation (label masks); {data.name} has one label per "
                           "example")
    if args.model is not None or args.hidden is not None:
        raise DistillError(f"{'--model' if args.model is not None else '--hidden'} does not apply to segmentation "
                           "data; choose --arch deeplab or mobilenet (and --width)")
    arch = args.arch or ("mobilenet" if getattr(args, "teacher", None) is not None or args.command == "student"
                         else "deeplab")
    if arch not in SEGMENTATION_ARCHS:
        raise DistillError(f"--arch {arch} cannot predict label masks; use --arch deeplab or mobilenet")
    if data.image_shape is None:
        raise DistillError(f"{data.name} has no image shape")
    return segmentation.build(arch, num_classes, data.image_shape, args.width), None


def _data_meta(args, data) -> dict:
    """What the sidecar records about the data: its name, how to read it again, its classes."""
    source = (dict(path=str(Path(args.data).resolve()), target=args.target) if args.data is not None
              else dict(dataset=data.name))
    return dict(dataset=data.name, data_source=source, classes=[str(c) for c in data.classes])

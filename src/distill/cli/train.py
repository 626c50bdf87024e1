"""``distill teacher`` and ``distill student``: one path for both. The TrainConfig is built (and so
checked) before any data loads, then the data, the teacher (checkpoints or a soft-target store),
the model (a built-in ``--arch`` or the user's ``--model``), and :func:`distill.fit`.

The recipe defaults below are the paper's MNIST ones (section 3); the loss and optimiser defaults
come from the library (:mod:`distill.losses`, :class:`distill.train.config.TrainConfig`).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from pathlib import Path

from distill import distributed
from distill.checkpoints import load_tensors
from distill.cli import lm
from distill.cli.common import (check_fits, defaults_of, dense_line, is_dense, load_any, log, run_on, user_model,
                                watch_settings)
from distill.data.files import first_inputs, is_image_folder
from distill.data.sources import TensorSource, as_source
from distill.checks import show_names
from distill.errors import DistillError
from distill.losses import objectives
from distill.models import classifiers, segmentation
from distill.models.classifiers import MLP, ConvNet, ResNet
from distill.teachers.store import SoftTargetStore, unfinished_build
from distill.teachers.teacher import Teacher
from distill.train.config import TrainConfig, resolve_device, seed_everything
from distill.train.fit import fit
from distill.models.preprocess import Standardize, feature_stats
from distill.train.recipes import DATA_RECIPE, PAPER_MNIST, data_defaults
from distill.train.setup import probe


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
#: ``--width`` defaults of the models that have one: the convolutional classifiers, the segmentation models
WIDTHS = {"cnn": defaults_of(ConvNet)["width"], "resnet": defaults_of(ResNet)["width"],
          **{name: defaults_of(cls)["width"] for name, cls in segmentation.ARCHS.items()}}
#: ``--depth`` defaults: the ConvNet's stages, the residual CNN's blocks per stage
DEPTHS = {"cnn": defaults_of(ConvNet)["depth"], "resnet": defaults_of(ResNet)["depth"]}


def teacher(args) -> None:
    train(args, teacher_mode=True)


def student(args) -> None:
    train(args, teacher_mode=False)


def train(args, teacher_mode: bool) -> None:
    if args.task == "lm":
        return lm.train(args, teacher_mode)
    lm_only = [f for f in ("tokenizer", "block_size", "layers", "heads", "embd", "divergence_name", "beta", "skew",
                           "store", "top_k", "tail", "accumulate", "warmup_steps") if getattr(args, f, None) not in (None, 1)]
    if getattr(args, "parallel", "ddp") != "ddp":
        lm_only.append("parallel")
    if lm_only:
        raise DistillError(f"--{lm_only[0].replace('_name', '').replace('_', '-')} is for language models: add "
                           "--task lm")
    out = _check_out(args.out)
    if getattr(args, "_restart", False):  # --restart: what distill wrote there goes first (only that)
        from distill.train.rundir import clear_run_folder
        clear_run_folder(out, log=log)
    if teacher_mode and args.jitter is None:
        # the paper's MNIST recipe; off on the user's files and on mnist-seg's label masks
        args.jitter = 0 if args.data is not None or args.dataset == "mnist-seg" else PAPER.jitter
    config = train_config(args, teacher_mode)
    resolve_device(args.device)
    notes: list[str] = []  # the [defaults] lines, printed once every check has passed
    data = load_any(args, training=True, notes=notes)
    config = dense_config(args, config, data, teacher_mode)  # label masks: the dense objectives
    check_raw_table(args, data)
    choices = table_choices(args, data)  # what cross-validation chooses on a small table (before the defaults fill them)
    config = own_data_defaults(args, config, data, teacher_mode, notes, said_model=not choices)
    teacher, teacher_classes = None, 0
    if not teacher_mode and args.teacher:
        teacher = _store_teacher(args.teacher, data)  # a store from `distill targets`
        if teacher is not None and choices:  # its targets are per training row: no folds of their own
            notes.append("[defaults] a soft-target store teaches every training row at once, so the table's model is "
                         f"not cross-validated: MLP {'-'.join(map(str, args.hidden))} (--hidden, --weight-decay set it)")
            choices = None
    if not teacher_mode and args.teacher and teacher is None:
        for path in args.teacher:
            side = load_tensors(path)[1]
            check_fits(f"teacher {path}", side, data)
            teacher_classes = side.get("num_classes") or teacher_classes
        teacher = Teacher(args.teacher, combine=args.combine, trust_factory=args.trust_factory)
        outputs = run_on("the teacher" if len(args.teacher) == 1 else "the teacher ensemble", teacher.forward,
                         first_inputs(data.train), data)
        teacher_classes = teacher_classes or int(outputs.shape[1])
        _flat_targets_warning(teacher, data, config, notes)
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
    selection = None
    if choices and data.labeled:
        config, selection = choose_table_model(args, config, data, teacher, teacher_mode, num_classes, choices, notes)
        seed_everything(args.seed)  # the run starts from the state a run without the choice would (the same weights)
    model, factory = build_model(args, data, teacher_mode, num_classes)
    if standardizes(args, data):  # z-scores of the training split, kept in the model (and its ONNX graph)
        mean, std = feature_stats(b for b, _, _ in data.train.ordered(65536))
        model, factory = Standardize(model, mean=mean, std=std, model_factory=factory,
                                     categories=data.category_counts), None
    name = "teacher" if teacher_mode else ("student-distilled" if teacher is not None else "student-hard")
    if notes:  # the [defaults] lines once the model is known to take the data (else its one-line error alone)
        probe(model, as_source(data.train), torch.device("cpu"))
        for line in notes:
            log(line)
    res = fit(model, data.train, config, teacher=teacher, val=data.val, test=data.test, run_dir=out,
              device=args.device, factory=factory,
              meta=dict(name=name, teacher_checkpoint=getattr(args, "teacher", None), **_data_meta(args, data),
                        config_toml=getattr(args, "config_toml", None),
                        **({"model_selection": selection} if selection else {})),
              progress=not args.no_progress, log=log)
    if distributed.world()[0]:
        return  # process 0 reports
    m, split = (res.test, "test") if res.test is not None else (res.val, "validation")
    kept = kept_epoch_text(res, config)
    if m is None:
        print(f"{name}: {kept}, no held-out metric: {data.name} has no test or validation split (--test-fraction, "
              f"--val-fraction hold some out), {res.wall_seconds:.0f}s -> {out / 'model.safetensors'}")
        return
    if "miou" in m:  # dense prediction
        print(f"{name}: {split} {dense_line(m)}, {kept}, {res.wall_seconds:.0f}s -> {out / 'model.safetensors'}")
        return
    print(f"{name}: {m['errors']} {split} errors / {m['n']} ({100 * m['accuracy']:.2f}%), nll {m['nll']:.4f}, "
          f"{kept}, {res.wall_seconds:.0f}s -> {out / 'model.safetensors'}")


def kept_epoch_text(res, config: TrainConfig) -> str:
    """Which epoch's weights a run kept, and why: the last, or the best on validation (by what)."""
    if config.select == "best":
        return f"epoch {res.epoch}/{config.epochs} kept (fewest validation errors, the first of ties)"
    return f"epoch {res.epoch}/{config.epochs} kept (the last)"


def _check_out(out: str) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DistillError(f"--out {path} is a file; give a folder (it will hold the checkpoint and the "
                           "state for resuming)")
    return path


# ---------------------------------------------------------------- defaults chosen from the data

def own_data(args, data) -> bool:
    """Whether the run trains on the user's own files (not a built-in data set with the paper's
    recipe, not label masks): then the data decide the defaults (:func:`own_data_defaults`)."""
    return args.data is not None and not is_dense(data)


def standardizes(args, data) -> bool:
    """Whether the features are standardised: the user's vectors (a table, a flat ``.npz``), unless
    ``--no-standardize``."""
    return own_data(args, data) and data.image_shape is None and not getattr(args, "no_standardize", False)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def model_features(args, data) -> int:
    """How many features the model behind the preprocessing takes: a table's one-hot encoded
    categories count one each (:meth:`distill.models.Standardize.encoded_features`)."""
    if not standardizes(args, data):
        return data.num_features
    return Standardize.encoded_features(data.num_features, data.category_counts)


def missing_cells(src) -> int:
    """How many features of ``src`` are missing (NaN): 0 unless the source allows them."""
    if not src.missing:
        return 0
    return sum(int(torch.isnan(b).sum()) for b, _, _ in src.ordered(65536))


def check_raw_table(args, data) -> None:
    """``--no-standardize`` feeds the table as it is: refused when it has categorical columns or
    missing values, which only the preprocessing in front of the model encodes."""
    if not own_data(args, data) or not data.features or standardizes(args, data):
        return
    if data.categories:
        raise DistillError(f"--no-standardize: {data.name} has text columns ({show_names(list(data.categories))}), "
                           "which only the standardising preprocessing one-hot encodes; drop the flag or encode them")
    for split in (data.train, data.val, data.test):
        if split is not None and missing_cells(split):
            raise DistillError(f"--no-standardize: {data.name} has missing values, which only the standardising "
                               "preprocessing fills (with the training mean); drop the flag or fill them")


def own_data_defaults(args, config: TrainConfig, data, teacher_mode: bool, notes: list,
                      said_model: bool = True) -> TrainConfig:
    """On the user's own files, the defaults of :func:`distill.train.recipes.data_defaults` for every
    setting the flags leave open (batch, epochs, model size, a table teacher's dropout, T), printed
    in one ``[defaults]`` line (appended to ``notes``; the MLP's size only with ``said_model``: else
    cross-validation says what it chose); on built-in data ``config`` unchanged (the paper's recipe)."""
    n = data.train.n
    if args.batch_size is not None and n and args.batch_size > n:
        notes.append(f"[warning] --batch-size {args.batch_size} is larger than the {n:,} training examples: every epoch "
            "is one step")
    if not own_data(args, data) or not n:
        return config
    image = data.image_shape is not None
    k = data.num_classes
    if data.features and k > 10 and n / k < 5 and all(_is_number(c) for c in data.classes):
        notes.append(f"[warning] the target column {args.target!r} holds {k} distinct numbers among {n:,} training rows "
                     f"({n / k:.1f} a class): if it is a quantity to predict (regression), note that distill trains "
                     "classifiers; bin it into a few classes first")
    d = data_defaults(n, model_features(args, data), image, config.batch_size, config.epochs)
    said, changes = [], {}
    if args.batch_size is None and d["batch_size"] != config.batch_size:
        changes["batch_size"] = d["batch_size"]
        said.append(f"batch {d['batch_size']} (an epoch of {n:,} examples has "
                     f"{math.ceil(n / d['batch_size'])} steps)")
    if args.epochs is None and d["epochs"] != config.epochs:
        changes["epochs"] = d["epochs"]
        said.append(f"{d['epochs']} epochs (at least {DATA_RECIPE.min_steps} steps)")
    if args.model is None:
        if image and args.arch is None and args.hidden is None:  # --hidden alone asks for the MLP
            args.arch = "cnn"
        if (args.arch or CLASSIFIER_ARCHS[0]) == "cnn" and args.width is None:
            args.width = d["teacher_width"] if teacher_mode else d["student_width"]
            said.append(f"--arch cnn --width {args.width} (a ConvNet with global pooling, for images)")
        if not image and args.arch in (None, "mlp") and args.hidden is None:
            args.hidden = d["teacher_hidden"] if teacher_mode else d["student_hidden"]
            if said_model:
                said.append(f"MLP {'-'.join(map(str, args.hidden))} (for {model_features(args, data)} features, "
                            f"{n:,} rows)")
        if teacher_mode and not image:
            if getattr(args, "dropout_input", None) is None:
                args.dropout_input = 0.0
            if getattr(args, "dropout_hidden", None) is None:
                args.dropout_hidden = DATA_RECIPE.table_dropout
            said.append(f"dropout {args.dropout_hidden:g} on the hidden units, none on the inputs")
    if standardizes(args, data):
        said.append("features standardised with the training split's mean and std (kept in the model; "
                     "--no-standardize to turn off)")
        if data.categories:
            said.append("text columns one-hot encoded in the model: " + ", ".join(
                f"{c} ({len(v)} values)" for c, v in data.categories.items()))
        gaps = missing_cells(data.train)
        if gaps:
            said.append(f"{gaps:,} missing value(s) in the training split read as the training mean (numbers) or no "
                        "category (text)")
    if (not teacher_mode and getattr(args, "teacher", None) and config.objective is None
            and args.temperature is None and not args.logit_matching):
        changes["temperature"] = DATA_RECIPE.temperature
        said.append(f"T = {DATA_RECIPE.temperature:g} (the paper's 20 is for MNIST's 10 classes and a big "
                     "teacher; it flattens the soft targets of a few classes)")
    if said:
        notes.append("[defaults] " + "; ".join(said) + " (each flag overrides its default)")
    return dataclasses.replace(config, **changes) if changes else config


def table_choices(args, data) -> dict | None:
    """What cross-validation chooses for a small table in memory (at most ``cv_max_rows`` training
    rows) when the flags leave it open: ``{"hidden": [None (the data's MLP), []  (linear)] or
    [--hidden], "weight_decay": DATA_RECIPE.table_weight_decays or [--weight-decay]}``; None when
    there is nothing to choose (both flags given, ``--model``, ``--arch`` other than mlp, images,
    built-in data, or too few or too many rows)."""
    if not own_data(args, data) or data.image_shape is not None or args.model is not None:
        return None
    if args.arch not in (None, "mlp") or not isinstance(data.train, TensorSource):
        return None
    if not (2 * DATA_RECIPE.cv_folds <= data.train.n <= DATA_RECIPE.cv_max_rows):
        return None
    hidden = [list(args.hidden)] if args.hidden is not None else [None, []]
    wds = [args.weight_decay] if args.weight_decay is not None else list(DATA_RECIPE.table_weight_decays)
    return None if len(hidden) * len(wds) == 1 else dict(hidden=hidden, weight_decay=wds)


def _model_text(hidden, wd: float) -> str:
    return (f"MLP {'-'.join(map(str, hidden))}" if hidden else "linear") + f", weight decay {wd:g}"


def choose_table_model(args, config: TrainConfig, data, teacher, teacher_mode: bool, num_classes: int, choices: dict,
                       notes: list) -> tuple[TrainConfig, dict]:
    """Cross-validate every candidate of ``choices`` (:func:`table_choices`) on the training split
    (:func:`distill.train.crossval.cross_validate`, ``DATA_RECIPE.cv_folds`` stratified folds, the
    run's config and teacher, each fold standardised with its own statistics) and keep the first
    candidate (the data's MLP, or the flags' model) unless another makes fewer held-out errors, or
    as few with a lower NLL, by more than ``DATA_RECIPE.cv_margin`` standard errors
    (:func:`distill.train.crossval.best`): sets ``args.hidden`` and
    returns the config with its weight decay, and what the sidecar records of the choice. The test
    and validation splits are never read."""
    from distill.train.crossval import best, cross_validate, stratified_folds

    x, y = data.train.x, data.train.y
    folds = stratified_folds(y, DATA_RECIPE.cv_folds, args.seed)
    fold_config = dataclasses.replace(config, select="last", tensorboard=False)
    candidates = {}
    for hidden in choices["hidden"]:
        hidden = args.hidden if hidden is None else hidden
        for wd in choices["weight_decay"]:
            candidates[_model_text(hidden, wd)] = (hidden, wd)
    log(f"[defaults] choosing the table's model by {DATA_RECIPE.cv_folds}-fold cross-validation on the training split "
        f"({len(candidates)} candidates) ...")

    def build(hidden):
        def make(rows):
            model, _ = build_model(args, data, teacher_mode, num_classes, hidden=hidden)
            if not standardizes(args, data):
                return model
            mean, std = feature_stats(rows)
            return Standardize(model, mean=mean, std=std, categories=data.category_counts)
        return make

    def train_fold(wd):
        cfg = dataclasses.replace(fold_config, weight_decay=wd)

        def run(model, tr, held):
            tr = TensorSource(*tr, name="fold", missing=data.train.missing)
            trained = fit(model, tr, cfg, teacher=teacher, device=args.device, progress=False,
                          log=lambda *a, **k: None).model
            with torch.no_grad():
                return trained.cpu()(held)
        return run

    scores = {}
    for text, (hidden, wd) in candidates.items():
        seed_everything(args.seed)
        scores[text] = cross_validate(build(hidden), x, y, folds, train_fold(wd))
    default = next(iter(candidates))  # the data's MLP (or the flags'), kept unless beaten beyond the noise
    chosen = best(scores, default=default, margin=DATA_RECIPE.cv_margin)
    hidden, wd = candidates[chosen]
    args.hidden = list(hidden)
    if not hidden and teacher_mode:  # a linear model: no hidden units to drop
        args.dropout_hidden = 0.0
    top = best(scores)
    m = f"{DATA_RECIPE.cv_margin:g} standard errors"
    why = ("the fewest errors" if chosen == default == top else
           f"the default: no candidate makes fewer errors or fits better by over {m}" if chosen == default else
           "the fewest errors; the default diverged" if scores[default].diverged else
           f"the fewest errors, over {m} below the default's" if chosen == top else
           f"no more errors than the default and a lower NLL, by over {m}")

    def shown(sc):
        return f"NLL {sc.nll:.3f}, {sc.errors} errors" if sc.nll < math.inf else "diverged"
    others = "; ".join(f"{t}: {shown(sc)}" for t, sc in scores.items() if t != chosen)
    notes.append(f"[defaults] {chosen}, by {DATA_RECIPE.cv_folds}-fold cross-validation on the training split ({why}; "
                 f"{shown(scores[chosen])} of {len(y)}; {others}) (--hidden and --weight-decay set them)")
    record = dict(folds=DATA_RECIPE.cv_folds, chosen=chosen, default=default,
                  candidates={t: dict(nll=None if sc.nll == math.inf else sc.nll, errors=sc.errors, n=sc.n)
                              for t, sc in scores.items()})
    return dataclasses.replace(config, weight_decay=wd), record


def _flat_targets_warning(teacher, data, config: TrainConfig, notes: list, sample: int = 512) -> None:
    """A warning when the teacher's soft targets at the run's T are nearly uniform (their mean
    entropy above 90 % of log C) on a sample of the training inputs: the soft term then teaches
    little beyond "every class is as likely"."""
    t = getattr(config.objective, "temperature", None) if config.objective is not None else config.temperature
    if not t or not data.num_classes or data.num_classes < 2:
        return
    with torch.no_grad():
        p = torch.softmax(teacher.forward(first_inputs(data.train, sample)).float() / t, dim=-1)
        h = float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean())
    top = math.log(p.shape[-1])
    if h > 0.9 * top:
        notes.append(f"[warning] at T = {t:g} the teacher's soft targets are nearly uniform (mean entropy {h:.3f} of at most "
            f"{top:.3f}): the student learns little from them; try a lower --temperature (e.g. 2-4)")


# ---------------------------------------------------------------- the config

def train_config(args, teacher_mode: bool) -> TrainConfig:
    """The TrainConfig of ``teacher``/``student``, built (and so checked) before any data loads."""
    # --epochs, --batch-size and --optimizer have a language model's defaults with --task lm
    common = dict(epochs=PAPER.epochs if args.epochs is None else args.epochs,
                  batch_size=CONFIG["batch_size"] if args.batch_size is None else args.batch_size,
                  optimizer=args.optimizer or CONFIG["optimizer"], lr=args.lr,
                  momentum=args.momentum, weight_decay=getattr(args, "weight_decay", None) or 0.0, schedule=args.schedule, seed=args.seed,
                  precision=args.precision,
                  **watch_settings(args))
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

def build_model(args, data, teacher_mode: bool, num_classes: int, hidden: list | None = None):
    """``(model, factory)``: the user's ``--model`` (its factory recorded as given) or a built-in
    ``--arch`` (which carries its own factory, so None); ``hidden``: an MLP's layers other than
    ``--hidden``'s (a cross-validation candidate)."""
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
    hidden = (args.hidden if args.hidden is not None else args._hidden) if hidden is None else hidden
    # only `teacher` has these flags: a student trains without dropout or max-norm
    dropout_input = PAPER.dropout_input if getattr(args, "dropout_input", None) is None else args.dropout_input
    dropout_hidden = PAPER.dropout_hidden if getattr(args, "dropout_hidden", None) is None else args.dropout_hidden
    max_norm = PAPER.max_norm if getattr(args, "max_norm", None) is None else args.max_norm
    name = args.arch or CLASSIFIER_ARCHS[0]
    arch = classifiers.ARCHS[name]
    if arch is MLP and (args.width is not None or args.depth is not None):
        raise DistillError(f"--{'width' if args.width is not None else 'depth'} sets the size of --arch cnn or "
                           "resnet (and --width of the segmentation models); --arch mlp takes --hidden")
    if arch in (ConvNet, ResNet):
        if data.image_shape is None:
            raise DistillError(f"--arch {name} needs image data; {data.name} has no image shape (use --arch mlp)")
        if args.hidden is not None:
            raise DistillError(f"--hidden sizes the MLP; --arch {name} takes --width and --depth")
        channels = data.input_shape[0] if len(data.input_shape) == 3 else 1
        return arch(channels, num_classes, width=args.width or WIDTHS[name], depth=args.depth or DEPTHS[name],
                    image_shape=data.image_shape), None
    if teacher_mode:
        return MLP(model_features(args, data), hidden, num_classes, dropout_input, dropout_hidden, max_norm), None
    return MLP(model_features(args, data), hidden, num_classes), None


def _segmentation_model(args, data, num_classes: int):
    """``(model, None)``: ``--arch deeplab`` (the default for a teacher) or ``mobilenet`` (a
    student's) for label masks; the models carry their factories."""
    if args.depth is not None:
        raise DistillError("--depth sets the size of --arch resnet; the segmentation models take --width")
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
    if data.holdout_spec:
        source["holdout"] = dict(data.holdout_spec)
    if args.data is not None and data.image_shape is not None and is_image_folder(args.data):
        source["image_size"] = list(data.image_shape)  # what evaluate resizes another folder's images to
    out = dict(dataset=data.name, data_source=source, classes=[str(c) for c in data.classes])
    if data.features:
        out["features"] = list(data.features)
    if data.categories:  # what evaluate, compare and export encode other tables' text columns with
        out["categories"] = {c: list(v) for c, v in data.categories.items()}
    return out

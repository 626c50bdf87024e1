"""What several commands share: the log, reading the data of ``--dataset`` / ``--data``, and the
checks that a checkpoint fits that data, each a one-line :class:`DistillError`."""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

from torch import nn

from distill import data as D
from distill.checkpoints import import_factory, safe_json_loads
from distill.data.files import IMAGE_SUFFIXES, TABLE_SUFFIXES, FileData, is_image_folder, load_files
from distill.data.mnist import FASHION_MNIST, MNIST
from distill.data.segmentation import is_mask_npz, load_segmentation_npz
from distill.errors import DistillError
from distill.train.config import TrainConfig
from distill.train.recipes import DATA_RECIPE

#: the built-in data set read when neither ``--dataset`` nor ``--data`` is given (nor recorded)
DEFAULT_DATASET = "mnist"
#: the share of a ``--data`` file without a test split held out as one when training (``--test-fraction``)
TEST_FRACTION = 0.2


def defaults_of(fn) -> dict:
    """The keyword defaults of a library callable (a function, or a class such as a dataclass), by
    name: where the command line's defaults come from, so that they are stated once."""
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def watch_settings(args) -> dict:
    """The TrainConfig fields of how a run is watched: the divergence guard (``--no-guard``), the
    ``metrics.csv`` step rows (``--log-every``) and TensorBoard (``--tensorboard``)."""
    every = getattr(args, "log_every", None)
    return dict(divergence=None if getattr(args, "no_guard", False) else "stop",
                log_every=defaults_of(TrainConfig)["log_every"] if every is None else every,
                tensorboard=bool(getattr(args, "tensorboard", False)))


def log(msg) -> None:
    """Progress and notes go to stderr; stdout holds only each command's result."""
    print(msg, file=sys.stderr)


# ---------------------------------------------------------------- reading the data

def load_data(args, name: str | None = None):
    """The built-in data set ``name`` (default ``--dataset``, else mnist) as a distill Dataset."""
    if getattr(args, "data", None) is not None:
        raise DistillError(f"`distill {args.command}` reads --dataset only; --data works with teacher, student, "
                           "evaluate and compare")
    name = name or args.dataset or DEFAULT_DATASET
    check_data_dir(args.data_dir, name)
    ds = D.load(name, args.data_dir, log=log)
    _check_sizes(ds.name, ((args.train_size, len(ds.y_train)), (args.test_size, len(ds.y_test))))
    if args.train_size or args.test_size:
        ds = ds.subset(train=args.train_size, test=args.test_size)
    return ds


def load_any(args, recorded: dict | None = None, training: bool = False, notes: list | None = None) -> FileData:
    """The data of a command as a :class:`distill.data.FileData`: ``--data PATH`` (``--target``),
    else ``--dataset``, else the data recorded in the checkpoint's sidecar ``recorded``, else mnist;
    then the held-out splits of a file without its own (``--val-fraction``/``--test-fraction``; when
    ``training``, :data:`TEST_FRACTION` as the test split by default; the recorded ones when the
    recorded file is read again), then the ``--train-size``/``--test-size`` subsets. ``notes``: a list
    that gets the ``[defaults]`` notes instead of the log (a command prints them once its checks pass)."""
    if args.data is not None and args.dataset is not None:
        raise DistillError("give --data (your files) or --dataset (a built-in data set), not both")
    if args.data is not None and args.data_dir:
        raise DistillError("--data-dir locates the idx files of --dataset; --data names your own files")
    if args.target is not None and args.data is None:
        raise DistillError("--target names the label column of a --data table (CSV or Parquet)")
    if getattr(args, "image_size", None) is not None and args.data is None:
        raise DistillError("--image-size resizes the images of a --data folder")
    path, target, name = args.data, args.target, args.dataset
    if path is None and name is None and recorded:
        source = recorded.get("data_source") or {}
        if source.get("path"):
            path, target = source["path"], source.get("target")
            log(f"[data] --data {path}{f' --target {target}' if target else ''} (recorded in the checkpoint; give "
                "--data or --dataset for other data)")
        elif recorded.get("dataset") in D.LOADERS:
            name = recorded["dataset"]
        else:  # a checkpoint of the Python API: nothing says what it was trained on
            raise DistillError("the checkpoint records no data to evaluate on (it was not trained by `distill "
                               "teacher/student`): pass --data PATH or --dataset NAME")
    train_size, test_size = getattr(args, "train_size", None), args.test_size  # `compare` has no --train-size
    if path is None:
        ds = load_data(argparse.Namespace(**{**vars(args), "train_size": train_size}), name)
        return FileData.from_dataset(ds)
    if is_mask_npz(path):  # images and label masks
        return _segmentation_files(path, train_size, test_size)
    size = _image_size(args, recorded, path)
    data = load_files(path, target=target, image_size=size, max_side=DATA_RECIPE.image_side if training else None,
                      categories=(recorded or {}).get("categories"), features=(recorded or {}).get("features"), log=log)
    data = _held_out(args, data, path, recorded, training, log if notes is None else notes.append)
    for flag, n, src, split in (("--train-size", train_size, data.train, "training"),
                                ("--test-size", test_size, data.test, "test")):
        if n is not None and src is None:
            raise DistillError(f"{flag}: {data.name} has no {split} split")
        if n is not None and n > src.n:
            raise DistillError(f"{flag} {n} is larger than {data.name}'s {split} set ({src.n:,} examples)")
    if train_size or test_size:
        data = data.subset(train=train_size, test=test_size)
    return data


def _image_size(args, recorded: dict | None, path) -> tuple[int, int] | None:
    """The size images are read at: ``--image-size``, else, for an image folder, the size the
    checkpoint's images were trained at (``data_source.image_size`` of its sidecar; the folder says
    in one line when it resizes), else None (the folder's own size, or the most common of mixed
    sizes)."""
    asked = getattr(args, "image_size", None)
    if asked is not None:  # load_files checks it (and load_any that --data is given)
        return asked
    size = ((recorded or {}).get("data_source") or {}).get("image_size")  # checked with the sidecar
    return size if size is not None and is_image_folder(path) else None


def _held_out(args, data: FileData, path, recorded: dict | None, training: bool, note=log) -> FileData:
    """``data`` with the validation/test splits cut from its training split (see :func:`load_any`)."""
    val, test = getattr(args, "val_fraction", None), getattr(args, "test_fraction", None)
    seed = 0  # one cut of a file for every training seed, so that seeds compare on the same test split
    spec = ((recorded or {}).get("data_source") or {}).get("holdout")
    same_file = spec and str(Path(path).resolve()) == (recorded.get("data_source") or {}).get("path")
    if val is None and test is None and same_file:  # the checkpoint's own cut, so its test split is the same
        val, test, seed = spec.get("val_fraction", 0.0), spec.get("test_fraction", 0.0), spec.get("seed", 0)
        log(f"[data] the held-out splits the checkpoint was trained with: --val-fraction {val:g} --test-fraction "
            f"{test:g} (seed {seed})")
    else:
        if test is None and training and data.test is None:
            test = TEST_FRACTION
            note(f"[defaults] {data.name} has no test split: {TEST_FRACTION:.0%} of its training examples are held "
                 "out as one (stratified, seeded; --test-fraction 0 trains on all of them)")
        if val is None and training and data.val is None and getattr(args, "select", None) == "best":
            val = TEST_FRACTION
            note(f"[defaults] --select best needs a validation split and {data.name} has none: {TEST_FRACTION:.0%} "
                 "of its training examples are held out as one (--val-fraction to change)")
    return data.holdout(val or 0.0, test or 0.0, seed)


def _segmentation_files(path, train_size, test_size) -> FileData:
    """An .npz of images and masks (x_train, y_train, x_test, y_test) as a FileData; the masks are
    checked against the images and the class list (one-line errors)."""
    ds = load_segmentation_npz(path)
    _check_sizes(ds.name, ((train_size, len(ds.x_train)), (test_size, len(ds.x_test))))
    return FileData.from_dataset(ds.subset(train=train_size, test=test_size) if train_size or test_size else ds)


def _check_sizes(name: str, sizes) -> None:
    """``--train-size`` / ``--test-size`` (``sizes``: ``(asked, have)`` for each, in that order)
    larger than the split they subset is an error."""
    for flag, split, (n, have) in zip(("--train-size", "--test-size"), ("training", "test"), sizes):
        if n is not None and n > have:
            raise DistillError(f"{flag} {n} is larger than {name}'s {split} set ({have:,} examples)")


def check_data_dir(data_dir, name: str) -> None:
    """``--data-dir`` holding none of ``name``'s idx files but files of your own: an error pointing
    at ``--data`` (rather than falling through to the cached data set)."""
    folder = Path(data_dir) if data_dir else None
    spec = {"mnist": MNIST, "fashion-mnist": FASHION_MNIST}.get(name)  # the data sets read from idx files
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


def is_dense(data) -> bool:
    """Whether ``data`` (a FileData) has label masks, i.e. per-pixel classes."""
    y = getattr(data.train, "y", None)
    return y is not None and y.dim() > 1


# ---------------------------------------------------------------- does a checkpoint fit the data

def check_fits(what: str, side: dict, data) -> None:
    """A checkpoint whose recorded input shape, class count or class names do not fit ``data`` (a
    Dataset or a FileData; an unlabeled one has no classes to check) is an error."""
    shape, classes = side.get("input_shape"), side.get("num_classes")
    have = list(data.input_shape) if hasattr(data, "input_shape") else list(data.x_train.shape[1:])
    if shape is not None and list(shape) != have:
        hint = ""
        if getattr(data, "image_shape", None) and len(shape) == len(have) >= 2 and shape[:-2] == have[:-2]:
            hint = f" (--image-size {shape[-2]} {shape[-1]} reads the images at its size)"
        raise DistillError(f"{what} takes inputs of shape {tuple(shape)}, but {data.name}'s are {tuple(have)}{hint}")
    inferred = getattr(data, "classes_inferred", False)  # labels 0..max seen: a model may know more classes
    if classes is not None and data.num_classes and classes != data.num_classes and not (
            inferred and classes > data.num_classes):
        raise DistillError(f"{what} predicts {classes} classes, but {data.name} has {data.num_classes}")
    names = side.get("classes")
    if names and data.num_classes and not inferred and [str(c) for c in names] != [str(c) for c in data.classes]:
        show = ", ".join(map(str, names[:6])) + (", ..." if len(names) > 6 else "")
        have_ = ", ".join(map(str, data.classes[:6])) + (", ..." if len(data.classes) > 6 else "")
        raise DistillError(f"{what} was trained on other data: its classes are ({show}), {data.name}'s are ({have_})")


def run_on(what: str, fn, x, data):
    """``fn(x)``, where a model that cannot take ``x`` is a one-line DistillError, and so are
    outputs that are not one score per class of ``data``."""
    try:
        out = fn(x)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistillError(f"{what} cannot run on {data.name}'s inputs of shape {tuple(x.shape[1:])} "
                           f"({first})") from None
    if (out.dim() != 2 and not (is_dense(data) and out.dim() >= 3)) or (
            data.num_classes and out.shape[1] != data.num_classes and not (
                getattr(data, "classes_inferred", False) and out.shape[1] > data.num_classes)):
        raise DistillError(f"{what} returns outputs of shape {tuple(out.shape[1:])}, but {data.name} has "
                           f"{data.num_classes} classes")
    return out


# ---------------------------------------------------------------- reporting

def dense_line(m: dict) -> str:
    """The metrics of a segmentation model, as the result lines of ``teacher``, ``student`` and
    ``evaluate`` print them."""
    return (f"mIoU {m['miou']:.4f} (without background {m['miou_fg']:.4f}), pixel accuracy "
            f"{100 * m['pixel_accuracy']:.2f}% of {m['n']:,} labelled pixels, nll {m['nll']:.4f}")


def user_model(target: str, model_args: str | None):
    """``(model, (target, kwargs))`` from ``--model target --model-args JSON``."""
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

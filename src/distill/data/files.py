"""Your own data from files: a ``.npz`` archive, a folder of images, a CSV or Parquet table.

:func:`load_files` reads any of them into a :class:`FileData`: training, validation and test
splits as :mod:`distill.data.sources` sources, the class list, and the input and image shapes.
``distill.fit`` takes it as it is (its training split, and its test split as ``test``); pass the
validation split yourself: ``fit(model, data, config, val=data.val)``.

Layouts (``path`` is a file or a folder):

* ``X.npz``: arrays ``x_train`` and ``y_train``, optionally ``x_val``, ``y_val``, ``x_test``,
  ``y_test`` and ``classes`` (class names; without it the classes are ``0 .. max label``, and a
  teacher that knows more of them is accepted). Examples of any shape; ``x_train`` without
  ``y_train`` is an unlabeled transfer set. ``uint8`` inputs are scaled to [0, 1] (divided by 255), other
  numbers are used as they are; labels are integers ``0 .. C-1``.
* a folder ``train/<class>/*.png|jpg`` (optional ``val/<class>/``, ``test/<class>/``), read with
  Pillow. The classes are the sorted names of ``train``'s sub-folders; images directly in
  ``train/`` (no sub-folders) are an unlabeled transfer set; a folder of class folders with no
  ``train/`` is a training split alone. Images of mixed sizes are resized (Pillow's antialiased
  bilinear filter) to the most common size, or every image to ``image_size`` ``(H, W)`` when it is
  given; grey-scale images give examples ``(H, W)``, any colour image makes every example
  ``(3, H, W)``; pixel values are scaled to [0, 1].
* a table ``X.csv`` / ``X.tsv`` / ``X.parquet`` with ``target`` naming the label column (every
  other column is a feature: numbers, or text, which is categorical: each value is read as its
  code, numbered in order of first appearance in the training split, and recorded in
  :attr:`FileData.categories`; a text column of over ``MAX_CATEGORIES`` distinct values, a name or
  an id, is left out; an empty cell is NaN, a missing value), or a folder holding ``train.csv`` (or ``.tsv``,
  ``.parquet``) and optionally ``val.*`` and ``test.*``. A CSV/TSV file whose first line holds
  numbers where the second does (:func:`has_header`) has no header: that line is data and the
  columns are named by position (``"0"``, ``"1"``, ...). An unnamed first column of distinct
  whole numbers is the row index pandas writes, and is not a feature. The classes are the sorted
  distinct values of the training split's
  target column (numbers or strings); validation and test values must be among them.

Anything else (no usable file, a missing column, labels outside the class
list, infinite values) is a one-line :class:`~distill.errors.DistillError` naming the
path and what was expected.

Memory: when the data, as float32, would take more than ``memory_limit`` bytes (default a quarter
of the memory available, or ``$DISTILL_DATA_MEMORY``, e.g. ``2G``), image folders are read
lazily (each image when its batch is drawn) and tables are streamed once into a float32 file
in the cache (``$DISTILL_CACHE/tables``), read row by row through a memory map. Only the labels
are held in memory. ``.npz`` archives are always read into memory.

Declared sizes: every array of an ``.npz`` (each, and those read together) and every image may
declare at most ``MAX_ARRAY_BYTES`` (an eighth of the physical memory, or
``$DISTILL_MAX_ARRAY_BYTES``, e.g. ``4G``). The sizes are read from the ``.npy`` headers and image
headers before any data is decompressed, so a small compressed file cannot make the reader
allocate what it merely claims. A damaged archive (not a zip, truncated, a bad checksum) is a
one-line error naming it.

Fingerprints are digests of the content read: the float32 tensors of an ``.npz`` or a table,
the image files' bytes and their labels for a folder; they do not depend on the memory mode.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import re
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Subset

from distill.checks import did_you_mean, show_names
from distill.errors import DistillError
from distill.data.sources import MapSource, Source, TensorSource, data_digest
from distill.data.dataset import stratified_indices
from distill.data.fetch import cache_root

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
#: the field separator of each delimited-text kind
SEPARATORS = {"csv": ",", "tsv": "\t"}
SPLITS = ("train", "val", "test")
MEMORY_ENV = "DISTILL_DATA_MEMORY"
MAX_ARRAY_ENV = "DISTILL_MAX_ARRAY_BYTES"
#: rows per chunk when streaming a table
TABLE_CHUNK = 65536
GREY_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")

EXPECTED = ("a .npz archive (x_train, y_train, optional x_val/y_val/x_test/y_test), a folder of images "
            "(train/<class>/*.png|jpg, optional val/ and test/), or a CSV/TSV/Parquet table with --target COLUMN "
            "(or a folder with train.csv|train.tsv|train.parquet, optional val.* and test.*)")


# ---------------------------------------------------------------- the result

@dataclass(frozen=True)
class FileData:
    """A data set read from files: ``train``, ``val``, ``test`` sources (``val``/``test`` None
    when absent), ``classes`` (names; empty for an unlabeled set without labelled splits),
    ``input_shape`` (one example's shape), ``image_shape`` ((H, W) for images, else None),
    ``fingerprint`` (of all splits) and ``lazy`` (read on demand, not held in memory)."""

    name: str
    train: Source
    val: Source | None
    test: Source | None
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    image_shape: tuple[int, int] | None
    fingerprint: str
    lazy: bool = False
    #: the class list was inferred from the labels present (``0 .. max label``: an ``.npz`` without
    #: ``classes``), so a model may know more classes than it names
    classes_inferred: bool = False
    #: a table's feature columns, in the order the model sees them (empty for other data)
    features: tuple[str, ...] = ()
    #: the held-out splits cut from the training split (:meth:`holdout`), as recorded: None if none
    holdout_spec: dict | None = None
    #: a table's categorical (text) columns: ``{column: (value of code 0, value of code 1, ...)}``;
    #: such a column's feature is the code of its value (NaN when missing or unseen in training)
    categories: dict = field(default_factory=dict)

    @property
    def category_counts(self) -> list[int]:
        """Per feature, its number of categories (0 for a numeric column): what
        :class:`distill.models.Standardize` one-hot encodes."""
        return [len(self.categories.get(c, ())) for c in self.features] if self.categories else []

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def labeled(self) -> bool:
        return self.train.labeled

    def split(self, name: str) -> Source | None:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def training_source(self, fingerprint: str | None = None, name: str = "train") -> Source:
        """What ``fit`` trains on: the training split (its fingerprint is the files' digest)."""
        return self.train

    def test_source(self) -> Source | None:
        return self.test

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> "FileData":
        """A class-stratified random subset of ``train`` training and ``test`` test examples (as
        :meth:`distill.data.Dataset.subset`; a seeded random one for unlabeled data). The
        fingerprints change with the subset."""
        tag = f":sub{train}/{test}/s{seed}"
        tr = _take(self.train, train, seed, tag)
        te = _take(self.test, test, seed, tag) if self.test is not None else None
        return replace(self, train=tr, test=te, fingerprint=self.fingerprint + tag if (train or test) else
                       self.fingerprint)

    def holdout(self, val_fraction: float = 0.0, test_fraction: float = 0.0, seed: int = 0) -> "FileData":
        """Validation and test splits cut from the training split, for data without its own: a
        class-stratified, seeded ``test_fraction`` of the training examples becomes the test split,
        then ``val_fraction`` (of all of them) of the rest the validation split; the fingerprints
        change with the cut, and :attr:`holdout_spec` records it (so ``evaluate`` cuts the same)."""
        for name, f in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
            if not 0.0 <= f < 1.0:
                raise DistillError(f"{name} must be in [0, 1), got {f:g}")
        if val_fraction + test_fraction >= 0.9:
            raise DistillError(f"--val-fraction {val_fraction:g} and --test-fraction {test_fraction:g} leave too "
                               "little to train on (they must add up to less than 0.9)")
        for name, f, have in (("--val-fraction", val_fraction, self.val), ("--test-fraction", test_fraction,
                                                                           self.test)):
            if f and have is not None:
                raise DistillError(f"{name}: {self.name} has its own {name[2:-9]} split; a fraction is cut only "
                                   "from data without one")
        n = self.train.n
        n_test, n_val = round(n * test_fraction), round(n * val_fraction)
        if (test_fraction and n_test < 1) or (val_fraction and n_val < 1) or n - n_test - n_val < 2:
            raise DistillError(f"{self.name} has {n} training examples: too few to hold out "
                               f"{val_fraction:g} and {test_fraction:g} of them")
        if not n_test and not n_val:
            return self
        y = split_labels(self.train)
        every = torch.arange(n)
        test_idx = stratified_indices(y, n_test, seed) if n_test else every[:0]
        rest = every[~torch.isin(every, test_idx)]
        val_idx = (rest[stratified_indices(None if y is None else y[rest], n_val, seed + 1, length=len(rest))]
                   if n_val else every[:0])
        train_idx = rest[~torch.isin(rest, val_idx)]
        tag = f":holdout{val_fraction:g}/{test_fraction:g}/s{seed}"
        spec = dict(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        return replace(self, train=_rows(self.train, train_idx, tag + ":train", "train"),
                       val=_rows(self.train, val_idx, tag + ":val", "val") if n_val else self.val,
                       test=_rows(self.train, test_idx, tag + ":test", "test") if n_test else self.test,
                       fingerprint=self.fingerprint + tag, holdout_spec=spec)

    @classmethod
    def from_dataset(cls, ds) -> "FileData":
        """The splits of an in-memory :class:`distill.data.Dataset` (MNIST and the like), with the
        sources ``fit`` would make of it (so the same runs and fingerprints)."""
        train = TensorSource(ds.x_train, ds.y_train, image_shape=ds.image_shape, name="train")
        test = (TensorSource(ds.x_test, ds.y_test, image_shape=ds.image_shape, name="test")
                if ds.x_test is not None and len(ds.x_test) else None)
        return cls(name=ds.name, train=train, val=None, test=test, classes=tuple(ds.classes),
                   input_shape=tuple(ds.x_train.shape[1:]), image_shape=ds.image_shape, fingerprint=ds.fingerprint)


def split_labels(src: Source) -> torch.Tensor | None:
    """The labels of a split read by this module (held in memory in every mode)."""
    if isinstance(src, TensorSource):
        return src.y

    def of(ds):
        if isinstance(ds, Subset):
            y = of(ds.dataset)
            return None if y is None else y[torch.as_tensor(ds.indices, dtype=torch.long)]
        return getattr(ds, "labels", None)

    return of(src.dataset)


def first_inputs(src: Source, n: int = 2) -> torch.Tensor:
    """The first ``n`` inputs of a split, as one batch."""
    x, _, _ = next(iter(src.ordered(n)))
    return x


def _take(src: Source, n: int | None, seed: int, tag: str) -> Source:

    if n is None or n >= src.n:
        return src
    keep = stratified_indices(split_labels(src), n, seed, length=src.n)
    return _rows(src, keep, tag, getattr(src, "name", "data"))


def _rows(src: Source, keep: torch.Tensor, tag: str, name: str) -> Source:
    """The rows ``keep`` of a split, as a source of their own (its fingerprint tagged)."""
    if isinstance(src, TensorSource):
        return TensorSource(src.x[keep], None if src.y is None else src.y[keep], fingerprint=src.fingerprint + tag,
                            image_shape=src.image_shape, name=name, missing=src.missing)
    return MapSource(Subset(src.dataset, keep.tolist()), fingerprint=src.fingerprint + tag, name=name,
                     missing=src.missing)


# ---------------------------------------------------------------- entry point

def _env_size(env: str) -> int | None:
    """The size in ``$env`` (bytes, with an optional K, M or G suffix), None when unset."""
    text = os.environ.get(env, "").strip()
    if not text:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgG]?)[bB]?", text)
    if not m:
        raise DistillError(f"${env}={text!r} is not a size; give bytes, e.g. 2G or 500M")
    return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()])


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


#: the most bytes one ``.npz`` array (and all the arrays read from one archive) or one decoded image
#: may declare, checked in the headers before any data is decompressed: an eighth of the physical
#: memory (uint8 inputs grow fourfold as float32), at least 512 MiB; ``$DISTILL_MAX_ARRAY_BYTES``
#: overrides it
MAX_ARRAY_BYTES = max(_physical_memory() // 8, 512 << 20)


def max_array_bytes() -> int:
    """The declared-size budget: ``$DISTILL_MAX_ARRAY_BYTES`` (read at each call), else MAX_ARRAY_BYTES."""
    size = _env_size(MAX_ARRAY_ENV)
    return MAX_ARRAY_BYTES if size is None else size


def memory_budget(memory_limit: int | None = None) -> int:
    """Bytes of float32 data to hold in memory: ``memory_limit``, else ``$DISTILL_DATA_MEMORY``
    (a number of bytes, with an optional K, M or G suffix), else a quarter of the memory available."""
    if memory_limit is not None:
        return int(memory_limit)
    size = _env_size(MEMORY_ENV)
    if size is not None:
        return size
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 << 30
    return max(avail // 4, 64 << 20)


def load_files(path, *, target: str | None = None, image_size: tuple[int, int] | None = None,
               max_side: int | None = None, memory_limit: int | None = None, categories: dict | None = None,
               features: list | None = None, log=print) -> FileData:
    """Read the data set at ``path`` (module docstring: ``.npz``, image folder, CSV/Parquet with
    ``target``; ``image_size`` ``(H, W)`` resizes every image of a folder; without it, ``max_side``
    scales the folder's size down, aspect kept, until neither side exceeds it; ``categories``: a
    table's categorical columns and their values in code order, as a checkpoint records them,
    instead of those of its training split; ``features``: a table's feature columns in order, as a
    checkpoint records them: the others are left out, said once). Bad input is a one-line
    :class:`DistillError` naming the path."""
    p = Path(path)
    if not p.exists():
        raise DistillError(f"--data {p} does not exist; expected {EXPECTED}")
    if image_size is not None:
        image_size = check_image_size(image_size)
        if not is_image_folder(p):
            raise DistillError(f"--image-size resizes the images of a folder; {p} is not an image folder")
    budget = memory_budget(memory_limit)
    suffix = p.suffix.lower()
    if p.is_file():
        if suffix == ".npz":
            _no_target(target, p)
            return _read_npz(p, log)
        if suffix in TABLE_SUFFIXES:
            return _read_tables(p, {"train": p}, target, budget, log, categories, features)
        raise DistillError(f"{p}: cannot read a {suffix or 'suffix-less'} file; expected {EXPECTED}")
    tables = {s: f for s in SPLITS for f in _table_files(p, s)[:1]}
    for s in SPLITS:
        if len(_table_files(p, s)) > 1:
            raise DistillError(f"{p} holds several {s} tables ({', '.join(f.name for f in _table_files(p, s))}); "
                               "keep one")
    if (p / "train").is_dir():
        if "train" in tables:
            raise DistillError(f"{p} holds both a train/ folder and {tables['train'].name}; keep one")
        _no_target(target, p)
        return _read_images(p, {s: p / s for s in SPLITS if (p / s).is_dir()}, budget, log, image_size, max_side)
    if "train" in tables:
        return _read_tables(p, tables, target, budget, log, categories, features)
    if any(d.is_dir() and _images_in(d) for d in _subdirs(p)):
        _no_target(target, p)
        log(f"[data] {p} has no train/ folder: its class folders are the training split (held-out splits: "
            "--val-fraction, --test-fraction)")
        return _read_images(p, {"train": p}, budget, log, image_size, max_side)
    raise DistillError(f"{p} holds no usable data; expected {EXPECTED}")


#: the largest side ``image_size`` may ask for
MAX_IMAGE_SIDE = 8192


def check_image_size(size) -> tuple[int, int]:
    """``size`` as ``(H, W)``: one positive integer (a square) or two, each at most MAX_IMAGE_SIDE."""
    vals = [size] if isinstance(size, int) else list(size)
    if not 1 <= len(vals) <= 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_IMAGE_SIDE
                                          for v in vals):
        raise DistillError(f"--image-size takes one or two whole numbers of pixels in 1..{MAX_IMAGE_SIDE} (H W, or "
                           f"one for a square), got {size!r}")
    return (vals[0], vals[-1])


def is_image_folder(path) -> bool:
    """Whether :func:`load_files` reads ``path`` as a folder of images (a folder without tables)."""
    p = Path(path)
    return p.is_dir() and not any(_table_files(p, s) for s in SPLITS)


def _no_target(target, p):
    if target is not None:
        raise DistillError(f"--target names a column of a CSV or Parquet table; {p} is not a table")


def _table_files(folder: Path, split: str) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.stem == split and f.suffix.lower() in TABLE_SUFFIXES)


def _subdirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_in(d: Path) -> list[Path]:
    return sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                  and not f.name.startswith("."))


def _fingerprint(parts: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(parts):
        h.update(f"{k}={parts[k]};".encode())
    return "sha256:" + h.hexdigest()[:16]


# ---------------------------------------------------------------- .npz

NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "classes")

#: what reading a damaged zip member can raise: a bad checksum or header (BadZipFile), corrupt
#: deflate data (zlib.error), a short member (EOFError, or numpy's ValueError), an encrypted or
#: unknown compression (RuntimeError, NotImplementedError)
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, RuntimeError, NotImplementedError)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _unreadable(p: Path, e: BaseException | str, key: str | None = None) -> DistillError:
    why = e if isinstance(e, str) else _first_line(e)
    where = f"array {key}: " if key else ""
    return DistillError(f"{p} is not a readable .npz archive ({where}{why}); save the arrays again with "
                        "numpy.savez (x_train, y_train, ...)")


class NpzArchive:
    """An ``.npz`` read without trusting it: :meth:`header` gives an array's shape and dtype from
    its ``.npy`` header (nothing decompressed), :meth:`read` checks the declared sizes against
    :func:`max_array_bytes` before reading any data, and every damage (not a zip, truncated, a bad
    checksum, corrupt compressed data, object arrays) is a one-line :class:`DistillError` naming
    the file. Use as a context manager."""

    def __init__(self, path):
        self.path = p = Path(path)
        try:
            with open(p, "rb") as f:
                magic = f.read(6)
        except OSError as e:
            raise DistillError(f"cannot read {p} ({e.strerror or e})") from None
        if magic == b"\x93NUMPY":
            raise DistillError(f"{p} holds a single array (numpy.save), not an .npz archive of named arrays "
                               "(x_train, y_train, ...); save them with numpy.savez")
        if not zipfile.is_zipfile(p):
            raise _unreadable(p, "not a zip file; it may be truncated")
        try:
            self.zip = zipfile.ZipFile(p)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
            raise _unreadable(p, e) from None
        # numpy names an archive's arrays after its members, less the .npy suffix
        self.members = {info.filename[:-4]: info for info in self.zip.infolist() if info.filename.endswith(".npy")}
        self._headers = {}

    @property
    def files(self) -> set[str]:
        return set(self.members)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """The shape and dtype that array ``key`` declares, read from its header alone."""
        from numpy.lib import format as npy

        if key not in self._headers:
            try:
                with self.zip.open(self.members[key]) as f:
                    version = npy.read_magic(f)
                    if version not in ((1, 0), (2, 0), (3, 0)):
                        raise ValueError(f"unknown .npy format version {version}")
                    # version 3.0 differs from 2.0 only in allowing UTF-8 field names
                    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                    shape, _, dtype = read(f)
            except _ZIP_ERRORS as e:
                raise _unreadable(self.path, e, key) from None
            if any(d < 0 for d in shape):
                raise _unreadable(self.path, f"negative dimension in shape {shape}", key)
            self._headers[key] = (tuple(shape), dtype)
        return self._headers[key]

    def read(self, keys) -> dict[str, np.ndarray]:
        """The arrays ``keys`` that the archive holds (the others are left out), once their declared
        sizes, each and all together, fit :func:`max_array_bytes`."""
        from numpy.lib import format as npy

        keys = [k for k in keys if k in self.members]
        budget, total = max_array_bytes(), 0
        for key in keys:
            shape, dtype = self.header(key)
            if dtype.hasobject:  # object arrays need pickle, which is never used
                raise DistillError(f"{self.path}: array {key} holds Python objects ({dtype}) and cannot be read "
                                   "without pickle; save plain numeric arrays")
            size = math.prod(shape) * dtype.itemsize
            if size > budget:
                raise DistillError(f"{self.path}: array {key} declares shape {shape} of {dtype} ({_size(size)}), "
                                   f"over the memory budget for arrays ({_size(budget)}); set ${MAX_ARRAY_ENV} "
                                   "higher if the machine has the memory, or save smaller arrays")
            total += size
        if total > budget:
            raise DistillError(f"{self.path}: arrays {', '.join(keys)} declare {_size(total)} together, over the "
                               f"memory budget for arrays ({_size(budget)}); set ${MAX_ARRAY_ENV} higher if the "
                               "machine has the memory, or save smaller arrays")
        arrays = {}
        for key in keys:
            try:
                with self.zip.open(self.members[key]) as f:
                    arrays[key] = npy.read_array(f, allow_pickle=False)
                    f.read(1)  # reach the member's end, where zipfile checks its CRC
            except _ZIP_ERRORS as e:
                raise _unreadable(self.path, e, key) from None
        return arrays


def _read_npz(p: Path, log) -> FileData:
    with NpzArchive(p) as archive:
        keys = archive.files
        if "x_train" not in keys:
            raise DistillError(f"{p} has no array x_train (it has {', '.join(sorted(keys)) or 'none'}); expected "
                               "x_train, y_train and optionally x_val, y_val, x_test, y_test")
        extra = sorted(keys - set(NPZ_KEYS))
        if extra:
            log(f"[data] {p}: ignoring arrays {', '.join(extra)} (read: {', '.join(NPZ_KEYS)})")
        got = archive.read(NPZ_KEYS)
    arrays = {k: got.pop(k, None) for k in NPZ_KEYS}
    names = None
    if arrays["classes"] is not None:
        c = arrays["classes"]
        if c.ndim != 1 or c.dtype.kind not in "USiu" or not len(c):
            raise DistillError(f"{p}: classes must be a non-empty vector of class names, got {c.dtype} of shape "
                               f"{c.shape}")
        names = tuple(str(v) for v in c.tolist())
    xs, ys = {}, {}
    for split in SPLITS:
        # popped: the raw arrays are freed as soon as their float32 copies exist
        x, y = arrays.pop(f"x_{split}"), arrays.pop(f"y_{split}")
        if x is None:
            if y is not None:
                raise DistillError(f"{p} has y_{split} but no x_{split}")
            continue
        xs[split] = _npz_inputs(p, f"x_{split}", x)
        if y is None and split != "train":
            raise DistillError(f"{p} has x_{split} but no y_{split}: the {split} split needs labels")
        ys[split] = None if y is None else _npz_labels(p, split, y, len(xs[split]))
    x = y = None
    shape = tuple(xs["train"].shape[1:])
    for split in xs:
        if tuple(xs[split].shape[1:]) != shape:
            raise DistillError(f"{p}: x_{split} holds examples of shape {tuple(xs[split].shape[1:])}, but x_train's "
                               f"are {shape}")
    labelled = [y for y in ys.values() if y is not None]
    top = max((int(y.max()) for y in labelled if len(y)), default=-1)
    inferred = names is None
    if names is None:
        names = tuple(str(c) for c in range(top + 1)) if top >= 0 else ()
    elif top >= len(names):
        split = next(s for s, y in ys.items() if y is not None and len(y) and int(y.max()) == top)
        raise DistillError(f"{p}: y_{split} holds label {top}, outside the class list ({len(names)} classes: "
                           f"{_show(names)}); labels must be 0..{len(names) - 1}")
    image_shape = tuple(shape[-2:]) if len(shape) >= 2 else None
    sources = {s: TensorSource(xs[s], ys[s], image_shape=image_shape, name=s) for s in xs}
    return FileData(name=str(p), train=sources["train"], val=sources.get("val"), test=sources.get("test"),
                    classes=names, input_shape=shape, image_shape=image_shape,
                    fingerprint=_fingerprint({s: src.fingerprint for s, src in sources.items()}),
                    classes_inferred=inferred)


def _npz_inputs(p: Path, key: str, x: np.ndarray) -> torch.Tensor:
    if x.ndim < 2 or not len(x):
        raise DistillError(f"{p}: {key} must hold examples along its first axis (shape (n, ...), n >= 1), "
                           f"got shape {x.shape}")
    if x.dtype.kind not in "iuf":
        raise DistillError(f"{p}: {key} must hold numbers, got dtype {x.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(x))
    # in place: one float32 copy of the inputs, not two
    t = t.float().div_(255.0) if x.dtype == np.uint8 else t.float()
    if x.dtype.kind == "f" and not _all_finite(t):
        raise DistillError(f"{p}: {key} contains NaN or infinity")
    return t


def _all_finite(t: torch.Tensor, step: int = 1 << 22) -> bool:
    """``torch.isfinite(t).all()`` in slices: isfinite makes temporaries the size of its input."""
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + step]).all()) for i in range(0, flat.numel(), step))


def _npz_labels(p: Path, split: str, y: np.ndarray, n: int) -> torch.Tensor:
    if y.dtype.kind not in "iu":
        hint = " (cast with y.astype(int) if they are whole numbers)" if y.dtype.kind == "f" else ""
        raise DistillError(f"{p}: y_{split} must hold integer class labels 0..C-1, got dtype {y.dtype}{hint}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise DistillError(f"{p}: y_{split} must be a vector of {n} labels (one per x_{split} example), got "
                           f"shape {y.shape}")
    if len(y) and int(y.min()) < 0:
        raise DistillError(f"{p}: y_{split} holds label {int(y.min())}; labels must be 0..C-1")
    return torch.from_numpy(y.astype(np.int64))


def _size(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:,.1f} GiB"
    if n >= 10 * 2**20:
        return f"{n / 2**20:,.0f} MiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _show(names, k: int = 8) -> str:
    return show_names(names, k)  # the first k, then "and N more"


# ---------------------------------------------------------------- image folders

class ImageFiles(TorchDataset):
    """Image files read when asked for: items ``(x, label)`` (``(x,)`` unlabeled), ``x`` float32
    in [0, 1] of shape ``(H, W)`` (``channels`` 1) or ``(3, H, W)``."""

    def __init__(self, files: list[Path], labels: torch.Tensor | None, channels: int,
                 size: tuple[int, int] | None = None):
        self.files, self.labels, self.channels, self.size = files, labels, channels, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        x = torch.from_numpy(_decode(self.files[i].read_bytes(), self.channels, self.files[i], self.size))
        return (x,) if self.labels is None else (x, int(self.labels[i]))


_IMAGE_ERRORS = (OSError, ValueError)  # with UnidentifiedImageError, itself an OSError


def _open_image(source, where):
    """``Image.open(source)`` (the header only), where a size that Pillow takes for a decompression
    bomb, or one over :func:`max_array_bytes` as float32, is a one-line error."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Pillow warns above Image.MAX_IMAGE_PIXELS and refuses above twice that: both refuse here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DistillError(f"{where} is too large to read ({_first_line(e)}); resize it or leave it out") from None
    except _IMAGE_ERRORS as e:
        raise DistillError(f"{where}: not a readable image ({e})") from None
    w, h = img.size
    channels = 1 if img.mode in GREY_MODES else 3
    need, budget = w * h * channels * 4, max_array_bytes()
    if need > budget:
        img.close()
        raise DistillError(f"{where} declares {w}x{h} pixels ({_size(need)} as float32), over the memory budget "
                           f"for one image ({_size(budget)}); resize it, or set ${MAX_ARRAY_ENV} higher if the "
                           "machine has the memory")
    return img


def _decode(data: bytes, channels: int, where, size: tuple[int, int] | None = None) -> np.ndarray:
    """The image as float32 ``(H, W)`` or ``(3, H, W)`` in [0, 1]; resized first to ``size``
    ``(W, H)`` (Pillow's order) when it has another size."""
    from PIL import Image

    img = _open_image(io.BytesIO(data), where)
    try:
        img.load()
        if size is not None and img.size != tuple(size):
            if img.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
                img = img.convert("I")  # 16-bit modes resize as 32-bit integers
            elif img.mode in ("1", "P", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB" if channels == 3 else "L")
            img = img.resize(tuple(size), Image.Resampling.BILINEAR)
    except _IMAGE_ERRORS as e:
        raise DistillError(f"{where}: not a readable image ({e})") from None
    if channels == 3:
        return np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(img, dtype=np.float32) / 65535.0  # (a 16-bit image resized is mode I)
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def _list_split(root: Path, split: str, classes: tuple[str, ...] | None, log) -> tuple[list[Path], list[int] | None,
                                                                                      tuple[str, ...]]:
    """Files and labels of one split folder: ``<class>/*.png|jpg`` (``classes`` None: this is
    the training split, whose sub-folders define them) or images directly in it (unlabeled)."""
    subdirs = _subdirs(root)
    loose = _images_in(root)
    if subdirs and loose:
        raise DistillError(f"{root} holds both images and class folders; put every image in a class folder "
                           f"({root}/<class>/*.png)")
    if loose:
        if split != "train":
            raise DistillError(f"{root} holds images outside class folders; the {split} split needs labels: "
                               f"{root}/<class>/*.png")
        return loose, None, classes or ()
    if not subdirs:
        raise DistillError(f"{root} holds no images; expected {root}/<class>/*.png|jpg")
    if classes is None:
        classes = tuple(d.name for d in subdirs)
    index = {c: i for i, c in enumerate(classes)}  # linear in the classes, where tuple.index is not
    files, labels, skipped = [], [], 0
    for d in subdirs:
        if d.name not in index:
            raise DistillError(f"{d}: class {d.name!r} is not one of the training classes ({_show(classes)})")
        imgs = _images_in(d)
        skipped += sum(1 for f in d.iterdir() if f.is_file() and not f.name.startswith(".")) - len(imgs)
        if not imgs and split == "train":
            raise DistillError(f"{d} holds no .png or .jpg images; every training class needs examples")
        files += imgs
        labels += [index[d.name]] * len(imgs)
    if skipped:
        log(f"[data] {root}: skipped {skipped} files that are not .png/.jpg/.jpeg")
    if not files:
        raise DistillError(f"{root} holds no .png or .jpg images in its class folders")
    return files, labels, classes


def capped_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` (either order) scaled by ``max_side / max(size)`` when its longer side exceeds
    ``max_side``, each side rounded and at least 1; else ``size`` itself."""
    longest = max(size)
    if longest <= max_side:
        return tuple(size)
    return tuple(max(1, round(v * max_side / longest)) for v in size)


def _read_images(p: Path, roots: dict[str, Path], budget: int, log, image_size=None, max_side=None) -> FileData:
    listed = {}
    files, labels, classes = _list_split(roots["train"], "train", None, log)
    listed["train"] = (files, labels)
    if labels is None:  # unlabeled training images: the classes come from the val/test folders
        classes = tuple(sorted({d.name for s in ("val", "test") if s in roots for d in _subdirs(roots[s])}))
    for split in ("val", "test"):
        if split in roots:
            f, y, _ = _list_split(roots[split], split, classes, log)
            listed[split] = (f, y)
    # headers only: the sizes, and grey or colour
    sizes, colour = {}, False
    for split, (flist, _) in listed.items():
        for f in flist:
            with _open_image(f, f) as img:
                s, mode = img.size, img.mode
            sizes[s] = sizes.get(s, 0) + 1
            colour = colour or mode not in GREY_MODES
    channels = 3 if colour else 1
    total = sum(sizes.values())
    if image_size is not None:
        size, how = (image_size[1], image_size[0]), ", the size given"
    else:  # the most common size (on a tie the smaller one, then the wider), else one size for all
        size = max(sizes, key=lambda s: (sizes[s], -s[0] * s[1], s[0]))
        how = f", the most common of their {len(sizes)} sizes; --image-size H W for another"
        if max_side is not None and max(size) > max_side:
            capped = capped_size(size, max_side)
            own = "their" if len(sizes) == 1 else f"the most common of their {len(sizes)} sizes,"
            log(f"[defaults] {p}: images are read at {capped[1]}x{capped[0]} (H x W), not {own} {size[1]}x{size[0]}: "
                f"a side is at most {max_side} pixels by default, to keep training quick (--image-size {size[1]} "
                f"{size[0]} keeps it)")
            size, how = capped, None
    resized = total - sizes.get(size, 0)
    w, h = size
    if resized and how is not None:
        log(f"[data] {p}: {resized:,} of {total:,} images resized to {h}x{w} (H x W{how})")
    target = size if resized else None
    shape = (3, h, w) if colour else (h, w)
    lazy = total * channels * h * w * 4 > budget
    if lazy:
        log(f"[data] {p}: {total:,} images of {'x'.join(map(str, shape))} exceed the memory budget "
            f"({_size(budget)}, ${MEMORY_ENV}); they are read as batches are drawn")
    sources, prints = {}, {}
    for split, (flist, ylist) in listed.items():
        y = None if ylist is None else torch.tensor(ylist, dtype=torch.int64)
        # resized examples are other examples: the size joins their identity
        h_ = hashlib.sha256(f"{len(flist)}|{channels}|{f'{h}x{w}|' if target else ''}".encode())
        xs = None if lazy else torch.empty((len(flist), *shape), dtype=torch.float32)
        for i, f in enumerate(flist):
            data = f.read_bytes()
            h_.update(f"{-1 if y is None else int(y[i])}|{len(data)}|".encode())
            h_.update(data)
            if xs is not None:
                xs[i] = torch.from_numpy(_decode(data, channels, f, target))
        fp = "sha256:" + h_.hexdigest()[:16]
        prints[split] = fp
        if lazy:
            sources[split] = MapSource(ImageFiles(flist, y, channels, target), fingerprint=fp, name=split)
        else:
            sources[split] = TensorSource(xs, y, fingerprint=fp, image_shape=(h, w), name=split)
    return FileData(name=str(p), train=sources["train"], val=sources.get("val"), test=sources.get("test"),
                    classes=tuple(classes), input_shape=shape, image_shape=(h, w), fingerprint=_fingerprint(prints),
                    lazy=lazy)


# ---------------------------------------------------------------- tables

class TableRows(TorchDataset):
    """Rows of a float32 feature matrix (a memory map) and their labels: items ``(x, label)``."""

    def __init__(self, x: np.ndarray, labels: torch.Tensor):
        self.x, self.labels = x, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.from_numpy(np.array(self.x[i])), int(self.labels[i])


def _need(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DistillError(f"reading {what} needs {module.split('.')[0]}: pip install 'distill[tables]'") from None


def has_header(path: Path, sep: str = ",") -> bool:
    """Whether the first line of a delimited text table names its columns, judged against the
    second line: no header when some column holds a finite number on both lines and no column holds
    a number on the second line under a non-number or an empty field on the first (a name, or the
    unnamed index column pandas writes), except that first-line fields of exactly ``0, 1, ..., N-1``
    are the header of positional names. A file of one line has a header."""
    import csv

    with open(path, "rb") as f:
        lines = [f.readline(1 << 20).decode("utf-8", errors="replace") for _ in range(2)]
    rows = list(csv.reader([lines[0].lstrip("\ufeff"), lines[1]], delimiter=sep))
    if len(rows) < 2 or not rows[1]:
        return True
    first, second = ([c.strip() for c in r] for r in rows)
    if first == [str(i) for i in range(len(first))]:
        return True

    def number(c: str) -> bool:
        try:
            return math.isfinite(float(c))
        except ValueError:
            return False

    both = False
    for a, b in zip(first, second):
        if not b or not number(b):
            continue
        if not a or not number(a):
            return True  # a name (or the empty name of a written index) above a number
        both = True
    return not both


def _chunks(path: Path, kind: str, log=None):
    """The table as pandas DataFrames of up to TABLE_CHUNK rows; a delimited file without a header
    (:func:`has_header`) gets the columns ``"0"``, ``"1"``, ... (said once through ``log``)."""
    pd = _need("pandas", "CSV and Parquet tables")
    if kind in SEPARATORS:
        try:
            header = has_header(path, SEPARATORS[kind])
            reader = pd.read_csv(path, sep=SEPARATORS[kind], header=0 if header else None, chunksize=TABLE_CHUNK)
            for i, chunk in enumerate(reader):
                if not header:
                    chunk.columns = [str(c) for c in range(chunk.shape[1])]
                    if i == 0 and log is not None:
                        log(f"[data] {path}: the first line is a row of numbers, so the file has no header: it is "
                            f"read as data and the columns are numbered 0-{chunk.shape[1] - 1} (--target 0 is the "
                            "first)")
                yield chunk
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DistillError(f"{path} is not a readable {kind.upper()} table ({first})") from None
        return
    pq = _need("pyarrow.parquet", "Parquet tables")
    try:
        f = pq.ParquetFile(path)
        for batch in f.iter_batches(batch_size=TABLE_CHUNK):
            yield batch.to_pandas()
    except (OSError, ValueError) as e:  # pyarrow's errors derive from these
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistillError(f"{path} is not a readable Parquet file ({first})") from None


#: the name pandas gives an unnamed first column: the row index ``DataFrame.to_csv`` writes by default
INDEX_COLUMN = "Unnamed: 0"
#: column names (lower case, without "_" and spaces) that usually identify rows: a warning when their
#: values are distinct whole numbers
ID_NAMES = frozenset({"id", "idx", "index", "rowid", "rownumber", "recordid", "sampleid", "no"})


def _is_row_index(col) -> bool:
    """Whether a column holds distinct whole numbers, none negative: a written row index (0, 1, 2,
    ..., or the rows a split or a shuffle kept, which still encode the original order)."""
    a = col.to_numpy()
    return a.dtype.kind in "iu" and bool((a >= 0).all()) and len(np.unique(a)) == len(a)


def _class_key(v):
    return (0, float(v), "") if isinstance(v, (int, float, np.integer, np.floating)) else (1, 0.0, str(v))


def _label_values(path: Path, col, start: int):
    """A target column chunk as Python values (whole floats as ints); missing or fractional
    values are errors."""
    import pandas as pd

    if col.isna().any():
        row = start + int(np.flatnonzero(col.isna().to_numpy())[0])
        raise DistillError(f"{path}: the target column {col.name!r} is empty at row {row + 1}; every example "
                           "needs a label")
    if pd.api.types.is_bool_dtype(col):
        return [int(v) for v in col]
    if pd.api.types.is_numeric_dtype(col):
        a = col.to_numpy()
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
                bad = a[~(np.isfinite(a) & (a == np.round(a)))][0]
                raise DistillError(f"{path}: the target column {col.name!r} holds {bad!r}; class labels must be "
                                   "whole numbers or names")
            return [int(v) for v in a]
        return [int(v) for v in a]
    return [str(v) for v in col]


def _read_tables(p: Path, files: dict[str, Path], target: str | None, budget: int, log,
                 recorded: dict | None = None, recorded_features: list | None = None) -> FileData:
    if target is None:
        cols = ""
        try:
            first = next(iter(_chunks(files["train"], TABLE_SUFFIXES[files["train"].suffix.lower()])), None)
            cols = f" (columns: {show_names([str(c) for c in first.columns])})" if first is not None else ""
        except DistillError:
            pass
        raise DistillError(f"{files['train']} is a table: name its label column with --target COLUMN{cols}")
    features, classes, sources, prints, lazy = None, None, {}, {}, False
    if recorded_features is not None:
        features = [str(c) for c in recorded_features]
    left_out: set = set()  # columns that are not features: text of too many values, or not among the recorded ones
    # {column: {value: code}}: grown from the training split, unless a checkpoint's are given
    codes = {c: {str(v): i for i, v in enumerate(vals)} for c, vals in (recorded or {}).items()}
    for split in SPLITS:
        if split not in files:
            continue
        x, raw, features, was_lazy, gaps = _stream_table(files[split], target, features, budget, log, codes,
                                                   grow=split == "train" and recorded is None, left_out=left_out,
                                                   lenient=recorded_features is not None)
        lazy = lazy or was_lazy
        if classes is None:
            classes = sorted(set(raw), key=_class_key)
            if len(classes) < 2:
                raise DistillError(f"{files[split]}: the target column {target!r} holds a single class "
                                   f"({classes[0]!r}); classification needs two or more")
        index = {c: i for i, c in enumerate(classes)}
        for row, v in enumerate(raw):
            if v not in index:
                raise DistillError(f"{files[split]}: row {row + 1} has {target} = {v!r}, which is not one of the "
                                   f"training classes ({_show(map(str, classes))})")
        y = torch.tensor([index[v] for v in raw], dtype=torch.int64)
        if isinstance(x, np.memmap):
            fp = data_digest(torch.from_numpy(x), y)
            sources[split] = MapSource(TableRows(x, y), fingerprint=fp, name=split, missing=gaps)
        else:
            sources[split] = TensorSource(x, y, name=split, missing=gaps)  # empty cells are NaN
            fp = sources[split].fingerprint
        prints[split] = fp
    return FileData(name=str(p), train=sources["train"], val=sources.get("val"), test=sources.get("test"),
                    classes=tuple(str(c) for c in classes), input_shape=(len(features),), image_shape=None,
                    fingerprint=_fingerprint(prints), lazy=lazy, features=tuple(features),
                    categories={c: tuple(v) for c, v in codes.items() if c in features})


#: a text column with more distinct values than this in the training table's first chunk is left out of the
#: features (a name, an id), not one-hot encoded
MAX_CATEGORIES = 100


def table_inputs(frame, features, categories: dict | None = None) -> np.ndarray:
    """The float32 inputs a table model takes from a DataFrame of raw values (new rows to predict
    on, say): the columns ``features`` in that order (a checkpoint's ``features``), a text column's
    value as its code, its index in ``categories[column]`` (a checkpoint's ``categories``), and an
    empty cell, or a text not in the list, as NaN. Feed them to the model, or its ONNX file."""
    absent = [c for c in features if c not in frame.columns]
    if absent:
        raise DistillError(f"the table lacks the feature column(s) {_show(absent)}")
    out = np.empty((len(frame), len(features)), dtype=np.float32)
    for j, c in enumerate(features):
        if categories and c in categories:
            out[:, j] = _encode(Path("the table"), frame[c], {str(v): i for i, v in enumerate(categories[c])}, False,
                                0, lambda *a: None)
            continue
        try:
            out[:, j] = frame[c].to_numpy(dtype=np.float32, na_value=np.nan)
        except (TypeError, ValueError):
            raise DistillError(f"the table's column {c!r} holds text where the model takes numbers") from None
    return out


def _numeric(dtype) -> bool:
    """Whether a pandas column of ``dtype`` holds numbers (or booleans), not text."""
    import pandas as pd

    return pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)


def _encode(path: Path, col, codes: dict, grow: bool, start: int, log) -> np.ndarray:
    """A categorical column chunk as float codes (its values as text, numbered in order of first
    appearance in the training split; NaN where missing, or unseen when ``grow`` is False, said once)."""
    miss = col.isna().to_numpy()
    text = col.astype(str).to_numpy()
    if grow:
        for v in dict.fromkeys(text[~miss]):
            if v not in codes:
                codes[v] = len(codes)
                if len(codes) > MAX_CATEGORIES:
                    raise DistillError(f"{path}: column {col.name!r} holds over {MAX_CATEGORIES} distinct texts (e.g. "
                                       f"{text[~miss][0]!r}) after its first rows; a categorical column is one-hot "
                                       "encoded, so encode this one as numbers or drop it")
    out = np.array([codes.get(v, np.nan) for v in text], dtype=np.float32)
    out[miss] = np.nan
    unseen = ~miss & np.isnan(out)
    if unseen.any():
        row = start + int(np.flatnonzero(unseen)[0])
        log(f"[data] {path}: column {col.name!r} holds {int(unseen.sum())} value(s) the training split does not (e.g. "
            f"{text[unseen][0]!r} at row {row + 1}): read as missing")
    return out


def _stream_table(path: Path, target: str, features: list | None, budget: int, log, codes: dict, grow: bool,
                  left_out: set, lenient: bool = False):
    """Read one table in chunks: float32 features (in memory, or a memory-mapped file in the cache
    once they exceed ``budget`` bytes), the raw target values, the features, whether they were
    memory-mapped and whether any is missing (NaN). A text column is categorical
    (:func:`_encode`, its codes in ``codes[column]``; new ones only when ``grow``); an empty cell is
    NaN. Deriving the features (``features`` None), a text column of over ``MAX_CATEGORIES``
    distinct values in the first chunk (a name, an id, free text) is left out, said once, and added
    to ``left_out``, whose columns later splits may hold; with ``lenient`` (features a checkpoint
    recorded) any column beyond ``features`` is left out."""
    kind = TABLE_SUFFIXES[path.suffix.lower()]
    held, raw, n, spill, tmp, known, gaps = [], [], 0, None, None, None, False
    try:
        for chunk in _chunks(path, kind, log):
            cols = [str(c) for c in chunk.columns]
            chunk.columns = cols
            if target not in cols:
                guess = did_you_mean(target, cols)
                raise DistillError(f"{path} has no column {target!r} (columns: {show_names(cols)}); --target names "
                                   "the label column" + (f": did you mean {guess!r}?" if guess else ""))
            if features is None:
                features = [c for c in cols if c != target]
                if features and features[0] == INDEX_COLUMN and cols[0] == INDEX_COLUMN and _is_row_index(chunk[cols[0]]):
                    features = features[1:]
                    log(f"[data] {path}: the first column, unnamed and holding distinct whole numbers, is the row index "
                        "pandas writes (DataFrame.to_csv without index=False): it is left out of the features")
                if not features:
                    raise DistillError(f"{path} has no feature columns besides the target {target!r}")
                if grow:
                    wide = [c for c in features if c not in codes and not _numeric(chunk[c].dtype)
                            and chunk[c].nunique(dropna=True) > MAX_CATEGORIES]
                    for c in wide:
                        log(f"[data] {path}: column {c!r} holds {chunk[c].nunique(dropna=True):,} distinct texts (e.g. "
                            f"{chunk[c].dropna().iloc[0]!r}): a name, an id or free text, so it is left out of the "
                            f"features (a text column of up to {MAX_CATEGORIES} values is one-hot encoded)")
                    left_out.update(wide)
                    features = [c for c in features if c not in left_out]
                    if not features:
                        raise DistillError(f"{path} has no usable feature columns besides the target {target!r}")
                for c in features:
                    if c.strip().lower().replace("_", "").replace(" ", "") in ID_NAMES and _is_row_index(chunk[c]):
                        log(f"[data] {path}: column {c!r} holds a different whole number on every row: if it identifies "
                            "rows rather than measuring them, drop it (it is kept as a feature, and a table sorted by "
                            "class would hand the model its label)")
            if cols[0] == INDEX_COLUMN and INDEX_COLUMN not in features and target != INDEX_COLUMN:
                chunk = chunk.drop(columns=INDEX_COLUMN)  # the row index, left out as in the training table
                cols = cols[1:]
            # sets and a dict: membership tests on lists made wide tables quadratic in their columns
            if known is None:
                known = set(features)
            have = set(cols)
            missing = [c for c in features if c not in have]
            if missing:
                raise DistillError(f"{path} lacks the feature column(s) {_show(missing)} of the training table")
            extra = [c for c in cols if c != target and c not in known and c not in left_out]
            if extra and lenient:
                log(f"[data] {path}: column(s) {_show(extra)} are not among the checkpoint's features: left out")
                left_out.update(extra)
            elif extra:
                raise DistillError(f"{path} has column(s) {_show(extra)} that the training table does not have")
            if not len(chunk):  # a header without rows: "no rows" below, not "not numeric"
                continue
            dtypes = dict(zip(cols, chunk.dtypes))
            text = []  # the categorical features, by position
            for j, c in enumerate(features):
                numeric = _numeric(dtypes[c])
                if c in codes or (grow and not numeric and n == 0):
                    text.append(j)
                elif not numeric:
                    col = chunk[c]
                    sample = col.dropna()
                    eg = f", e.g. {sample.iloc[0]!r}" if len(sample) else ""
                    raise DistillError(f"{path}: feature column {c!r} holds text (dtype {col.dtype}{eg}) below row "
                                       f"{n + 1}, where the training table's first rows are numbers; make it one kind")
            if not text:  # all numbers: one conversion (per-column ones made wide tables slow)
                block = chunk[features].to_numpy(dtype=np.float32, na_value=np.nan)
            else:
                block = np.empty((len(chunk), len(features)), dtype=np.float32)
                texts = set(text)
                numbers = [j for j in range(len(features)) if j not in texts]
                if numbers:
                    block[:, numbers] = chunk[[features[j] for j in numbers]].to_numpy(dtype=np.float32,
                                                                                      na_value=np.nan)
                for j in text:
                    block[:, j] = _encode(path, chunk[features[j]], codes.setdefault(features[j], {}), grow, n, log)
            gaps = gaps or bool(np.isnan(block).any())
            if np.isinf(block).any():
                r, c = np.argwhere(np.isinf(block))[0]
                raise DistillError(f"{path}: row {n + r + 1}, column {features[c]!r} is infinite; fill or drop such "
                                   "rows first")
            raw += _label_values(path, chunk[target], n)
            n += len(block)
            if spill is None and (n * len(features) * 4 > budget):
                folder = cache_root() / "tables"
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.name + ".", suffix=".tmp")
                spill = os.fdopen(fd, "wb")
                for b in held:
                    spill.write(b.tobytes())
                held = []
                log(f"[data] {path}: over the memory budget ({_size(budget)}, ${MEMORY_ENV}); streaming "
                    f"it into {folder} and reading rows from there")
            if spill is not None:
                spill.write(block.tobytes())
            else:
                held.append(block)
        if n == 0:
            raise DistillError(f"{path} holds no rows, only column names; a table needs one row per example")
        if spill is None:
            return torch.from_numpy(np.concatenate(held)), raw, features, False, gaps
        spill.close()
        spill = None
        shape = (n, len(features))
        x = np.memmap(tmp, dtype=np.float32, mode="c", shape=shape)  # copy-on-write: never changes the file
        final = Path(tmp).with_name(f"{data_digest(torch.from_numpy(x)).split(':')[1]}-{n}x{len(features)}.f32")
        del x
        os.replace(tmp, final)
        tmp = None
        return np.memmap(final, dtype=np.float32, mode="c", shape=shape), raw, features, True, gaps
    finally:
        if spill is not None:
            spill.close()
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)

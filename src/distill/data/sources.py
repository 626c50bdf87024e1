"""Data sources: whatever a user hands :func:`distill.fit` becomes batches ``(x, y, idx)``.

:func:`as_source` accepts, the way scikit-learn coerces its inputs:

* a pair ``(x, y)`` or a single ``x`` of tensors or NumPy arrays (any real dtype for ``x``, made
  float32; any integer dtype for ``y``, made int64), or a dict ``{"x": ..., "y": ...}``:
  an in-memory :class:`TensorSource`, the fast path (one ``x[idx]`` gather per batch, no
  per-example Python);
* a map-style :class:`torch.utils.data.Dataset` whose items are ``(x, y)``, ``(x,)`` or ``x``
  (``(x,)``/``x``: an unlabeled transfer set): :class:`MapSource`, batched through a
  ``DataLoader`` over a seeded permutation, so every batch knows its example indices;
* an :class:`~torch.utils.data.IterableDataset` (a stream, length unknown) or a
  :class:`~torch.utils.data.DataLoader`: :class:`LoaderSource`, iterated as given (its own
  batch size and order; a stream of examples is batched by ``fit``'s batch size, a stream whose
  items are whole batches ``(x_batch, y_batch)`` is used as it is: :func:`stream_batch_size`);
  example indices are unknown, so a teacher runs on every batch;
* the package's own :class:`distill.data.Dataset`, or a :class:`distill.data.FileData` read from
  files by :func:`distill.data.load_files`: its training split (``fit`` also takes its test split
  when no ``test`` is given).

Every source has a ``fingerprint``, which keys run folders and soft-target stores, so a run on
other data never reuses an old result. It covers every example the source serves: in-memory arrays
and files are digested whole at once; a map-style dataset, a DataLoader or a stream is read once,
in full, the first time its fingerprint is asked for (:class:`~distill.digest.ExampleDigest`,
order-independent, so a shuffled loader keeps its identity), and :func:`distill.fit` checks during
the first epoch that the examples it trains on are the ones that were digested. Pass
``fingerprint=`` to :func:`as_source` (``data_id=`` to :func:`distill.fit`) to name the data
yourself instead: you then vouch that the name changes whenever the data do.
"""
from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data import Dataset as TorchDataset

from distill.digest import ExampleDigest, tensor_digest
from distill.distributed import shard


def as_features(x, what: str = "x", missing: bool = False) -> torch.Tensor:
    """``x`` (tensor, array or nested list) as a float32 CPU tensor with at least one example; any
    real dtype is accepted, complex, object, string and boolean data are not, and neither are NaN or
    infinity (scikit-learn's rules); with ``missing``, NaN (a missing value, which a preprocessing
    such as :class:`distill.models.Standardize` fills) is accepted."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            a = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what} could not be read as an array ({e})") from None
        if a.dtype == object or a.dtype.kind in "USV":
            raise ValueError(f"{what} must hold numbers, got an array of {a.dtype} (strings or mixed objects)")
        t = torch.from_numpy(np.ascontiguousarray(a)) if a.dtype.kind in "biuf" else None
        if t is None:
            raise ValueError(f"{what} must hold real numbers, got dtype {a.dtype}")
    if t.is_complex():
        raise ValueError(f"{what} must hold real numbers, got complex dtype {t.dtype}")
    if t.dtype == torch.bool:
        raise ValueError(f"{what} is boolean; convert it to numbers first (e.g. x.astype(float))")
    if t.dim() == 0:
        raise ValueError(f"{what} must be an array of examples, got a scalar")
    if t.shape[0] == 0:
        raise ValueError(f"{what} holds no examples (shape {tuple(t.shape)})")
    t = t.to(device="cpu", dtype=torch.float32)
    if not (bool(torch.isfinite(t).all()) or missing and not bool(torch.isinf(t).any())):
        raise ValueError(f"{what} contains {'infinity' if missing else 'NaN or infinity'}")
    return t.contiguous()


def as_labels(y, n: int | None = None, what: str = "y") -> torch.Tensor:
    """Class labels as an int64 CPU vector: any integer dtype, values >= 0, one per example; or
    per-position label masks ``(n, H, W)`` (three or more dimensions) for dense prediction, whose
    values are classes or an ignore index such as 255."""
    if isinstance(y, torch.Tensor):
        t = y.detach().cpu()
        kind = "f" if t.is_floating_point() or t.is_complex() else ("b" if t.dtype == torch.bool else "i")
        dtype = str(t.dtype)
    else:
        a = np.asarray(y)
        kind, dtype = a.dtype.kind, str(a.dtype)
        t = torch.from_numpy(np.ascontiguousarray(a).astype(np.int64)) if kind in "iu" else None
    if kind not in "iu":
        hint = " (cast with y.astype(int) if they are whole numbers)" if kind == "f" else ""
        raise ValueError(f"{what} must hold integer class labels, got dtype {dtype}{hint}")
    t = t.long()
    if t.dim() != 1:
        if t.dim() == 2 and t.shape[1] == 1:
            t = t[:, 0]
        elif t.dim() < 3:
            raise ValueError(f"{what} must be a vector of class labels, got shape {tuple(t.shape)} (label masks "
                             "for dense prediction have shape (n, H, W))")
    if n is not None and len(t) != n:
        raise ValueError(f"{what} has {len(t)} labels for {n} examples")
    if len(t) and int(t.min()) < 0:
        raise ValueError(f"{what} holds negative labels (min {int(t.min())}); classes are 0..C-1")
    return t.contiguous()


def data_digest(*tensors) -> str:
    """The fingerprint of in-memory data: ``sha256:`` and 16 hex of :func:`distill.digest.tensor_digest`."""
    return "sha256:" + tensor_digest(*tensors)[:16]


def _split(item, what: str):
    """An item or batch as ``(x, y-or-None)``: ``(x, y)``, ``(x,)``, ``x`` or ``{"x":, "y":}``."""
    if isinstance(item, Mapping):
        if "x" not in item:
            raise ValueError(f"{what} is a dict without an 'x' entry (keys: {sorted(item)})")
        return item["x"], item.get("y")
    if isinstance(item, (tuple, list)):
        if len(item) == 2:
            return item[0], item[1]
        if len(item) == 1:
            return item[0], None
        raise ValueError(f"{what} must be (x, y) or (x,), got a sequence of {len(item)}")
    return item, None


class Source:
    """Batches of ``(x, y-or-None, idx-or-None)`` over one pass (an epoch).

    ``n`` examples (None for a stream), ``labeled``, ``fingerprint``, ``image_shape`` (the last two
    dimensions of an example when it is an image, for jitter), ``indexable`` (batches carry the
    indices of their examples, so stored teacher outputs can be looked up)."""

    n: int | None = None
    labeled: bool = True
    image_shape: tuple | None = None
    indexable: bool = False
    batch_size: int | None = None  # fixed by the source itself (a DataLoader)
    missing: bool = False  # NaN features allowed (a table's missing values, filled by the model's preprocessing)

    _fingerprint: str | None = None
    #: True once the fingerprint was computed by reading every example (so training can check that
    #: it reads the same ones: a dataset whose items change between passes has no stable identity)
    read_to_identify: bool = False

    @property
    def fingerprint(self) -> str:
        """``sha256:`` + 16 hex covering every example (see the module docstring); read in full
        the first time it is asked for when the source was not given one."""
        if self._fingerprint is None:
            self._fingerprint = "sha256:" + self.content_digest()[:16]
            self.read_to_identify = True
        return self._fingerprint

    @fingerprint.setter
    def fingerprint(self, value: str | None) -> None:
        self._fingerprint = value

    def content_digest(self) -> str:
        """:class:`~distill.digest.ExampleDigest` of one pass over every example (with its index
        when batches know their indices)."""
        d = ExampleDigest(indexed=self.indexable)
        for x, y, idx in self.ordered():
            d.update(x, y, idx)
        return d.hexdigest()

    def batches(self, batch_size: int, generator: torch.Generator | None) -> Iterator:
        raise NotImplementedError

    def ordered(self, batch_size: int = 2000) -> Iterator:
        """Every example once, in order (evaluation, teacher passes)."""
        return self.batches(batch_size, None)

    def parts(self, batch_size: int, generator: torch.Generator | None, rank: int, world_size: int) -> Iterator:
        """Under data parallelism: ``(x, y, idx, b)`` with process ``rank``'s contiguous slice
        (:func:`distill.distributed.shard`) of every global batch of :meth:`batches` (same order,
        same generator draws) and that global batch's length ``b``. Sources that can read examples
        by index (tensors, map-style datasets) read only the slice; the others read the whole batch
        and slice it."""

        for x, y, idx in self.batches(batch_size, generator):
            yield (shard(x, rank, world_size), None if y is None else shard(y, rank, world_size),
                   None if idx is None else shard(idx, rank, world_size), len(x))


class TensorSource(Source):
    """In-memory tensors: the fast path. ``generator`` None = in order, else a seeded shuffle.
    ``missing``: NaN features are allowed (see :func:`as_features`)."""

    indexable = True

    def __init__(self, x, y=None, *, fingerprint: str | None = None, image_shape=None, name: str = "data",
                 missing: bool = False):
        self.missing = missing
        self.x = as_features(x, f"{name} x", missing)
        self.y = None if y is None else as_labels(y, len(self.x), f"{name} y")
        self.n = len(self.x)
        self.labeled = self.y is not None
        self.fingerprint = fingerprint or data_digest(self.x, self.y)
        if image_shape is None and self.x.dim() >= 3:
            image_shape = tuple(self.x.shape[-2:])
        self.image_shape = tuple(image_shape) if image_shape else None

    def batches(self, batch_size, generator):
        order = torch.randperm(self.n, generator=generator) if generator is not None else None
        for i in range(0, self.n, batch_size):
            if order is None:
                idx = torch.arange(i, min(i + batch_size, self.n))
                yield self.x[i:i + batch_size], (None if self.y is None else self.y[i:i + batch_size]), idx
            else:
                idx = order[i:i + batch_size]
                yield self.x[idx], (None if self.y is None else self.y[idx]), idx

    def parts(self, batch_size, generator, rank, world_size):

        order = torch.randperm(self.n, generator=generator) if generator is not None else torch.arange(self.n)
        for i in range(0, self.n, batch_size):
            idx = shard(order[i:i + batch_size], rank, world_size)
            yield self.x[idx], (None if self.y is None else self.y[idx]), idx, min(batch_size, self.n - i)

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.x[idx], (None if self.y is None else self.y[idx])


class RowReader:
    """Rows of a C-ordered array in a ``.npy`` file (a memory map from ``np.load(path,
    mmap_mode="r")``), read by index with ``os.preadv`` straight into the result: runs of
    consecutive rows are one read each, and nothing is mapped into the process. (Indexing the
    memory map itself would do, but the kernel maps whole large page-cache folios, about 1 MB
    around each row read at random, so an epoch of random batches would soon count the whole file
    in the process's RSS; read this way, the file stays in the page cache only.)"""

    def __init__(self, array: np.memmap):
        self.filename, self.offset = array.filename, int(array.offset)
        self.dtype, self.row_shape, self.n = array.dtype, tuple(array.shape[1:]), len(array)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * array.dtype.itemsize
        self._fd, self._pid = None, None

    @classmethod
    def of(cls, array) -> "RowReader | None":
        """A reader for ``array`` when it is a whole C-ordered file map (from ``np.load(...,
        mmap_mode="r")``; not a view of one), else None."""
        if (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename
                and array.flags.c_contiguous and array.ndim >= 1 and getattr(array, "mode", None) == "r"):
            return cls(array)
        return None

    def __getstate__(self):  # a DataLoader worker opens its own file descriptor
        return {k: v for k, v in self.__dict__.items() if k not in ("_fd", "_pid")}

    def __setstate__(self, state):
        self.__dict__.update(state, _fd=None, _pid=None)

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.filename, os.O_RDONLY), os.getpid()
        return self._fd

    def __getitem__(self, rows) -> np.ndarray:
        """Rows ``rows`` (non-negative integers, any order, repeats allowed) as a new array."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows),) + self.row_shape, dtype=self.dtype)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.n:
            raise IndexError(f"rows must lie in 0..{self.n - 1}")
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        rb = self.row_bytes
        buf = np.empty(len(rows) * rb, dtype=np.uint8)
        view = memoryview(buf)
        first = np.r_[0, np.flatnonzero(np.diff(srt) != 1) + 1]  # the runs of consecutive rows
        last = np.r_[first[1:], len(srt)]
        fd = self._file()
        for at, lo, hi in zip((self.offset + srt[first] * rb).tolist(), (first * rb).tolist(), (last * rb).tolist()):
            if os.preadv(fd, [view[lo:hi]], at) != hi - lo:
                raise OSError(f"{self.filename} is shorter than its header says (truncated?)")
        out.reshape(len(rows), -1).view(np.uint8)[order] = buf.reshape(len(rows), rb)
        return out

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass


class ArrayDataset(TorchDataset):
    """Arrays on disk as a map-style Dataset: ``x`` and optionally ``y`` are ``.npy`` paths, opened
    with ``np.load(path, mmap_mode="r")``, or arrays. Items are ``(x_i, y_i)`` (or ``(x_i,)``)
    like any Dataset; :class:`MapSource` reads a whole batch with one :meth:`take` (rows gathered
    in file order by :class:`RowReader`, made float32 / int64) instead of one item at a time. Only
    the batch being read is in the process's memory, whatever the size of the files."""

    def __init__(self, x, y=None):
        self.x = np.load(x, mmap_mode="r", allow_pickle=False) if isinstance(x, (str, Path)) else x
        self.y = np.load(y, mmap_mode="r", allow_pickle=False) if isinstance(y, (str, Path)) else y
        if not hasattr(self.x, "shape") or not len(self.x.shape):
            raise ValueError("ArrayDataset x must be an array (or a .npy path) of examples")
        if self.x.dtype.kind not in "iuf":
            raise ValueError(f"ArrayDataset x must hold real numbers, got {self.x.dtype}")
        if self.y is not None:
            if len(self.y) != len(self.x):
                raise ValueError(f"ArrayDataset y has {len(self.y)} labels for {len(self.x)} examples")
            if self.y.dtype.kind not in "iu":
                raise ValueError(f"ArrayDataset y must hold integer class labels, got {self.y.dtype}")
        self._rx, self._ry = RowReader.of(self.x), RowReader.of(self.y)

    def __len__(self) -> int:
        return len(self.x)

    def _rows(self, which: str, idx: np.ndarray) -> np.ndarray:
        reader = self._rx if which == "x" else self._ry
        arr = self.x if which == "x" else self.y
        return reader[idx] if reader is not None else np.asarray(arr[idx])

    def __getitem__(self, i):
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is out of range for {len(self)} examples")
        i %= len(self)
        x = torch.from_numpy(self._rows("x", np.array([i]))[0].astype(np.float32))
        return (x,) if self.y is None else (x, int(self._rows("y", np.array([i]))[0]))

    #: :meth:`take` checks its batches itself (finite values), so :class:`MapSource` need not
    checked = True

    def take(self, idx) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows ``idx`` (any order) as ``(x float32, y int64 or None)``; NaN or infinity in
        floating-point inputs is a ``ValueError`` (integer inputs cannot hold them)."""
        idx = np.asarray(idx, dtype=np.int64)
        rows = self._rows("x", idx)
        if rows.dtype.kind == "f" and not np.isfinite(rows).all():
            raise ValueError(f"the inputs hold NaN or infinity (among rows {idx[:5].tolist()}...)")
        x = torch.from_numpy(rows.astype(np.float32, copy=False))
        y = None if self.y is None else torch.from_numpy(self._rows("y", idx).astype(np.int64, copy=False))
        return x, y


def _collate(items):
    xs, ys = zip(*(_split(it, "a dataset item") for it in items))
    x = torch.stack([torch.as_tensor(v) for v in xs])
    if any(v is None for v in ys):
        return x, None
    if np.ndim(ys[0]) >= 2:  # per-position label masks
        return x, torch.stack([torch.as_tensor(np.asarray(v)) for v in ys])
    return x, torch.as_tensor(np.asarray([int(v) for v in ys]))


class MapSource(Source):
    """A map-style ``torch.utils.data.Dataset``: batches through a ``DataLoader`` over a seeded
    permutation (``num_workers`` as given), so every batch knows its example indices."""

    indexable = True

    def __init__(self, dataset, *, fingerprint: str | None = None, num_workers: int = 0, name: str = "data",
                 missing: bool = False):
        self.missing = missing
        try:
            self.n = len(dataset)
        except TypeError:
            raise ValueError(f"{name}: a map-style Dataset must define __len__") from None
        if self.n == 0:
            raise ValueError(f"{name} holds no examples")
        self.dataset, self.num_workers, self.name = dataset, num_workers, name
        x0, y0 = _split(dataset[0], f"{name}[0]")
        x0 = as_features(x0[None] if isinstance(x0, torch.Tensor) else np.asarray(x0)[None], f"{name}[0] x")
        self.labeled = y0 is not None
        if self.labeled:
            y0 = torch.as_tensor(np.asarray(y0))
            as_labels(y0[None] if y0.dim() >= 2 else y0.reshape(1), 1, f"{name}[0] y")
        self.image_shape = tuple(x0.shape[-2:]) if x0.dim() >= 3 else None
        self.fingerprint = fingerprint  # None: every example is read when it is first asked for

    def _order(self, generator) -> torch.Tensor:
        """The epoch's order: ``randperm(n)`` (the permutation TensorSource draws; int32 below 2^31
        rows draws the same one in half the memory, which matters for transfer sets on disk)."""
        dtype = torch.int32 if self.n < 2 ** 31 else torch.int64
        if generator is None:
            return torch.arange(self.n, dtype=dtype)
        return torch.randperm(self.n, generator=generator, dtype=dtype)

    def batches(self, batch_size, generator):
        order = self._order(generator)
        yield from self._read(order[i:i + batch_size] for i in range(0, self.n, batch_size))

    def parts(self, batch_size, generator, rank, world_size):

        order = self._order(generator)
        slices = (shard(order[i:i + batch_size], rank, world_size) for i in range(0, self.n, batch_size))
        for (x, y, idx), i in zip(self._read(slices), range(0, self.n, batch_size)):
            yield x, y, idx, min(batch_size, self.n - i)

    def _read(self, batches):
        """``(x, y, idx)`` for each index tensor of ``batches`` (taken lazily): one
        ``dataset.take(indices)`` per batch when the dataset has it (:class:`ArrayDataset`), else
        through a DataLoader; an empty index tensor gives an empty batch."""
        take = getattr(self.dataset, "take", None)
        if take is not None and self.num_workers == 0:
            checked = getattr(self.dataset, "checked", False)  # float32 / int64, finite: no second pass
            # from the second batch on, one batch ahead in a thread: the reads (system calls, GIL
            # released) overlap the step; a caller that takes one batch (a probe) reads just that
            with ThreadPoolExecutor(1, thread_name_prefix="distill-read") as pool:
                batches = iter(batches)
                idx, ahead, first = next(batches, None), None, True
                while idx is not None:
                    x, y = ahead.result() if ahead is not None else take(idx.numpy())
                    here, idx = idx, next(batches, None)
                    ahead = pool.submit(take, idx.numpy()) if idx is not None and not first else None
                    first = False
                    if not checked:
                        x, y = as_batch_features(x, self.name), None if y is None else as_labels(y, len(x))
                    yield x, y, here.long()
            return
        sampler = [idx.tolist() for idx in batches]
        full = [i for i in sampler if i]
        # a private generator: a DataLoader otherwise draws its worker seed from torch's global RNG,
        # which would shift the dropout masks against the same data given as tensors
        loader = iter(DataLoader(self.dataset, batch_sampler=full, collate_fn=_collate, num_workers=self.num_workers,
                                 generator=torch.Generator() if self.num_workers == 0 else None))
        for idx in sampler:
            if not idx:
                x0, y0, _ = next(iter(self.batches(1, None)))
                yield x0[:0], None if y0 is None else y0[:0], torch.zeros(0, dtype=torch.long)
                continue
            x, y = next(loader)
            yield (as_features(x, f"{self.name} batch x", self.missing), None if y is None else as_labels(y, len(x)),
                   torch.tensor(idx))


def as_batch_features(x, name: str) -> torch.Tensor:
    """A batch's inputs as float32 (:func:`as_features`), where an empty batch is allowed."""
    return as_features(x, f"{name} batch x") if len(x) else torch.as_tensor(x, dtype=torch.float32)


def stream_batch_size(item, name: str = "data") -> int | None:
    """The batch size ``B`` when ``item``, the first item of an ``IterableDataset``, is a whole
    batch ``(x_batch, y_batch)``, else None (one example). A batch is told by its labels: one
    example's label is a number (or, for dense prediction, an ``(H, W)`` mask), a batch's a vector
    of ``B`` labels (or ``(B, 1)``, or ``B`` masks ``(B, H, W)``) with ``x`` of ``B`` rows too.
    Labels of any other shape are a one-line ``ValueError``. Unlabeled items ``(x,)`` cannot tell,
    and are taken as single examples."""
    x, y = _split(item, f"an item of {name}")
    if y is None:
        return None
    xs, ys = tuple(np.shape(x)), tuple(np.shape(y))
    if not xs or not ys or math.prod(ys) == 1 or (len(ys) == 2 and ys[1] != 1):  # a label, an (H, W) mask
        return None
    if ys[0] == xs[0] and (len(ys) >= 3 or xs[0] > 1):
        return int(xs[0])
    raise ValueError(f"{name}: its items are (x, y) with x of shape {xs} and y of shape {ys}, neither one example "
                     "(x, label) nor a whole batch (x_batch of B rows, y_batch of B labels); yield one of the two, or "
                     "wrap the stream in DataLoader(stream, batch_size=None, collate_fn=...) that makes such batches")


class LoaderSource(Source):
    """A ``DataLoader`` (its own batch size, order and workers) or an ``IterableDataset``: batched
    by ``fit``'s batch size when it yields examples, used as it is when it yields whole batches
    (:func:`stream_batch_size`). Indices are unknown: a teacher runs on every batch."""

    #: the stream yields whole batches ``(x_batch, y_batch)``: used as they come
    batched: bool = False

    def __init__(self, loader, *, fingerprint: str | None = None, name: str = "data"):
        self.name = name
        if isinstance(loader, DataLoader):
            self.loader, self.batch_size = loader, loader.batch_size
        else:
            self.loader, self.batch_size = None, None
            head = next(iter(loader), None)
            self.batch_size = None if head is None else stream_batch_size(head, name)
            self.batched = self.batch_size is not None
        self.stream = loader
        try:
            self.n = len(loader.dataset) if isinstance(loader, DataLoader) else None
        except TypeError:
            self.n = None
        try:
            first = next(iter(self.batches(16, None)), None)
        except (ValueError, TypeError, RuntimeError) as e:
            dataset = getattr(loader, "dataset", None)
            if isinstance(dataset, IterableDataset) and loader.batch_size is not None:
                head = next(iter(dataset), None)
                b = None if head is None else stream_batch_size(head, name)
                if b is not None:
                    raise ValueError(f"{name}: the IterableDataset yields whole batches (of {b}) and the DataLoader "
                                     f"stacks {loader.batch_size} of them into one; pass the IterableDataset itself, "
                                     "or DataLoader(dataset, batch_size=None)") from None
            raise
        if first is None:
            raise ValueError(f"{name}: the stream yielded no examples")
        x, y, _ = first
        self.labeled = y is not None
        self.image_shape = tuple(x.shape[-2:]) if x.dim() >= 3 else None
        self.fingerprint = fingerprint  # None: every example is read when it is first asked for

    def batches(self, batch_size, generator):
        if self.loader is not None:
            it = self.loader
        elif self.batched:  # its own batches, as they come
            it = self.stream
        else:
            it = DataLoader(self.stream, batch_size=batch_size, collate_fn=_collate)
        for batch in it:
            x, y = _split(batch, f"a batch of {self.name}")
            x = as_features(x, f"{self.name} batch x")
            yield x, (None if y is None else as_labels(y, len(x), f"{self.name} batch y")), None


def as_source(data, *, fingerprint: str | None = None, name: str = "train") -> Source:
    """Coerce any supported data (module docstring) into a :class:`Source`; anything else is a
    ``ValueError`` that lists what is accepted. A distill data set (:class:`distill.data.Dataset`,
    :class:`distill.data.files.FileData`) brings its own sources: ``training_source(fingerprint=,
    name=)`` and ``test_source()``."""
    if isinstance(data, Source):
        return data
    if isinstance(data, (str, bytes)):  # has __len__ and __getitem__, but is no data set
        raise ValueError(f"{name}: cannot use a {type(data).__name__} as data; load the file yourself and pass "
                         "(x, y) tensors or NumPy arrays, a dict {'x': ..., 'y': ...}, a torch Dataset, an "
                         "IterableDataset, a DataLoader, or a distill.data.Dataset")
    training_source = getattr(data, "training_source", None)
    if callable(training_source):
        return training_source(fingerprint=fingerprint, name=name)
    if isinstance(data, Mapping):
        x, y = _split(data, name)
        return TensorSource(x, y, fingerprint=fingerprint, name=name)
    if isinstance(data, (tuple, list)) and len(data) in (1, 2) and not isinstance(data[0], (int, float)):
        x, y = _split(tuple(data), name)
        return TensorSource(x, y, fingerprint=fingerprint, name=name)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return TensorSource(data, None, fingerprint=fingerprint, name=name)
    if isinstance(data, (DataLoader, IterableDataset)):
        return LoaderSource(data, fingerprint=fingerprint, name=name)
    if isinstance(data, TorchDataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return MapSource(data, fingerprint=fingerprint, name=name)
    raise ValueError(
        f"{name}: cannot use a {type(data).__name__} as data; pass (x, y) tensors or NumPy arrays, a dict "
        "{'x': ..., 'y': ...}, a torch Dataset yielding (x, y) or (x,), an IterableDataset, a DataLoader, "
        "or a distill.data.Dataset")


def dataset_test_split(data):
    """The test split a distill data set (``test_source()``) brings along, else None."""
    test_source = getattr(data, "test_source", None)
    return test_source() if callable(test_source) else None

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
  batch size and order); example indices are unknown, so a teacher runs on every batch;
* the package's own :class:`distill.data.Dataset`: its training split (``fit`` also takes its
  test split when no ``test`` is given).

Every source has a ``fingerprint``: a SHA-256 of the content it serves (all of it for in-memory
arrays; the length and 257 evenly spaced examples for a map-style dataset; the first batch for a
stream), which keys run folders and soft-target stores, so a run on other data never reuses an
old result. Pass ``fingerprint=`` to :func:`as_source` to name a stream yourself.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data import Dataset as TorchDataset

#: examples read to fingerprint a map-style dataset
FINGERPRINT_SAMPLES = 257


def as_features(x, what: str = "x") -> torch.Tensor:
    """``x`` (tensor, array or nested list) as a float32 CPU tensor with at least one example; any
    real dtype is accepted, complex, object, string and boolean data are not, and neither are NaN or
    infinity (scikit-learn's rules)."""
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
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or infinity")
    return t.contiguous()


def as_labels(y, n: int | None = None, what: str = "y") -> torch.Tensor:
    """Class labels as an int64 CPU vector: any integer dtype, values >= 0, one per example."""
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
        else:
            raise ValueError(f"{what} must be a vector of class labels, got shape {tuple(t.shape)}")
    if n is not None and len(t) != n:
        raise ValueError(f"{what} has {len(t)} labels for {n} examples")
    if len(t) and int(t.min()) < 0:
        raise ValueError(f"{what} holds negative labels (min {int(t.min())}); classes are 0..C-1")
    return t.contiguous()


def _digest(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().contiguous().cpu()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return "sha256:" + h.hexdigest()[:16]


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
    fingerprint: str = ""
    image_shape: tuple | None = None
    indexable: bool = False
    batch_size: int | None = None  # fixed by the source itself (a DataLoader)

    def batches(self, batch_size: int, generator: torch.Generator | None) -> Iterator:
        raise NotImplementedError

    def ordered(self, batch_size: int = 2000) -> Iterator:
        """Every example once, in order (evaluation, teacher passes)."""
        return self.batches(batch_size, None)


class TensorSource(Source):
    """In-memory tensors: the fast path. ``generator`` None = in order, else a seeded shuffle."""

    indexable = True

    def __init__(self, x, y=None, *, fingerprint: str | None = None, image_shape=None, name: str = "data"):
        self.x = as_features(x, f"{name} x")
        self.y = None if y is None else as_labels(y, len(self.x), f"{name} y")
        self.n = len(self.x)
        self.labeled = self.y is not None
        self.fingerprint = fingerprint or _digest(self.x, self.y)
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

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.x[idx], (None if self.y is None else self.y[idx])


def _collate(items):
    xs, ys = zip(*(_split(it, "a dataset item") for it in items))
    x = torch.stack([torch.as_tensor(v) for v in xs])
    if any(v is None for v in ys):
        return x, None
    return x, torch.as_tensor(np.asarray([int(v) for v in ys]))


class MapSource(Source):
    """A map-style ``torch.utils.data.Dataset``: batches through a ``DataLoader`` over a seeded
    permutation (``num_workers`` as given), so every batch knows its example indices."""

    indexable = True

    def __init__(self, dataset, *, fingerprint: str | None = None, num_workers: int = 0, name: str = "data"):
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
            as_labels(torch.as_tensor(np.asarray(y0)).reshape(1), 1, f"{name}[0] y")
        self.image_shape = tuple(x0.shape[-2:]) if x0.dim() >= 3 else None
        if fingerprint is None:
            rows = np.unique(np.linspace(0, self.n - 1, min(FINGERPRINT_SAMPLES, self.n)).round().astype(int))
            xs, ys = _collate([dataset[int(i)] for i in rows])
            fingerprint = _digest(torch.tensor([self.n]), xs.float(), ys)
        self.fingerprint = fingerprint

    def batches(self, batch_size, generator):
        order = torch.randperm(self.n, generator=generator) if generator is not None else torch.arange(self.n)
        sampler = [order[i:i + batch_size].tolist() for i in range(0, self.n, batch_size)]
        # a private generator: a DataLoader otherwise draws its worker seed from torch's global RNG,
        # which would shift the dropout masks against the same data given as tensors
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=_collate, num_workers=self.num_workers,
                            generator=torch.Generator() if self.num_workers == 0 else None)
        for (x, y), idx in zip(loader, sampler):
            yield (as_features(x, f"{self.name} batch x"), None if y is None else as_labels(y, len(x)),
                   torch.tensor(idx))


class LoaderSource(Source):
    """A ``DataLoader`` (its own batch size, order and workers) or an ``IterableDataset`` (batched
    by ``fit``'s batch size). Indices are unknown: a teacher runs on every batch."""

    def __init__(self, loader, *, fingerprint: str | None = None, name: str = "data"):
        self.name = name
        if isinstance(loader, DataLoader):
            self.loader, self.batch_size = loader, loader.batch_size
        else:
            self.loader, self.batch_size = None, None
        self.stream = loader
        try:
            self.n = len(loader.dataset) if isinstance(loader, DataLoader) else None
        except TypeError:
            self.n = None
        first = next(iter(self.batches(16, None)), None)
        if first is None:
            raise ValueError(f"{name}: the stream yielded no examples")
        x, y, _ = first
        self.labeled = y is not None
        self.image_shape = tuple(x.shape[-2:]) if x.dim() >= 3 else None
        self.fingerprint = fingerprint or _digest(torch.tensor([self.n or -1]), x, y)

    def batches(self, batch_size, generator):
        if self.loader is not None:
            it = self.loader
        else:
            it = DataLoader(self.stream, batch_size=batch_size, collate_fn=_collate)
        for batch in it:
            x, y = _split(batch, f"a batch of {self.name}")
            x = as_features(x, f"{self.name} batch x")
            yield x, (None if y is None else as_labels(y, len(x), f"{self.name} batch y")), None


def as_source(data, *, fingerprint: str | None = None, name: str = "train") -> Source:
    """Coerce any supported data (module docstring) into a :class:`Source`; anything else is a
    ``ValueError`` that lists what is accepted."""
    from distill.data.dataset import Dataset as DistillDataset

    if isinstance(data, Source):
        return data
    if isinstance(data, (str, bytes)):  # has __len__ and __getitem__, but is no data set
        raise ValueError(f"{name}: cannot use a {type(data).__name__} as data; load the file yourself and pass "
                         "(x, y) tensors or NumPy arrays, a dict {'x': ..., 'y': ...}, a torch Dataset, an "
                         "IterableDataset, a DataLoader, or a distill.data.Dataset")
    if isinstance(data, DistillDataset):
        return TensorSource(data.x_train, data.y_train, fingerprint=fingerprint, image_shape=data.image_shape,
                            name=name)
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
    """The test split a distill :class:`~distill.data.Dataset` brings along, else None."""
    from distill.data.dataset import Dataset as DistillDataset

    if isinstance(data, DistillDataset) and data.x_test is not None and len(data.x_test):
        return TensorSource(data.x_test, data.y_test, image_shape=data.image_shape, name="test")
    return None

"""The project's digests, one place: every cache key, data fingerprint and weights checksum is one
of these SHA-256 forms (their byte layouts are fixed: cached runs and stores are found by them).

* :func:`json_digest` ``sha256(json.dumps(obj, sort_keys=True, default=str))``: run keys, store
  keys, fingerprints of data built from parameters;
* :func:`tensors_digest` over named tensors, in name order, of ``"name|dtype|shape|"`` then the
  raw bytes of each: checkpoint weights, module identities;
* :func:`tensor_digest` over a sequence of tensors, of ``"dtype|shape|"`` then the raw bytes of
  each (``b"none"`` for a missing one): in-memory data fingerprints, logits identities;
* :func:`build_digest` ``sha256(json.dumps(params, sort_keys=True))`` then ``"dtype|shape|"`` and
  the bytes of each NumPy array: data sets built from data (segmentation canvases, double-MNIST);
* :func:`file_digest` of a file's bytes, read in chunks.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch


def json_digest(obj, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``obj``'s canonical JSON (sorted keys,
    ``str`` for what JSON cannot hold)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def _update(h, t: torch.Tensor, name: str | None = None) -> None:
    t = t.detach().contiguous().cpu()
    h.update(f"{'' if name is None else name + '|'}{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")  # no copy of the bytes


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (64 hex) of named tensors: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        _update(h, tensors[k], k)
    return h.hexdigest()


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    """SHA-256 (64 hex) of tensors in the order given: dtype, shape and bytes of each; None counts
    as the bytes ``none``."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
        else:
            _update(h, t)
    return h.hexdigest()


def build_digest(params: dict, *arrays: np.ndarray) -> str:
    """16 hex digits of the SHA-256 of a derived data set's build ``params`` (as sorted JSON) and
    its ``arrays`` (dtype, shape and bytes of each): the fingerprint of data built from data."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for a in arrays:
        h.update(f"{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """SHA-256 (64 hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_name(cls: type) -> str:
    """A class's name in run keys: its own ``KEY_NAME`` (distill's classes set it to the path they
    had when keys were first written, so moving a file re-keys nothing), else ``module.qualname``.
    Only the class's own attribute counts: a user's subclass of ``MLP`` is not ``MLP``."""
    return cls.__dict__.get("KEY_NAME") or f"{cls.__module__}.{cls.__qualname__}"


def model_signature(model: torch.nn.Module, factory=None) -> dict:
    """A model's structure, for run keys and teacher identities (not its values: the seed decides
    those): its class, the ``repr`` of its module tree (activations, dropout rates and other
    submodule settings show there), the names and shapes of its parameters and buffers, and the
    factory that rebuilds it with its keyword arguments (``factory``: ``"pkg.mod:fn"``,
    ``(that, kwargs)`` or ``{"target":, "kwargs":}``; default the model's ``distill_factory``)."""
    f = factory if factory is not None else getattr(model, "distill_factory", None)
    if isinstance(f, dict):
        f = (f.get("target"), f.get("kwargs", {}))
    elif isinstance(f, str):
        f = (f, {})
    return dict(cls=key_name(type(model)),
                factory=[f[0], f[1]] if f else None,
                tree=hashlib.sha256(repr(model).encode()).hexdigest()[:16],
                state={k: list(v.shape) for k, v in model.state_dict().items()})


class ExampleDigest:
    """An order-independent digest of a multiset of examples: each example (its index when
    ``indexed``, its input and its label) is hashed on its own with SHA-256 and the hashes are
    added modulo 2^256, so the same examples read in any order (a shuffled DataLoader, another
    batch size) give the same digest, and any changed, added or dropped example changes it.
    ``update(x, y, idx)`` takes a batch; :meth:`hexdigest` folds in the count and the shapes."""

    def __init__(self, indexed: bool = False):
        self.indexed, self.total, self.count, self.shapes = indexed, 0, 0, set()

    def update(self, x: torch.Tensor, y: torch.Tensor | None, idx: torch.Tensor | None = None) -> None:
        n = len(x)
        if not n:
            return
        xs = x.detach().contiguous().cpu().reshape(n, -1).numpy().view(np.uint8)
        ys = None if y is None else y.detach().contiguous().cpu().reshape(n, -1).numpy().view(np.uint8)
        ids = idx.tolist() if self.indexed and idx is not None else None
        self.shapes.add((str(x.dtype), tuple(x.shape[1:]), None if y is None else (str(y.dtype), tuple(y.shape[1:]))))
        total, sha = self.total, hashlib.sha256
        for i in range(n):
            h = sha(xs[i].tobytes())
            h.update(b"|none" if ys is None else b"|" + ys[i].tobytes())
            if ids is not None:
                h.update(b"|%d" % ids[i])
            total += int.from_bytes(h.digest(), "little")
        self.total = total % (1 << 256)
        self.count += n

    def hexdigest(self) -> str:
        """SHA-256 (64 hex) of the count, the example shapes and the sum."""
        return hashlib.sha256(f"{self.count}|{sorted(map(str, self.shapes))}|{self.total:064x}".encode()).hexdigest()

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
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


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

"""Parsing of the idx format (MNIST, Fashion-MNIST) with validated headers.

Layout: a big-endian header ``0x00 0x00 dtype ndim`` (so the magic is 2049 for 1-D labels and
2051 for 3-D images of unsigned bytes), then one 4-byte big-endian size per dimension, then
the unsigned bytes of the array in C order.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from distill.errors import DistillError

MAGIC_LABELS = 2049
MAGIC_IMAGES = 2051


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip (by its magic bytes, not its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DistillError(f"cannot read {path}: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DistillError(f"{path} is a damaged gzip file ({e}); delete it and fetch again") from None
    return raw


def parse_idx(raw: bytes, expected_magic: int, name: str = "idx data") -> np.ndarray:
    """Parse idx bytes into a uint8 array; every inconsistency is a :class:`DistillError`."""
    if len(raw) < 8:
        raise DistillError(f"{name}: only {len(raw)} bytes, too short for an idx header; the file is truncated")
    magic = int.from_bytes(raw[0:4], "big")
    if magic != expected_magic:
        raise DistillError(
            f"{name}: wrong magic number {magic} (expected {expected_magic}); "
            "this is not the idx file it should be"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DistillError(f"{name}: header truncated ({len(raw)} bytes); the file is truncated")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DistillError(
            f"{name}: header says shape {dims} ({expected} bytes) but the file has {len(raw)} bytes; "
            f"the file is {what}. Delete it and fetch again."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read and parse one idx file (plain or gzip)."""
    return parse_idx(read_bytes(path), expected_magic, name=str(path))

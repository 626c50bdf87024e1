"""The soft-target store: a teacher's logits over a transfer set, computed once, kept on disk,
read memory-mapped by example index.

A store is a folder::

    meta.json      format, key and its parts, shape, dtype, top-k, per-file size and SHA-256
    values.npy     (n, N) logits, or (n, k) top-k logits, float16 or float32
    indices.npy    (n, k) class of each kept logit (top-k stores only)
    rest.npy       (n,)   mean of the N-k logits not kept (top-k stores only)

Row ``i`` belongs to example ``i`` of the transfer set the store was built from, so a lookup by
the *same indices* that pick the inputs (``x[idx]`` and ``store[idx]``) stays paired under any
shuffling – no batch positions are involved anywhere.

Identity: the key is the SHA-256 of the teacher's identity (:attr:`distill.Teacher.id`: weights
digest, combination, and the temperature where the outputs depend on it), the data's content
fingerprint (:mod:`distill.sources`), an optional selection tag, the storage dtype and top-k.
:func:`get_store` keeps each store under ``root/soft-<key>``, so another teacher or other data
never reuse a store; a store that fails its checks (missing file, wrong size, SHA-256 mismatch,
bad JSON) is an error telling the user to rebuild it. Writes go to a temporary folder renamed into
place, ``meta.json`` last.

Top-k stores (for many classes) keep the k largest logits per example and replace the rest by
their mean, which keeps every row's mean logit exact (so the high-temperature limit, matching
zero-meaned logits, is only perturbed within the dropped classes).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from distill.checkpoints import fault_point, read_format_json
from distill.errors import DistillError

FORMAT = "distill-soft-targets/1"
DTYPES = {"float16": np.float16, "float32": np.float32}


class StoreError(DistillError):
    """A store on disk is damaged or truncated."""


# ---------------------------------------------------------------- keys

def key_parts(teacher_id: str, data_fingerprint: str, selection: str = "", *, dtype: str = "float32",
              top_k: int | None = None) -> dict:
    """Everything that decides a store's content: the teacher's identity (which includes the
    temperature when its outputs depend on it, see :attr:`distill.Teacher.id`), the data's content
    fingerprint, an optional selection tag, the storage dtype and top-k."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not teacher_id:
        raise ValueError("a soft-target store needs the teacher's identity (e.g. its weights hash)")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a whole number >= 1, got {top_k!r}")
    return dict(format=FORMAT, teacher=str(teacher_id), data=str(data_fingerprint), selection=str(selection),
                dtype=dtype, top_k=None if top_k is None else int(top_k))


def store_key(parts: dict) -> str:
    """SHA-256 (16 hex) of the canonical JSON of :func:`key_parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- compute

def top_k_summary(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` largest logits per row, their classes, and the mean of the other ``N-k``
    (``rest = (sum_i z_i - sum_topk z_i) / (N - k)``; 0 when k = N)."""
    n_cls = logits.shape[1]
    if not 1 <= k <= n_cls:
        raise ValueError(f"top_k must be in 1..{n_cls}, got {k}")
    vals, idx = logits.topk(k, dim=1)
    rest = (logits.sum(1) - vals.sum(1)) / (n_cls - k) if k < n_cls else torch.zeros(len(logits))
    return vals, idx, rest


def expand_top_k(vals: torch.Tensor, idx: torch.Tensor, rest: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse of :func:`top_k_summary` up to the summary: kept logits in place, ``rest`` elsewhere."""
    out = rest.float().unsqueeze(1).expand(len(rest), num_classes).clone()
    return out.scatter_(1, idx.long(), vals.float())


# ---------------------------------------------------------------- the store

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class SoftTargetStore:
    """A read-only, memory-mapped store. ``store[idx]`` (int, slice, index tensor or array) gives
    float32 logits ``(len(idx), N)`` for those transfer-set examples; ``store.shape`` is ``(n, N)``.
    It can be passed to :func:`distill.training.fit` as ``teacher_targets``."""

    def __init__(self, path: Path, meta: dict, values, indices=None, rest=None):
        self.path, self.meta = Path(path), meta
        self._values, self._indices, self._rest = values, indices, rest
        self.num_classes = int(meta["num_classes"])

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.meta["rows"]), self.num_classes)

    def __len__(self) -> int:
        return int(self.meta["rows"])

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        scalar = np.isscalar(idx) or (isinstance(idx, np.ndarray) and idx.ndim == 0)
        if scalar:
            idx = np.asarray([int(idx)])
        vals = torch.from_numpy(np.asarray(self._values[idx], dtype=np.float32))
        if self._indices is not None:
            vals = expand_top_k(vals, torch.from_numpy(np.asarray(self._indices[idx]).astype(np.int64)),
                                torch.from_numpy(np.asarray(self._rest[idx], dtype=np.float32)), self.num_classes)
        return vals[0] if scalar else vals

    def all(self) -> torch.Tensor:
        """Every row, in memory (float32)."""
        return self[np.arange(len(self))]

    @classmethod
    def open(cls, path, expect_key: str | None = None, verify: bool = True) -> "SoftTargetStore":
        """Open a store; with ``expect_key`` a different key raises :class:`StaleStoreError`.
        ``verify`` re-hashes the files (else only their sizes are checked)."""
        path = Path(path)
        fix = f"delete {path} (or call get_store(..., rebuild=True)) to rebuild it"
        mpath = path / "meta.json"
        if not mpath.is_file():
            raise StoreError(f"{path} is not a complete soft-target store (no meta.json); {fix}")
        meta = read_format_json(mpath, FORMAT, f"the store is damaged: {fix}",
                                f"a soft-target store of format {FORMAT!r}; {fix}", error=StoreError)
        if expect_key is not None and meta.get("key") != expect_key:
            raise StaleStoreError(f"{path} holds soft targets for another teacher, data set or selection "
                                  f"(key {meta.get('key')}, wanted {expect_key})")
        arrays = {}
        for name, info in meta.get("files", {}).items():
            f = path / name
            if not f.is_file():
                raise StoreError(f"{f} is missing; the store is incomplete: {fix}")
            if f.stat().st_size != info["bytes"]:
                raise StoreError(f"{f} has {f.stat().st_size} bytes, {info['bytes']} expected (truncated or "
                                 f"overwritten); {fix}")
            if verify and _sha256_file(f) != info["sha256"]:
                raise StoreError(f"{f} does not match the SHA-256 in {mpath}; the store is damaged: {fix}")
            try:
                arrays[name] = np.load(f, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as e:
                raise StoreError(f"{f} cannot be read as an array ({e}); {fix}") from None
        if "values.npy" not in arrays:
            raise StoreError(f"{path}/values.npy is not listed in meta.json; {fix}")
        v = arrays["values.npy"]
        if v.shape[0] != meta["rows"] or v.dtype != np.dtype(meta["dtype"]):
            raise StoreError(f"{path}/values.npy has shape {v.shape} and dtype {v.dtype}, meta.json says "
                             f"{meta['rows']} rows of {meta['dtype']}; {fix}")
        if meta.get("top_k") and not {"indices.npy", "rest.npy"} <= arrays.keys():
            raise StoreError(f"{path} is a top-k store without indices.npy/rest.npy; {fix}")
        return cls(path, meta, v, arrays.get("indices.npy"), arrays.get("rest.npy"))


class StaleStoreError(DistillError):
    """The store at this path was built for another teacher, data set, selection or format."""


def write_store(path, logits: torch.Tensor, parts: dict) -> SoftTargetStore:
    """Write ``logits`` (n, N) as a store at ``path`` (replacing what is there) atomically: the
    files go to a temporary sibling folder, ``meta.json`` last, which is then renamed into place."""
    path = Path(path)
    if logits.dim() != 2:
        raise ValueError(f"logits must be (examples, classes), got {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError("the teacher produced nan or inf logits; refusing to store them")
    np_dtype = DTYPES[parts["dtype"]]
    n, n_cls = logits.shape
    arrays = {}
    top_k = parts.get("top_k") if parts.get("top_k") and parts["top_k"] < n_cls else None
    if top_k:
        vals, idx, rest = top_k_summary(logits, parts["top_k"])
        arrays["values.npy"] = vals.numpy().astype(np_dtype)
        arrays["indices.npy"] = idx.numpy().astype(np.int16 if n_cls < 2 ** 15 else np.int32)
        arrays["rest.npy"] = rest.numpy().astype(np.float32)
    else:
        arrays["values.npy"] = logits.detach().cpu().numpy().astype(np_dtype)
    if np_dtype == np.float16 and np.isinf(arrays["values.npy"]).any():
        raise ValueError("logits exceed the float16 range; store them as float32")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp"))
    try:
        files = {}
        for name, arr in arrays.items():
            with open(tmp / name, "wb") as f:
                np.save(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            fault_point(f"written {tmp / name}")
            files[name] = dict(bytes=(tmp / name).stat().st_size, sha256=_sha256_file(tmp / name))
        # the key is the one asked for; top_k records what was stored (None: the full logits, when
        # top_k >= the number of classes)
        meta = dict(parts, key=store_key(parts), top_k=top_k, rows=int(n), num_classes=int(n_cls), files=files)
        with open(tmp / "meta.json", "w") as f:
            f.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"written {tmp / 'meta.json'}")
        old = None
        if path.exists():
            old = path.with_name(path.name + f".old-{os.getpid()}")
            os.replace(path, old)
            fault_point(f"moved aside {path}")
        os.replace(tmp, path)
        fault_point(f"renamed {path}")
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DistillError(f"disk full while writing the soft-target store {path}; free space and rerun the "
                               "same command to resume") from None
        raise
    return SoftTargetStore.open(path, expect_key=store_key(parts), verify=False)


def get_store(root, teacher, data, *, selection: str = "", dtype: str = "float32", top_k: int | None = None,
              rebuild: bool = False, verify: bool = True, batch_size: int = 2000, progress: bool = True,
              log=print) -> SoftTargetStore:
    """The store of ``teacher``'s effective logits (a :class:`distill.Teacher`, or anything it
    accepts) over ``data`` (any source :func:`distill.sources.as_source` accepts), kept at
    ``root/soft-<key>``: reused when it exists, built (atomically) when it does not or ``rebuild``
    is set. A damaged store raises :class:`StoreError` unless ``rebuild`` is set."""
    from distill.metrics import predict_logits
    from distill.runs import FolderLock
    from distill.sources import as_source
    from distill.teachers import Teacher

    teacher = teacher if isinstance(teacher, Teacher) else Teacher(teacher)
    source = as_source(data, name="transfer set")
    parts = key_parts(teacher.id, source.fingerprint, selection, dtype=dtype, top_k=top_k)
    key = store_key(parts)
    path = Path(root) / f"soft-{key}"
    with FolderLock(path.with_name(path.name + ".lock"), path, wait=True, log=log):
        for litter in path.parent.glob(f"{path.name}.*"):  # a killed write's temporaries (we hold the lock)
            if litter.is_dir() and (litter.suffix == ".tmp" or ".old-" in litter.name):
                shutil.rmtree(litter, ignore_errors=True)
        if path.exists() and not rebuild:
            store = SoftTargetStore.open(path, expect_key=key, verify=verify)
            if source.n is not None and len(store) != source.n:
                raise StoreError(f"{path} has {len(store)} rows for {source.n} inputs; delete it to rebuild")
            log(f"[soft targets] reusing {path} ({len(store)} x {store.num_classes}, {dtype})")
            return store
        log(f"[soft targets] computing the teacher's logits for {source.n} examples -> {path}")
        logits = predict_logits(teacher.forward, source, batch_size, progress=progress, desc="soft targets")
        return write_store(path, logits, parts)

"""The soft-target store: a teacher's logits over a transfer set, computed once, kept on disk,
read memory-mapped by example index.

A store is a folder::

    meta.json      format, key and its parts, shape, dtype, top-k, per-file size and SHA-256
    values.npy     (n, N) logits, or (n, k) top-k logits, float16 or float32
    indices.npy    (n, k) class of each kept logit (top-k stores only)
    rest.npy       (n,)   mean of the N-k logits not kept (top-k stores only)

A *sharded* store (:func:`build_store`, ``distill targets``, one or many processes under
``torchrun``) keeps the same arrays cut into contiguous row ranges, one set of files per shard::

    values-00000-of-00002.npy    rows [0, 30000)       (indices-/rest-… likewise for top-k)
    values-00001-of-00002.npy    rows [30000, 60000)
    shard-00000-of-00002.json    one shard's record: key, row range, its files' sizes and SHA-256
    meta.json                    the manifest, written last: every shard's row range and digests

and :class:`SoftTargetStore` reads both layouts the same way, by example index (the files are
opened with ``np.load(mmap_mode="r")`` and the rows asked for are read from them, see
:class:`distill.data.sources.RowReader`: nothing but those rows is loaded).

Row ``i`` belongs to example ``i`` of the transfer set the store was built from, so a lookup by
the *same indices* that pick the inputs (``x[idx]`` and ``store[idx]``) stays paired under any
shuffling – no batch positions are involved anywhere.

Identity: the key is the SHA-256 of the teacher's identity (:attr:`distill.Teacher.id`: weights
digest, combination, and the temperature where the outputs depend on it), the data's content
fingerprint (:mod:`distill.data.sources`), an optional selection tag, the storage dtype and top-k.
:func:`get_store` keeps each store under ``root/soft-<key>``, so another teacher or other data
never reuse a store; a store that fails its checks (missing file, wrong size, SHA-256 mismatch,
bad JSON, a file name that is not a plain name inside the folder) is an error telling the user to
rebuild it. Writes go to a temporary folder renamed into place, ``meta.json`` last.

A sharded build holds an exclusive lock on its folder (``.distill-store.lock``) from start to end,
so a second build into the same folder stops with a one-line error instead of racing the first.
Everything distill writes follows the umask, like any other output; its temporaries are named
``.distill-tmp.<final name>.<pid>.<random>.tmp`` and only such names are swept, so the user's own
files in an ``--out`` folder (``notes.tmp``, ``part-1-of-3.txt``) are never touched.

Top-k stores (for many classes) keep the k largest logits per example and replace the rest by
their mean, which keeps every row's mean logit exact (so the high-temperature limit, matching
zero-meaned logits, is only perturbed within the dropped classes).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch

from distill.atomic import FolderLock, fault_point
from distill.checkpoints import read_format_json
from distill.digest import file_digest, json_digest
from distill.errors import DistillError
from distill import distributed
from distill.data.sources import MapSource, RowReader, TensorSource, as_source
from distill.metrics import predict_logits

FORMAT = "distill-soft-targets/1"
DTYPES = {"float16": np.float16, "float32": np.float32}
#: the start of every temporary distill writes into a store folder (only these are ever swept)
TMP_PREFIX = ".distill-tmp."
#: the lock file a sharded build holds in its folder
LOCK_NAME = ".distill-store.lock"
#: the names of a sharded store's own files (other shard counts' files of these names are removed)
SHARD_FILE = re.compile(r"(values|indices|rest)-\d{5}-of-\d{5}\.npy|shard-\d{5}-of-\d{5}\.json")


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
    return json_digest(parts)


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


def encode(logits: torch.Tensor, parts: dict) -> dict:
    """The arrays a store keeps for ``logits`` (n, N) under ``parts`` (:func:`key_parts`):
    ``values`` (n, N) or, for top-k < N, ``values`` (n, k), ``indices`` (n, k) and ``rest`` (n,).
    NaN/inf logits, and logits beyond the float16 range in a float16 store, are a ``ValueError``."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (examples, classes), got {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError("the teacher produced nan or inf logits; refusing to store them")
    np_dtype = DTYPES[parts["dtype"]]
    n_cls = logits.shape[1]
    top_k = stored_top_k(parts, n_cls)
    arrays = {}
    if top_k:
        vals, idx, rest = top_k_summary(logits, top_k)
        arrays["values"] = vals.numpy().astype(np_dtype)
        arrays["indices"] = idx.numpy().astype(np.int16 if n_cls < 2 ** 15 else np.int32)
        arrays["rest"] = rest.numpy().astype(np.float32)
    else:
        arrays["values"] = logits.detach().cpu().numpy().astype(np_dtype)
    if np_dtype == np.float16 and np.isinf(arrays["values"]).any():
        raise ValueError("logits exceed the float16 range; store them as float32")
    return arrays


def stored_top_k(parts: dict, num_classes: int) -> int | None:
    """The top-k a store keeps: ``parts["top_k"]``, or None (the full logits) when it is unset or
    at least the number of classes."""
    k = parts.get("top_k")
    return int(k) if k and k < num_classes else None


# ---------------------------------------------------------------- the store

class SoftTargetStore:
    """A read-only store on disk, read by example index. ``store[idx]`` (int, slice, index tensor or array) gives
    float32 logits ``(len(idx), N)`` for those transfer-set examples; ``store.shape`` is ``(n, N)``.
    One file per array, or shards of contiguous rows (module docstring): a lookup finds each row's
    shard and reads only those rows. It can be passed to :func:`distill.fit` as ``teacher=``."""

    def __init__(self, path: Path, meta: dict, shards: list[dict]):
        self.path, self.meta = Path(path), meta
        self.num_classes = int(meta["num_classes"])
        self._shards = shards  # [{start, stop, values, indices, rest}] in row order
        self._starts = np.asarray([sh["start"] for sh in shards], dtype=np.int64)

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.meta["rows"]), self.num_classes)

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def __len__(self) -> int:
        return int(self.meta["rows"])

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        return store_rows(idx, len(self))

    def _gather(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows of one array over the shards, read with :class:`distill.data.sources.RowReader` (no
        pages mapped into the process, so RSS stays flat over epochs of a large store)."""
        if len(self._shards) == 1:
            return self._read(0, name, rows)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        first = self._shards[0][name]
        out = np.empty((len(rows),) + first.shape[1:], dtype=first.dtype)
        for s in np.unique(which):
            m = which == s
            out[m] = self._read(int(s), name, rows[m] - self._starts[s])
        return out

    def _read(self, s: int, name: str, rows: np.ndarray) -> np.ndarray:

        shard = self._shards[s]
        key = f"{name}.reader"
        if key not in shard:
            shard[key] = RowReader.of(shard[name])
        reader = shard[key]
        return reader[rows] if reader is not None else np.asarray(shard[name][rows])

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        scalar = np.isscalar(idx) or (isinstance(idx, np.ndarray) and idx.ndim == 0)
        rows = self._rows(np.asarray([int(idx)]) if scalar else idx)
        vals = torch.from_numpy(self._gather("values", rows).astype(np.float32, copy=False))
        if self._shards[0].get("indices") is not None:
            vals = expand_top_k(vals, torch.from_numpy(self._gather("indices", rows).astype(np.int64)),
                                torch.from_numpy(self._gather("rest", rows).astype(np.float32, copy=False)),
                                self.num_classes)
        return vals[0] if scalar else vals

    def all(self) -> torch.Tensor:
        """Every row, in memory (float32)."""
        return self[np.arange(len(self))]

    @classmethod
    def open(cls, path, expect_key: str | None = None, verify: bool = True) -> "SoftTargetStore":
        """Open a store; with ``expect_key`` a different key raises :class:`StaleStoreError`.
        ``verify`` re-hashes the files against the SHA-256 in ``meta.json`` (else only their sizes
        are checked: for a store this process has just written and hashed)."""
        path = Path(path)
        fix = f"delete {path} (or call get_store(..., rebuild=True)) to rebuild it"
        mpath = path / "meta.json"
        if not mpath.is_file():
            pending = sorted(p.name for p in path.glob("shard-*.json")) if path.is_dir() else []
            hint = (f" ({len(pending)} shard(s) written: an interrupted or running build; run it again to finish "
                    "it)" if pending else "")
            raise StoreError(f"{path} is not a complete soft-target store (no meta.json){hint}; {fix}")
        meta = read_format_json(mpath, FORMAT, f"the store is damaged: {fix}",
                                f"a soft-target store of format {FORMAT!r}; {fix}", error=StoreError)
        if expect_key is not None and meta.get("key") != expect_key:
            raise StaleStoreError(f"{path} holds soft targets for another teacher, data set or selection "
                                  f"(key {meta.get('key')}, wanted {expect_key})")
        if "shards" in meta:
            # a damaged shard is recomputed by the build, so there is no need to start from scratch
            fix = (f"delete {mpath} and run the same `distill targets` (or build_store) again: shards that fail "
                   "their checks are recomputed")
        try:
            return cls._open_listed(path, meta, verify, mpath, fix)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise StoreError(f"{mpath} is malformed ({type(e).__name__}: {e}); the store is damaged: {fix}") from None

    @classmethod
    def _open_listed(cls, path: Path, meta: dict, verify: bool, mpath: Path, fix: str) -> "SoftTargetStore":
        """The store whose parsed ``meta.json`` is ``meta``: every listed file checked and mapped."""
        if "shards" in meta:
            listed = meta["shards"]
        else:  # one file per array
            if "values.npy" not in meta.get("files", {}):
                raise StoreError(f"{path}/values.npy is not listed in meta.json; {fix}")
            listed = [dict(start=0, stop=meta["rows"],
                           files={_plain_name(n, path, mpath, fix)[:-4]: dict(info, name=n)
                                  for n, info in meta["files"].items()})]
        if not isinstance(listed, list) or not all(isinstance(sh, dict) for sh in listed):
            raise TypeError("shards must be a list of objects")
        shards, at = [], 0
        for number, sh in enumerate(listed, 1):
            if not all(isinstance(sh.get(k), int) for k in ("start", "stop")) or sh["start"] != at or (
                    sh["stop"] < sh["start"]):
                raise StoreError(f"{mpath} lists shards that do not tile the rows (row {at} expected, shard "
                                 f"{sh.get('start')}..{sh.get('stop')}); {fix}")
            at = sh["stop"]
            arrays = dict(start=int(sh["start"]), stop=int(sh["stop"]))
            which = "" if len(listed) == 1 else f" (shard {number} of {len(listed)}, rows {sh['start']}..{sh['stop']})"
            for name, info in sh["files"].items():
                f = path / _plain_name(info["name"], path, mpath, fix)
                arrays[name] = open_array(f, info, verify, mpath, fix, which)
            if "values" not in arrays:
                raise StoreError(f"{mpath} lists a shard without values; {fix}")
            v = arrays["values"]
            if v.shape[0] != sh["stop"] - sh["start"] or v.dtype != np.dtype(meta["dtype"]):
                raise StoreError(f"{path / sh['files']['values']['name']} has shape {v.shape} and dtype {v.dtype}, "
                                 f"meta.json says {sh['stop'] - sh['start']} rows of {meta['dtype']}; {fix}")
            if meta.get("top_k") and not {"indices", "rest"} <= arrays.keys():
                raise StoreError(f"{path} is a top-k store without indices/rest arrays; {fix}")
            shards.append(arrays)
        if at != meta["rows"] or not shards:
            raise StoreError(f"{mpath} lists shards covering {at} rows, {meta['rows']} expected; {fix}")
        return cls(path, meta, shards)


def store_rows(idx, n: int, what: str = "a store of {n} rows") -> np.ndarray:
    """``idx`` (any integer array, a boolean mask of ``n``, or a slice; negative counting from the
    end) as checked int64 rows of a store of ``n`` rows."""
    if isinstance(idx, slice):
        return np.arange(*idx.indices(n), dtype=np.int64)
    idx = np.asarray(idx)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise IndexError(f"a boolean index must have {n} entries, got {idx.shape}")
        return np.flatnonzero(idx)
    if idx.dtype.kind not in "iu":
        raise IndexError(f"store rows are indexed by integers, got {idx.dtype}")
    idx = idx.astype(np.int64).reshape(-1)
    if len(idx) and (idx.min() < -n or idx.max() >= n):
        bad = int(idx[(idx < -n) | (idx >= n)][0])
        raise IndexError(f"row {bad} is out of range for {what.format(n=n)}")
    return np.where(idx < 0, idx + n, idx)


def is_plain_name(name) -> bool:
    """Whether ``name`` names a file directly inside a folder: no path separator, not absolute,
    not ``.``/``..``, no NUL (a manifest or record naming anything else is not followed)."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and not os.path.isabs(name))


def _plain_name(name, path: Path, mpath: Path, fix: str) -> str:
    if not is_plain_name(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise StoreError(f"{mpath} names the file {shown}, which is not a plain file name inside {path} (a store "
                         f"only reads its own folder); the manifest is damaged or was altered: {fix}")
    return name


def open_array(f: Path, info: dict, verify: bool, mpath: Path, fix: str, which: str = "", what: str = "store"):
    """One listed ``.npy`` file of a ``what`` (a store, a token store), checked (size; SHA-256 with
    ``verify``) and memory-mapped. ``which`` says which shard it belongs to, for the messages."""
    if not f.is_file():
        raise StoreError(f"{f}{which} is missing; the {what} is incomplete: {fix}")
    if f.stat().st_size != info["bytes"]:
        raise StoreError(f"{f}{which} has {f.stat().st_size} bytes, {info['bytes']} expected (truncated or "
                         f"overwritten); {fix}")
    if verify and file_digest(f) != info["sha256"]:
        raise StoreError(f"{f}{which} does not match the SHA-256 in {mpath} (changed since it was written); the "
                         f"{what} is damaged: {fix}")
    try:
        return np.load(f, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise StoreError(f"{f}{which} cannot be read as an array ({e}); {fix}") from None


class StaleStoreError(DistillError):
    """The store at this path was built for another teacher, data set, selection or format."""


# ---------------------------------------------------------------- writing

def _temporary(folder: Path, final: str) -> Path:
    """A fresh temporary name in ``folder`` for a file that becomes ``final``: distill's own
    (:data:`TMP_PREFIX`), unique to this process, so sweeping one never touches a user's file."""
    return folder / f"{TMP_PREFIX}{final}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _is_temporary(name: str) -> bool:
    return name.startswith(TMP_PREFIX) and name.endswith(".tmp")


def _sweep_temporaries(folder: Path) -> None:
    """Remove the temporaries killed distill writes left in ``folder`` (call it holding the lock)."""
    with contextlib.suppress(OSError):
        for f in folder.iterdir():
            if _is_temporary(f.name) and f.is_file():
                f.unlink(missing_ok=True)


def disk_full(e: BaseException, path: Path, what: str = "soft-target store") -> None:
    """A full disk while writing a store is one line saying how to resume."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DistillError(f"disk full while writing the {what} {path}; free space and rerun the "
                           "same command to resume") from None


def _write_file(tmp: Path, write) -> None:
    """Create ``tmp`` (mode 0666 less the umask, like any other output; never an existing file),
    let ``write(f)`` fill it, fsync."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write(path: Path, write) -> None:
    """Write ``path`` through a temporary of its folder (:func:`_write_file`), renamed into place."""
    tmp = _temporary(path.parent, path.name)
    try:
        _write_file(tmp, write)
        fault_point(f"written {tmp}")
        os.replace(tmp, path)
        fault_point(f"renamed {path}")
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        disk_full(e, path.parent)
        raise


def _atomic_write_json(path: Path, obj) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    _atomic_write(path, lambda f: f.write(data))


def write_store(path, logits: torch.Tensor, parts: dict) -> SoftTargetStore:
    """Write ``logits`` (n, N) as a store at ``path`` (replacing what is there) atomically: the
    files go to a temporary sibling folder, ``meta.json`` last, which is then renamed into place."""
    path = Path(path)
    arrays = {f"{name}.npy": a for name, a in encode(logits, parts).items()}
    n, n_cls = logits.shape
    top_k = stored_top_k(parts, n_cls)
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir, not tempfile.mkdtemp: the store folder gets the umask's mode like any other output
    tmp = path.with_name(f"{path.name}.distill-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    os.mkdir(tmp, 0o777)
    try:
        files = {}
        for name, arr in arrays.items():
            _write_file(tmp / name, lambda f: np.save(f, arr, allow_pickle=False))
            fault_point(f"written {tmp / name}")
            files[name] = dict(bytes=(tmp / name).stat().st_size, sha256=file_digest(tmp / name))
        # the key is the one asked for; top_k records what was stored (None: the full logits, when
        # top_k >= the number of classes)
        meta = dict(parts, key=store_key(parts), top_k=top_k, rows=int(n), num_classes=int(n_cls), files=files)
        data = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
        _write_file(tmp / "meta.json", lambda f: f.write(data))
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
        disk_full(e, path)
        raise
    return SoftTargetStore.open(path, expect_key=store_key(parts), verify=False)


def _check_teacher(teacher) -> None:
    """The store computes outputs through a teacher's ``forward`` and keys them by its ``id``."""
    if not isinstance(getattr(teacher, "id", None), str) or not callable(getattr(teacher, "forward", None)):
        raise ValueError(f"a soft-target store is built from a distill.Teacher, got {type(teacher).__name__}; "
                         "wrap it: Teacher(model) (distill.get_store does this for you)")


def get_store(root, teacher, data, *, selection: str = "", dtype: str = "float32", top_k: int | None = None,
              rebuild: bool = False, verify: bool = True, batch_size: int = 2000, progress: bool = True,
              log=print) -> SoftTargetStore:
    """The store of ``teacher``'s effective logits (a :class:`distill.Teacher`: the store knows only
    its ``id`` and ``forward``; ``distill.get_store`` also takes anything Teacher accepts) over ``data`` (any source :func:`distill.data.sources.as_source` accepts), kept at
    ``root/soft-<key>``: reused when it exists, built (atomically) when it does not or ``rebuild``
    is set. A damaged store raises :class:`StoreError` unless ``rebuild`` is set."""

    _check_teacher(teacher)
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


# ---------------------------------------------------------------- sharded builds (distill targets)

def shard_ranges(n: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous row ranges tiling ``0..n``, cut at multiples of ``batch_size`` (the
    ``ceil(n / batch_size)`` batches split as evenly as whole batches allow: shard ``s`` takes
    batches ``floor(s*B/S) .. floor((s+1)*B/S)``), so every shard runs the teacher on exactly the
    batches a one-process build runs, which makes a sharded build equal to it bit for bit. At most
    one shard per batch (fewer shards when there are fewer batches)."""
    if n < 1 or batch_size < 1 or shards < 1:
        raise ValueError(f"need n, batch_size and shards >= 1, got {n}, {batch_size}, {shards}")
    batches = -(-n // batch_size)
    shards = min(shards, batches)
    cuts = [s * batches // shards * batch_size for s in range(shards)] + [n]
    return [(cuts[s], min(cuts[s + 1], n)) for s in range(shards)]


NOT_INDEXABLE = ("a soft-target store is looked up by example index: the transfer set must be tensors, arrays or "
                 "a map-style Dataset, not a stream or a DataLoader")


def shard_name(kind: str, s: int, total: int, ext: str = "npy") -> str:
    return f"{kind}-{s:05d}-of-{total:05d}.{ext}"


def _row_range(source, start: int, stop: int):
    """Rows ``start:stop`` of an indexable source, as a source that serves them in order."""

    if isinstance(source, TensorSource):
        return TensorSource(source.x[start:stop], fingerprint="rows", name="transfer set", missing=source.missing)
    if isinstance(source, MapSource):
        return MapSource(_Rows(source.dataset, start, stop), fingerprint="rows", num_workers=source.num_workers,
                         name=source.name)
    raise ValueError(NOT_INDEXABLE)


class _Rows(torch.utils.data.Dataset):
    """Rows ``start:stop`` of a map-style dataset (with its batched ``take`` when it has one)."""

    def __init__(self, base, start: int, stop: int):
        self.base, self.start, self.stop = base, start, stop
        if hasattr(base, "take"):
            self.take = lambda idx: base.take(np.asarray(idx, dtype=np.int64) + start)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.base[self.start + i]


def _shard_done(path: Path, record_name: str, key: str, rng: tuple[int, int]) -> dict | None:
    """The record of a finished shard whose files are intact (sizes and SHA-256), else None."""
    rec_path = path / record_name
    if not rec_path.is_file():
        return None
    try:
        rec = json.loads(rec_path.read_text())
        if rec.get("key") != key or (rec["start"], rec["stop"]) != tuple(rng) or "num_classes" not in rec:
            return None
        for info in rec["files"].values():
            if not is_plain_name(info["name"]) or not SHARD_FILE.fullmatch(info["name"]):
                return None  # a record naming anything but a shard file of this folder is not trusted
            f = path / info["name"]
            if not f.is_file() or f.stat().st_size != info["bytes"] or file_digest(f) != info["sha256"]:
                return None
    except (ValueError, KeyError, TypeError, OSError):
        return None
    return rec


def unfinished_build(path) -> str | None:
    """When ``path`` is a folder where a sharded build started but wrote no manifest yet (killed
    half-way, or still running): how far it got, e.g. ``"2 of 3 shard(s) written"``; else None."""
    path = Path(path)
    try:
        if not path.is_dir() or (path / "meta.json").exists():
            return None
        names = [f.name for f in path.iterdir()]
    except OSError:
        return None
    ours = [n for n in names if SHARD_FILE.fullmatch(n)]
    if not ours and LOCK_NAME not in names:
        return None
    records = {n for n in ours if n.startswith("shard-")}
    totals = {int(n.rsplit("-of-", 1)[1].split(".")[0]) for n in ours}
    if len(totals) == 1:
        total = totals.pop()
        done = sum(shard_name("shard", s, total, "json") in records for s in range(total))
        return f"{done} of {total} shard(s) written"
    return f"{len(records)} shard record(s) written"


def _write_shard(path: Path, s: int, total: int, rng: tuple[int, int], arrays: dict, key: str,
                 num_classes: int) -> dict:
    """Write one shard's arrays (each to a temporary, fsynced, renamed), then its record."""
    files = {}
    for kind, arr in arrays.items():
        name = shard_name(kind, s, total)
        _atomic_write(path / name, lambda f: np.save(f, arr, allow_pickle=False))
        files[kind] = dict(name=name, bytes=(path / name).stat().st_size, sha256=file_digest(path / name))
    rec = dict(key=key, start=int(rng[0]), stop=int(rng[1]), num_classes=int(num_classes), files=files)
    _atomic_write_json(path / shard_name("shard", s, total, "json"), rec)
    return rec


@contextlib.contextmanager
def _build_lock(path: Path):
    """Hold the exclusive lock of the store folder ``path`` (created if need be) for a build: a
    second builder gets a one-line :class:`StoreError`. The kernel drops the lock when its holder
    dies, so a killed build leaves no stale lock. A complete store in a folder this process cannot
    write (a read-only copy) is reused without the lock: nothing is written there."""

    lock = FolderLock(path / LOCK_NAME, path, wait=False, log=lambda *a: None)
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock.__enter__()
    except DistillError:  # held by another process
        try:
            holder = (path / LOCK_NAME).read_text().strip() or "pid unknown"
        except OSError:
            holder = "pid unknown"
        raise StoreError(f"another process ({holder}) is writing the soft-target store {path}; wait for it to "
                         "finish and run this again (the finished store is reused), or choose another --out") from None
    except OSError as e:
        if not (path / "meta.json").is_file():
            raise DistillError(f"cannot write the soft-target store {path} ({e.strerror}); choose another "
                               "--out") from None
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def build_store(path, teacher, data, *, selection: str = "", dtype: str = "float32", top_k: int | None = None,
                shards: int | None = None, batch_size: int = 2000, device=None, progress: bool = True,
                log=print) -> SoftTargetStore | None:
    """Compute ``teacher``'s effective logits over ``data`` into a sharded store at ``path`` (the
    folder itself, not a root), with the identity, checks and options of :func:`get_store`.

    Run by every process of a ``torchrun`` job (:mod:`distill.distributed`) it splits the work:
    the rows are cut into ``shards`` contiguous ranges (default: one per process, see
    :func:`shard_ranges`) and process ``r`` computes shards ``r, r + w, ...``, so each example is
    computed exactly once. Each shard is written as its own files plus a record
    (``shard-SSSSS-of-TTTTT.json``: key, rows, sizes, SHA-256), and process 0 writes the manifest
    ``meta.json`` last, from the records all processes send it. Run again after a crash, only the
    shards without an intact record are recomputed; a complete store with the same key is reused.
    Returns the opened store on every process that can see all the shard files (with per-machine
    storage, process 0 says which to copy where and the others return None).
    """

    path = Path(path)
    _check_teacher(teacher)
    if teacher.module is None:
        raise ValueError("build_store needs a teacher that can run (a module, ensemble or checkpoint), not stored "
                         "outputs")
    source = as_source(data, name="transfer set")
    if not source.indexable or source.n is None:
        raise ValueError(NOT_INDEXABLE)
    parts = key_parts(teacher.id, source.fingerprint, selection, dtype=dtype, top_k=top_k)
    key = store_key(parts)
    rank, world_size = distributed.world()
    # process 0 holds the folder's lock for the whole build (the job's other processes work under it)
    with contextlib.ExitStack() as held:
        error = None
        if rank == 0:
            try:
                held.enter_context(_build_lock(path))
            except DistillError as e:
                error = e
        told = distributed.from_process_0(None if error is None else str(error))  # all stop, or all go on
        if error is not None:
            raise error
        if told is not None:
            raise StoreError(told)
        return _build_locked(path, teacher, source, parts, key, shards, batch_size, device, progress, log)


def _build_locked(path: Path, teacher, source, parts: dict, key: str, shards, batch_size: int, device, progress,
                  log) -> SoftTargetStore | None:
    """:func:`build_store` past its checks, with the folder's lock held by process 0."""

    rank, world_size = distributed.world()
    dtype = parts["dtype"]
    if (path / "meta.json").is_file():
        store = SoftTargetStore.open(path, expect_key=key, verify=True)  # stale or damaged: an error, no overwrite
        if len(store) != source.n:
            raise StoreError(f"{path} has {len(store)} rows for {source.n} inputs; delete it to rebuild")
        log(f"[soft targets] {path} is complete ({len(store)} x {store.num_classes}, {store.num_shards} shard(s), "
            f"{dtype}); reusing it")
        distributed.barrier()
        return store
    if rank == 0:
        path.mkdir(parents=True, exist_ok=True)
        _sweep_temporaries(path)  # what killed builds left (none can be running: the lock is ours)
    distributed.barrier()  # nobody starts writing while another process still reads the old state
    ranges = shard_ranges(source.n, batch_size, shards or world_size)
    total = len(ranges)
    path.mkdir(parents=True, exist_ok=True)
    if device is not None:
        teacher.to(device)
    mine: list[dict] = []
    for s in range(rank, total, world_size):
        record = shard_name("shard", s, total, "json")
        rec = _shard_done(path, record, key, ranges[s])
        if rec is not None:
            log(f"[soft targets] shard {s + 1}/{total} (rows {ranges[s][0]}..{ranges[s][1]}) is already written")
        else:
            log(f"[soft targets] shard {s + 1}/{total}: rows {ranges[s][0]}..{ranges[s][1]} -> {path}")
            logits = predict_logits(teacher.forward, _row_range(source, *ranges[s]), batch_size, device=device,
                                    progress=progress, desc=f"soft targets {s + 1}/{total}")
            rec = _write_shard(path, s, total, ranges[s], encode(logits, parts), key, logits.shape[1])
        mine.append(dict(rec, shard=s))
    gathered = [mine]
    if world_size > 1:
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, mine)
    records = sorted((r for part in gathered for r in part), key=lambda r: r["shard"])
    classes = {r["num_classes"] for r in records}
    if len(classes) != 1:
        raise StoreError(f"the shards of {path} disagree on the number of classes ({sorted(classes)})")
    num_classes = classes.pop()
    if rank == 0:
        meta = dict(parts, key=key, top_k=stored_top_k(parts, num_classes), rows=int(source.n),
                    num_classes=int(num_classes),
                    shards=[dict(start=r["start"], stop=r["stop"], files=r["files"]) for r in records])
        _atomic_write_json(path / "meta.json", meta)  # the manifest, last
        fault_point(f"written {path / 'meta.json'}")
        listed = {info["name"] for r in records for info in r["files"].values()}
        listed |= {shard_name("shard", r["shard"], total, "json") for r in records}
        for f in path.iterdir():  # shards of an earlier build with another shard count, by distill's names only
            if f.is_file() and f.name not in listed and SHARD_FILE.fullmatch(f.name):
                f.unlink(missing_ok=True)
        _sweep_temporaries(path)
    distributed.barrier()
    missing = [r["files"]["values"]["name"] for r in records if not (path / r["files"]["values"]["name"]).is_file()]
    if missing:
        if rank == 0:
            log(f"[soft targets] {path}/meta.json is written, but {len(missing)} shard(s) were written on other "
                f"machines ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}): copy every "
                f"*-of-{total:05d}.* file into {path} before use (SoftTargetStore.open checks their SHA-256)")
        return None
    return SoftTargetStore.open(path, expect_key=key, verify=False)


"""The top-k token store: a language-model teacher's next-token distribution over a corpus of
token blocks, computed once, cut to its k most likely tokens per position, kept on disk and read
memory-mapped by block index.

A full distribution per position does not fit on a disk for a big vocabulary (50,000 float16
values per token is 100 kB; a corpus has billions of tokens), so a store keeps, for every position
of every block, the k largest log-probabilities at T = 1 (:func:`topk_logprobs`) as float16 and
their vocabulary ids (uint16 up to 65,536 ids, else int32: :func:`ids_dtype`), that is
:func:`bytes_per_token` = ``(ids itemsize + 2) * k`` bytes per token (4k with uint16 ids).

A store is a folder ``root/tokens-<key>`` laid out like a sharded soft-target store
(:func:`distill.teachers.store.build_store`): the blocks are cut into contiguous ranges at
batch boundaries (:func:`distill.teachers.store.shard_ranges`), one set of files each::

    ids-00000-of-00002.npy        (n_0, L, k) vocabulary ids of the kept tokens, most likely first
    logprobs-00000-of-00002.npy   (n_0, L, k) their log-probabilities, float16
    shard-00000-of-00002.json     one shard's record: key, rows, valid tokens, files' sizes and SHA-256
    ids-00001-of-00002.npy ...    rows [n_0, N)
    meta.json                     the manifest, written last (see :func:`get_token_store`)

Row ``i`` belongs to block ``i`` of the source (``idx`` of its batches), so ``lookup(idx)`` with
the indices that pick the inputs stays paired under any shuffling. Positions that do not count
(``attention_mask`` 0) hold a finite placeholder: ids ``0..k-1`` at ``log(1/V)`` each.

Identity: the key is the SHA-256 of the format, the teacher's ``id``, the source's ``fingerprint``
(the tokens, the tokenizer and the block layout) and k; another teacher, other text or another k
never reuse a store, and :meth:`TokenStore.check` refuses a store for a source whose fingerprint,
tokenizer or vocabulary differs.

A build holds the folder's lock (``.distill-store.lock``, :class:`distill.atomic.FolderLock`)
from start to end, a second build of the same store waits for it and then reuses the result.
Every file is written to a temporary (``*.distill.tmp``, :data:`distill.atomic.TMP_SUFFIX`),
fsynced and renamed; ``meta.json`` last. Killed half-way, a build leaves the shards it finished
(each with its record), and the next call recomputes only the shards without an intact record;
only distill's own temporaries are swept, never a user's file. Under ``torchrun`` each process
computes shards ``rank, rank + world, ...`` and process 0 writes the manifest from the records
all processes send it, exactly as :func:`distill.teachers.store.build_store` does.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import re
import secrets
import sys
from pathlib import Path

import numpy as np
import torch

from distill import distributed
from distill.atomic import TMP_SUFFIX, FolderLock, atomic_write_json, fault_point, remove_temporaries
from distill.checkpoints import read_format_json, safe_json_loads
from distill.checks import check_number
from distill.data.sources import RowReader
from distill.digest import file_digest, json_digest
from distill.errors import DistillError
from distill.modelio import inputs_to, logits_of
from distill.teachers.store import (LOCK_NAME, StaleStoreError, StoreError, disk_full, is_plain_name, open_array,
                                    shard_name,
                                    shard_ranges, store_rows, unfinished_build)

FORMAT = "distill-token-targets/1"
#: the storage dtype of the kept log-probabilities
LOGPROBS_DTYPE = np.dtype(np.float16)
#: the most negative finite float16: log-probabilities below it (or -inf) are stored as this
FP16_MIN = float(np.finfo(np.float16).min)
#: the folder of a store under its root is ``PREFIX + key``
PREFIX = "tokens-"
#: the names of a token store's own shard files (other shard counts' files of these names are removed)
SHARD_FILE = re.compile(r"(ids|logprobs)-\d{5}-of-\d{5}\.npy|shard-\d{5}-of-\d{5}\.json")
#: default payload (ids + log-probabilities) of one shard: a killed build loses at most one shard's work
SHARD_BYTES = 1 << 30
#: log-softmax is taken over chunks of at most this many logits (bounds the float32 temporaries)
CHUNK_LOGITS = 1 << 24
ARRAYS = ("ids", "logprobs")


# ---------------------------------------------------------------- sizes and checks

def ids_dtype(vocab_size: int) -> np.dtype:
    """The dtype of the stored vocabulary ids: the smallest integer dtype numpy memory-maps that
    holds ``vocab_size - 1`` among uint16 (up to 65,535, i.e. up to 65,536 ids) and int32."""
    v = check_number("vocab_size", vocab_size, minimum=1, integer=True)
    if v - 1 <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if v - 1 <= np.iinfo(np.int32).max:
        return np.dtype(np.int32)
    raise ValueError(f"vocab_size must be at most {np.iinfo(np.int32).max + 1}, got {vocab_size!r}")


def bytes_per_token(k: int, vocab_size: int) -> int:
    """Bytes a store keeps per token position: ``(ids itemsize + 2) * k`` (ids plus float16
    log-probabilities): ``4 k`` with uint16 ids, ``6 k`` with int32 ids."""
    return (ids_dtype(vocab_size).itemsize + LOGPROBS_DTYPE.itemsize) * check_k(k, vocab_size)


def check_k(k, vocab_size: int) -> int:
    """``k`` as an int after checking it is a whole number with ``1 <= k <= vocab_size`` (k equal to
    the vocabulary keeps the full distribution); else a one-line ``ValueError``."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be a whole number (an int) between 1 and the vocabulary size {vocab_size}, "
                         f"got {k!r}")
    k = int(k)
    if not 1 <= k <= int(vocab_size):
        raise ValueError(f"k must lie in 1..{vocab_size} (the vocabulary size), got {k}")
    return k


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most likely tokens of every position of ``logits`` ``[..., V]`` at T = 1::

        logprobs_v = z_v - log(sum_u exp(z_u))      (log_softmax over the last axis, in float32)
        ids, logprobs = topk(logprobs, k)           (the k largest, most likely first)

    Returns ``(ids, logprobs)``, each ``[..., k]``: int64 vocabulary ids and float32
    log-probabilities (``exp(logprobs).sum(-1) <= 1``, equal to 1 when k = V)."""
    if logits.dim() < 1:
        raise ValueError("logits must have a vocabulary axis, got a scalar")
    k = check_k(k, logits.shape[-1])
    vals, ids = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return ids.long(), vals


def store_key(teacher_id: str, data_fingerprint: str, k: int) -> str:
    """SHA-256 (16 hex) of what decides a store's content: its format, the teacher's identity, the
    source's fingerprint (tokens, tokenizer, block layout) and k."""
    return json_digest(dict(format=FORMAT, teacher=str(teacher_id), data=str(data_fingerprint), k=int(k)))


def _check_teacher(teacher) -> None:
    """The store knows a teacher only by its ``id`` (a non-empty str) and ``forward(inputs)``."""
    if not isinstance(getattr(teacher, "id", None), str) or not teacher.id or not callable(
            getattr(teacher, "forward", None)):
        raise ValueError(f"a token store is built from a teacher with an .id (str) and .forward(inputs) -> logits "
                         f"[B, L, V], got {type(teacher).__name__}")


def _check_source(source) -> None:
    """The attributes of a token-block source (:class:`distill.data.text.TokenBlocks`) the store uses."""
    missing = [a for a in ("n", "block_size", "vocab_size", "fingerprint", "ordered") if getattr(source, a, None) is None]
    missing += [] if hasattr(source, "tokenizer_digest") else ["tokenizer_digest"]  # None: ids given without one
    if missing:
        raise ValueError(f"a token store is built over token blocks (n, block_size, vocab_size, fingerprint, "
                         f"tokenizer_digest, ordered()); {type(source).__name__} has no {', '.join(missing)}")
    check_number("the source's n", source.n, minimum=1, integer=True)
    check_number("the source's block_size", source.block_size, minimum=1, integer=True)
    check_number("the source's vocab_size", source.vocab_size, minimum=1, integer=True)


def _default_shards(n: int, block_size: int, k: int, vocab_size: int, world_size: int) -> int:
    """A multiple of the number of processes with about :data:`SHARD_BYTES` per shard at most."""
    payload = n * block_size * bytes_per_token(k, vocab_size)
    return world_size * max(1, math.ceil(payload / SHARD_BYTES / world_size))


# ---------------------------------------------------------------- the store

class TokenStore:
    """A read-only token store on disk (module docstring). ``len(store)`` blocks of
    ``block_size`` positions, ``k`` kept tokens each; :meth:`lookup` reads only the rows asked for
    (:class:`distill.data.sources.RowReader` over the memory-mapped files)."""

    def __init__(self, path: Path, meta: dict, shards: list[dict]):
        self.path, self.meta = Path(path), meta
        self._shards = shards  # [{start, stop, ids, logprobs}] in row order
        self._starts = np.asarray([sh["start"] for sh in shards], dtype=np.int64)

    key = property(lambda self: self.meta["key"])
    k = property(lambda self: int(self.meta["k"]))
    vocab_size = property(lambda self: int(self.meta["vocab_size"]))
    block_size = property(lambda self: int(self.meta["block_size"]))
    bytes_per_token = property(lambda self: int(self.meta["bytes_per_token"]))
    fingerprint = property(lambda self: self.meta["data"])
    tokenizer_digest = property(lambda self: self.meta["tokenizer_digest"])
    teacher_id = property(lambda self: self.meta["teacher"])
    valid_tokens = property(lambda self: int(self.meta["valid_tokens"]))
    num_shards = property(lambda self: len(self._shards))

    def __len__(self) -> int:
        return int(self.meta["rows"])

    def __repr__(self) -> str:
        return (f"TokenStore({str(self.path)!r}, {len(self)} blocks x {self.block_size}, top-{self.k} of "
                f"{self.vocab_size}, {self.bytes_per_token} bytes/token)")

    # ------------------------------------------------------------ reading
    def _rows(self, idx) -> np.ndarray:
        return store_rows(idx, len(self), "a token store of {n} blocks")

    def _gather(self, name: str, rows: np.ndarray) -> np.ndarray:
        which = np.searchsorted(self._starts, rows, side="right") - 1
        first = self._shards[0][name]
        out = np.empty((len(rows),) + first.shape[1:], dtype=first.dtype)
        for s in np.unique(which):
            m = which == s
            shard = self._shards[int(s)]
            reader = shard.setdefault(f"{name}.reader", RowReader.of(shard[name]))
            local = rows[m] - self._starts[s]
            out[m] = reader[local] if reader is not None else np.asarray(shard[name][local])
        return out

    def lookup(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept tokens of blocks ``idx`` (int, slice, index tensor or array):
        ``(ids [b, L, k] int64, logprobs [b, L, k] float32)``, most likely first (an int gives
        ``[L, k]``). Only those rows are read from disk."""
        if isinstance(idx, torch.Tensor):
            idx = idx.detach().cpu().numpy()
        scalar = isinstance(idx, numbers.Integral) or (isinstance(idx, np.ndarray) and idx.ndim == 0)
        rows = self._rows(np.asarray([int(idx)]) if scalar else idx)
        ids = torch.from_numpy(self._gather("ids", rows).astype(np.int64))
        logprobs = torch.from_numpy(self._gather("logprobs", rows).astype(np.float32))
        return (ids[0], logprobs[0]) if scalar else (ids, logprobs)

    def check(self, source) -> None:
        """Refuse (one-line :class:`distill.teachers.store.StaleStoreError`) a store built on other
        text, with another tokenizer or vocabulary, or another block layout than ``source``."""
        where = f"the token store {self.path}"
        fix = "build the store of this data with get_token_store"
        digest, fp = getattr(source, "tokenizer_digest", None), getattr(source, "fingerprint", None)
        if digest != self.tokenizer_digest:
            raise StaleStoreError(f"{where} was built with another tokenizer (tokenizer digest {self.tokenizer_digest}, "
                                  f"data fingerprint {self.fingerprint}; this source: {digest}, {fp}); {fix}")
        if fp != self.fingerprint:
            raise StaleStoreError(f"{where} was built on other text (data fingerprint {self.fingerprint}; this "
                                  f"source: {fp}); {fix}")
        vocab = getattr(source, "vocab_size", None)
        if vocab != self.vocab_size:
            raise StaleStoreError(f"{where} holds ids of a vocabulary of {self.vocab_size} tokens, this source has "
                                  f"{vocab}; {fix}")
        shape = (getattr(source, "n", None), getattr(source, "block_size", None))
        if shape != (len(self), self.block_size):
            raise StaleStoreError(f"{where} holds {len(self)} blocks of {self.block_size} tokens, this source "
                                  f"{shape[0]} of {shape[1]}; {fix}")

    # ------------------------------------------------------------ opening
    @classmethod
    def open(cls, path, verify: bool = True, expect_key: str | None = None) -> "TokenStore":
        """Open a finished store. Every listed file is checked against ``meta.json`` (its size; with
        ``verify`` its SHA-256 too): a damaged, truncated or missing file is a
        :class:`~distill.teachers.store.StoreError` saying to delete the folder to rebuild it; an
        unfinished build says how far it got. ``expect_key``: a store of another key is a
        :class:`~distill.teachers.store.StaleStoreError`."""
        path = Path(path)
        mpath = path / "meta.json"
        fix = (f"delete {path} to rebuild it (or only its meta.json: the next get_token_store then recomputes just the "
               "shards that fail their checks)")
        if not mpath.is_file():
            how = unfinished_build(path)
            if how is not None:
                raise StoreError(f"{path} is an unfinished token store ({how}: an interrupted or running build); "
                                 f"run the same get_token_store again to finish it, or delete {path}")
            raise StoreError(f"{path} is not a token store (no meta.json); {fix}")
        meta = read_format_json(mpath, FORMAT, f"the token store is damaged: {fix}",
                                f"a token store of format {FORMAT!r}; {fix}", error=StoreError)
        try:
            return cls._open_listed(path, meta, verify, expect_key, mpath, fix)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise StoreError(f"{mpath} is malformed ({type(e).__name__}: {e}); the token store is damaged: "
                             f"{fix}") from None

    @classmethod
    def _open_listed(cls, path: Path, meta: dict, verify: bool, expect_key, mpath: Path, fix: str) -> "TokenStore":
        if meta["key"] != store_key(meta["teacher"], meta["data"], meta["k"]):
            raise StoreError(f"{mpath} does not match its own key (edited by hand?); {fix}")
        if expect_key is not None and meta["key"] != expect_key:
            raise StaleStoreError(f"{path} holds the top-k of another teacher, text or k (key {meta['key']}, wanted "
                                  f"{expect_key})")
        rows, length, k, vocab = (int(meta[f]) for f in ("rows", "block_size", "k", "vocab_size"))
        dtypes = dict(ids=ids_dtype(vocab), logprobs=LOGPROBS_DTYPE)
        if (meta["ids_dtype"], meta["logprobs_dtype"]) != (dtypes["ids"].name, dtypes["logprobs"].name) or (
                meta["bytes_per_token"] != bytes_per_token(k, vocab)):
            raise StoreError(f"{mpath} lists dtypes {meta['ids_dtype']}/{meta['logprobs_dtype']} and "
                             f"{meta['bytes_per_token']} bytes per token, which a vocabulary of {vocab} and k = {k} "
                             f"do not give; {fix}")
        listed = meta["shards"]
        if not isinstance(listed, list) or not listed or not all(isinstance(sh, dict) for sh in listed):
            raise TypeError("shards must be a non-empty list of objects")
        shards, at = [], 0
        for number, sh in enumerate(listed, 1):
            if not all(isinstance(sh.get(f), int) for f in ("start", "stop")) or sh["start"] != at or (
                    sh["stop"] <= sh["start"]):
                raise StoreError(f"{mpath} lists shards that do not tile the blocks (block {at} expected, shard "
                                 f"{sh.get('start')}..{sh.get('stop')}); {fix}")
            at = sh["stop"]
            which = "" if len(listed) == 1 else f" (shard {number} of {len(listed)}, blocks {sh['start']}..{sh['stop']})"
            arrays = dict(start=sh["start"], stop=sh["stop"])
            for kind in ARRAYS:
                info = sh["files"][kind]
                if not is_plain_name(info["name"]):
                    raise StoreError(f"{mpath} names the file {info['name']!r}, which is not a plain file name inside "
                                     f"{path} (a store only reads its own folder); {fix}")
                f = path / info["name"]
                a = open_array(f, info, verify, mpath, fix, which, "token store")
                want = (sh["stop"] - sh["start"], length, k)
                if a.shape != want or a.dtype != dtypes[kind]:
                    raise StoreError(f"{f}{which} holds {a.shape} {a.dtype}, meta.json says {want} {dtypes[kind]}; "
                                     f"{fix}")
                arrays[kind] = a
            shards.append(arrays)
        if at != rows:
            raise StoreError(f"{mpath} lists shards covering {at} blocks, {rows} expected; {fix}")
        return cls(path, meta, shards)




# ---------------------------------------------------------------- writing

def _temporary(final: Path) -> Path:
    """A fresh temporary beside ``final``, named so :func:`distill.atomic.remove_temporaries` sweeps it."""
    return final.with_name(f"{final.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


class _NpyWriter:
    """A ``.npy`` file of a known shape written row block by row block, in order, into a temporary
    (mode 0666 less the umask, never an existing file) that :meth:`commit` fsyncs and renames into place."""

    def __init__(self, final: Path, dtype: np.dtype, shape: tuple):
        self.final, self.dtype, self.shape, self.rows = final, np.dtype(dtype), tuple(shape), 0
        self.tmp = _temporary(final)
        self.f = os.fdopen(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")
        np.lib.format.write_array_header_1_0(self.f, dict(descr=np.lib.format.dtype_to_descr(self.dtype),
                                                          fortran_order=False, shape=self.shape))

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        assert block.shape[1:] == self.shape[1:]
        self.rows += len(block)
        self.f.write(block.tobytes())

    def commit(self) -> dict:
        if self.rows != self.shape[0]:
            raise DistillError(f"{self.final}: {self.rows} rows written, {self.shape[0]} expected (the source served "
                               "fewer blocks than its n says)")
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        fault_point(f"written {self.tmp}")
        os.replace(self.tmp, self.final)
        fault_point(f"renamed {self.final}")
        return dict(name=self.final.name, bytes=self.final.stat().st_size, sha256=file_digest(self.final))

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.f.close()
        self.tmp.unlink(missing_ok=True)


def _encode(logits: torch.Tensor, valid: torch.Tensor, k: int, id_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``logits [b, L, V]`` as the stored ``(ids, logprobs)`` ``[b, L, k]``: :func:`topk_logprobs`
    over chunks of positions (on the logits' device; only the k kept per position come back),
    log-probabilities below the float16 range stored as its minimum, positions not ``valid``
    given the placeholder. A NaN (a NaN or +inf logit) at a valid position is a ``ValueError``."""
    b, length, vocab = logits.shape
    flat = logits.reshape(b * length, vocab)
    ids = np.empty((b * length, k), dtype=id_dtype)
    logprobs = np.empty((b * length, k), dtype=LOGPROBS_DTYPE)
    step = max(1, CHUNK_LOGITS // vocab)
    for i in range(0, b * length, step):
        ci, cl = topk_logprobs(flat[i:i + step], k)
        ids[i:i + step] = ci.cpu().numpy()
        logprobs[i:i + step] = cl.clamp_min(FP16_MIN).cpu().numpy()  # NaN stays NaN
    keep = valid.reshape(-1).bool().cpu().numpy()
    bad = int(np.isnan(logprobs[keep]).any(axis=1).sum())
    if bad:
        raise ValueError(f"the teacher produced nan or inf logits at {bad} counted position(s); refusing to store them")
    ids[~keep] = np.arange(k, dtype=id_dtype)
    logprobs[~keep] = np.float16(-math.log(vocab))
    return ids.reshape(b, length, k), logprobs.reshape(b, length, k)


def _compute_shard(path: Path, teacher, source, s: int, total: int, rng: tuple[int, int], key: str, k: int,
                   batch_size: int, device, progress: bool) -> dict:
    """Run the teacher over blocks ``rng`` of ``source.ordered(batch_size)`` (the other blocks'
    batches are skipped unread by the teacher) and write shard ``s``: its arrays, then its record."""
    from tqdm.auto import tqdm

    start, stop = rng
    length, vocab = int(source.block_size), int(source.vocab_size)
    id_dtype = ids_dtype(vocab)
    shape = (stop - start, length, k)
    writers = {}
    bar = tqdm(total=stop - start, disable=not (progress and sys.stderr.isatty()), desc=f"token store {s + 1}/{total}",
               unit="block", leave=False)
    try:
        for kind, dt in (("ids", id_dtype), ("logprobs", LOGPROBS_DTYPE)):
            writers[kind] = _NpyWriter(path / shard_name(kind, s, total), dt, shape)
        at, valid_tokens = start, 0
        with torch.no_grad():
            for inputs, _labels, idx in source.ordered(batch_size):
                idx = torch.as_tensor(idx).reshape(-1).long().cpu()
                mine = (idx >= start) & (idx < stop)
                if not bool(mine.any()):
                    if len(idx) and int(idx.min()) >= stop:
                        break
                    continue
                rows = idx[mine]
                if not torch.equal(rows, torch.arange(at, at + len(rows))):
                    raise DistillError(f"the source's ordered() served blocks {rows[:4].tolist()}... where block {at} "
                                       "was next; a token store needs the blocks in order")
                mask = inputs.get("attention_mask")
                ids_in = inputs["input_ids"]
                if mask is None:
                    mask = torch.ones_like(ids_in)
                x = inputs_to(inputs, device) if device is not None else inputs
                whole = bool(mine.all())  # (the usual case: no copy of the logits)
                logits = logits_of(teacher.forward(x))
                if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(ids_in.shape) or logits.shape[2] != vocab:
                    raise DistillError(f"the teacher gave logits of shape {tuple(logits.shape)} for input_ids of shape "
                                       f"{tuple(ids_in.shape)}; a token store needs [B, L, V] with V = {vocab}, the "
                                       "source's vocabulary size")
                valid = mask if whole else mask[mine]
                ids, logprobs = _encode(logits if whole else logits[mine.to(logits.device)], valid, k, id_dtype)
                writers["ids"].write(ids)
                writers["logprobs"].write(logprobs)
                valid_tokens += int(valid.bool().sum())
                at += len(rows)
                bar.update(len(rows))
        files = {kind: w.commit() for kind, w in writers.items()}
        rec = dict(format=FORMAT, key=key, start=int(start), stop=int(stop), valid_tokens=valid_tokens, files=files)
        atomic_write_json(path / shard_name("shard", s, total, "json"), rec)
        return rec
    except BaseException as e:
        for w in writers.values():
            w.discard()
        disk_full(e, path, "token store")
        raise
    finally:
        bar.close()


def _shard_done(path: Path, record_name: str, key: str, rng: tuple[int, int]) -> dict | None:
    """The record of a finished shard whose files are intact (sizes and SHA-256), else None."""
    rec_path = path / record_name
    if not rec_path.is_file():
        return None
    try:
        rec = safe_json_loads(rec_path.read_bytes(), str(rec_path), "", StoreError)
        if rec.get("key") != key or (rec["start"], rec["stop"]) != tuple(rng) or not isinstance(
                rec.get("valid_tokens"), int) or set(rec["files"]) != set(ARRAYS):
            return None
        for info in rec["files"].values():
            if not is_plain_name(info["name"]) or not SHARD_FILE.fullmatch(info["name"]):
                return None  # a record naming anything but a shard file of this folder is not trusted
            f = path / info["name"]
            if not f.is_file() or f.stat().st_size != info["bytes"] or file_digest(f) != info["sha256"]:
                return None
    except (ValueError, KeyError, TypeError, AttributeError, OSError, DistillError):
        return None
    return rec


def get_token_store(root, teacher, source, *, k: int = 32, batch_size: int = 16, shards: int | None = None,
                    device=None, verify: bool = True, progress: bool = True, log=print) -> TokenStore:
    """The top-``k`` store of ``teacher`` over the token blocks ``source``, kept at
    ``root/tokens-<key>`` (key: :func:`store_key` of ``teacher.id``, ``source.fingerprint`` and
    ``k``): opened when it is finished (``verify``: every file re-hashed), else built and opened.

    ``teacher``: any object with ``id`` (str) and ``forward(inputs) -> logits [B, L, V]``
    (``inputs`` the dict of ``input_ids`` and ``attention_mask`` a batch of ``source.ordered``
    gives, on ``device`` when given, else on ``teacher.device`` when the teacher has one, else as the
    source gives them); it runs under ``torch.no_grad`` and must already be in eval mode. ``source``: a :class:`distill.data.text.TokenBlocks`-like object (``n``,
    ``block_size``, ``vocab_size``, ``fingerprint``, ``tokenizer_digest``, ``ordered``).

    The blocks are cut into ``shards`` contiguous ranges at multiples of ``batch_size``
    (:func:`distill.teachers.store.shard_ranges`; default: about :data:`SHARD_BYTES` each, a
    multiple of the number of processes); under ``torchrun`` process ``r`` computes shards
    ``r, r + w, ...`` and process 0 writes ``meta.json`` after all are done. The manifest holds the
    key, teacher id, data fingerprint, tokenizer digest, block size, vocabulary size, k, dtypes, N,
    the number of valid (``attention_mask`` 1) tokens, bytes per token and every file's size and
    SHA-256. Rerun after a crash, only the shards without an intact record are computed again.
    """
    _check_teacher(teacher)
    _check_source(source)
    vocab = int(source.vocab_size)
    k = check_k(k, vocab)
    batch_size = check_number("batch_size", batch_size, minimum=1, integer=True)
    if shards is not None:
        shards = check_number("shards", shards, minimum=1, integer=True)
    key = store_key(teacher.id, source.fingerprint, k)
    path = Path(root) / f"{PREFIX}{key}"
    if distributed.from_process_0((path / "meta.json").is_file()):  # finished: no lock needed to read it
        return _reuse(path, key, source, verify, log)
    rank, _ = distributed.world()
    with contextlib.ExitStack() as held:
        error = None
        if rank == 0:  # process 0 holds the folder's lock for the whole build; another build waits for it
            try:
                path.mkdir(parents=True, exist_ok=True)
                held.enter_context(FolderLock(path / LOCK_NAME, f"the token store {path}", wait=True, log=log))
            except OSError as e:
                error = DistillError(f"cannot write the token store {path} ({e.strerror}); choose another root")
        told = distributed.from_process_0(None if error is None else str(error))  # all stop, or all go on
        if error is not None:
            raise error
        if told is not None:
            raise DistillError(told)
        return _build_locked(path, teacher, source, key, k, shards, batch_size, device, verify, progress, log)


def _reuse(path: Path, key: str, source, verify: bool, log) -> TokenStore:
    store = TokenStore.open(path, verify=verify, expect_key=key)
    store.check(source)
    log(f"[token store] reusing {path} ({len(store)} blocks x {store.block_size}, top-{store.k} of "
        f"{store.vocab_size}, {store.bytes_per_token} bytes/token)")
    return store


def _build_locked(path: Path, teacher, source, key: str, k: int, shards, batch_size: int, device, verify: bool,
                  progress: bool, log) -> TokenStore:
    """:func:`get_token_store` past its checks, with the folder's lock held by process 0."""
    rank, world_size = distributed.world()
    if distributed.from_process_0((path / "meta.json").is_file()):  # finished while we waited for the lock
        return _reuse(path, key, source, verify, log)
    if rank == 0:
        remove_temporaries(path)  # what killed builds left (none is running: the lock is ours)
    distributed.barrier()  # nobody writes while process 0 still sweeps
    n, length, vocab = int(source.n), int(source.block_size), int(source.vocab_size)
    ranges = shard_ranges(n, batch_size, shards or _default_shards(n, length, k, vocab, world_size))
    total = len(ranges)
    path.mkdir(parents=True, exist_ok=True)
    if device is not None and callable(getattr(teacher, "to", None)):
        teacher.to(device)
    if device is None and isinstance(getattr(teacher, "device", None), torch.device):
        device = teacher.device  # a distill.Teacher on a GPU gets its inputs there
    mine: list[dict] = []
    for s in range(rank, total, world_size):
        lo, hi = ranges[s]
        rec = _shard_done(path, shard_name("shard", s, total, "json"), key, ranges[s])
        if rec is not None:
            log(f"[token store] shard {s + 1}/{total} (blocks {lo}..{hi}) is already written")
        else:
            log(f"[token store] shard {s + 1}/{total}: top-{k} of the teacher over blocks {lo}..{hi} -> {path}")
            rec = _compute_shard(path, teacher, source, s, total, ranges[s], key, k, batch_size, device, progress)
        mine.append(dict(rec, shard=s))
    gathered = [mine]
    if world_size > 1:
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, mine)
    records = sorted((r for part in gathered for r in part), key=lambda r: r["shard"])
    if rank == 0:
        id_dtype = ids_dtype(vocab)
        meta = dict(format=FORMAT, key=key, teacher=teacher.id, data=source.fingerprint,
                    tokenizer_digest=source.tokenizer_digest, block_size=length, vocab_size=vocab, k=k,
                    temperature=1.0, ids_dtype=id_dtype.name, logprobs_dtype=LOGPROBS_DTYPE.name, rows=n,
                    valid_tokens=sum(r["valid_tokens"] for r in records),
                    bytes_per_token=bytes_per_token(k, vocab),
                    shards=[dict(start=r["start"], stop=r["stop"], valid_tokens=r["valid_tokens"], files=r["files"])
                            for r in records])
        try:
            atomic_write_json(path / "meta.json", meta)  # the manifest, last
        except OSError as e:
            disk_full(e, path, "token store")
            raise
        listed = {info["name"] for r in records for info in r["files"].values()}
        listed |= {shard_name("shard", r["shard"], total, "json") for r in records}
        for f in path.iterdir():  # shards of an earlier build with another shard count, by distill's names only
            if f.is_file() and f.name not in listed and SHARD_FILE.fullmatch(f.name):
                f.unlink(missing_ok=True)
        remove_temporaries(path)
    distributed.barrier()
    missing = [info["name"] for r in records for info in r["files"].values() if not (path / info["name"]).is_file()]
    if missing:
        raise StoreError(f"{path}/meta.json is written, but {len(missing)} shard file(s) were written on other machines "
                         f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}): copy every "
                         f"*-of-{total:05d}.* file into {path} on every machine before use")
    store = TokenStore.open(path, verify=False, expect_key=key)  # just written and hashed
    log(f"[token store] {path}: {len(store)} blocks x {length}, top-{k} of {vocab}, {store.valid_tokens} valid "
        f"tokens, {store.bytes_per_token} bytes/token, {total} shard(s)")
    return store

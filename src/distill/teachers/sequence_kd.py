"""Sequence-level knowledge distillation (Kim & Rush 2016): the teacher's own completions of the
training prompts are the transfer set; the student then learns them (with the token-level
objective, against the same teacher) instead of the data's completions.

:func:`teacher_completions` generates them in batches (left-padded prompts, the KV-cached
:func:`distill.models.lm.generate`, greedy by default: the teacher's mode, an approximation of its
beam search) and caches them under ``root`` keyed by the teacher's identity, the prompts'
fingerprint and the sampling settings, so a second run with the same teacher and data reads them
back; a damaged cache file is regenerated, never trusted.
"""
from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from distill.atomic import atomic_write_bytes
from distill.data.prompts import PromptBlocks
from distill.digest import json_digest
from distill.models.lm import continuations
from distill.teachers.teacher import module_id

#: the cache file's format tag (bump when its layout changes)
FORMAT = "distill.sequence_kd/1"


def completion_key(teacher_id: str, prompts_fingerprint: str, settings: dict) -> str:
    """The cache key of one teacher's completions: a digest of ``(format, teacher identity,
    prompts' fingerprint, sampling settings)``; any of them changing is another key."""
    return json_digest(dict(format=FORMAT, teacher=teacher_id, prompts=prompts_fingerprint, settings=settings))


def _pack(key: str, completions: list[list[int]]) -> bytes:
    lengths = np.array([len(c) for c in completions], dtype=np.int64)
    flat = np.array([t for c in completions for t in c], dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), lengths=lengths, tokens=flat)
    return buf.getvalue()


def _unpack(path: Path, key: str, rows: int) -> list[list[int]] | None:
    """The cached completions, or None when the file is missing, unreadable or not this key's."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            lengths, flat = z["lengths"], z["tokens"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if lengths.ndim != 1 or len(lengths) != rows or (lengths < 0).any() or int(lengths.sum()) != len(flat):
        return None
    ends = np.cumsum(lengths)
    return [flat[e - n:e].tolist() for n, e in zip(lengths.tolist(), ends.tolist())]


def teacher_completions(teacher, prompts: PromptBlocks, *, max_new_tokens: int, temperature: float = 0.0,
                        top_p: float = 1.0, top_k: int = 0, seed: int = 0, batch_size: int = 16,
                        root=None, device=None, log=print) -> PromptBlocks:
    """``prompts`` with the teacher's completions in place of the data's: each prompt continued by
    ``teacher`` (:func:`~distill.models.lm.generate` at ``temperature``, 0 = greedy, with
    ``top_p``/``top_k``; the draws from a generator seeded by ``seed`` and the batch index), up to
    ``max_new_tokens`` tokens, kept up to and including its first EOS. ``batch_size`` prompts are
    generated at once, on ``device`` (None: where the teacher is). With ``root``, the completions are cached in
    ``root/<completion_key>.npz`` (written atomically) and read back by a later call with the same
    teacher, prompts and settings. The result's layout records the teacher and the settings, so a
    run on it is another run than one on the data."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    settings = dict(max_new_tokens=max_new_tokens, temperature=float(temperature), top_p=float(top_p),
                    top_k=int(top_k), seed=int(seed))
    tid = module_id(teacher)
    key = completion_key(tid, prompts.fingerprint, settings)
    layout = dict(kind="sequence_kd", teacher=tid, **settings)
    path = None if root is None else Path(root) / f"{key}.npz"
    if path is not None and path.exists():
        cached = _unpack(path, key, len(prompts))
        if cached is not None:
            log(f"[sequence-kd] {len(cached):,} teacher completions read from {path}")
            return prompts.with_completions(cached, layout)
        log(f"[sequence-kd] {path} is damaged or not these completions: generating them again")
    home = next(teacher.parameters(), torch.empty(0)).device
    dev = home if device is None else torch.device(device)
    model = teacher.to(dev) if dev != home else teacher
    rows, out, t0 = prompts.prompts(), [], time.perf_counter()
    for b, start in enumerate(range(0, len(rows), batch_size)):
        batch = rows[start:start + batch_size]
        gen = torch.Generator(device=dev).manual_seed(int(json_digest(["sequence-kd", seed, b]), 16) & (2 ** 63 - 1))
        out.extend(continuations(model, batch, pad_id=prompts.pad_id, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_p=top_p, top_k=top_k, eos_id=prompts.eos_id,
                                 generator=gen))
    secs = time.perf_counter() - t0
    n_tok = sum(len(c) for c in out)
    log(f"[sequence-kd] {len(out):,} teacher completions, {n_tok:,} tokens in {secs:.1f}s "
        f"({n_tok / max(secs, 1e-9):,.0f} tokens/s)")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, _pack(key, out))
    return prompts.with_completions(out, layout)

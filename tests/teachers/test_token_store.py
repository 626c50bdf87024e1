"""The top-k token store for language-model teachers: built once over token blocks, reopened
without recomputing, equal to log_softmax top-k of the teacher's logits, looked up by block
index, refused for other text, tokenizers or vocabularies, checked at open, resumed after a kill
at any write step to identical files, and built by two processes (gloo) into the files of one."""
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from distill import distributed
from distill.errors import DistillError
from distill.modelio import model_forward
from distill.teachers import token_store as TS
from distill.teachers.store import LOCK_NAME, StaleStoreError, StoreError
from conftest import leave_group_and_exit, quiet

N, L, V = 12, 8, 50


class Blocks:
    """A stand-in for ``distill.data.text.TokenBlocks``: ``n`` blocks of ``block_size`` random
    tokens, a few padded at the end (attention_mask 0, labels -100)."""

    def __init__(self, n=N, block_size=L, vocab_size=V, seed=0, tokenizer_digest="tok-a", fingerprint=None):
        g = torch.Generator().manual_seed(seed)
        self.n, self.block_size, self.vocab_size, self.tokenizer_digest = n, block_size, vocab_size, tokenizer_digest
        lengths = torch.full((n,), block_size)
        lengths[2 % n], lengths[n - 1] = 5, 3
        self.mask = (torch.arange(block_size) < lengths[:, None]).long()
        self.tokens = torch.randint(0, vocab_size, (n, block_size), generator=g) * self.mask
        self.labels = torch.where(self.mask.bool(), self.tokens, torch.full_like(self.tokens, -100))
        self.fingerprint = fingerprint or f"blocks:{n}x{block_size}/{vocab_size}/{seed}/{tokenizer_digest}"

    def _batch(self, idx):
        return dict(input_ids=self.tokens[idx], attention_mask=self.mask[idx]), self.labels[idx], idx

    def ordered(self, batch_size=16):
        for i in range(0, self.n, batch_size):
            yield self._batch(torch.arange(i, min(i + batch_size, self.n)))

    def parts(self, batch_size, generator, rank, world_size):
        order = torch.randperm(self.n, generator=generator) if generator is not None else torch.arange(self.n)
        for i in range(0, self.n, batch_size):
            yield (*self._batch(distributed.shard(order[i:i + batch_size], rank, world_size)),
                   min(batch_size, self.n - i))


class TinyLM(nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.emb, self.out = nn.Embedding(vocab_size, 16), nn.Linear(16, vocab_size)

    def forward(self, input_ids, attention_mask=None):
        return 3 * self.out(torch.tanh(self.emb(input_ids)))


class TinyTeacher:
    """What the store is given: an ``id`` and ``forward(inputs) -> [B, L, V]``; counts its calls."""

    def __init__(self, vocab_size=V, seed=0):
        torch.manual_seed(seed)
        self.model, self.id, self.calls = TinyLM(vocab_size).eval(), f"tiny-{vocab_size}-{seed}", 0

    def forward(self, inputs):
        self.calls += 1
        return model_forward(self.model, inputs)


def _get(root, teacher=None, source=None, **kw):
    kw = dict(dict(k=5, batch_size=4, progress=False, log=quiet), **kw)
    return TS.get_token_store(root, teacher or TinyTeacher(), source or Blocks(), **kw)


def _want(teacher, source, k):
    with torch.no_grad():
        lp = torch.log_softmax(teacher.model(source.tokens).float(), -1)
    vals, ids = lp.topk(k, -1)
    return ids, vals


def _files(folder: Path) -> dict:
    """Every file of a store folder by name (the lock file only by name: it holds the last builder's pid)."""
    return {p.name: b"" if p.name == LOCK_NAME else p.read_bytes() for p in sorted(folder.iterdir())}


def test_build_then_reopen_without_recomputing(tmp_path):
    t, logs = TinyTeacher(), []
    store = _get(tmp_path, t, log=logs.append)
    assert t.calls == 3 and len(store) == N and store.k == 5 and store.vocab_size == V  # 12 blocks, batches of 4
    assert store.path == tmp_path / f"tokens-{store.key}" and store.key == TS.store_key(t.id, Blocks().fingerprint, 5)
    assert sorted(p.name for p in store.path.iterdir()) == sorted(
        [LOCK_NAME, "meta.json", "ids-00000-of-00001.npy", "logprobs-00000-of-00001.npy", "shard-00000-of-00001.json"])
    again = _get(tmp_path, t, log=logs.append)
    assert t.calls == 3 and "reusing" in logs[-1] and again.path == store.path
    for a, b in zip(again.lookup(slice(None)), TS.TokenStore.open(store.path).lookup(torch.arange(N))):
        assert torch.equal(a, b)
    # another teacher or another k: another store
    assert _get(tmp_path, TinyTeacher(seed=1)).path != store.path and _get(tmp_path, k=6).path != store.path
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("k", [1, 5, V])
def test_stored_values_are_the_top_k_of_log_softmax(tmp_path, k):
    t, src = TinyTeacher(), Blocks()
    store = _get(tmp_path, t, src, k=k)
    ids, lp = store.lookup(torch.arange(N))
    assert ids.shape == lp.shape == (N, L, k) and ids.dtype == torch.int64 and lp.dtype == torch.float32
    want_ids, want_lp = _want(t, src, k)
    valid = src.mask.bool()
    assert torch.equal(ids[valid], want_ids[valid])
    assert torch.allclose(lp[valid], want_lp[valid], rtol=1e-3, atol=1e-3)  # float16
    assert torch.isfinite(lp).all()  # padding too (a placeholder)
    assert (lp[valid][:, :-1] >= lp[valid][:, 1:]).all()  # most likely first
    if k == V:  # the full distribution
        assert torch.allclose(lp[valid].exp().sum(-1), torch.ones(int(valid.sum())), atol=1e-2)
    # the pure helper
    with torch.no_grad():
        hid, hlp = TS.topk_logprobs(t.model(src.tokens), k)
    assert torch.equal(hid, want_ids) and torch.equal(hlp, want_lp)


def test_ids_dtype_and_bytes_per_token():
    assert TS.ids_dtype(V) == np.uint16 and TS.ids_dtype(65_536) == np.uint16
    assert TS.ids_dtype(65_537) == np.int32 and TS.ids_dtype(70_000) == np.int32
    assert TS.bytes_per_token(32, 70_000) == 6 * 32 and TS.bytes_per_token(32, V) == 4 * 32
    with pytest.raises(ValueError):
        TS.ids_dtype(0)


def test_manifest(tmp_path):
    src = Blocks()
    store = _get(tmp_path, source=src, shards=2)
    meta = json.loads((store.path / "meta.json").read_text())
    assert meta["format"] == TS.FORMAT and meta["key"] == store.key and meta["teacher"] == TinyTeacher().id
    assert meta["data"] == src.fingerprint == store.fingerprint
    assert meta["tokenizer_digest"] == "tok-a" == store.tokenizer_digest
    assert (meta["block_size"], meta["vocab_size"], meta["k"], meta["rows"]) == (L, V, 5, N)
    assert (meta["ids_dtype"], meta["logprobs_dtype"]) == ("uint16", "float16")
    assert meta["valid_tokens"] == int(src.mask.sum()) == N * L - 3 - 5 == store.valid_tokens
    assert meta["bytes_per_token"] == 4 * 5 == store.bytes_per_token
    assert [(s["start"], s["stop"]) for s in meta["shards"]] == [(0, 4), (4, 12)]
    for s in meta["shards"]:
        for kind, info in s["files"].items():
            f = store.path / info["name"]
            assert f.stat().st_size == info["bytes"] and len(info["sha256"]) == 64
            a = np.load(f, mmap_mode="r")
            assert a.shape == (s["stop"] - s["start"], L, 5)
            assert a.dtype == (np.uint16 if kind == "ids" else np.float16)


def test_bytes_per_token_measured_at_4096(tmp_path):
    measured = {}
    src, t = Blocks(n=2, vocab_size=4096), TinyTeacher(4096)
    for k in (1, 8, 32, 128):
        store = _get(tmp_path, t, src, k=k)
        payload = 0
        for f in store.path.glob("*.npy"):
            payload += f.stat().st_size - np.load(f, mmap_mode="r").offset  # less the .npy header
        measured[k] = payload / (2 * L)
        assert store.bytes_per_token == measured[k] == 4 * k
    print("bytes per token at V=4096:", measured)


def test_another_text_tokenizer_or_vocabulary_is_refused(tmp_path):
    store = _get(tmp_path)
    store.check(Blocks())  # its own data
    for other, words in [(Blocks(seed=1), ["other text", Blocks().fingerprint, Blocks(seed=1).fingerprint]),
                         (Blocks(tokenizer_digest="tok-b"), ["another tokenizer", "tok-a", "tok-b"]),
                         (Blocks(vocab_size=60, fingerprint=Blocks().fingerprint), ["vocabulary of 50", "60"])]:
        with pytest.raises(StaleStoreError) as e:
            store.check(other)
        assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
        assert isinstance(e.value, DistillError)
    with pytest.raises(StaleStoreError, match="another teacher"):
        TS.TokenStore.open(store.path, expect_key="0" * 16)


@pytest.mark.parametrize("k", [0, V + 1, -1, True, 2.5, "3", None])
def test_k_is_a_whole_number_up_to_the_vocabulary(tmp_path, k):
    with pytest.raises(ValueError) as e:
        _get(tmp_path, k=k)
    assert "\n" not in str(e.value) and str(e.value).startswith("k must")
    with pytest.raises(ValueError):
        TS.topk_logprobs(torch.zeros(2, V), k)
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_lookup_of_arbitrary_rows(tmp_path):
    store = _get(tmp_path, shards=3)
    assert store.num_shards == 3 and isinstance(store._shards[0]["ids"], np.memmap)  # memory-mapped, not loaded
    ids, lp = store.lookup(torch.arange(N))
    rows = [11, 0, 5, 5, -1, 4, 3]
    for idx in (torch.tensor(rows), np.array(rows), rows):
        got = store.lookup(idx)
        assert torch.equal(got[0], ids[rows]) and torch.equal(got[1], lp[rows])
    got = store.lookup(slice(3, 9))
    assert torch.equal(got[0], ids[3:9]) and torch.equal(got[1], lp[3:9])
    one = store.lookup(7)
    assert one[0].shape == (L, 5) and torch.equal(one[0], ids[7]) and torch.equal(one[1], lp[7])
    assert store.lookup(torch.tensor([], dtype=torch.long))[0].shape == (0, L, 5)
    with pytest.raises(IndexError, match="out of range"):
        store.lookup(torch.tensor([3, N]))


def test_a_damaged_file_is_detected_at_open(tmp_path):
    store = _get(tmp_path, shards=2)
    path, reference = store.path, _files(store.path)
    del store
    bad = path / "logprobs-00001-of-00002.npy"
    raw = bytearray(bad.read_bytes())
    raw[-1] ^= 0xFF
    bad.write_bytes(bytes(raw))
    for call in (lambda: TS.TokenStore.open(path), lambda: _get(tmp_path)):
        with pytest.raises(StoreError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and "SHA-256" in msg and bad.name in msg and f"delete {path}" in msg
    TS.TokenStore.open(path, verify=False)  # sizes only: a same-size change passes
    short = path / "ids-00000-of-00002.npy"
    short.write_bytes(reference[short.name][:-10])
    with pytest.raises(StoreError, match="truncated"):
        TS.TokenStore.open(path, verify=False)
    short.write_bytes(reference[short.name])
    # without its manifest: an unfinished store, which the next call finishes (recomputing the bad shard only)
    (path / "meta.json").unlink()
    with pytest.raises(StoreError, match="unfinished token store .2 of 2 shard.s. written"):
        TS.TokenStore.open(path)
    (path / "notes.tmp").write_bytes(b"mine")
    litter = path / f"ids-00001-of-00002.npy.999.0a1b2c3d{TS.TMP_SUFFIX}"
    litter.write_bytes(b"half a file")
    t, logs = TinyTeacher(), []
    _get(tmp_path, t, shards=2, log=logs.append)
    assert "already written" in logs[0] and "already written" not in logs[1] and t.calls == 2
    assert not litter.exists() and (path / "notes.tmp").read_bytes() == b"mine"
    (path / "notes.tmp").unlink()
    assert _files(path) == reference


def _in_child(fn, env=None) -> int:
    """Run ``fn`` in a forked child (with ``env`` added); its exit status, -signal when killed."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.update(env or {})
            torch.set_num_threads(1)
            fn()
            code = 0
        except BaseException as e:
            print(f"child error: {type(e).__name__}: {e}")
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def test_a_build_killed_at_any_write_step_resumes_to_identical_files(tmp_path):
    steps_log = tmp_path / "steps.log"
    build = dict(shards=3, batch_size=4)
    assert _in_child(lambda: _get(tmp_path / "ref", **build),
                     dict(DISTILL_FAULT_AT=str(10 ** 9), DISTILL_FAULT_LOG=str(steps_log))) == 0
    steps = [line.split(" ", 1)[1] for line in steps_log.read_text().splitlines()]
    assert len(steps) == 3 * 6 + 2  # per shard: ids, logprobs, record (each written, renamed); then meta.json
    (ref,) = (tmp_path / "ref").iterdir()
    reference = _files(ref)
    for k in range(1, len(steps) + 1):
        root = tmp_path / f"kill-{k}"
        assert _in_child(lambda: _get(root, **build), dict(DISTILL_FAULT_AT=str(k))) == -9, k
        t, logs = TinyTeacher(), []
        store = _get(root, t, log=logs.append, **build)
        assert _files(store.path) == reference, (k, steps[k - 1])
        recorded = {s for s in range(3) if any(w.startswith("renamed ") and w.strip().endswith(
            f"/shard-0000{s}-of-00003.json") for w in steps[:k])}
        if "meta.json" in steps[k - 1] and "renamed" in steps[k - 1]:
            assert t.calls == 0 and "reusing" in logs[0]
        else:
            assert {s for s in range(3) if "already written" in logs[s]} == recorded, (k, logs)
            assert t.calls == 3 - len(recorded)  # one batch per shard


def _build_worker(rank, world_size, rdv, root):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world_size)
    try:
        t = TinyTeacher()
        store = _get(root, t)
        assert store.num_shards == world_size and len(store) == N
        Path(f"{root}.calls{rank}").write_text(str(t.calls))
        leave_group_and_exit()
    finally:
        distributed.shutdown()


def test_two_processes_build_the_files_of_one(tmp_path):
    # the style of tests/teachers/test_store_shards.py (two gloo processes, a file rendezvous), forked for speed
    ctx = mp.start_processes(_build_worker, args=(2, str(tmp_path / "rdv"), str(tmp_path / "two")), nprocs=2,
                             join=False, start_method="fork")
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two-process build did not finish in 60 s")
    # blocks 0..4 (one batch) on process 0, 4..12 (two batches) on process 1: each block computed once
    assert [int((tmp_path / f"two.calls{r}").read_text()) for r in range(2)] == [1, 2]
    (two,) = (tmp_path / "two").iterdir()
    one = _get(tmp_path / "one", shards=2)  # the same shards in one process: the same files, byte for byte
    assert _files(two) == _files(one.path)
    single = _get(tmp_path / "single")  # one process, one shard: the same values
    assert single.num_shards == 1
    for a, b in zip(TS.TokenStore.open(two).lookup(slice(None)), single.lookup(slice(None))):
        assert torch.equal(a, b)


class MaskedNaNTeacher(TinyTeacher):
    """NaN logits wherever ``nan_at`` (a [N, L] bool) is set: at padding only, or at a counted position."""

    def __init__(self, nan_at):
        super().__init__()
        self.nan_at = nan_at

    def forward(self, inputs):
        z = super().forward(inputs)
        at = self.nan_at[self._rows(inputs)]
        return z.masked_fill(at[..., None], float("nan"))

    def _rows(self, inputs):
        src = Blocks()
        return torch.tensor([int((src.tokens == row).all(1).nonzero()[0]) for row in inputs["input_ids"]])


def test_padding_holds_finite_placeholders_and_counted_nans_are_refused(tmp_path):
    src = Blocks()
    store = _get(tmp_path / "a", MaskedNaNTeacher(~src.mask.bool()), src)
    ids, lp = store.lookup(slice(None))
    pad = ~src.mask.bool()
    assert torch.isfinite(lp).all() and torch.equal(ids[pad][0], torch.arange(5))
    with pytest.raises(ValueError, match="nan or inf logits at 1 counted position"):
        _get(tmp_path / "b", MaskedNaNTeacher(torch.zeros(N, L, dtype=torch.bool).index_put_(
            (torch.tensor([3]), torch.tensor([2])), torch.tensor(True))), src)
    # a teacher whose logits do not cover the source's vocabulary
    with pytest.raises(DistillError, match="V = 50"):
        _get(tmp_path / "c", TinyTeacher(vocab_size=64), src)

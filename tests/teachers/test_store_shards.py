"""Sharded soft-target stores: ``build_store`` / ``distill targets`` cut the rows into
contiguous shards, one set of files each, the manifest written last; a killed build redoes only
the missing or damaged shards; two processes (gloo) build the one-process store bit for bit."""
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from distill.teachers.teacher import Teacher
from distill import distributed
from distill.teachers import store as ST
from distill.models.classifiers import MLP
from distill.data.sources import ArrayDataset
from distill.train.config import TrainConfig, seed_everything
from distill.train.fit import fit
from conftest import leave_group_and_exit, make_toy
from conftest import quiet




def _teacher():
    seed_everything(0)
    return MLP(64, [32], 10)


def _values(store) -> np.ndarray:
    return store.all().numpy()


@pytest.mark.parametrize("n,b,s", [(1, 1, 1), (10, 3, 2), (600, 64, 3), (600, 64, 100), (601, 100, 2), (5, 10, 4)])
def test_shard_ranges_tile_the_rows_at_batch_boundaries(n, b, s):
    ranges = ST.shard_ranges(n, b, s)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == c[0] for a, c in zip(ranges, ranges[1:]))
    assert all(lo < hi and lo % b == 0 for lo, hi in ranges)  # no empty shard, batch-aligned starts
    assert len(ranges) == min(s, -(-n // b))
    sizes = [(hi - lo + b - 1) // b for lo, hi in ranges]  # whole batches per shard differ by at most one
    assert max(sizes) - min(sizes) <= 1


def test_sharded_build_equals_the_one_file_store_with_the_same_key(tmp_path, toy):
    t = _teacher()
    for kw in (dict(), dict(dtype="float16", top_k=3)):
        one = ST.get_store(tmp_path / "root", Teacher(t), toy, batch_size=64, progress=False, log=quiet, **kw)
        sharded = ST.build_store(tmp_path / f"sh{len(kw)}", Teacher(t), toy, shards=4, batch_size=64, progress=False,
                                 log=quiet, **kw)
        assert sharded.key == one.key and sharded.shape == one.shape == (600, 10) and sharded.num_shards == 4
        assert np.array_equal(_values(sharded), _values(one))
        assert sorted(p.name for p in sharded.path.glob("values-*")) == [f"values-0000{i}-of-00004.npy"
                                                                         for i in range(4)]
        # lookups across shard boundaries, negative rows, slices, single rows
        idx = torch.randperm(600, generator=torch.Generator().manual_seed(1))[:200]
        assert torch.equal(sharded[idx], one[idx])
        assert torch.equal(sharded[-1], one[599]) and torch.equal(sharded[140:160], one[np.arange(140, 160)])
        with pytest.raises(IndexError, match="out of range"):
            sharded[np.array([3, 600])]
        again = ST.SoftTargetStore.open(sharded.path, expect_key=one.key)  # re-hashes every shard
        assert np.array_equal(_values(again), _values(one))


def test_a_killed_build_redoes_only_missing_or_damaged_shards(tmp_path, toy):
    t, logs = _teacher(), []
    full = ST.build_store(tmp_path / "s", Teacher(t), toy, shards=3, batch_size=64, progress=False, log=quiet)
    reference = _values(full)
    del full
    (tmp_path / "s" / "meta.json").unlink()  # killed before the manifest
    (tmp_path / "s" / "values-00002-of-00003.npy").unlink()  # ... and shard 3 never written
    bad = tmp_path / "s" / "values-00001-of-00003.npy"  # ... and shard 2 damaged (same size)
    raw = bytearray(bad.read_bytes())
    raw[-1] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(ST.StoreError, match="interrupted or running build"):
        ST.SoftTargetStore.open(tmp_path / "s")
    store = ST.build_store(tmp_path / "s", Teacher(t), toy, shards=3, batch_size=64, progress=False, log=logs.append)
    assert [m.split(":")[0].split(" (")[0] for m in logs] == ["[soft targets] shard 1/3", "[soft targets] shard 2/3",
                                                              "[soft targets] shard 3/3"]
    assert "already written" in logs[0] and "already written" not in logs[1] + logs[2]
    assert np.array_equal(_values(store), reference)
    logs.clear()
    ST.build_store(tmp_path / "s", Teacher(t), toy, shards=3, batch_size=64, progress=False, log=logs.append)
    assert len(logs) == 1 and "complete" in logs[0]  # a finished store is reused
    # another teacher at the same folder: an error, nothing overwritten
    with pytest.raises(ST.StaleStoreError):
        ST.build_store(tmp_path / "s", Teacher(MLP(64, [8], 10)), toy, shards=3, batch_size=64, progress=False, log=quiet)
    # rebuilt with another shard count, the old count's files go
    (tmp_path / "s" / "meta.json").unlink()
    two = ST.build_store(tmp_path / "s", Teacher(t), toy, shards=2, batch_size=64, progress=False, log=quiet)
    assert np.array_equal(_values(two), reference)
    assert not list((tmp_path / "s").glob("*-of-00003.*"))


def test_a_sharded_store_teaches_through_fit(tmp_path, toy):
    t = _teacher()
    store = ST.build_store(tmp_path / "s", Teacher(t), toy, shards=2, batch_size=100, progress=False, log=quiet)
    cfg = TrainConfig(epochs=1, lr=0.1, temperature=2.0)
    seed_everything(1)
    a = fit(MLP(64, [16], 10), toy, cfg, teacher=store, progress=False, log=quiet)
    seed_everything(1)
    b = fit(MLP(64, [16], 10), toy, cfg, teacher=store.all(), progress=False, log=quiet)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


KWS = (dict(), dict(dtype="float16", top_k=4))
STUDENT = TrainConfig(epochs=1, batch_size=50, lr=0.1, temperature=2.0, hard_weight=0.2)


class Recording(ArrayDataset):
    """An ArrayDataset that records the rows each batch read asks for."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.asked = []

    def take(self, idx):
        self.asked.extend(int(i) for i in idx)
        return super().take(idx)


def _student(folder, store, record=None):
    data = Recording(f"{folder}/x.npy", f"{folder}/y.npy")
    seed_everything(1)
    res = fit(MLP(64, [16], 10), data, STUDENT, teacher=store, progress=False, log=quiet)
    return res, data.asked


def _build_worker(rank, world_size, rdv, out):
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world_size)
    try:
        for i, kw in enumerate(KWS):
            store = ST.build_store(f"{out}{i}", Teacher(_teacher()), make_toy(), batch_size=64, progress=False, log=quiet, **kw)
            assert store is not None and store.num_shards == world_size
        # a student streaming its inputs from .npy files and its targets from the sharded store
        res, asked = _student(Path(out).parent, ST.SoftTargetStore.open(f"{out}0"))
        save_file(res.model.state_dict(), f"{out}.rank{rank}.safetensors")
        Path(f"{out}.rank{rank}.json").write_text(json.dumps(asked))
        leave_group_and_exit()
    finally:
        distributed.shutdown()


def test_two_processes_build_the_one_process_store_bit_for_bit_and_stream_a_student(tmp_path):
    from safetensors.torch import load_file

    toy = make_toy()
    np.save(tmp_path / "x.npy", toy.x_train.numpy())
    np.save(tmp_path / "y.npy", toy.y_train.numpy())
    mp.spawn(_build_worker, args=(2, str(tmp_path / "rdv"), str(tmp_path / "two")), nprocs=2, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    try:
        for i, kw in enumerate(KWS):
            one = ST.build_store(tmp_path / f"one{i}", Teacher(_teacher()), make_toy(), batch_size=64, progress=False,
                                 log=quiet, **kw)
            two = ST.SoftTargetStore.open(tmp_path / f"two{i}", expect_key=one.key)
            assert one.num_shards == 1 and two.num_shards == 2
            for name in ("values", "indices", "rest"):
                if name == "values" or kw:
                    joined = np.concatenate([np.load(p) for p in sorted(Path(two.path).glob(f"{name}-*"))])
                    assert np.array_equal(joined, np.load(next(Path(one.path).glob(f"{name}-*")))), name
            meta = json.loads((two.path / "meta.json").read_text())
            assert [(s["start"], s["stop"]) for s in meta["shards"]] == [(0, 320), (320, 600)]
            assert all(len(f["sha256"]) == 64 for s in meta["shards"] for f in s["files"].values())
        single, _ = _student(tmp_path, ST.SoftTargetStore.open(tmp_path / "one0"))
    finally:
        torch.set_num_threads(threads)
    # the 2-process student ends with the single-process weights ...
    for r in range(2):
        got = load_file(tmp_path / f"two.rank{r}.safetensors")
        for k, v in single.model.state_dict().items():
            assert torch.allclose(got[k], v, atol=1e-5), (r, k)
    # ... and each process read only its half of every batch: together every row once per epoch
    asked = [json.loads((tmp_path / f"two.rank{r}.json").read_text()) for r in range(2)]
    assert asked[0][:2] == asked[1][:2] == [0, 1]  # fit's probe of the model on 2 examples
    rows = [a[2:] for a in asked]
    assert len(rows[0]) == len(rows[1]) == 300  # half of the epoch's 600 rows each ...
    assert sorted(rows[0] + rows[1]) == list(range(600))  # ... together every row once


def test_cli_targets_then_a_student_from_the_store(tmp_path, capsys, mnist):
    from distill.cli import main

    small = ["--train-size", "600", "--test-size", "200"]
    assert main(["teacher", *small, "--hidden", "32", "--epochs", "1", "--jitter", "0", "--out",
                 str(tmp_path / "t"), "--no-progress"]) == 0
    capsys.readouterr()
    targets = ["targets", "--teacher", str(tmp_path / "t" / "model"), *small, "--dtype", "float16", "--top-k", "4",
               "--shards", "3", "--batch-size", "100", "--out", str(tmp_path / "store"), "--no-progress"]
    assert main(targets) == 0
    line = capsys.readouterr().out
    assert line.startswith("targets: 600 x 10 float16 top-4 logits in 3 shard(s), key ")
    assert main(targets) == 0  # complete: reused, same line
    assert capsys.readouterr().out == line
    student = ["student", *small, "--hidden", "16", "--epochs", "1", "--temperature", "4", "--no-progress"]
    assert main([*student, "--teacher", str(tmp_path / "store"), "--out", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.startswith("student-distilled: ")
    side = json.loads((tmp_path / "s" / "model.json").read_text())
    assert side["teacher"] == "store:" + line.split("key ")[1].split()[0]
    # the store belongs to its transfer set
    assert main([*student[:1], "--train-size", "500", *student[3:], "--teacher", str(tmp_path / "store"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "built over other data" in capsys.readouterr().err


# ---------------------------------------------------------------- a student reading a store, via the CLI

@pytest.fixture(scope="module")
def cli_root(tmp_path_factory):
    """A folder with the toy data as an .npz and a teacher trained on it by the CLI."""
    from distill.cli import main

    root = tmp_path_factory.mktemp("cli")
    toy = make_toy()
    np.savez(root / "toy.npz", x_train=toy.x_train.numpy(), y_train=toy.y_train.numpy(),
             x_test=toy.x_test.numpy(), y_test=toy.y_test.numpy())
    assert main(["teacher", "--data", str(root / "toy.npz"), "--hidden", "32", "--epochs", "1", "--out",
                 str(root / "t"), "--no-progress"]) == 0
    return root


def _cli_targets(root, out, *extra):
    from distill.cli import main

    return main(["targets", "--teacher", str(root / "t" / "model"), "--data", str(root / "toy.npz"),
                 "--batch-size", "100", "--out", str(out), "--no-progress", *extra])


def _cli_student(root, store, out):
    from distill.cli import main

    return main(["student", "--teacher", str(store), "--data", str(root / "toy.npz"), "--hidden", "16",
                 "--epochs", "1", "--temperature", "4", "--out", str(out), "--no-progress"])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_student_refuses_a_store_changed_in_place(tmp_path, capsys, cli_root, dtype):
    store = tmp_path / "store"
    assert _cli_targets(cli_root, store, "--shards", "3", "--dtype", dtype) == 0
    shard = store / "values-00001-of-00003.npy"
    size = shard.stat().st_size
    v = np.load(shard, mmap_mode="r+")  # one finite value changed in place: same size, same header
    v[7, 3] = v[7, 3] + 1.5
    v.flush()
    del v
    assert shard.stat().st_size == size
    capsys.readouterr()
    assert _cli_student(cli_root, store, tmp_path / "s") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("distill: error: ") and "Traceback" not in err
    assert "values-00001-of-00003.npy" in err and "SHA-256" in err and "shard 2 of 3" in err
    assert not (tmp_path / "s" / "model.safetensors").exists()
    # `distill targets` on the same folder reports the same file
    assert _cli_targets(cli_root, store, "--shards", "3", "--dtype", dtype) == 2
    assert "values-00001-of-00003.npy" in capsys.readouterr().err


def test_a_student_on_an_unfinished_store_says_to_finish_it(tmp_path, capsys, cli_root):
    store = tmp_path / "store"
    assert _cli_targets(cli_root, store, "--shards", "3") == 0
    (store / "meta.json").unlink()  # killed before the manifest ...
    (store / "shard-00002-of-00003.json").unlink()  # ... with shard 3 not recorded
    capsys.readouterr()
    assert _cli_student(cli_root, store, tmp_path / "s") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "unfinished soft-target store" in err and "2 of 3 shard(s)" in err and "distill targets" in err
    assert ".safetensors" not in err
    assert _cli_targets(cli_root, store, "--shards", "3") == 0  # as it says: finishing it
    assert _cli_student(cli_root, store, tmp_path / "s") == 0


def test_user_files_in_the_store_folder_survive_a_build(tmp_path, toy):
    t = _teacher()
    folder = tmp_path / "s"
    folder.mkdir()
    mine = {"notes.tmp": b"my notes", "part-1-of-3.txt": b"part one", ".hidden.tmp": b"x",
            "values-1-of-3.npy": b"not distill's"}
    for name, data in mine.items():
        (folder / name).write_bytes(data)
    # what a killed build of distill's leaves behind is swept
    litter = folder / f"{ST.TMP_PREFIX}values-00000-of-00003.npy.99999.0a1b2c3d.tmp"
    litter.write_bytes(b"half a shard")
    ST.build_store(folder, Teacher(t), toy, shards=3, batch_size=64, progress=False, log=quiet)
    (folder / "meta.json").unlink()
    store = ST.build_store(folder, Teacher(t), toy, shards=2, batch_size=64, progress=False, log=quiet)  # another count
    assert store.num_shards == 2 and not list(folder.glob("*-of-00003.*")) and not litter.exists()
    for name, data in mine.items():
        assert (folder / name).read_bytes() == data, name


def _outside(tmp_path, toy, how):
    """A store whose manifest names a copy of its values file outside the folder (same size and SHA-256)."""
    t = _teacher()
    store = ST.build_store(tmp_path / "s", Teacher(t), toy, shards=1, batch_size=64, progress=False, log=quiet)
    src = store.path / "values-00000-of-00001.npy"
    del store
    (tmp_path / "sub").mkdir()
    (tmp_path / "s" / "sub").mkdir()
    for copy in (tmp_path / "outside.npy", tmp_path / "s" / "sub" / "v.npy"):
        copy.write_bytes(src.read_bytes())
    name = {"dotdot": "../outside.npy", "absolute": str(tmp_path / "outside.npy"), "separator": "sub/v.npy",
            "dot": "."}[how]
    return name


@pytest.mark.parametrize("how", ["dotdot", "absolute", "separator", "dot"])
def test_a_manifest_naming_files_outside_its_folder_is_refused(tmp_path, toy, how):
    name = _outside(tmp_path, toy, how)
    mpath = tmp_path / "s" / "meta.json"
    meta = json.loads(mpath.read_text())
    meta["shards"][0]["files"]["values"]["name"] = name
    mpath.write_text(json.dumps(meta))
    for verify in (True, False):
        with pytest.raises(ST.StoreError, match="not a plain file name") as e:
            ST.SoftTargetStore.open(tmp_path / "s", verify=verify)
        assert "\n" not in str(e.value)
    # a one-file store's manifest likewise
    one = ST.get_store(tmp_path / "root", Teacher(_teacher()), toy, progress=False, log=quiet)
    mpath = one.path / "meta.json"
    meta = json.loads(mpath.read_text())
    meta["files"][name] = meta["files"]["values.npy"]
    mpath.write_text(json.dumps(meta))
    with pytest.raises(ST.StoreError, match="not a plain file name"):
        ST.SoftTargetStore.open(one.path, verify=False)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "separator"])
def test_a_shard_record_naming_files_outside_its_folder_is_not_trusted(tmp_path, toy, how):
    name = _outside(tmp_path, toy, how)
    folder = tmp_path / "s"
    rec_path = folder / "shard-00000-of-00001.json"
    rec = json.loads(rec_path.read_text())
    rec["files"]["values"]["name"] = name
    rec_path.write_text(json.dumps(rec))
    (folder / "meta.json").unlink()
    (folder / "values-00000-of-00001.npy").unlink()
    logs = []
    store = ST.build_store(folder, Teacher(_teacher()), toy, shards=1, batch_size=64, progress=False, log=logs.append)
    assert "already written" not in logs[0]  # the shard is computed again, into the folder
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["shards"][0]["files"]["values"]["name"] == "values-00000-of-00001.npy"
    assert store.shape == (600, 10)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_store_files_follow_the_umask(tmp_path, toy, umask):
    old = os.umask(umask)
    try:
        ST.build_store(tmp_path / "sharded", Teacher(_teacher()), toy, shards=2, batch_size=64, progress=False, log=quiet)
        one = ST.get_store(tmp_path / "root", Teacher(_teacher()), toy, progress=False, log=quiet)
    finally:
        os.umask(old)
    for folder in (tmp_path / "sharded", one.path):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask, folder
        for f in folder.iterdir():
            if not f.name.startswith("."):
                assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f

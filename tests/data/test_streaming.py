"""Students that stream: inputs on disk through ``ArrayDataset`` (memory-mapped .npy,
read a batch at a time), each DDP process reading only its slice of every global batch
(``Source.parts``), and pages read dropped from the resident set."""
import numpy as np
import pytest
import torch

from distill import distributed
from distill.models.classifiers import MLP
from distill.data.sources import ArrayDataset, MapSource, RowReader, TensorSource, as_source
from distill.train.config import TrainConfig, seed_everything
from distill.train.fit import fit
from conftest import quiet




@pytest.fixture()
def on_disk(tmp_path, toy):
    np.save(tmp_path / "x.npy", toy.x_train.numpy())
    np.save(tmp_path / "y.npy", toy.y_train.numpy().astype(np.int16))  # any integer dtype
    return tmp_path / "x.npy", tmp_path / "y.npy"


def test_array_dataset_serves_the_batches_of_the_same_tensors(on_disk, toy):
    src = as_source(ArrayDataset(*on_disk))
    ref = TensorSource(toy.x_train, toy.y_train)
    assert isinstance(src, MapSource) and src.n == 600 and src.labeled
    assert isinstance(src.dataset.x, np.memmap)
    for (x, y, i), (rx, ry, ri) in zip(src.batches(64, torch.Generator().manual_seed(2)),
                                       ref.batches(64, torch.Generator().manual_seed(2))):
        assert torch.equal(x, rx) and torch.equal(y, ry) and torch.equal(i, ri)
        assert x.dtype == torch.float32 and y.dtype == torch.int64


@pytest.mark.parametrize("n,b,w", [(600, 64, 2), (600, 64, 3), (5, 2, 3)])
def test_parts_are_the_slices_of_the_global_batches(tmp_path, n, b, w):
    x = np.random.default_rng(0).random((n, 4), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    for src in (as_source(ArrayDataset(tmp_path / "x.npy")), TensorSource(x)):
        whole = list(src.batches(b, torch.Generator().manual_seed(5)))
        parts = [list(src.parts(b, torch.Generator().manual_seed(5), r, w)) for r in range(w)]
        assert all(len(p) == len(whole) for p in parts)
        for k, (wx, _, wi) in enumerate(whole):
            assert [p[k][3] for p in parts] == [len(wx)] * w  # every process knows the global batch size
            assert torch.equal(torch.cat([p[k][2] for p in parts]), wi)
            assert torch.equal(torch.cat([p[k][0] for p in parts]), wx)
            assert [p[k][2].tolist() for p in parts] == [distributed.shard(wi, r, w).tolist() for r in range(w)]


def test_fit_on_arrays_on_disk_equals_fit_on_tensors(on_disk, toy):
    cfg = TrainConfig(epochs=2, lr=0.1, batch_size=50)
    seed_everything(0)
    a = fit(MLP(64, [16], 10), ArrayDataset(*on_disk), cfg, progress=False, log=quiet)
    seed_everything(0)
    b = fit(MLP(64, [16], 10), (toy.x_train, toy.y_train), cfg, progress=False, log=quiet)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


def test_array_dataset_checks_its_arrays(tmp_path):
    with pytest.raises(ValueError, match="labels for"):
        ArrayDataset(np.zeros((3, 2)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="integer class labels"):
        ArrayDataset(np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="real numbers"):
        ArrayDataset(np.array([["a"], ["b"]]))


def _rss_kb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_an_epoch_over_a_file_does_not_grow_the_resident_set(tmp_path):
    rows, width = 2 ** 14, 1024  # 64 MB of float32
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(rows, width))
    x[:] = np.arange(rows, dtype=np.float32)[:, None]
    del x
    src = as_source(ArrayDataset(tmp_path / "x.npy"))
    before = _rss_kb()
    seen = 0
    for xb, _, idx in src.batches(128, torch.Generator().manual_seed(0)):
        assert torch.equal(xb[:, 0], idx.float()) and torch.equal(xb[:, -1], idx.float())  # the right rows
        seen += len(idx)
    assert seen == rows
    assert _rss_kb() - before < 16_000, (before, _rss_kb())  # a memory map would hold ~64 MB by now


def test_row_reader_reads_any_rows_in_any_order(tmp_path):
    a = np.random.default_rng(0).normal(size=(50, 8, 4)).astype(np.float16)
    np.save(tmp_path / "a.npy", a)
    m = np.load(tmp_path / "a.npy", mmap_mode="r")
    r = RowReader.of(m)
    idx = np.array([7, 3, 4, 5, 49, 0, 3, 8])
    assert np.array_equal(r[idx], a[idx]) and r[idx].dtype == np.float16
    assert r[np.array([], dtype=int)].shape == (0, 8, 4)
    with pytest.raises(IndexError):
        r[np.array([50])]
    np.save(tmp_path / "y.npy", np.arange(50, dtype=np.int16))  # 1-D, 2-byte rows
    y = RowReader.of(np.load(tmp_path / "y.npy", mmap_mode="r"))
    assert np.array_equal(y[idx], idx) and y[idx].dtype == np.int16
    assert RowReader.of(m[1:]) is None and RowReader.of(a) is None  # views and arrays in memory: indexed as usual


def test_nan_inputs_on_disk_are_an_error(tmp_path):
    x = np.zeros((10, 16), dtype=np.float32)
    x[7, 3] = np.nan
    np.save(tmp_path / "x.npy", x)
    src = as_source(ArrayDataset(tmp_path / "x.npy"))
    with pytest.raises(ValueError, match="NaN"):
        list(src.batches(4, None))


def test_backend_is_nccl_on_cuda_and_gloo_on_the_cpu(monkeypatch):
    chosen, gpus = [], []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("DISTILL_DEVICE", raising=False)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: chosen.append(backend))
    monkeypatch.setattr(distributed.torch.cuda, "set_device", gpus.append)
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: False)
    assert distributed.init_from_env() and distributed.init_from_env(device="cuda")  # no GPU: gloo
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: True)
    distributed.init_from_env(device="cpu")
    distributed.init_from_env(device="cuda")
    monkeypatch.setenv("DISTILL_DEVICE", "cuda")
    distributed.init_from_env()
    assert chosen == ["gloo", "gloo", "gloo", "nccl", "nccl"] and gpus == [1, 1]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.init_from_env(device="cuda")

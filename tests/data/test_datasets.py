import gzip
import hashlib
import struct

import numpy as np
import pytest

from distill.data import fetch
from distill.data.fetch import DatasetSpec, FileSpec, locate
from distill.data.idx import MAGIC_IMAGES, MAGIC_LABELS, load_idx, parse_idx
from distill.errors import DistillError


def idx_images(n=3, h=2, w=2, fill=7) -> bytes:
    return struct.pack(">IIII", MAGIC_IMAGES, n, h, w) + bytes([fill]) * (n * h * w)


def idx_labels(labels) -> bytes:
    return struct.pack(">II", MAGIC_LABELS, len(labels)) + bytes(labels)


def test_parse_valid_idx():
    a = parse_idx(idx_images(3, 2, 2), MAGIC_IMAGES)
    assert a.shape == (3, 2, 2) and a.dtype == np.uint8 and (a == 7).all()
    assert parse_idx(idx_labels([1, 2, 3]), MAGIC_LABELS).tolist() == [1, 2, 3]


def test_wrong_magic_truncated_and_long_files(tmp_path):
    with pytest.raises(DistillError, match="wrong magic number 2049"):
        parse_idx(idx_labels([1]), MAGIC_IMAGES, "x")
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(idx_images()[:-5])
    with pytest.raises(DistillError, match=r"train-images-idx3-ubyte.*truncated"):
        load_idx(p, MAGIC_IMAGES)
    with pytest.raises(DistillError, match="longer than its header"):
        parse_idx(idx_images() + b"\0", MAGIC_IMAGES)
    with pytest.raises(DistillError, match="too short"):
        parse_idx(b"\0\0", MAGIC_IMAGES)


def test_gzip_is_read_transparently(tmp_path):
    p = tmp_path / "l.gz"
    p.write_bytes(gzip.compress(idx_labels([4, 5])))
    assert load_idx(p, MAGIC_LABELS).tolist() == [4, 5]


def _spec(tmp_path, content: bytes, urls=(), registry=()):
    return DatasetSpec("toy", (FileSpec("toy-labels", hashlib.sha256(content).hexdigest(), len(content)),),
                       urls=urls, registry=registry)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    c = tmp_path / "cache"
    monkeypatch.setenv("DISTILL_CACHE", str(c))
    monkeypatch.delenv("DISTILL_DATA_DIR", raising=False)
    return c


def test_user_dir_first_and_checksum_mismatch_names_file(tmp_path, cache):
    good = idx_labels([1, 2])
    spec = _spec(tmp_path, good)
    d = tmp_path / "mine"
    d.mkdir()
    (d / "toy-labels").write_bytes(good)
    assert locate(spec, d)["toy-labels"] == good
    (d / "toy-labels").write_bytes(idx_labels([1, 3]))
    with pytest.raises(DistillError, match=r"mine/toy-labels.*SHA-256.*does not match"):
        locate(spec, d)
    (d / "toy-labels").write_bytes(good[:-1])
    with pytest.raises(DistillError, match="truncated"):
        locate(spec, d)
    with pytest.raises(DistillError, match="does not exist"):
        locate(spec, tmp_path / "nowhere")


def test_download_is_verified_then_cached(tmp_path, cache):
    good = idx_labels([1, 2, 3])
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "toy-labels.gz").write_bytes(gzip.compress(good))
    spec = _spec(tmp_path, good, urls=(mirror.as_uri(),))
    assert locate(spec)["toy-labels"] == good
    assert (cache / "toy" / "toy-labels").read_bytes() == good
    assert not [p for p in (cache / "toy").iterdir() if p.suffix == ".part"]


def test_bad_download_is_rejected_and_not_kept(tmp_path, cache):
    good = idx_labels([1, 2, 3])
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "toy-labels").write_bytes(idx_labels([9, 9, 9]))
    spec = _spec(tmp_path, good, urls=(mirror.as_uri(),))
    with pytest.raises(DistillError, match="does not match"):
        locate(spec)
    assert not (cache / "toy" / "toy-labels").exists()
    assert not list((cache / "toy").glob("*.part"))


def test_registry_fallback_and_nothing_reachable(tmp_path, cache):
    good = idx_labels([5])

    def registry(scratch):
        """a fake registry"""
        (scratch / "toy-labels").write_bytes(good)
        return {"toy-labels": scratch / "toy-labels"}

    spec = _spec(tmp_path, good, urls=("http://127.0.0.1:9/none",), registry=(registry,))
    assert locate(spec, log=lambda *a: None)["toy-labels"] == good

    def broken(scratch):
        raise RuntimeError("registry offline")

    spec2 = DatasetSpec("toy2", spec.files, urls=("http://127.0.0.1:9/none",), registry=(broken,))
    with pytest.raises(DistillError, match=r"(?s)could not obtain.*registry offline.*--data-dir"):
        locate(spec2, log=lambda *a: None)


def test_fingerprint_depends_on_content():
    a = fetch.fingerprint(digests={"a": "1", "b": "2"})
    assert a == fetch.fingerprint(digests={"b": "2", "a": "1"})
    assert a != fetch.fingerprint(digests={"a": "1", "b": "3"})


def test_real_mnist_is_official(mnist):
    # data.md: class counts of the official files; the test set has 1,010 threes
    assert mnist.x_train.shape == (60000, 784) and mnist.x_test.shape == (10000, 784)
    assert mnist.y_train.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.y_test.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert 0.0 <= float(mnist.x_train.min()) and float(mnist.x_train.max()) <= 1.0
    assert len(mnist.fingerprint) == 16


def test_subset_is_stratified_deterministic_and_refingerprinted(toy):
    a = toy.subset(train=300, test=100, seed=1)
    b = toy.subset(train=300, test=100, seed=1)
    assert (a.y_train == b.y_train).all() and a.y_train.bincount().tolist() == [30] * 10
    assert a.fingerprint != toy.fingerprint and a.fingerprint != toy.subset(train=300, test=100, seed=2).fingerprint
    assert (a.x_test == b.x_test).all() and len(a.y_test) == 100 and a.y_test.bincount().tolist() == [10] * 10
    # rows stay paired with their labels: every kept row is a row of the full set with the same label
    rows = {tuple(x.tolist()): int(y) for x, y in zip(toy.x_train, toy.y_train)}
    assert all(rows[tuple(x.tolist())] == int(y) for x, y in zip(a.x_train, a.y_train))
    with pytest.raises(DistillError, match="at least one example"):
        toy.subset(train=0)


def test_sources_in_order_env_dir_and_files_split_across_sources(tmp_path, cache, monkeypatch):
    """Order: the user's folder (flag, else $DISTILL_DATA_DIR) before the cache, the cache before a
    download, a download before the registry; each file comes from the first source that has it."""
    a, b, c = idx_labels([1]), idx_labels([2, 2]), idx_labels([3, 3, 3])
    files = tuple(FileSpec(n, hashlib.sha256(x).hexdigest(), len(x)) for n, x in (("fa", a), ("fb", b), ("fc", c)))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "fc").write_bytes(c)
    calls = []

    def registry(scratch):
        """a fake registry"""
        calls.append("registry")
        return {}

    spec = DatasetSpec("split", files, urls=(mirror.as_uri(),), registry=(registry,))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "fa").write_bytes(a)                      # fa: only in the user's folder
    (cache / "split").mkdir(parents=True)
    (cache / "split" / "fb").write_bytes(b)           # fb: only in the cache
    (cache / "split" / "fa").write_bytes(b"stale")    # the cache's fa is never read: the user's folder wins
    monkeypatch.setenv("DISTILL_DATA_DIR", str(mine))
    got = locate(spec, log=lambda *a: None)           # fc: downloaded from the mirror
    assert got == {"fa": a, "fb": b, "fc": c} and calls == []
    assert (cache / "split" / "fc").read_bytes() == c  # and kept in the cache
    (mirror / "fc").unlink()
    assert locate(spec, log=lambda *a: None)["fc"] == c and calls == []  # the cache now serves it
    monkeypatch.delenv("DISTILL_DATA_DIR")
    (cache / "split" / "fa").write_bytes(a)
    (cache / "split" / "fc").unlink()
    with pytest.raises(DistillError, match="could not obtain"):  # nothing has fc any more: registry tried last
        locate(spec, log=lambda *a: None)
    assert calls == ["registry"]

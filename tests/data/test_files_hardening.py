"""Hostile or damaged ``--data`` files: each is one line naming the file (exit 2 from the CLI),
read without allocating what the file merely declares, and a wide table loads in linear time.

The files are generated here and kept small: a "large" array or image is one whose header
declares a large size, compressed to a few kilobytes, with a memory budget set low."""
from __future__ import annotations

import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import torch

from distill.data import load_files
from distill.data.segmentation import IGNORE_INDEX, check_masks, is_mask_npz, load_segmentation_npz
from distill.errors import DistillError
from conftest import one_line_error, write_folder, write_npz


def teacher_error(capsys, tmp_path, data, *extra) -> str:
    """The one-line error of ``distill teacher --data DATA``; nothing is trained."""
    out = tmp_path / "run"
    err = one_line_error(capsys, "teacher", "--data", data, *extra, "--epochs", "1", "--out", out, "--no-progress")
    assert not out.exists()
    return err


def peak_bytes(fn):
    """(fn(), the peak of memory allocated while it ran, as traced)."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------- .npz: declared sizes

def bomb(path, shape=(4000, 1000), dtype=np.uint8, **extra):
    """A compressed .npz whose x_train declares ``shape`` of zeros (4 MB by default, about 4 KB on disk)."""
    x = np.zeros(shape, dtype)
    np.savez_compressed(path, x_train=x, y_train=np.zeros(len(x), np.int64), **extra)
    return path


def test_npz_array_over_the_budget_is_refused_from_its_header(tmp_path, monkeypatch):
    p = bomb(tmp_path / "bomb.npz")
    assert p.stat().st_size < 100_000
    monkeypatch.setenv("DISTILL_MAX_ARRAY_BYTES", "1M")

    def load():
        with pytest.raises(DistillError) as e:
            load_files(p, log=lambda *a: None)
        return str(e.value)

    msg, peak = peak_bytes(load)
    assert str(p) in msg and "x_train" in msg and "\n" not in msg
    assert "(4000, 1000) of uint8 (3.8 MiB)" in msg  # the declared size
    assert "(1.0 MiB)" in msg and "DISTILL_MAX_ARRAY_BYTES" in msg  # the budget, and how to raise it
    assert peak < 1_000_000  # the 4 MB were never decompressed


def test_npz_total_over_the_budget_is_refused(tmp_path, monkeypatch):
    p = bomb(tmp_path / "two.npz", shape=(600, 1000), x_test=np.zeros((600, 1000), np.uint8),
             y_test=np.zeros(600, np.int64))
    monkeypatch.setenv("DISTILL_MAX_ARRAY_BYTES", "1M")  # each array fits (600 kB), together they do not
    with pytest.raises(DistillError, match=r"together.*DISTILL_MAX_ARRAY_BYTES"):
        load_files(p, log=lambda *a: None)


def test_npz_within_the_budget_still_loads(tmp_path, monkeypatch):
    p = write_npz(tmp_path / "ok.npz")
    before = load_files(p, log=lambda *a: None)
    monkeypatch.setenv("DISTILL_MAX_ARRAY_BYTES", "1M")
    after = load_files(p, log=lambda *a: None)
    assert after.fingerprint == before.fingerprint and after.train.n == 120 and after.num_classes == 4
    assert torch.equal(after.train.x, before.train.x)


def test_bad_budget_setting_is_one_line(tmp_path, monkeypatch):
    p = write_npz(tmp_path / "ok.npz")
    monkeypatch.setenv("DISTILL_MAX_ARRAY_BYTES", "lots")
    with pytest.raises(DistillError, match=r"DISTILL_MAX_ARRAY_BYTES='lots' is not a size"):
        load_files(p, log=lambda *a: None)


def test_npz_bomb_through_the_cli_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISTILL_MAX_ARRAY_BYTES", "1M")
    p = bomb(tmp_path / "bomb.npz")
    err = teacher_error(capsys, tmp_path, p)
    assert str(p) in err and "x_train" in err


def seg_bomb(path, n=64):
    """An .npz of images and masks whose y_train declares n x 64 x 128 int64 (4 MB for 64)."""
    np.savez_compressed(path, x_train=np.zeros((n, 64, 128), np.uint8), y_train=np.zeros((n, 64, 128), np.int64),
                        x_test=np.zeros((2, 64, 128), np.uint8), y_test=np.zeros((2, 64, 128), np.int64))
    return path


def test_mask_npz_is_recognised_from_headers_alone(tmp_path):
    p = seg_bomb(tmp_path / "seg.npz")
    is_mask, peak = peak_bytes(lambda: is_mask_npz(p))
    assert is_mask is True and peak < 1_000_000


def test_segmentation_npz_over_the_budget_is_refused(tmp_path, monkeypatch):
    p = seg_bomb(tmp_path / "seg.npz")
    monkeypatch.setenv("DISTILL_MAX_ARRAY_BYTES", "1M")

    def load():
        with pytest.raises(DistillError) as e:
            load_segmentation_npz(p)
        return str(e.value)

    msg, peak = peak_bytes(load)
    assert str(p) in msg and "y_train" in msg and "DISTILL_MAX_ARRAY_BYTES" in msg and peak < 1_000_000


# ---------------------------------------------------------------- .npz: damaged archives

def damaged(tmp_path, kind: str):
    good = write_npz(tmp_path / "good.npz")  # np.savez: members stored, not compressed
    data = bytearray(good.read_bytes())
    p = tmp_path / f"{kind}.npz"
    if kind == "not-a-zip":
        data = bytearray(b"these are not the arrays you are looking for\n" * 20)
    elif kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "bad-crc":  # one flipped byte inside x_train's data: only the CRC can tell
        i = data.index(b"x_train.npy")
        i = data.index(b"\x93NUMPY", i) + 300
        data[i] ^= 0x55
    elif kind == "bad-deflate":
        x, y = np.random.default_rng(0).random((50, 8, 8)), np.arange(50) % 2
        np.savez_compressed(p, x_train=x, y_train=y)
        data = bytearray(p.read_bytes())
        i = data.index(b"x_train.npy") + len("x_train.npy") + 40
        data[i:i + 16] = b"\xff" * 16
    elif kind == "single-array":
        np.save(tmp_path / "one.npy", np.zeros((3, 2)))
        data = (tmp_path / "one.npy").read_bytes()
    p.write_bytes(bytes(data))
    return p


KINDS = ["not-a-zip", "truncated", "bad-crc", "bad-deflate", "single-array"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_npz_is_one_line_naming_the_file(tmp_path, kind):
    p = damaged(tmp_path, kind)
    with pytest.raises(DistillError) as e:
        load_files(p, log=lambda *a: None)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg
    assert "pickle" not in msg  # a file that is not a zip is not "pickled data"


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_segmentation_npz_is_one_line(tmp_path, kind):
    p = damaged(tmp_path, kind)
    assert is_mask_npz(p) is False
    with pytest.raises(DistillError) as e:
        load_segmentation_npz(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value) and "pickle" not in str(e.value)


def test_damaged_npz_through_the_cli(tmp_path, capsys):
    for kind in ("bad-crc", "bad-deflate"):
        p = damaged(tmp_path, kind)
        assert str(p) in teacher_error(capsys, tmp_path, p)


# ---------------------------------------------------------------- images that declare huge sizes

def png_header(width: int, height: int) -> bytes:
    """A grey PNG whose header declares width x height pixels, with a few bytes of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_png_declaring_20000x20000_pixels_is_one_line(tmp_path, capsys):
    root = write_folder(tmp_path / "imgs", splits=(("train", 8),))
    huge = root / "train" / "c0" / "000.png"  # sorted first: read before any normal image
    huge.write_bytes(png_header(20000, 20000))
    with pytest.raises(DistillError) as e:
        load_files(root, log=lambda *a: None)
    assert str(huge) in str(e.value) and "\n" not in str(e.value)
    assert str(huge) in teacher_error(capsys, tmp_path, root)


def test_image_over_the_array_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "imgs", splits=(("train", 8),))
    big = root / "train" / "c0" / "000.png"
    big.write_bytes(png_header(3000, 3000))  # under Pillow's limit, 36 MB as float32
    monkeypatch.setenv("DISTILL_MAX_ARRAY_BYTES", "1M")
    with pytest.raises(DistillError, match=r"3000x3000.*DISTILL_MAX_ARRAY_BYTES") as e:
        load_files(root, log=lambda *a: None)
    assert str(big) in str(e.value)


# ---------------------------------------------------------------- tables

def test_wide_csv_loads_in_linear_time(tmp_path):
    import pandas as pd

    cols = 30_000
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.integers(0, 10, (5, cols)), columns=[f"f{i}" for i in range(cols)])
    df["label"] = ["a", "b", "a", "b", "a"]
    p = tmp_path / "wide.csv"
    df.to_csv(p, index=False)
    start = time.perf_counter()
    data = load_files(p, target="label", log=lambda *a: None)
    took = time.perf_counter() - start
    assert data.input_shape == (cols,) and data.train.n == 5 and data.classes == ("a", "b")
    assert torch.equal(data.train.x[:, :3], torch.tensor(df.iloc[:, :3].to_numpy(), dtype=torch.float32))
    # linear: about 3 s, nearly all of it pandas parsing; quadratic in the columns it took 12 to 19 s
    assert took < 6.0, f"a {cols}-column table took {took:.1f} s"


def test_header_only_csv_says_it_has_no_rows(tmp_path, capsys):
    p = tmp_path / "empty.csv"
    p.write_text("f1,f2,label\n")
    with pytest.raises(DistillError, match="no rows") as e:
        load_files(p, target="label", log=lambda *a: None)
    assert "not numeric" not in str(e.value)
    assert "no rows" in teacher_error(capsys, tmp_path, p, "--target", "label")
    # a folder whose test table has a header only
    (tmp_path / "tv").mkdir()
    (tmp_path / "tv" / "train.csv").write_text("f1,label\n1,a\n2,b\n")
    (tmp_path / "tv" / "test.csv").write_text("f1,label\n")
    with pytest.raises(DistillError, match=r"test\.csv holds no rows"):
        load_files(tmp_path / "tv", target="label", log=lambda *a: None)


def test_table_column_checks_still_hold(tmp_path):
    (tmp_path / "tv").mkdir()
    (tmp_path / "tv" / "train.csv").write_text("f1,f2,label\n1,2,a\n2,3,b\n")
    (tmp_path / "tv" / "test.csv").write_text("f2,f3,label\n1,2,a\n")
    with pytest.raises(DistillError, match=r"lacks the feature column\(s\) f1 "):
        load_files(tmp_path / "tv", target="label", log=lambda *a: None)
    (tmp_path / "tv" / "test.csv").write_text("f1,f2,f3,label\n1,2,3,a\n")
    with pytest.raises(DistillError, match=r"has column\(s\) f3 that the training table does not have"):
        load_files(tmp_path / "tv", target="label", log=lambda *a: None)


# ---------------------------------------------------------------- segmentation masks

def seg_npz(path, y_train, y_test=None, **extra):
    n, h, w = y_train.shape
    x = np.random.default_rng(0).random((n, h, w)).astype(np.float32)
    y_test = y_train[:2] if y_test is None else y_test
    np.savez(path, x_train=x, y_train=y_train, x_test=x[:len(y_test)], y_test=y_test, **extra)
    return path


def masks(n=4, size=8):
    y = np.zeros((n, size, size), np.int64)
    y[:, 2:5, 2:5] = 1
    y[:, 5:7, 5:7] = 2
    y[:, 0, :] = IGNORE_INDEX
    return y


def test_a_stray_label_does_not_make_a_255_class_model(tmp_path, capsys):
    y = masks()
    y[1, 7, 7] = 254  # one stray pixel
    p = seg_npz(tmp_path / "stray.npz", y)
    with pytest.raises(DistillError) as e:
        load_segmentation_npz(p)
    msg = str(e.value)
    assert str(p) in msg and "254" in msg and "classes" in msg and "\n" not in msg
    err = teacher_error(capsys, tmp_path, p, "--arch", "deeplab")
    assert "254" in err
    # with the class list given, the labels are taken as they are
    names = np.array([f"c{i}" for i in range(255)])
    ds = load_segmentation_npz(seg_npz(tmp_path / "named.npz", y, classes=names))
    assert len(ds.classes) == 255


def test_dense_labels_are_inferred_as_before(tmp_path):
    ds = load_segmentation_npz(seg_npz(tmp_path / "ok.npz", masks()))
    assert ds.classes == ("0", "1", "2")
    y = masks()
    y[y == 2] = 5  # classes 0, 1, 5 of 0..5: a few ids missing is not implausible
    assert len(load_segmentation_npz(seg_npz(tmp_path / "gap.npz", y)).classes) == 6


def test_all_ignored_masks_are_refused(tmp_path, capsys):
    y = np.full((4, 8, 8), IGNORE_INDEX, np.int64)
    p = seg_npz(tmp_path / "ignored.npz", y)
    with pytest.raises(DistillError, match="no pixel is labelled") as e:
        load_segmentation_npz(p)
    assert "255" in str(e.value) and "\n" not in str(e.value)
    assert "no pixel is labelled" in teacher_error(capsys, tmp_path, p, "--arch", "deeplab")
    with pytest.raises(DistillError, match="no pixel is labelled"):
        check_masks(torch.zeros(2, 1, 8, 8), torch.full((2, 8, 8), IGNORE_INDEX), 3)
    check_masks(torch.zeros(2, 1, 8, 8), torch.from_numpy(masks(2)), 3)  # some pixels ignored: fine

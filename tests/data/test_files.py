"""Your own data and model from the command line: ``--data`` (.npz, image folders,
CSV/Parquet tables), ``--model``/``--model-args``; every bad input is one line and exit 2.

All data here is generated: small 8x8 images of a few classes (each class a fixed random
template plus noise), saved in each format."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import distill
from distill.cli import main
from distill.data import FileData, load_files
from distill.errors import DistillError
from conftest import CLASSES, images, one_line_error, run, table, write_folder, write_npz



def test_npz_round_trip_with_val_and_test(tmp_path):
    p = write_npz(tmp_path / "d.npz")
    data = load_files(p)
    assert isinstance(data, FileData) and not data.lazy
    assert data.classes == ("0", "1", "2", "3") and data.input_shape == (8, 8) and data.image_shape == (8, 8)
    assert (data.train.n, data.val.n, data.test.n) == (120, 40, 40)
    x, y = images(120, 0)
    assert torch.equal(data.train.x, torch.from_numpy(x)) and torch.equal(data.train.y, torch.from_numpy(y))
    # the fingerprint is a digest of the content read: another file name, same content -> same digest
    assert load_files(write_npz(tmp_path / "copy.npz")).fingerprint == data.fingerprint
    x2 = x.copy()
    x2[0, 0, 0] += 0.5
    other = load_files(write_npz(tmp_path / "other.npz", x_train=x2))
    assert other.train.fingerprint != data.train.fingerprint and other.test.fingerprint == data.test.fingerprint
    # uint8 images are scaled to [0, 1]; class names come from `classes`
    raw = (x * 255).round().astype(np.uint8)
    named = load_files(write_npz(tmp_path / "u8.npz", x_train=raw, classes=np.array(["a", "b", "c", "d"])))
    assert named.classes == ("a", "b", "c", "d")
    assert torch.allclose(named.train.x, torch.from_numpy(raw.astype(np.float32) / 255))
    # fit takes it as it is: its training split, and its test split as `test`
    torch.manual_seed(0)
    res = distill.fit(distill_mlp(64), data, distill.TrainConfig(epochs=1, batch_size=32), val=data.val,
                      progress=False)
    assert res.test["n"] == 40 and res.val["n"] == 40


def distill_mlp(features, hidden=(16,), classes=CLASSES):
    from distill.models.classifiers import MLP

    return MLP(features, list(hidden), classes)


def test_npz_unlabeled_transfer_set(tmp_path):
    data = load_files(write_npz(tmp_path / "u.npz", labeled=False))
    assert not data.labeled and data.train.n == 120
    assert data.classes == ("0", "1", "2", "3")  # from the labelled val/test splits
    only_x = load_files(write_npz(tmp_path / "x.npz", labeled=False, x_val=None, y_val=None, x_test=None,
                                  y_test=None))
    assert only_x.classes == () and only_x.val is None and only_x.test is None


@pytest.mark.parametrize("lazy", [False, True])
def test_image_folder_round_trip(tmp_path, lazy):
    root = write_folder(tmp_path / "imgs")
    data = load_files(root, memory_limit=1 if lazy else None, log=lambda *a: None)
    assert data.lazy is lazy
    assert data.classes == ("c0", "c1", "c2", "c3") and data.input_shape == (8, 8) and data.image_shape == (8, 8)
    assert (data.train.n, data.val.n, data.test.n) == (24, 8, 8)
    x, y, _ = next(iter(data.train.ordered(100)))
    want_x, want_y = images(24, 0)
    order = np.argsort(want_y, kind="stable")  # files are read class by class, in name order
    assert torch.equal(y, torch.from_numpy(want_y[order]))
    assert torch.allclose(x, torch.from_numpy(want_x[order]), atol=0.5 / 255 + 1e-6)
    # same content, same fingerprint, whichever way it was read
    other = load_files(root, memory_limit=None if lazy else 1, log=lambda *a: None)
    assert other.fingerprint == data.fingerprint and other.train.fingerprint == data.train.fingerprint
    sub = data.subset(train=8)
    assert sub.train.n == 8 and sorted(torch.cat([b[1] for b in sub.train.ordered(3)]).tolist()) == [0, 0, 1, 1, 2, 2,
                                                                                                    3, 3]


def test_colour_jpg_folder_and_unlabeled_images(tmp_path):
    data = load_files(write_folder(tmp_path / "rgb", colour=True, suffix=".jpg", splits=(("train", 8),)))
    assert data.input_shape == (3, 8, 8) and data.image_shape == (8, 8) and data.val is None and data.test is None
    x, _, _ = next(iter(data.train.ordered(8)))
    assert x.shape == (8, 3, 8, 8) and 0 <= float(x.min()) and float(x.max()) <= 1
    un = load_files(write_folder(tmp_path / "un", labeled=False, splits=(("train", 12), ("test", 8))))
    assert not un.labeled and un.classes == ("c0", "c1", "c2", "c3") and un.test.labeled
    flat = write_folder(tmp_path / "flat", splits=(("train", 8),)) / "train"  # class folders, no train/
    assert load_files(flat, log=lambda *a: None).classes == ("c0", "c1", "c2", "c3")


@pytest.mark.parametrize("lazy", [False, True])
def test_images_of_mixed_sizes_are_resized_to_the_most_common_or_the_given_size(tmp_path, lazy):
    from PIL import Image

    root = write_folder(tmp_path / "mixed", splits=(("train", 24), ("test", 8)))
    big = (np.random.default_rng(5).random((12, 10)) * 255).astype(np.uint8)  # 10 wide, 12 high
    Image.fromarray(big).save(root / "train" / "c1" / "zz-odd.png")
    said = []
    data = load_files(root, memory_limit=1 if lazy else None, log=said.append)
    assert data.lazy is lazy and data.input_shape == (8, 8) and data.train.n == 25
    assert any("1 of 33 images resized to 8x8 (H x W, the most common of their 2 sizes" in s for s in said), said
    x, y, _ = next(iter(data.train.ordered(100)))
    want = np.asarray(Image.fromarray(big).resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    odd = int(np.flatnonzero(y.numpy() == 1)[-1])  # the last file of class c1
    assert torch.allclose(x[odd], torch.from_numpy(want), atol=1e-6)
    # the size asked for: every image, H x W, and a size joins the examples' identity
    tall = load_files(root, image_size=(12, 10), memory_limit=1 if lazy else None, log=said.append)
    assert tall.input_shape == (12, 10) and tall.image_shape == (12, 10)
    xt, yt, _ = next(iter(tall.train.ordered(100)))
    assert torch.allclose(xt[odd], torch.from_numpy(big.astype(np.float32) / 255), atol=1e-6)  # its own size
    assert tall.fingerprint != data.fingerprint
    assert load_files(root, image_size=8, log=said.append).input_shape == (8, 8)
    plain = write_folder(tmp_path / "plain", splits=(("train", 8),))
    same = load_files(plain, image_size=(8, 8), log=said.append)  # nothing resized: the folder's own identity
    assert same.fingerprint == load_files(plain, log=said.append).fingerprint
    table(30, 0).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DistillError, match="is not an image folder"):
        load_files(tmp_path / "t.csv", target="fruit", image_size=8)
    for bad in (0, (4, 4, 4), (2.5, 3), True):
        with pytest.raises(DistillError, match="--image-size takes one or two"):
            load_files(plain, image_size=bad)
    # a longest side: the size scaled down, aspect kept; a size given is not capped
    from distill.data.files import capped_size

    assert capped_size((128, 96), 64) == (64, 48) and capped_size((30, 40), 64) == (30, 40)
    assert capped_size((1000, 3), 64) == (64, 1)
    small = load_files(root, max_side=4, log=said.append)
    assert small.input_shape == (4, 4) and "images are read at 4x4 (H x W), not the most common" in said[-1]
    assert load_files(root, image_size=(12, 10), max_side=4, log=said.append).input_shape == (12, 10)


def test_a_checkpoint_reads_other_images_at_the_size_it_was_trained_on(tmp_path, capsys):
    from PIL import Image

    root = write_folder(tmp_path / "mixed", splits=(("train", 24), ("test", 8)))
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(root / "train" / "c1" / "zz-odd.png")
    out = tmp_path / "runs" / "t"
    code, o, e = run(capsys, "teacher", "--data", root, "--image-size", "6", "7", "--epochs", "1", "--out", out,
                     "--no-progress")
    assert code == 0, e
    side = json.loads((out / "model.json").read_text())
    assert side["data_source"]["image_size"] == [6, 7] and side["input_shape"] == [6, 7]
    other = write_folder(tmp_path / "other", splits=(("train", 8), ("test", 8)))  # 8x8 images: read at 6x7
    code, o, e = run(capsys, "evaluate", out / "model", "--data", other)
    assert code == 0, e
    assert "16 of 16 images resized to 6x7 (H x W, the size given)" in o + e
    code, o, e = run(capsys, "student", "--data", root, "--teacher", out / "model", "--epochs", "1", "--out",
                     tmp_path / "runs" / "s", "--no-progress")
    err = e.strip().splitlines()[-1]  # after the [data] line on the resized image
    assert code == 2 and err.startswith("distill: error: ") and "Traceback" not in e
    assert "takes inputs of shape (6, 7)" in err and "--image-size 6 7 reads the images at its size" in err
    assert one_line_error(capsys, "evaluate", out / "model", "--dataset", "mnist", "--image-size", "6")
    assert "--image-size resizes the images of a --data folder" in one_line_error(
        capsys, "teacher", "--image-size", "8", "--out", tmp_path / "runs" / "m")  # not MNIST trained silently


def test_large_images_are_read_downscaled_by_default(tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    import distill.cli.common as common

    monkeypatch.setattr(common, "DATA_RECIPE", replace(common.DATA_RECIPE, image_side=4))
    root = write_folder(tmp_path / "imgs", splits=(("train", 24), ("test", 8)))  # 8x8 > 4
    out = tmp_path / "runs" / "t"
    code, o, e = run(capsys, "teacher", "--data", root, "--epochs", "1", "--out", out, "--no-progress")
    assert code == 0, e
    assert "images are read at 4x4 (H x W), not their 8x8: a side is at most 4 pixels by default" in o + e
    side = json.loads((out / "model.json").read_text())
    assert side["data_source"]["image_size"] == [4, 4] and side["input_shape"] == [4, 4]
    code, o, e = run(capsys, "evaluate", out / "model")  # the recorded size, not a cap (evaluate has none)
    assert code == 0 and "resized to 4x4 (H x W, the size given)" in o + e
    code, o, e = run(capsys, "teacher", "--data", root, "--image-size", "8", "--epochs", "1", "--out",
                     tmp_path / "runs" / "full", "--no-progress")
    assert code == 0 and json.loads((tmp_path / "runs" / "full" / "model.json").read_text())["input_shape"] == [8, 8]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("lazy", [False, True])
def test_tables_round_trip(tmp_path, monkeypatch, fmt, lazy):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "t"
    folder.mkdir()
    for split, n, seed in (("train", 90, 0), ("val", 30, 1), ("test", 30, 2)):
        df = table(n, seed)
        df.to_csv(folder / f"{split}.csv", index=False) if fmt == "csv" else df.to_parquet(folder / f"{split}.parquet")
    data = load_files(folder, target="fruit", memory_limit=100 if lazy else None, log=lambda *a: None)
    assert data.lazy is lazy
    assert data.classes == ("apple", "banana", "cherry") and data.input_shape == (4,) and data.image_shape is None
    assert (data.train.n, data.val.n, data.test.n) == (90, 30, 30)
    x, y, _ = next(iter(data.train.ordered(1000)))
    df = table(90, 0)
    assert torch.allclose(x, torch.tensor(df[["f1", "f2", "f3", "count"]].to_numpy(), dtype=torch.float32))
    assert y.tolist() == (np.arange(90) % 3).tolist()
    if lazy:
        assert list((tmp_path / "cache" / "tables").glob("*.f32"))  # streamed into the cache once
    other = load_files(folder, target="fruit", memory_limit=None if lazy else 100, log=lambda *a: None)
    assert other.fingerprint == data.fingerprint
    # a single file is a training split alone
    single = load_files(folder / f"train.{fmt}", target="fruit")
    assert single.train.n == 90 and single.val is None and single.test is None
    assert single.train.fingerprint == data.train.fingerprint


def test_a_table_without_a_header_is_read_as_data_with_numbered_columns(tmp_path):
    from distill.data.files import has_header

    df = table(30, 0)
    values = df[["fruit", "f1", "f2", "f3", "count"]]
    values.to_csv(tmp_path / "bare.csv", index=False, header=False)  # UCI style: no header row
    values.to_csv(tmp_path / "bare.tsv", index=False, header=False, sep="\t")
    said = []
    for name in ("bare.csv", "bare.tsv"):
        data = load_files(tmp_path / name, target="0", log=said.append)
        assert data.features == ("1", "2", "3", "4") and data.classes == ("apple", "banana", "cherry")
        x, y, _ = next(iter(data.train.ordered(1000)))
        assert x.shape == (30, 4)  # the first line is an example, not lost as a header
        assert torch.allclose(x, torch.tensor(df[["f1", "f2", "f3", "count"]].to_numpy(), dtype=torch.float32))
    assert len(said) == 2 and all("has no header" in s and "numbered 0-4" in s for s in said)
    # numbers in the first line make a header only when they are pandas' positional names 0..N-1
    numeric = df[["f1", "f2", "f3", "count"]].assign(label=np.arange(30) % 2)
    numeric.columns = range(5)
    numeric.to_csv(tmp_path / "positional.csv", index=False)
    assert has_header(tmp_path / "positional.csv")
    data = load_files(tmp_path / "positional.csv", target="4", log=said.append)
    assert data.train.n == 30 and len(said) == 2
    for text, header in (("a,b,1.5\n1,2,3\n", True), ("id,2019,label\n1,2,x\n", True), ("1,2,3\n", True),
                         ("1,inf,x\n1,2,y\n", True), ("5.1,3.5,Iris-setosa\n4.9,3.0,Iris-setosa\n", False),
                         ("1,,x\n2,3,y\n", True), (",0,1\n0,2.5,3\n", True), ("1,2,x\n2,,y\n", False)):
        (tmp_path / "h.csv").write_text(text)
        assert has_header(tmp_path / "h.csv") is header, text



def test_the_row_index_pandas_writes_is_not_a_feature(tmp_path):
    df = table(30, 0)
    folder = tmp_path / "t"
    folder.mkdir()
    df.to_csv(folder / "train.csv")  # index=True by default: an unnamed first column 0..29
    df.sample(frac=1.0, random_state=0).iloc[:12].to_csv(folder / "test.csv")  # a shuffled subset of the index
    said = []
    data = load_files(folder, target="fruit", log=said.append)
    assert data.features == ("f1", "f2", "f3", "count")
    assert any("is the row index pandas writes" in s for s in said)
    x, _, _ = next(iter(data.train.ordered(100)))
    assert torch.allclose(x, torch.tensor(df[["f1", "f2", "f3", "count"]].to_numpy(), dtype=torch.float32))
    assert data.test.n == 12
    # a shuffled index in the training table is an index too; an unnamed column of repeated values is a feature
    df.sample(frac=1.0, random_state=1).to_csv(tmp_path / "shuffled.csv")
    assert load_files(tmp_path / "shuffled.csv", target="fruit", log=said.append).features == ("f1", "f2", "f3", "count")
    # a named identifier stays a feature, with a warning
    df.assign(Id=np.arange(1, 31)).to_csv(tmp_path / "ids.csv", index=False)
    assert "Id" in load_files(tmp_path / "ids.csv", target="fruit", log=said.append).features
    assert "column 'Id' holds a different whole number on every row" in said[-1]
    odd = df.assign(**{"": np.arange(30) % 3})[["", "f1", "f2", "f3", "count", "fruit"]]
    odd.to_csv(tmp_path / "unnamed.csv", index=False)
    assert load_files(tmp_path / "unnamed.csv", target="fruit", log=said.append).features[0] == "Unnamed: 0"


# ---------------------------------------------------------------- bad input: one line, exit 2, no MNIST

def _bad_inputs(tmp_path):
    """(name, path to --data, extra flags, text expected in the message)."""
    from PIL import Image

    cases = []
    cases.append(("missing", tmp_path / "nope.npz", [], "does not exist"))
    (tmp_path / "empty").mkdir()
    cases.append(("empty folder", tmp_path / "empty", [], "holds no usable data"))
    (tmp_path / "notes.txt").write_text("hello")
    cases.append(("unknown suffix", tmp_path / "notes.txt", [], "cannot read a .txt file"))
    np.savez(tmp_path / "nox.npz", images=np.zeros((3, 2)))
    cases.append(("npz without x_train", tmp_path / "nox.npz", [], "has no array x_train"))
    write_npz(tmp_path / "outside.npz", classes=np.array(["a", "b", "c"]))
    cases.append(("label outside the class list", tmp_path / "outside.npz", [],
                  "holds label 3, outside the class list"))
    write_npz(tmp_path / "floaty.npz", y_train=np.arange(120) % 4 * 1.0)
    cases.append(("float labels", tmp_path / "floaty.npz", [], "must hold integer class labels"))
    write_npz(tmp_path / "shapes.npz", x_test=np.zeros((40, 9, 9), np.float32))
    cases.append(("npz shapes differ", tmp_path / "shapes.npz", [], "x_test holds examples of shape (9, 9)"))
    write_npz(tmp_path / "t.npz")
    cases.append(("--target on npz", tmp_path / "t.npz", ["--target", "y"], "--target names a column"))
    write_folder(tmp_path / "sized", splits=(("train", 8),))
    cases.append(("--image-size of zero", tmp_path / "sized", ["--image-size", "0"], "--image-size takes one or two"))
    cases.append(("--image-size of three numbers", tmp_path / "sized", ["--image-size", "4", "4", "4"],
                  "--image-size takes one or two"))
    root = write_folder(tmp_path / "valclass", splits=(("train", 8), ("val", 4)))
    (root / "val" / "c1").rename(root / "val" / "zebra")
    cases.append(("val class outside the training classes", root, [], "class 'zebra' is not one of the training "
                                                                       "classes"))
    root = write_folder(tmp_path / "emptyclass", splits=(("train", 8),))
    (root / "train" / "c9").mkdir()
    cases.append(("empty class folder", root, [], "holds no .png or .jpg images"))
    root = write_folder(tmp_path / "corrupt", splits=(("train", 8),))
    (root / "train" / "c0" / "broken.png").write_bytes(b"not a png at all")
    cases.append(("unreadable image", root, [], "not a readable image"))
    table(30, 0).to_csv(tmp_path / "t.csv", index=False)
    cases.append(("table without --target", tmp_path / "t.csv", [], "name its label column with --target"))
    cases.append(("missing column", tmp_path / "t.csv", ["--target", "label"], "has no column 'label'"))
    df = table(30, 0)
    df.loc[4, "f2"] = np.inf
    df.to_csv(tmp_path / "inf.csv", index=False)
    cases.append(("infinite value", tmp_path / "inf.csv", ["--target", "fruit"], "row 5, column 'f2' is infinite"))
    (tmp_path / "tv").mkdir()
    table(30, 0).to_csv(tmp_path / "tv" / "train.csv", index=False)
    table(12, 1, names=("apple", "banana", "durian")).to_csv(tmp_path / "tv" / "test.csv", index=False)
    cases.append(("test label outside the training classes", tmp_path / "tv", ["--target", "fruit"],
                  "'durian', which is not one of the training classes"))
    return cases


def test_every_bad_input_is_one_line_naming_the_path(tmp_path, capsys):
    for name, path, extra, expected in _bad_inputs(tmp_path):
        out = tmp_path / "runs" / name.replace(" ", "-")
        err = one_line_error(capsys, "teacher", "--data", path, *extra, "--epochs", "1", "--out", out, "--no-progress")
        assert expected in err, (name, err)
        assert str(path) in err or name.startswith(("--target", "--image-size")), (name, err)
        assert "mnist" not in err.lower(), (name, err)
        assert not out.exists(), name  # nothing trained, nothing silently read instead


def test_bad_flag_combinations(tmp_path, capsys):
    p = write_npz(tmp_path / "d.npz")
    out = ["--out", tmp_path / "o", "--no-progress", "--epochs", "1"]
    assert "not both" in one_line_error(capsys, "teacher", "--data", p, "--dataset", "mnist", *out)
    assert "--data-dir locates" in one_line_error(capsys, "teacher", "--data", p, "--data-dir", tmp_path, *out)
    assert "--target names" in one_line_error(capsys, "teacher", "--target", "y", *out)
    no_val = write_npz(tmp_path / "nv.npz", x_val=None, y_val=None)
    assert "no validation split" in one_line_error(capsys, "teacher", "--data", no_val, "--select", "best",
                                                   "--val-fraction", "0", *out)
    un = write_npz(tmp_path / "un.npz", labeled=False)
    assert "a teacher needs labels" in one_line_error(capsys, "teacher", "--data", un, *out)
    assert "distil from it with --teacher" in one_line_error(capsys, "student", "--data", un, *out)
    assert "--train-size 500 is larger" in one_line_error(capsys, "teacher", "--data", p, "--train-size", "500", *out)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- training on each format

def test_cli_trains_on_each_format_and_records_the_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tab").mkdir()
    for split, n, seed in (("train", 60, 0), ("test", 30, 2)):
        table(n, seed).to_csv(tmp_path / "tab" / f"{split}.csv", index=False)
    small = ["--epochs", "2", "--batch-size", "16", "--no-progress"]
    code, out, err = run(capsys, "teacher", "--data", tmp_path / "tab", "--target", "fruit", "--hidden", "16", *small,
                         "--out", tmp_path / "t-csv")
    assert code == 0, err
    assert out.startswith("teacher: ") and "test errors / 30" in out
    side = json.loads((tmp_path / "t-csv" / "model.json").read_text())
    assert side["classes"] == ["apple", "banana", "cherry"] and side["input_shape"] == [4]
    assert side["data_source"] == {"path": str((tmp_path / "tab").resolve()), "target": "fruit"}
    assert side["config"]["jitter"] == 0  # no jitter by default on your own data
    assert side["data_fingerprint"] == load_files(tmp_path / "tab", target="fruit").train.fingerprint
    # evaluate reads the recorded data by default
    code, out, err = run(capsys, "evaluate", tmp_path / "t-csv" / "model", "--json")
    assert code == 0, err
    ev = json.loads(out)
    assert ev["test_n"] == 30 and ev["data_fingerprint_matches"] is True and ev["test_errors"] == side["test"]["errors"]

    # colour images, read lazily (over the memory budget), a CNN with 3 input channels, val + select best
    monkeypatch.setenv("DISTILL_DATA_MEMORY", "1")
    root = write_folder(tmp_path / "rgb", colour=True, splits=(("train", 16), ("val", 8), ("test", 8)))
    code, out, err = run(capsys, "teacher", "--data", root, "--arch", "cnn", "--width", "4", "--select", "best",
                         *small, "--out", tmp_path / "t-img")
    assert code == 0, err
    assert "read as batches are drawn" in err and "test errors / 8" in out
    side = json.loads((tmp_path / "t-img" / "model.json").read_text())
    assert side["factory"]["kwargs"]["in_channels"] == 3 and side["input_shape"] == [3, 8, 8]
    assert side["config"]["select"] == "best" and side["val"]["n"] == 8
    monkeypatch.delenv("DISTILL_DATA_MEMORY")

    # an unlabeled transfer set: the student learns the soft targets alone
    p = write_npz(tmp_path / "d.npz")
    assert run(capsys, "teacher", "--data", p, "--hidden", "16", *small, "--out", tmp_path / "t")[0] == 0
    un = write_npz(tmp_path / "un.npz", labeled=False)
    code, out, err = run(capsys, "student", "--data", un, "--teacher", tmp_path / "t" / "model", "--hidden", "8",
                         *small, "--out", tmp_path / "s-un")
    assert code == 0, err
    assert "soft targets alone (--hard-weight 0)" in err and out.startswith("student-distilled: ")
    assert json.loads((tmp_path / "s-un" / "model.json").read_text())["config"]["hard_weight"] == 0.0
    assert "--hard-weight must be 0" in one_line_error(capsys, "student", "--data", un, "--teacher",
                                                       tmp_path / "t" / "model", "--hard-weight", "0.5", *small,
                                                       "--out", tmp_path / "s-bad")


def test_a_transfer_set_holding_some_classes_only(tmp_path, capsys):
    """Without `classes`, an .npz's classes are 0..max label: a teacher knowing more is accepted
    (the paper's transfer sets of 7s and 8s only), and the student gets the teacher's classes."""
    small = ["--epochs", "1", "--hidden", "8", "--no-progress"]
    assert run(capsys, "teacher", "--data", write_npz(tmp_path / "d.npz"), *small, "--out", tmp_path / "t")[0] == 0
    x, y = images(120)
    keep = (y == 1) | (y == 2)
    np.savez(tmp_path / "part.npz", x_train=x[keep], y_train=y[keep], x_test=x[keep][:10], y_test=y[keep][:10])
    code, out, err = run(capsys, "student", "--data", tmp_path / "part.npz", "--teacher", tmp_path / "t" / "model",
                         *small, "--out", tmp_path / "s")
    assert code == 0 and "test errors / 10" in out, err
    assert json.loads((tmp_path / "s" / "model.json").read_text())["num_classes"] == CLASSES
    np.savez(tmp_path / "one.npz", x_train=x, y_train=np.zeros(120, np.int64))
    assert "has 1 class (labels seen); a classifier needs two or more" in one_line_error(
        capsys, "teacher", "--data", tmp_path / "one.npz", *small, "--out", tmp_path / "t1")


def test_evaluate_on_other_data_says_so(tmp_path, capsys):
    p = write_npz(tmp_path / "d.npz")
    small = ["--epochs", "1", "--hidden", "8", "--no-progress"]
    assert run(capsys, "teacher", "--data", p, *small, "--out", tmp_path / "t")[0] == 0
    ckpt = tmp_path / "t" / "model"
    # same shapes and class count, other class names: other data
    named = write_npz(tmp_path / "named.npz", classes=np.array(["w", "x", "y", "z"]))
    err = one_line_error(capsys, "evaluate", ckpt, "--data", named)
    assert "was trained on other data: its classes are (0, 1, 2, 3)" in err and str(named) in err
    # other shapes, other class counts
    write_npz(tmp_path / "big.npz", x_train=np.zeros((4, 9, 9), np.float32), y_train=np.arange(4),
              x_val=None, y_val=None, x_test=np.zeros((4, 9, 9), np.float32), y_test=np.arange(4))
    assert "takes inputs of shape (8, 8)" in one_line_error(capsys, "evaluate", ckpt, "--data", tmp_path / "big.npz")
    x, y = images(8)
    np.savez(tmp_path / "six.npz", x_train=x, y_train=np.arange(8) % 6, x_test=x, y_test=np.arange(8) % 6)
    assert "predicts 4 classes" in one_line_error(capsys, "evaluate", ckpt, "--data", tmp_path / "six.npz")
    assert "takes inputs of shape (8, 8), but mnist's are (784,)" in one_line_error(capsys, "evaluate", ckpt,
                                                                                   "--dataset", "mnist")
    # the same data set with other content: evaluated, with a note
    x2 = images(120, 7)[0]
    changed = write_npz(tmp_path / "d.npz", x_train=x2)
    code, out, err = run(capsys, "evaluate", ckpt, "--json")
    assert code == 0 and json.loads(out)["data_fingerprint_matches"] is False
    assert "trained on other content of" in err and str(changed) in err


# ---------------------------------------------------------------- the user's model

FACTORY = '''
import torch
from torch import nn


def make(in_features, classes, width=8):
    """A user's model: flatten -> Linear -> Tanh -> Linear."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.Tanh(), nn.Linear(width, classes))


def broken(**kwargs):
    raise RuntimeError("no GPU here")


def not_a_module():
    return 42
'''


def test_user_factory_from_the_command_line(tmp_path, capsys, monkeypatch):
    name = "user_models_issue15"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    p = write_npz(tmp_path / "d.npz")
    args = json.dumps({"in_features": 64, "classes": CLASSES, "width": 12})
    small = ["--epochs", "2", "--no-progress"]
    code, out, err = run(capsys, "teacher", "--data", p, "--model", f"{name}:make", "--model-args", args, *small,
                         "--out", tmp_path / "t")
    assert code == 0, err
    side = json.loads((tmp_path / "t" / "model.json").read_text())
    assert side["factory"] == {"target": f"{name}:make", "kwargs": {"in_features": 64, "classes": 4, "width": 12}}
    model, _ = distill.load_checkpoint(tmp_path / "t" / "model", trust_factory=True)  # the user's factory
    assert isinstance(model, torch.nn.Sequential) and model[1].out_features == 12
    assert "--trust-factory" in one_line_error(capsys, "evaluate", tmp_path / "t" / "model")  # their code: trusted?
    code, out, err = run(capsys, "evaluate", tmp_path / "t" / "model", "--json", "--trust-factory")
    assert code == 0 and json.loads(out)["test_errors"] == side["test"]["errors"]
    monkeypatch.setenv("DISTILL_TRUSTED_MODULES", name)  # or trusted by module, once
    code, out, err = run(capsys, "evaluate", tmp_path / "t" / "model", "--json")
    assert code == 0, err
    monkeypatch.delenv("DISTILL_TRUSTED_MODULES")
    # a user model as the student of a built-in teacher's checkpoint
    code, out, err = run(capsys, "student", "--data", p, "--teacher", tmp_path / "t" / "model", "--model",
                         f"{name}:make", "--model-args", json.dumps({"in_features": 64, "classes": 4}), *small,
                         "--out", tmp_path / "s", "--trust-factory")
    assert code == 0 and out.startswith("student-distilled: "), err
    # and the ways it can go wrong, each one line
    o = ["--out", tmp_path / "x", *small, "--data", p]
    assert "configures the built-in --arch" in one_line_error(capsys, "teacher", "--model", f"{name}:make", "--arch",
                                                             "cnn", *o)
    assert "--dropout-input, --max-norm configure" in one_line_error(
        capsys, "teacher", "--model", f"{name}:make", "--dropout-input", "0.1", "--max-norm", "2", *o)
    assert "--model-args is not valid JSON" in one_line_error(capsys, "teacher", "--model", f"{name}:make",
                                                              "--model-args", "{width: 3}", *o)
    assert "must be a JSON object" in one_line_error(capsys, "teacher", "--model", f"{name}:make", "--model-args",
                                                     "[1, 2]", *o)
    assert "give --model too" in one_line_error(capsys, "teacher", "--model-args", "{}", *o)
    deep = '{"a": ' * 20000 + "1" + "}" * 20000
    assert "nested" in one_line_error(capsys, "teacher", "--model", f"{name}:make", "--model-args", deep, *o)
    assert "failed: RuntimeError: no GPU here" in one_line_error(capsys, "teacher", "--model", f"{name}:broken", *o)
    assert "failed: TypeError" in one_line_error(capsys, "teacher", "--model", f"{name}:make", *o)  # missing args
    assert "not a torch.nn.Module" in one_line_error(capsys, "teacher", "--model", f"{name}:not_a_module", *o)
    assert "cannot import the model factory" in one_line_error(capsys, "teacher", "--model", "no_such_mod:f", *o)
    assert "must be 'package.module:callable'" in one_line_error(capsys, "teacher", "--model", "nocolon", *o)
    err = one_line_error(capsys, "teacher", "--model", f"{name}:make", "--model-args",
                         json.dumps({"in_features": 63, "classes": 4}), *o)
    assert "cannot take the training inputs of shape (8, 8)" in err
    assert not (tmp_path / "x").exists()


def test_load_files_raises_distill_errors_naming_the_path(tmp_path):
    with pytest.raises(DistillError, match="nope"):
        load_files(tmp_path / "nope")
    write_npz(tmp_path / "d.npz")
    with pytest.raises(DistillError, match="not a table"):
        load_files(tmp_path / "d.npz", target="y")


def test_data_dir_with_your_own_files_points_at_data(tmp_path, capsys):
    """The two ways your own files used to end up as MNIST: a --data-dir of .npz/PNG files (which
    fell through to the cached MNIST) and digits saved under MNIST's idx names ("truncated")."""
    own = tmp_path / "own"
    own.mkdir()
    write_npz(own / "d.npz")
    out = ["--epochs", "1", "--no-progress", "--out", tmp_path / "o"]
    err = one_line_error(capsys, "teacher", "--data-dir", own, *out)
    assert "holds no mnist idx files but other data (d.npz, ...)" in err and f"--data {own}" in err
    idx = tmp_path / "idx"
    idx.mkdir()
    x = (images(10)[0] * 255).astype(np.uint8)
    (idx / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in
                                                                                 x.shape) + x.tobytes())
    err = one_line_error(capsys, "teacher", "--data-dir", idx, *out)
    assert "a complete idx file of other data (shape (10, 8, 8)), not the official train-images-idx3-ubyte" in err
    assert "use --data" in err and not (tmp_path / "o").exists()


def test_text_columns_and_empty_cells_read_alike_from_csv_parquet_and_a_memory_map(tmp_path):
    import pandas as pd

    pytest.importorskip("pyarrow")
    df = pd.DataFrame(dict(town=["b", "a", None, "b", "c", "a"], size=[1.0, None, 3.0, 4.0, 5.0, 6.0],
                           label=[0, 1, 0, 1, 0, 1]))
    df.to_csv(tmp_path / "t.csv", index=False)
    typed = df.assign(town=df["town"].astype("category"))  # a pandas category column in Parquet
    typed.to_parquet(tmp_path / "t.parquet")
    quiet = dict(target="label", log=lambda *a: None)
    a = load_files(tmp_path / "t.csv", **quiet)
    assert a.features == ("town", "size") and a.categories == {"town": ("b", "a", "c")}  # order of appearance
    nan = float("nan")
    want = torch.tensor([[0, 1], [1, nan], [nan, 3], [0, 4], [2, 5], [1, 6]])
    assert torch.equal(torch.nan_to_num(a.train.x, -1), torch.nan_to_num(want, -1)) and a.category_counts == [3, 0]
    b = load_files(tmp_path / "t.parquet", **quiet)
    assert b.categories == a.categories and torch.equal(torch.nan_to_num(b.train.x, -1), torch.nan_to_num(want, -1))
    lazy = load_files(tmp_path / "t.csv", memory_limit=16, **quiet)
    assert lazy.lazy and lazy.fingerprint == a.fingerprint
    rows = torch.cat([x for x, _, _ in lazy.train.ordered(4)])
    assert torch.equal(torch.nan_to_num(rows, -1), torch.nan_to_num(want, -1))
    # a checkpoint's codes and columns: another order of values and an extra column read with them
    other = df.assign(extra=1.0).iloc[::-1]
    other.to_csv(tmp_path / "o.csv", index=False)
    c = load_files(tmp_path / "o.csv", categories={"town": ["b", "a", "c"]}, features=["town", "size"], **quiet)
    assert c.features == ("town", "size") and torch.equal(torch.nan_to_num(c.train.x, -1),
                                                          torch.nan_to_num(want.flip(0), -1))

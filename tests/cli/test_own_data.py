"""The user's own data with default flags: defaults chosen from the data (one [defaults] line),
features standardised inside the model (and its ONNX graph), held-out splits cut from a single
file and recorded, the ConvNet for images."""
import json

import numpy as np
import pytest
import torch
from conftest import one_line_error, run, write_folder

from distill.checkpoints import load_checkpoint, save_checkpoint
from distill.data.files import load_files
from distill.models import MLP, ConvNet, Standardize
from distill.models.preprocess import feature_stats
from distill.train.recipes import DATA_RECIPE, data_defaults


def _raw_table(path, n=300, seed=0):
    """Three classes in three features on scales 1, 1e3 and 1e-3 around big offsets: unstandardised,
    SGD at lr 0.1 diverges on it."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centres = np.array([[0, 0, 0], [3, 0, 1], [0, 3, -1]], dtype=float)
    x = (centres[y] + rng.standard_normal((n, 3))) * np.array([1.0, 1e3, 1e-3]) + np.array([50.0, 2e4, 7.0])
    df = pd.DataFrame(x, columns=["mass", "volume", "charge"])
    df["kind"] = np.asarray(["a", "b", "c"])[y]
    df.to_csv(path, index=False)
    return df


def test_feature_stats_and_standardize_against_numpy_and_through_a_checkpoint(tmp_path):
    x = torch.randn(257, 4, dtype=torch.float64) * torch.tensor([1.0, 10, 1e3, 0.0]) + 5
    mean, std = feature_stats(x[i:i + 50].float() for i in range(0, 257, 50))
    assert np.allclose(mean.numpy(), x.numpy().mean(0), rtol=1e-5)
    want = x.numpy().std(0)
    want[want == 0] = 1.0  # a constant feature passes through centred
    assert np.allclose(std.numpy(), want, rtol=1e-4)
    net = Standardize(MLP(4, [6], 3), mean=mean, std=std)
    z = net.model(((x.float() - mean) / std))
    assert torch.allclose(net(x.float()), z)
    save_checkpoint(tmp_path / "m", net, {})
    back, side = load_checkpoint(tmp_path / "m")
    assert side["factory"]["target"] == "distill.models:Standardize"
    assert side["factory"]["kwargs"]["model"]["target"] == "distill.models:MLP"
    assert torch.allclose(back(x.float()), net(x.float()))


def test_data_defaults_closed_forms():
    d = data_defaults(142, 13, False, 128, 20)  # a wine-sized table
    assert d["batch_size"] == 15 and d["epochs"] == 30  # ceil(142 / 10); ceil(300 / 10 steps)
    assert d["teacher_hidden"] == [32, 32] and d["student_hidden"] == [8, 8]  # 2 x 13 -> 32 (the floor)
    d = data_defaults(60000, 784, False, 128, 20)  # big data: the flags' values stand
    assert d["batch_size"] == 128 and d["epochs"] == 20 and d["teacher_hidden"] == [1024, 1024]
    d = data_defaults(1500, 100, False, 128, 20)
    assert d["teacher_hidden"] == [DATA_RECIPE.small_width] * 2  # 256, capped for under 2000 rows
    d = data_defaults(240, 3072, True, 128, 20)
    assert d["teacher_width"] == DATA_RECIPE.image_width and d["student_width"] == DATA_RECIPE.image_width // 2
    assert data_defaults(5, 3, False, 128, 20)["batch_size"] == DATA_RECIPE.min_batch


def test_a_raw_csv_trains_with_default_flags_and_its_onnx_export_takes_raw_values(capsys, tmp_path):
    df = _raw_table(tmp_path / "raw.csv")
    code, out, err = run(capsys, "teacher", "--data", tmp_path / "raw.csv", "--target", "kind", "--out",
                         tmp_path / "t", "--no-progress")
    assert code == 0, err
    assert "[defaults] " in err and "features standardised" in err and "20% of its training examples" in err
    errors, n = int(out.split(" test errors / ")[0].split()[-1]), int(out.split(" test errors / ")[1].split()[0])
    assert n == 60 and errors <= 6, out  # 90 %+ on three well-separated classes
    side = json.loads((tmp_path / "t" / "model.json").read_text())
    assert side["factory"]["target"] == "distill.models:Standardize"
    assert side["features"] == ["mass", "volume", "charge"] and side["classes"] == ["a", "b", "c"]
    assert side["data_source"]["holdout"] == {"val_fraction": 0.0, "test_fraction": 0.2, "seed": 0}
    # evaluate cuts the same test split from the same file
    code, out2, err = run(capsys, "evaluate", tmp_path / "t" / "model", "--json")
    assert code == 0 and json.loads(out2)["test_errors"] == errors and json.loads(out2)["test_n"] == 60, err
    # the ONNX graph standardises: raw feature values in, the PyTorch model's logits out
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    code, _, err = run(capsys, "export", tmp_path / "t" / "model", "--format", "onnx")
    assert code == 0, err
    sess = ort.InferenceSession(str(tmp_path / "t" / "model.onnx"))
    x = df[["mass", "volume", "charge"]].to_numpy(np.float32)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    model, _ = load_checkpoint(tmp_path / "t" / "model")
    with torch.no_grad():
        assert np.allclose(got, model(torch.from_numpy(x.copy())).numpy(), atol=1e-4)
    from distill.tools.export import export_metadata

    meta = export_metadata(tmp_path / "t" / "model.onnx")
    assert meta["inputs"]["features"] == ["mass", "volume", "charge"] and "raw values" in meta["inputs"]["preprocessing"]
    # the distilled student: defaults too (T = 4 on others' data), standardised the same way
    code, out, err = run(capsys, "student", "--data", tmp_path / "raw.csv", "--target", "kind", "--teacher",
                         tmp_path / "t" / "model", "--out", tmp_path / "s", "--no-progress")
    assert code == 0 and "T = 4" in err and "epoch 30/30 kept (the last)" in out, err
    assert json.loads((tmp_path / "s" / "model.json").read_text())["config"]["temperature"] == 4.0


def test_no_standardize_and_flags_override_the_defaults(capsys, tmp_path):
    _raw_table(tmp_path / "raw.csv")
    code, out, err = run(capsys, "teacher", "--data", tmp_path / "raw.csv", "--target", "kind", "--no-standardize",
                         "--hidden", "16", "--batch-size", "32", "--epochs", "2", "--test-fraction", "0.25",
                         "--lr", "1e-6", "--out", tmp_path / "t", "--no-progress")
    assert code == 0, err
    side = json.loads((tmp_path / "t" / "model.json").read_text())
    assert side["factory"]["target"] == "distill.models:MLP" and side["factory"]["kwargs"]["hidden"] == [16]
    assert side["config"]["batch_size"] == 32 and side["config"]["epochs"] == 2 and side["test"]["n"] == 75
    assert "MLP" not in err and "batch" not in err.split("[defaults]")[-1]


def test_held_out_fractions_are_stratified_recorded_and_checked(tmp_path, capsys):
    _raw_table(tmp_path / "raw.csv", n=300)
    d = load_files(tmp_path / "raw.csv", target="kind", log=lambda *a: None).holdout(0.1, 0.2, 0)
    assert (d.train.n, d.val.n, d.test.n) == (210, 30, 60)
    assert torch.bincount(d.test.y).tolist() == [20, 20, 20] and torch.bincount(d.val.y).tolist() == [10, 10, 10]
    seen = torch.cat([d.train.x, d.val.x, d.test.x])
    assert len(torch.unique(seen, dim=0)) == 300  # a partition: no row in two splits
    assert d.holdout_spec == {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}
    again = load_files(tmp_path / "raw.csv", target="kind", log=lambda *a: None).holdout(0.1, 0.2, 0)
    assert torch.equal(again.test.x, d.test.x) and again.train.fingerprint == d.train.fingerprint
    out = ["--out", tmp_path / "o", "--no-progress", "--epochs", "1"]
    assert "leave too little" in one_line_error(capsys, "teacher", "--data", tmp_path / "raw.csv", "--target", "kind",
                                                "--val-fraction", "0.5", "--test-fraction", "0.45", *out)
    root = write_folder(tmp_path / "imgs")  # has its own val/ and test/
    assert "has its own test split" in one_line_error(capsys, "teacher", "--data", root, "--test-fraction", "0.2",
                                                      *out)
    assert "must be < 1" in one_line_error(capsys, "teacher", "--data", root, "--val-fraction", "1", *out)


def test_convnet_width_and_depth_are_honoured_and_misused_flags_are_one_line(capsys, tmp_path):
    small, big = ConvNet(3, 4, width=8, depth=2), ConvNet(3, 4, width=16, depth=3)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(big) > 4 * count(small)
    assert ConvNet(1, 4, width=8, depth=3, image_shape=(8, 8))(torch.rand(2, 64)).shape == (2, 4)
    root = write_folder(tmp_path / "imgs", colour=True)
    code, out, err = run(capsys, "teacher", "--data", root, "--width", "6", "--depth", "2", "--epochs", "1",
                         "--out", tmp_path / "t", "--no-progress")
    assert code == 0, err
    side = json.loads((tmp_path / "t" / "model.json").read_text())
    assert side["factory"]["target"] == "distill.models:ConvNet"  # images: the ConvNet by default
    assert side["factory"]["kwargs"]["width"] == 6 and side["factory"]["kwargs"]["depth"] == 2
    out_ = ["--out", tmp_path / "x", "--no-progress", "--epochs", "1"]
    assert "--arch cnn takes --width and --depth" in one_line_error(capsys, "teacher", "--data", root, "--arch", "cnn",
                                                                    "--hidden", "8", *out_)
    assert "--arch mlp takes --hidden" in one_line_error(capsys, "teacher", "--data", root, "--arch", "mlp",
                                                         "--width", "8", *out_)


def test_nearly_uniform_soft_targets_are_warned_about(capsys, tmp_path):
    _raw_table(tmp_path / "raw.csv")
    base = ["--data", tmp_path / "raw.csv", "--target", "kind", "--no-progress", "--epochs", "1"]
    assert run(capsys, "teacher", *base, "--out", tmp_path / "t")[0] == 0
    code, out, err = run(capsys, "student", *base, "--teacher", tmp_path / "t" / "model", "--temperature", "200",
                         "--out", tmp_path / "s")
    assert code == 0 and "soft targets are nearly uniform" in err, err


def test_a_store_of_a_single_file_covers_the_training_split_a_student_trains_on(capsys, tmp_path):
    """`distill targets` on a file without a test split holds out the same 20 % as `distill student`
    does, so the store and the student's training set are the same examples."""
    data = tmp_path / "t.csv"
    _raw_table(data, n=150)
    teacher = tmp_path / "runs" / "t"
    assert run(capsys, "teacher", "--data", data, "--target", "kind", "--epochs", "2", "--out", teacher,
               "--no-progress")[0] == 0
    code, o, e = run(capsys, "targets", "--data", data, "--target", "kind", "--teacher", teacher / "model",
                     "--out", tmp_path / "store")
    assert code == 0, e
    assert "120 x 3 float32 logits" in o + e  # the 150 rows less the held-out 30
    code, o, e = run(capsys, "student", "--data", data, "--target", "kind", "--teacher", tmp_path / "store",
                     "--epochs", "1", "--out", tmp_path / "runs" / "s", "--no-progress")
    assert code == 0, e
    assert "test errors / 30" in o + e

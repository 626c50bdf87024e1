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
                         "--hidden", "16", "--weight-decay", "0", "--batch-size", "32", "--epochs", "2",
                         "--test-fraction", "0.25", "--lr", "1e-6", "--out", tmp_path / "t", "--no-progress")
    assert code == 0, err
    assert "cross-validat" not in err  # --hidden and --weight-decay both given: nothing left to choose
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


def test_a_small_tables_model_is_chosen_by_cross_validation_on_the_training_split_alone(capsys, tmp_path):
    df = _raw_table(tmp_path / "all.csv", n=200)
    (tmp_path / "a").mkdir()
    df.iloc[:150].to_csv(tmp_path / "a" / "train.csv", index=False)
    (tmp_path / "b").mkdir()
    df.iloc[:150].to_csv(tmp_path / "b" / "train.csv", index=False)
    test = df.iloc[150:].copy()
    test.to_csv(tmp_path / "a" / "test.csv", index=False)
    test["kind"] = test["kind"].map({"a": "b", "b": "c", "c": "a"})  # other test labels: the choice must not move
    test.to_csv(tmp_path / "b" / "test.csv", index=False)
    sides = []
    for d in ("a", "b"):
        code, out, err = run(capsys, "teacher", "--data", tmp_path / d, "--target", "kind", "--epochs", "3",
                             "--out", tmp_path / f"t{d}", "--no-progress")
        assert code == 0, err
        sides.append(json.loads((tmp_path / f"t{d}" / "model.json").read_text()))
    sel = sides[0]["model_selection"]
    assert sel == sides[1]["model_selection"] and sides[0]["test"]["errors"] != sides[1]["test"]["errors"]
    assert sel["folds"] == DATA_RECIPE.cv_folds and len(sel["candidates"]) == 2 * len(DATA_RECIPE.table_weight_decays)
    scores = sel["candidates"]
    finite = {k: v for k, v in scores.items() if v["nll"] is not None}
    top = min(finite, key=lambda k: (finite[k]["nll"], finite[k]["errors"]))
    assert sel["default"] == "MLP 32-32, weight decay 0" and sel["chosen"] in (top, sel["default"])
    assert all(v["n"] == 150 for v in scores.values())
    # the sidecar's model and config are the chosen candidate's
    wd = float(sel["chosen"].split("weight decay ")[1])
    assert sides[0]["config"]["weight_decay"] == pytest.approx(wd)
    hidden = sides[0]["factory"]["kwargs"]["model"]["kwargs"]["hidden"]
    assert hidden == ([] if sel["chosen"].startswith("linear") else [32, 32])
    assert f"[defaults] {sel['chosen']}, by 5-fold cross-validation on the training split (" in err
    # a flag pins its part: --hidden leaves the weight decay to choose
    code, out, err = run(capsys, "teacher", "--data", tmp_path / "a", "--target", "kind", "--epochs", "2",
                         "--hidden", "16", "--out", tmp_path / "h", "--no-progress")
    assert code == 0, err
    sel = json.loads((tmp_path / "h" / "model.json").read_text())["model_selection"]
    assert sorted(sel["candidates"]) == sorted(f"MLP 16, weight decay {w:g}" for w in DATA_RECIPE.table_weight_decays)
    # a distilled student chooses among its own candidates, with the teacher on every fold
    code, out, err = run(capsys, "student", "--data", tmp_path / "a", "--target", "kind", "--epochs", "2",
                         "--teacher", tmp_path / "ta" / "model", "--out", tmp_path / "s", "--no-progress")
    assert code == 0, err
    sel = json.loads((tmp_path / "s" / "model.json").read_text())["model_selection"]
    assert "MLP 8-8, weight decay 0" in sel["candidates"] and "linear, weight decay 0.1" in sel["candidates"]
    assert "must be >= 0" in one_line_error(capsys, "teacher", "--data", tmp_path / "a", "--target", "kind",
                                            "--weight-decay", "-1", "--out", tmp_path / "x")


def _mixed_table(path, n=240, seed=0):
    """Three classes told apart by a text column (three values, 10 % noise) and a number; 5 % of the
    numbers and of a second text column are empty."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    place = np.where(rng.random(n) < 0.9, y, rng.integers(0, 3, n))
    df = pd.DataFrame(dict(place=np.array(["north", "east", "south"])[place],
                           size=1000.0 + 300 * y + rng.normal(0, 100, n),
                           colour=rng.choice(["red", "blue"], n), kind=np.array(["a", "b", "c"])[y]))
    df.loc[rng.random(n) < 0.05, "size"] = np.nan
    df.loc[rng.random(n) < 0.05, "colour"] = np.nan
    df.to_csv(path, index=False)
    return df


def test_feature_stats_skip_missing_values_and_standardize_fills_and_one_hot_encodes():
    x = torch.tensor([[1.0, 0.0, 4.0], [3.0, float("nan"), 8.0], [float("nan"), 2.0, 6.0]])
    mean, std = feature_stats(x)
    want_mean = np.nanmean(x.numpy(), 0)
    assert np.allclose(mean.numpy(), want_mean) and np.allclose(std.numpy(), np.nanstd(x.numpy(), 0))
    assert feature_stats(torch.full((3, 1), float("nan"))) == (torch.zeros(1), torch.ones(1))  # missing everywhere
    # features: a number, a text column of 3 codes, a number, a text column of 2 codes
    net = Standardize(MLP(2 + 3 + 2, [5], 2), mean=[1.0, 0, 5, 0], std=[2.0, 1, 1, 1], categories=[0, 3, 0, 2])
    seen = {}
    net.model.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    nan = float("nan")
    net(torch.tensor([[3.0, 2, nan, 0], [nan, nan, 6, 5]]))
    # z = (3 - 1) / 2, a missing number -> 0 (the mean); code 2 of 3; code 0 of 2; missing and unknown codes -> zeros
    assert seen["x"].tolist() == [[1, 0, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0, 0]]
    assert Standardize.encoded_features(4, [0, 3, 0, 2]) == 7 and Standardize.encoded_features(4) == 4
    assert net.distill_factory[1]["categories"] == [0, 3, 0, 2]
    assert "categories" not in Standardize(MLP(2, [3], 2), features=2).distill_factory[1]  # numeric: as before
    with pytest.raises(ValueError, match="a count >= 0 for each"):
        Standardize(MLP(2, [3], 2), features=2, categories=[1])


def test_text_columns_and_missing_values_train_and_travel_with_the_model(capsys, tmp_path):
    df = _mixed_table(tmp_path / "mixed.csv")
    df.insert(0, "name", [f"bird {i}" for i in range(len(df))])  # a text of its own on every row: left out
    df.to_csv(tmp_path / "mixed.csv", index=False)
    code, out, err = run(capsys, "teacher", "--data", tmp_path / "mixed.csv", "--target", "kind", "--out",
                         tmp_path / "t", "--no-progress")
    assert code == 0, err
    assert "column 'name' holds 240 distinct texts (e.g. 'bird 0'): a name, an id or free text, so it is left out" in err
    assert "text columns one-hot encoded in the model: place (3 values), colour (2 values)" in err
    assert "missing value(s) in the training split" in err
    errors = int(out.split(" test errors / ")[0].split()[-1])
    assert errors <= 8, out  # of 48: the text column alone tells 90 %
    side = json.loads((tmp_path / "t" / "model.json").read_text())
    assert sorted(side["categories"]) == ["colour", "place"]  # the text columns, their values in code order
    assert sorted(side["categories"]["place"]) == ["east", "north", "south"]
    assert sorted(side["categories"]["colour"]) == ["blue", "red"]
    assert side["factory"]["kwargs"]["categories"] == [3, 0, 2]
    assert side["factory"]["kwargs"]["model"]["kwargs"]["in_features"] == 3 + 1 + 2
    # evaluate re-reads the file with the recorded codes: the same test errors
    code, out2, err = run(capsys, "evaluate", tmp_path / "t" / "model", "--json")
    assert code == 0 and json.loads(out2)["test_errors"] == errors, err
    # another table with a text the training split never had: read as missing, said in one line
    other = tmp_path / "other"
    other.mkdir()
    df.to_csv(other / "train.csv", index=False)
    unseen = df.copy()
    unseen.loc[:9, "place"] = "west"
    unseen.to_csv(other / "test.csv", index=False)
    code, out2, err = run(capsys, "evaluate", tmp_path / "t" / "model", "--data", other, "--target", "kind", "--json")
    assert code == 0 and "column 'place' holds 10 value(s) the training split does not" in err, err
    assert "column(s) name are not among the checkpoint's features: left out" in err  # 40 names only, but not a feature
    # raw values in, through table_inputs, the same logits from the ONNX graph as from PyTorch
    from distill.data.files import table_inputs

    assert side["features"] == ["place", "size", "colour"]
    x = table_inputs(unseen, side["features"], side["categories"])
    assert np.isnan(x[:10, 0]).all() and np.isnan(x[:, 1]).sum() == df["size"].isna().sum()
    model, _ = load_checkpoint(tmp_path / "t" / "model")
    with torch.no_grad():
        want = model(torch.from_numpy(x.copy())).numpy()
    assert np.isfinite(want).all()
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    code, _, err = run(capsys, "export", tmp_path / "t" / "model", "--format", "onnx")
    assert code == 0, err
    sess = ort.InferenceSession(str(tmp_path / "t" / "model.onnx"))
    assert np.allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], want, atol=1e-4)
    from distill.tools.export import export_metadata

    meta = export_metadata(tmp_path / "t" / "model.onnx")["inputs"]
    assert meta["categories"] == side["categories"] and "its code" in meta["preprocessing"]
    # a distilled student takes the same preprocessing; --no-standardize cannot feed text
    code, out, err = run(capsys, "student", "--data", tmp_path / "mixed.csv", "--target", "kind", "--teacher",
                         tmp_path / "t" / "model", "--out", tmp_path / "s", "--no-progress", "--epochs", "3")
    assert code == 0, err
    assert json.loads((tmp_path / "s" / "model.json").read_text())["factory"]["kwargs"]["categories"] == [3, 0, 2]
    # a soft-target store of the same file (its rows hold NaN) teaches a student too
    code, _, err = run(capsys, "targets", "--data", tmp_path / "mixed.csv", "--target", "kind", "--teacher",
                       tmp_path / "t" / "model", "--out", tmp_path / "store")
    assert code == 0, err
    code, out, err = run(capsys, "student", "--data", tmp_path / "mixed.csv", "--target", "kind", "--teacher",
                         tmp_path / "store", "--out", tmp_path / "s2", "--no-progress", "--epochs", "2")
    assert code == 0 and "not cross-validated" in err, err
    # the ONNX file alone (its checkpoint gone) evaluates another table with the codes its metadata records
    rev = tmp_path / "rev"
    rev.mkdir()
    df.iloc[::-1].to_csv(rev / "train.csv", index=False)  # values appear in another order: other codes if re-derived
    df.iloc[::-1].iloc[:60].to_csv(rev / "test.csv", index=False)
    code, out2, err = run(capsys, "evaluate", tmp_path / "t" / "model", "--data", rev, "--target", "kind", "--json")
    assert code == 0, err
    want_errors = json.loads(out2)["test_errors"]
    (tmp_path / "t" / "model.safetensors").rename(tmp_path / "t" / "gone.safetensors")
    code, out2, err = run(capsys, "evaluate", tmp_path / "t" / "model.onnx", "--data", rev, "--target", "kind", "--json")
    assert code == 0 and json.loads(out2)["test_errors"] == want_errors, err
    df.drop(columns="name").to_csv(tmp_path / "named.csv", index=False)  # (its left-out note would be a second line)
    assert "has text columns (place, colour)" in one_line_error(
        capsys, "teacher", "--data", tmp_path / "named.csv", "--target", "kind", "--no-standardize", "--out",
        tmp_path / "x")
    df.drop(columns=["name", "place", "colour"]).to_csv(tmp_path / "gaps.csv", index=False)
    assert "has missing values" in one_line_error(
        capsys, "teacher", "--data", tmp_path / "gaps.csv", "--target", "kind", "--no-standardize", "--out",
        tmp_path / "y")


def test_a_target_of_many_numbers_is_warned_about_as_a_regression_target(capsys, tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 2))
    pd.DataFrame(dict(a=x[:, 0], b=x[:, 1], price=np.round(50 + 10 * x[:, 0]).astype(int))).to_csv(
        tmp_path / "r.csv", index=False)
    flags = ["--epochs", "1", "--hidden", "4", "--weight-decay", "0", "--no-progress"]
    code, _, err = run(capsys, "teacher", "--data", tmp_path / "r.csv", "--target", "price", "--out", tmp_path / "t",
                       *flags)
    assert code == 0 and "[warning] the target column 'price' holds" in err and "regression" in err, err
    _raw_table(tmp_path / "c.csv", n=90)  # three named classes: no warning
    code, _, err = run(capsys, "teacher", "--data", tmp_path / "c.csv", "--target", "kind", "--out", tmp_path / "u",
                       *flags)
    assert code == 0 and "regression" not in err, err


def test_a_run_that_keeps_the_default_trains_the_weights_a_pinned_run_does(capsys, tmp_path, monkeypatch):
    import dataclasses

    import distill.cli.train as cli_train
    from distill.checkpoints import load_tensors

    _raw_table(tmp_path / "raw.csv", n=150)
    # a second candidate that cannot win (weight decay 5 flattens every output), so the default stays
    monkeypatch.setattr(cli_train, "DATA_RECIPE", dataclasses.replace(DATA_RECIPE, table_weight_decays=(0.0, 5.0)))
    flags = ["--data", tmp_path / "raw.csv", "--target", "kind", "--epochs", "2", "--hidden", "16", "--no-progress"]
    code, _, err = run(capsys, "teacher", *flags, "--out", tmp_path / "cv")
    assert code == 0 and "MLP 16, weight decay 0, by 5-fold cross-validation" in err, err
    code, _, err = run(capsys, "teacher", *flags, "--weight-decay", "0", "--out", tmp_path / "pinned")
    assert code == 0 and "cross-validat" not in err, err
    a, b = load_tensors(tmp_path / "cv" / "model")[0], load_tensors(tmp_path / "pinned" / "model")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the choice left the RNG as it was

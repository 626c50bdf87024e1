"""Ship the student (issue 15): TorchScript and ONNX exports match PyTorch, `distill export` and
`distill compare`, and the whole path from an .npz to an exported, compared student."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

import distill
from distill.errors import DistillError
from distill.export import export_metadata, export_model, onnx_session
from distill.models import CNN, MLP

from test_files_cli import images, one_line_error, run, write_npz

onnx_missing = None
try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401
except ImportError as e:
    onnx_missing = f"the export extra is not installed ({e}); pip install -e '.[test]' installs it"
needs_onnx = pytest.mark.skipif(onnx_missing is not None, reason=onnx_missing or "")
# torch 2.13 deprecates torch.jit (the export module silences this for its own calls)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def models():
    torch.manual_seed(0)
    return {"mlp": (MLP(64, [32, 16], 5, dropout_input=0.2, dropout_hidden=0.5, max_norm=3.0), (64,)),
            "cnn": (CNN((8, 8), channels=4, hidden=[16], num_classes=5, dropout_hidden=0.5), (8, 8)),
            "cnn-rgb": (CNN((8, 8), channels=4, hidden=[16], num_classes=5, in_channels=3), (3, 8, 8))}


def test_the_package_models_script_with_the_same_numbers_and_names():
    for name, (model, shape) in models().items():
        model.eval()
        names = list(model.state_dict())
        scripted = torch.jit.script(model)  # used to fail on MLP.hidden_layers' comprehension
        x = torch.rand(7, *shape)
        assert torch.equal(scripted(x), model(x)), name
        assert list(scripted.state_dict()) == names, name
    mlp = models()["mlp"][0]
    assert [k for k in mlp.state_dict()] == ["net.1.weight", "net.1.bias", "net.4.weight", "net.4.bias",
                                             "net.7.weight", "net.7.bias"]
    assert len(mlp.hidden_layers) == 2 and mlp.output_layer.out_features == 5  # still there in Python
    assert "in_channels" not in models()["cnn"][0].distill_factory[1]  # grey CNNs keep their factory (run keys)


@pytest.mark.parametrize("name", ["mlp", "cnn-rgb"])
def test_torchscript_export_matches(tmp_path, name):
    model, shape = models()[name]
    res = export_model(model, shape, tmp_path / "m.pt", "torchscript", metadata={"weights_sha256": "abc"})
    assert res.method == "torch.jit.script" and res.n_checked == 1000 and res.max_abs_diff <= 1e-4
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.rand(3, *shape)
    assert torch.allclose(loaded(x), model.eval()(x), atol=1e-6)
    assert export_metadata(tmp_path / "m.pt") == {"weights_sha256": "abc", "input_shape": list(shape)}


class Unscriptable(nn.Module):
    """TorchScript cannot compile ``**kwargs``: exported by tracing instead."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x, **kwargs):
        return self.lin(x)


def test_torchscript_falls_back_to_tracing(tmp_path):
    notes = []
    res = export_model(Unscriptable(), (6,), tmp_path / "u.pt", "torchscript", log=notes.append)
    assert res.method == "torch.jit.trace" and res.max_abs_diff <= 1e-4
    assert "tracing it instead" in notes[0]


@needs_onnx
@pytest.mark.parametrize("name", ["mlp", "cnn-rgb"])
def test_onnx_export_matches_with_a_dynamic_batch(tmp_path, name):
    model, shape = models()[name]
    res = export_model(model, shape, tmp_path / "m.onnx", "onnx", metadata={"classes": ["a"]})
    assert res.method == "torch.onnx.export" and res.max_abs_diff <= 1e-4 and res.n_checked == 1000
    assert not list(tmp_path.glob("*.data")) and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # one file
    sess = onnx_session(tmp_path / "m.onnx")
    assert sess.get_inputs()[0].shape[0] == "batch"
    for b in (1, 7, 300):
        x = torch.rand(b, *shape)
        got = sess.run(None, {"input": x.numpy()})[0]
        assert got.shape == (b, 5)
        assert np.abs(got - model.eval()(x).detach().numpy()).max() <= 1e-4
    assert export_metadata(tmp_path / "m.onnx") == {"classes": ["a"], "input_shape": list(shape)}


@needs_onnx
def test_a_failed_check_writes_nothing(tmp_path, monkeypatch):
    import distill.export as E

    class Off:
        def __init__(self, sess):
            self.sess = sess

        def get_inputs(self):
            return self.sess.get_inputs()

        def run(self, names, feeds):
            return [o + 1e-3 for o in self.sess.run(names, feeds)]

    real = E.onnx_session
    monkeypatch.setattr(E, "onnx_session", lambda path, threads=1: Off(real(path, threads)))
    model, shape = models()["mlp"]
    (tmp_path / "m.onnx").write_bytes(b"old")
    with pytest.raises(DistillError, match=r"differs from PyTorch by up to 0.001.* was not written"):
        export_model(model, shape, tmp_path / "m.onnx", "onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_missing_export_extra_is_a_one_line_hint(tmp_path, capsys, monkeypatch):
    p = write_npz(tmp_path / "d.npz")
    assert run(capsys, "teacher", "--data", p, "--hidden", "8", "--epochs", "1", "--no-progress", "--out",
               tmp_path / "t")[0] == 0
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    err = one_line_error(capsys, "export", tmp_path / "t" / "model", "--format", "onnx")
    assert "needs onnxruntime: pip install 'distill[export]'" in err
    assert not (tmp_path / "t" / "model.onnx").exists()
    # TorchScript needs nothing beyond torch
    code, out, err = run(capsys, "export", tmp_path / "t" / "model", "--format", "torchscript")
    assert code == 0 and out.startswith(f"torchscript: wrote {tmp_path / 't' / 'model.pt'}"), err
    # compare measures PyTorch alone and says why
    code, out, err = run(capsys, "compare", tmp_path / "t" / "model", tmp_path / "t" / "model", "--repeats", "3",
                         "--warmup", "1", "--out", tmp_path / "cmp")
    assert code == 0, err
    assert "ONNX Runtime not measured (not installed; pip install 'distill[export]')" in out
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["models"][1]["latency_ms"]["onnxruntime"] is None


def test_export_errors(tmp_path, capsys):
    model = nn.Linear(3, 2)
    distill.save_checkpoint(tmp_path / "bare", model, factory=("torch.nn:Linear", dict(in_features=3, out_features=2)))
    # (saved without fit: no input shape recorded)
    err = one_line_error(capsys, "export", tmp_path / "bare", "--format", "torchscript")
    assert "records no input shape" in err and "--input-shape" in err
    with pytest.raises(DistillError, match="checkpoint file .* not found"):
        from distill.export import export_checkpoint

        export_checkpoint(tmp_path / "nothing", format="torchscript")


@needs_onnx
def test_end_to_end_npz_to_exported_and_compared_student(tmp_path, capsys):
    """teacher --data X.npz -> student --teacher ... --data X.npz -> export --format onnx -> compare,
    on generated 8x8 images of 4 classes (not MNIST)."""
    p = write_npz(tmp_path / "shapes.npz", n_train=200, n_val=40, n_test=80)
    common = ["--data", p, "--epochs", "4", "--batch-size", "32", "--no-progress"]
    code, out, err = run(capsys, "teacher", *common, "--hidden", "64", "64", "--out", tmp_path / "t")
    assert code == 0 and out.startswith("teacher: ") and "test errors / 80" in out, err
    code, out, err = run(capsys, "student", *common, "--teacher", tmp_path / "t" / "model", "--hidden", "16",
                         "--temperature", "4", "--lr", "0.1", "--select", "best", "--out", tmp_path / "s")
    assert code == 0 and out.startswith("student-distilled: "), err
    side = json.loads((tmp_path / "s" / "model.json").read_text())
    assert side["teacher_checkpoint"] == [str(tmp_path / "t" / "model")] and side["val"]["n"] == 40
    code, out, err = run(capsys, "export", tmp_path / "s" / "model", "--format", "onnx")
    assert code == 0, err
    assert out.startswith(f"onnx: wrote {tmp_path / 's' / 'model.onnx'}") and "over 1,000 inputs (limit 0.0001)" in out
    diff = float(out.split("max |ONNX Runtime - PyTorch| = ")[1].split()[0])
    assert diff <= 1e-4
    meta = export_metadata(tmp_path / "s" / "model.onnx")
    assert meta["weights_sha256"] == side["weights_sha256"] and meta["classes"] == ["0", "1", "2", "3"]
    # compare reads the recorded data, reuses the student's export and makes one for the teacher
    code, out, err = run(capsys, "compare", tmp_path / "t" / "model", tmp_path / "s" / "model", "--repeats", "5",
                         "--warmup", "1", "--out", tmp_path / "cmp")
    assert code == 0, err
    assert "exported " in err and str(tmp_path / "t" / "model") in err  # the teacher had no export yet
    assert "| teacher | " in out and "| student-distilled | " in out and "1 thread (" in out
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    t, s = result["models"]
    assert result["threads"] == 1 and result["n"] == 80 and result["data"] == str(p.resolve())
    assert t["params"] == 64 * 64 + 64 + 64 * 64 + 64 + 64 * 4 + 4 and s["params"] == 64 * 16 + 16 + 16 * 4 + 4
    assert t["agreement"] is None and 0 <= s["agreement"] <= 1
    assert s["onnx"] == str(tmp_path / "s" / "model.onnx") and t["onnx"] == "made for this comparison"
    assert t["test_errors"] == json.loads((tmp_path / "t" / "model.json").read_text())["test"]["errors"]
    assert s["test_errors"] == side["test"]["errors"]
    for row in (t, s):
        for runtime in ("pytorch", "onnxruntime"):
            for b in ("1", "256"):
                cell = row["latency_ms"][runtime][b]
                assert 0 < cell["p50"] <= cell["p95"] and cell["runs"] == 5
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "cmp" / "compare.md").read_text() in out
    # teacher and student must agree with each other on the classes
    x, _ = images(8)
    np.savez(tmp_path / "six.npz", x_train=x, y_train=np.arange(8) % 6, x_test=x, y_test=np.arange(8) % 6)
    assert "predicts 4 classes" in one_line_error(capsys, "compare", tmp_path / "t" / "model", tmp_path / "s" / "model",
                                                  "--data", tmp_path / "six.npz", "--out", tmp_path / "cmp2")


@pytest.mark.parametrize("cmd", ["export", "compare"])
def test_help(cmd, capsys):
    from distill.cli import main

    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out

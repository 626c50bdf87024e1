"""Ship the student: TorchScript and ONNX exports match PyTorch, `distill export` and
`distill compare`, and the whole path from an .npz to an exported, compared student."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import distill
from distill.errors import DistillError
from distill.tools.export import export_metadata, export_model, onnx_session
from distill.models.classifiers import CNN, MLP

from conftest import images, one_line_error, run, write_npz

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
    import distill.tools.export as E

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
    err = one_line_error(capsys, "export", tmp_path / "bare", "--format", "torchscript", "--trust-factory")
    assert "records no input shape" in err and "--input-shape" in err
    with pytest.raises(DistillError, match="checkpoint file .* not found"):
        from distill.tools.export import export_checkpoint

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
    # checked on the recorded training data: all 200 examples (fewer than --check-inputs' 1,000)
    assert out.startswith(f"onnx: wrote {tmp_path / 's' / 'model.onnx'}")
    assert f"over 200 inputs (limit 0.0001), all 200 of {p.resolve()}'s training examples" in out
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


# ---------------------------------------------------------------- never over an input

def _checkpoint(tmp_path, model=None, factory=None, **meta):
    """A checkpoint in tmp_path/c (an MLP on 8x8 inputs unless ``model``), trained on tmp_path/d.npz."""
    data = write_npz(tmp_path / "d.npz")
    model = model if model is not None else MLP(64, [8], 4)
    meta = dict(dict(input_shape=[8, 8], data_source=dict(path=str(data), target=None)), **meta)
    distill.save_checkpoint(tmp_path / "c" / "model", model, meta, factory=factory)
    return tmp_path / "c" / "model", data


def test_export_never_writes_over_its_inputs(tmp_path, capsys):
    from distill.checkpoints import load_checkpoint

    stem, data = _checkpoint(tmp_path)
    c = tmp_path / "c"
    (c / "sub").mkdir()
    (tmp_path / "link.onnx").symlink_to(c / "model.safetensors")
    (tmp_path / "data-link.pt").symlink_to(data)
    os.link(c / "model.json", tmp_path / "hard.pt")
    files = {p: p.read_bytes() for p in (c / "model.safetensors", c / "model.json", data)}
    outs = [(c / "model.safetensors", "the checkpoint's weights"), (c / "model.json", "the checkpoint's sidecar"),
            (f"{c}/./model.safetensors", "the checkpoint's weights"), (c / "sub" / ".." / "model.json", "sidecar"),
            (tmp_path / "link.onnx", "the checkpoint's weights"), (tmp_path / "hard.pt", "sidecar"),
            (data, "training data"), (tmp_path / "data-link.pt", "training data")]
    for out, what in outs:
        for fmt in ("torchscript", "onnx") if onnx_missing is None else ("torchscript",):
            err = one_line_error(capsys, "export", stem, "--format", fmt, "--out", out)
            assert f"--out {Path(out)} is " in err and what in err and "give another file with --out" in err, err
    # the default output, a symlink to the sidecar, is refused as well
    (c / "model.pt").symlink_to(c / "model.json")
    assert "the checkpoint's sidecar" in one_line_error(capsys, "export", stem, "--format", "torchscript")
    assert all(p.read_bytes() == b for p, b in files.items())
    load_checkpoint(stem)  # still reads
    assert sorted(p.name for p in c.iterdir()) == ["model.json", "model.pt", "model.safetensors", "sub"]
    with pytest.raises(DistillError, match="is the checkpoint's weights"):
        from distill.tools.export import export_checkpoint

        export_checkpoint(c / "model.json", c / "model.safetensors", format="torchscript")
    # a file of another name beside them is fine
    code, out, err = run(capsys, "export", stem, "--format", "torchscript", "--out", c / "sub" / "m.pt")
    assert code == 0 and (c / "sub" / "m.pt").is_file(), err


# ---------------------------------------------------------------- one line, not a traceback

class FixedBatch(nn.Module):
    """Turns the batch size into a number: torch.export fixes it to the example's, 2."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        return self.lin(x.reshape(int(x.shape[0]), -1))


class DataBranch(nn.Module):
    """A Python branch on the data: torch.export refuses it (with colour codes in its message) and
    torch.jit.trace would record one side of it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 4)

    def forward(self, x, **kwargs):  # **kwargs: torch.jit.script cannot compile it, so it is traced
        x = x.flatten(1)
        if x.mean() < 0:
            return self.lin(-x) + 10
        return self.lin(x)


class Raw255(nn.Module):
    """Scales raw 0..255 pixels to [0, 1] itself: the branch goes one way on its training data."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 4)

    def forward(self, x, **kwargs):
        if x.mean() > 5:
            x = x / 255
        return self.lin(x.flatten(1))


def test_a_wrong_input_shape_is_one_line(tmp_path, capsys):
    distill.save_checkpoint(tmp_path / "m", MLP(64, [8], 4))  # records no input shape
    err = one_line_error(capsys, "export", tmp_path / "m", "--format", "torchscript", "--input-shape", "5")
    assert "MLP cannot run on inputs of shape (5,)" in err and "--input-shape" in err and "unexpected" not in err
    with pytest.raises(DistillError, match=r"cannot run on inputs of shape \(3, 3\)"):
        export_model(MLP(64, [8], 4), (3, 3), tmp_path / "m.pt", "torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


@needs_onnx
def test_onnx_runtime_refusing_a_fixed_batch_is_one_line(tmp_path):
    with pytest.raises(DistillError) as e:
        export_model(FixedBatch(), (6,), tmp_path / "f.onnx", "onnx")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("ONNX Runtime cannot run the export of FixedBatch on a batch of 1000")
    assert "fixed the batch size" in msg and "x.flatten(1)" in msg and "f.onnx was not written" in msg
    assert list(tmp_path.iterdir()) == []  # the scratch folder went with the error


@needs_onnx
def test_onnx_errors_carry_no_terminal_escapes(tmp_path, capsys):
    stem, _ = _checkpoint(tmp_path, DataBranch(), factory=("test_export:DataBranch", {}))
    err = one_line_error(capsys, "export", stem, "--format", "onnx", "--trust-factory")
    assert "torch.onnx.export failed for DataBranch" in err and "\x1b" not in err and "[0m" not in err
    assert "This is step 1/3 of exporting" in err  # the exporter's text, minus its colours


def test_plain_text_strips_escape_sequences():
    from distill.tools.export import _first_line, plain_text

    assert plain_text("\x1b[96mstep 1/3\x1b[0m \x1b[1;31mred\x1b[m \x1b]0;title\x07ok\x1b(B \x9b2Kx") == \
        "step 1/3 red ok x"
    assert _first_line(RuntimeError("\x1b[31m\n  \x1b[0mfirst\tline\x00 \nsecond")) == "first line"


# ---------------------------------------------------------------- tracing checked on the data's range

def test_a_traced_branch_on_the_sign_is_refused(tmp_path):
    """Traced on [0, 1) inputs and checked on them, DataBranch used to export with its negative
    branch silently gone; the check's inputs now have both signs."""
    notes = []
    with pytest.raises(DistillError, match=r"differs from PyTorch .* was not written; it was traced \(torch.jit.script "
                                           r"cannot compile it\).* make forward scriptable") as e:
        export_model(DataBranch(), (8, 8), tmp_path / "b.pt", "torchscript", log=notes.append)
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []
    assert "tracing it instead" in notes[0]


def test_tracing_is_checked_on_the_recorded_training_data(tmp_path, capsys):
    """Raw255 on raw pixels: traced on uniform [0, 1) inputs it used to skip its scaling; traced and
    checked on the training data the checkpoint records it exports right, and says it was traced."""
    from distill.data.files import load_files

    x, _ = images(120)
    np.savez(tmp_path / "raw.npz", x_train=x * 255, y_train=np.arange(120) % 4)
    torch.manual_seed(0)
    stem, _ = _checkpoint(tmp_path, Raw255(), factory=("test_export:Raw255", {}),
                          data_source=dict(path=str(tmp_path / "raw.npz"), target=None))
    code, out, err = run(capsys, "export", stem, "--format", "torchscript", "--trust-factory")
    assert code == 0, err
    model, _ = distill.load_checkpoint(stem, trust_factory=True)
    real = load_files(tmp_path / "raw.npz", log=lambda *a: None).train.x
    loaded = torch.jit.load(str(stem.with_suffix(".pt")))
    with torch.no_grad():
        assert torch.allclose(loaded(real), model.eval()(real), atol=1e-5)  # right on the data it will see
    assert "torch.jit.trace" in out and f"all 120 of {tmp_path / 'raw.npz'}'s training examples" in out
    assert "traced, not scripted" in out
    res = distill.tools.export.export_checkpoint(stem, tmp_path / "again.pt", "torchscript", trust_factory=True,
                                           log=lambda *a: None)
    assert res.traced and res.n_checked == 120 and "raw.npz" in res.inputs
    # with no data recorded, random inputs of both signs and several scales
    res = export_model(MLP(64, [8], 4), (8, 8), tmp_path / "m.pt", "torchscript")
    assert not res.traced and res.inputs.startswith("random inputs")
    from distill.tools.export import check_inputs

    r = check_inputs((64,), 400)
    assert r.min() < -3 and r.max() > 3 and (r[0::4] >= 0).all() and (r[2::4] < 0).all()


# ---------------------------------------------------------------- scratch folders

def test_an_interrupted_exports_scratch_is_swept(tmp_path):
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:60]  # as the scratch folders name it
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    gone = proc.pid  # a process that has ended
    killed = tmp_path / f".distill-export.{host}.{gone}.k1ll3d"  # what a killed export leaves
    stale = tmp_path / ".distill-export.otherhost.12.old_01"  # untouched for two days
    live = tmp_path / f".distill-export.{host}.{os.getpid()}.live01"  # a running export's (this process)
    elsewhere = tmp_path / ".distill-export.otherhost.12.new_01"  # maybe running on another machine
    user = [tmp_path / ".m.pt.keep01", tmp_path / ".distill-export-notes", tmp_path / "user"]
    for d in (killed, stale, live, elsewhere, *user):
        d.mkdir()
        (d / "m.pt").write_bytes(b"partial")
    old = time.time() - 2 * 86400
    os.utime(stale, (old, old))
    (tmp_path / f".distill-export.{host}.{gone}.afile1").write_text("a file, not a folder of ours")
    (tmp_path / f".distill-export.{host}.{gone}.link01").symlink_to(tmp_path / "user")
    notes = []
    res = export_model(MLP(64, [8], 4), (64,), tmp_path / "m.pt", "torchscript", log=notes.append)
    assert res.path.is_file()
    assert not killed.exists() and not stale.exists()
    assert live.is_dir() and elsewhere.is_dir() and all((d / "m.pt").read_bytes() == b"partial" for d in user)
    assert (tmp_path / f".distill-export.{host}.{gone}.afile1").is_file()
    assert (tmp_path / f".distill-export.{host}.{gone}.link01").is_symlink()
    assert f"removed 2 scratch folder(s) an interrupted export left in {tmp_path}" in notes[0]


def test_a_failed_or_interrupted_export_removes_its_scratch(tmp_path, monkeypatch):
    import distill.tools.export as E

    made = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(E.tempfile, "mkdtemp", lambda *a, **kw: made.append(Path(real(*a, **kw))) or str(made[-1]))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.jit, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(MLP(64, [8], 4), (64,), tmp_path / "m.pt", "torchscript")
    assert re.fullmatch(r"\.distill-export\.[A-Za-z0-9-]+\.\d+\.\w+", made[0].name)  # named as distill's own
    assert made[0].parent == tmp_path
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cmd", ["export", "compare"])
def test_help(cmd, capsys):
    from distill.cli import main

    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out

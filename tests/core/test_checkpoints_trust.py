"""Loading a checkpoint runs no code its author chose: a sidecar's factory is imported only when it
is one of distill's own model classes or the user trusts it. Every command that loads a
checkpoint refuses a crafted one in one line (exit 2) and nothing it names runs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import distill
from distill import checkpoints as C
from distill.cli import main
from distill.errors import DistillError
from distill.models.classifiers import MLP

FEATURES, CLASSES = 4, 3


def crafted(stem: Path, target: str, kwargs: dict, **extra) -> Path:
    """A checkpoint whose weights fit a 4-3 MLP and whose sidecar names ``target(**kwargs)``."""
    torch.manual_seed(0)
    weights = MLP(FEATURES, [5], CLASSES).state_dict()
    side = dict(factory=dict(target=target, kwargs=kwargs), input_shape=[FEATURES], num_classes=CLASSES,
                params=0, **extra)
    C.save_tensors(stem, weights, side)
    return stem


@pytest.fixture()
def data_npz(tmp_path):
    g = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=g.normal(size=(30, FEATURES)).astype(np.float32), y_train=np.arange(30) % CLASSES,
             x_test=g.normal(size=(9, FEATURES)).astype(np.float32), y_test=np.arange(9) % CLASSES)
    return p


def commands(ck: Path, data: Path, out: Path) -> dict[str, list[str]]:
    """Every command that loads a checkpoint, on ``ck``."""
    d = ["--data", str(data)]
    return {
        "evaluate": ["evaluate", str(ck), *d],
        "export": ["export", str(ck), "--format", "torchscript", "--out", str(out / "x.pt")],
        "compare": ["compare", str(ck), str(ck), *d, "--onnx", "off", "--repeats", "1", "--warmup", "0",
                    "--out", str(out / "cmp")],
        "student": ["student", "--teacher", str(ck), *d, "--epochs", "1", "--out", str(out / "s"), "--no-progress"],
        "targets": ["targets", "--teacher", str(ck), *d, "--out", str(out / "store"), "--no-progress"],
    }


def one_line(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("distill: error: ") and "Traceback" not in err, err
    return err


ATTACKS = {
    # what a stranger's sidecar may name: plain library calls with effects, and the ways through
    # distill's own modules (a dotted attribute path, a distill function that imports or runs)
    "os.system": lambda m: ("os:system", {"command": f"touch {m}"}),
    "subprocess": lambda m: ("subprocess:run", {"args": ["touch", str(m)]}),
    "pathlib": lambda m: ("pathlib:Path.touch", {"self": str(m)}),
    "builtins.exec": lambda m: ("builtins:exec", {"source": f"open({str(m)!r}, 'w').close()"}),
    "through a distill module": lambda m: ("distill.checkpoints:os.system", {"command": f"touch {m}"}),
    "distill import_factory": lambda m: ("distill.checkpoints:import_factory", {"target": "os:system"}),
    "distill cli": lambda m: ("distill.cli:main", {"argv": ["plot", "temperature", "--out", str(m)]}),
    "globals of an own class": lambda m: ("distill.models:MLP.__init__.__globals__", {}),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_load_checkpoint_refuses_factories_outside_distill_and_runs_nothing(tmp_path, name):
    marker = tmp_path / "marker"
    target, kwargs = ATTACKS[name](marker)
    ck = crafted(tmp_path / "ck", target, kwargs)
    with pytest.raises(DistillError, match="nothing was imported|must be 'package.module:callable'") as e:
        C.load_checkpoint(ck)
    assert "\n" not in str(e.value)
    assert not marker.exists()
    # the way that needs no trust: the caller builds the model
    torch.manual_seed(1)
    model, side = C.load_checkpoint(ck, model=MLP(FEATURES, [5], CLASSES))
    assert side["factory"]["target"] == target and not marker.exists()


def test_every_command_that_loads_a_checkpoint_refuses_in_one_line(tmp_path, capsys, data_npz):
    marker = tmp_path / "marker"
    ck = crafted(tmp_path / "ck", "os:system", {"command": f"touch {marker}"})
    for name, argv in commands(ck, data_npz, tmp_path).items():
        err = one_line(capsys, argv)
        assert "os:system" in err and "--trust-factory" in err, (name, err)
        assert not marker.exists(), name
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "s" / "model.safetensors").exists()


def test_a_module_shipped_beside_the_checkpoint_is_not_imported_from_the_current_folder(tmp_path, data_npz):
    # the CLI puts nothing on sys.path: a module in the current folder is neither trusted nor found
    (tmp_path / "evilmod.py").write_text("open('imported', 'w').close()\n"
                                         "from distill.models.classifiers import MLP as make\n")
    ck = crafted(tmp_path / "ck", "evilmod:make", {"in_features": FEATURES, "hidden": [5], "num_classes": CLASSES})
    exe = Path(sys.executable).parent / "distill"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", C.TRUST_ENV)}
    r = subprocess.run([str(exe), "evaluate", "ck", "--data", str(data_npz)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "evilmod:make" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "imported").exists()
    # trusted, the module must still be found the user's way (PYTHONPATH), not through the current folder
    r = subprocess.run([str(exe), "evaluate", "ck", "--data", str(data_npz), "--trust-factory"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot import the model factory" in r.stderr, r.stderr
    assert not (tmp_path / "imported").exists()
    r = subprocess.run([str(exe), "evaluate", "ck", "--data", str(data_npz)], cwd=tmp_path,
                       env=dict(env, PYTHONPATH=str(tmp_path), **{C.TRUST_ENV: "evilmod"}),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "test errors" in r.stdout, r.stderr
    assert (tmp_path / "imported").exists()  # the user trusted it: now it runs


def test_trust_per_call_and_by_module_prefix(tmp_path, monkeypatch):
    ck = crafted(tmp_path / "ck", "torch.nn:Sequential", {})  # a harmless callable outside distill
    with pytest.raises(DistillError, match=r"names code outside distill \(torch.nn:Sequential\)"):
        C.load_checkpoint(ck)
    monkeypatch.setenv(C.TRUST_ENV, "torch.nn.modules, torc")  # neither covers the module torch.nn
    with pytest.raises(DistillError, match="nothing was imported"):
        C.load_checkpoint(ck)
    assert C.factory_is_trusted("torch.nn.modules.linear:Linear")
    assert not C.factory_is_trusted("torchvision:x") and not C.factory_is_trusted("torch:zeros")
    # trusted, it builds, but an empty Sequential does not take the weights: one line
    with pytest.raises(DistillError, match="do not fit this model"):
        C.load_checkpoint(ck, trust_factory=True)


def test_a_trusted_factory_must_return_a_module(tmp_path):
    ck = crafted(tmp_path / "ck", "builtins:dict", {"a": 1})
    with pytest.raises(DistillError, match=r"returned a dict, not a torch.nn.Module"):
        C.load_checkpoint(ck, trust_factory=True)


def test_distills_own_factories_load_without_trust_but_not_with_inflated_arguments(tmp_path):
    torch.manual_seed(0)
    m = MLP(FEATURES, [5], CLASSES)
    distill.save_checkpoint(tmp_path / "own", m)
    back, side = C.load_checkpoint(tmp_path / "own")
    assert side["factory"]["target"] == "distill.models:MLP" and isinstance(back, MLP)
    # a sidecar that asks an own class for a model far larger than its weights is refused before any
    # memory is allocated (built on the meta device first)
    ck = crafted(tmp_path / "big", "distill.models:MLP",
                 {"in_features": FEATURES, "hidden": [1 << 30, 1 << 30], "num_classes": CLASSES})
    with pytest.raises(DistillError, match="does not build a model of the saved weights' shapes"):
        C.load_checkpoint(ck)
    ck = crafted(tmp_path / "kw", "distill.models:MLP", {"no_such_argument": 1})
    with pytest.raises(DistillError, match="the factory distill.models:MLP failed"):
        C.load_checkpoint(ck)


@pytest.mark.parametrize("field,value", [
    ("factory", "os:system"), ("factory", {"target": 3}), ("factory", {"target": "a:b", "kwargs": [1]}),
    ("input_shape", 5), ("input_shape", [-1]), ("num_classes", "3"), ("classes", "abc"),
    ("data_source", {"path": 7}), ("history", {}),
])
def test_malformed_sidecar_fields_are_one_line(tmp_path, capsys, data_npz, field, value):
    torch.manual_seed(0)
    side = dict(factory=dict(target="distill.models:MLP",
                             kwargs=dict(in_features=FEATURES, hidden=[5], num_classes=CLASSES)),
                input_shape=[FEATURES], num_classes=CLASSES)
    side[field] = value
    C.save_tensors(tmp_path / "ck", MLP(FEATURES, [5], CLASSES).state_dict(), side)
    with pytest.raises(DistillError):
        C.load_checkpoint(tmp_path / "ck")
    for argv in commands(tmp_path / "ck", data_npz, tmp_path).values():
        one_line(capsys, argv)

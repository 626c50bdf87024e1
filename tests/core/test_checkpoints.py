"""Checkpoint files: crash-safe writes (the embedded sidecar wins), bounded JSON, clear errors."""
import errno
import json
import os

import pytest
import torch
from safetensors.torch import save as st_save

from distill import atomic as A
from distill import checkpoints as C
from distill.digest import tensors_digest
from distill.errors import DistillError
from distill.models.classifiers import MLP
from distill.train.config import TrainConfig, seed_everything
from distill.train.fit import fit
from conftest import quiet




class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even ``except Exception``)."""


def _kill_when_writing(monkeypatch, name: str, after: int = 0):
    """Make the ``after``-th next atomic JSON write of a file called ``name`` die before it starts:
    the .safetensors of that save_tensors call has been renamed into place, its .json has not."""
    real = C.atomic_write_json
    seen = {"n": 0}

    def write(path, obj):
        if os.path.basename(path) == name:
            if seen["n"] == after:
                raise Killed
            seen["n"] += 1
        return real(path, obj)

    monkeypatch.setattr(C, "atomic_write_json", write)


def test_kill_between_the_two_renames_leaves_the_new_checkpoint(tmp_path, monkeypatch):
    a = {"w": torch.zeros(3), "b": torch.ones(2)}
    b = {"w": torch.arange(3.0), "b": torch.full((2,), 7.0)}
    C.save_tensors(tmp_path / "ck", a, {"epoch": 1})
    _kill_when_writing(monkeypatch, "ck.json")
    with pytest.raises(Killed):
        C.save_tensors(tmp_path / "ck", b, {"epoch": 2})
    monkeypatch.undo()
    assert json.loads((tmp_path / "ck.json").read_text())["epoch"] == 1  # the readable copy is stale
    tensors, side = C.load_tensors(tmp_path / "ck.json")  # whichever name is given
    assert side["epoch"] == 2 and side["weights_sha256"] == tensors_digest(b)
    assert all(torch.equal(tensors[k], b[k]) for k in b)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_run_killed_between_the_renames_resumes_to_the_uninterrupted_result(blobs, tmp_path, monkeypatch):
    data = blobs(200, 10, 3, seed=0)
    cfg = TrainConfig(epochs=3, lr=0.1, batch_size=50, seed=0)

    def model():
        seed_everything(0)
        return MLP(10, [8], 3, dropout_hidden=0.3)  # dropout: the RNG state must be resumed too

    full = fit(model(), data, cfg, run_dir=tmp_path / "full", progress=False, log=quiet)
    _kill_when_writing(monkeypatch, "state.json", after=1)  # during the save after epoch 2
    with pytest.raises(Killed):
        fit(model(), data, cfg, run_dir=tmp_path / "run", progress=False, log=quiet)
    monkeypatch.undo()
    assert json.loads((tmp_path / "run" / "state.json").read_text())["epoch"] == 1
    assert C.load_tensors(tmp_path / "run" / "state")[1]["epoch"] == 2
    resumed = fit(model(), data, cfg, run_dir=tmp_path / "run", progress=False, log=quiet)
    assert resumed.resumed_from == 2
    for p, q in zip(resumed.model.parameters(), full.model.parameters()):
        assert torch.equal(p, q)


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    A.atomic_write_bytes(tmp_path / "f.bin", b"old")

    def full(*_a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C.os, "replace", full)
    with pytest.raises(DistillError, match=f"disk full while writing {tmp_path / 'f.bin'}"):
        A.atomic_write_bytes(tmp_path / "f.bin", b"new")
    monkeypatch.undo()
    assert (tmp_path / "f.bin").read_bytes() == b"old" and not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------- bounded JSON

DEEP = "[" * 100_000 + "]" * 100_000


def test_deeply_nested_json_is_a_distill_error_not_a_recursion_error(tmp_path):
    with pytest.raises(DistillError, match=r"sidecar .*(nested too deeply\)|more than 64 levels); retrain"):
        C.safe_json_loads(DEEP, "sidecar", "retrain")
    with pytest.raises(DistillError, match="more than 64 levels"):
        C.safe_json_loads("[" * 65 + "]" * 65, "sidecar", "retrain")
    assert C.safe_json_loads("[" * 64 + "]" * 64, "sidecar", "retrain") is not None
    (tmp_path / "meta.json").write_text('{"format": "x", "a": ' + DEEP + "}")
    with pytest.raises(DistillError, match="meta.json"):
        C.read_format_json(tmp_path / "meta.json", "x", "rebuild it", "a store")
    # embedded in a checkpoint's header
    (tmp_path / "ck.safetensors").write_bytes(st_save({"w": torch.zeros(2)}, metadata={"distill": DEEP}))
    with pytest.raises(DistillError, match="the sidecar inside .*ck.safetensors"):
        C.load_tensors(tmp_path / "ck")
    with pytest.raises(ValueError, match="bad"):  # the caller may choose the error type
        C.safe_json_loads("{", "bad", "fix", error=ValueError)


def test_oversized_and_wrong_format_json(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "MAX_JSON_BYTES", 100)
    with pytest.raises(DistillError, match="more than a sidecar can be"):
        C.safe_json_loads("[" + "1," * 100 + "1]", "sidecar", "retrain")
    monkeypatch.undo()
    (tmp_path / "m.json").write_text('{"format": "other"}')
    with pytest.raises(DistillError, match="is not a soft-target store"):
        C.read_format_json(tmp_path / "m.json", "x", "rebuild", "a soft-target store")
    (tmp_path / "plain.safetensors").write_bytes(st_save({"w": torch.zeros(2)}))
    with pytest.raises(DistillError, match="no distill sidecar"):
        C.load_tensors(tmp_path / "plain")


def test_checkpoint_identity_is_the_weights(tmp_path):
    seed_everything(0)
    m = MLP(4, [3], 2)
    C.save_checkpoint(tmp_path / "a", m, {"x": 1})
    C.save_checkpoint(tmp_path / "b", m, {"x": 2})  # other metadata, same weights
    assert C.file_sha256(tmp_path / "a") == C.file_sha256(tmp_path / "b") == tensors_digest(m.state_dict())
    with torch.no_grad():
        m.output_layer.bias[0] += 1
    C.save_checkpoint(tmp_path / "c", m)
    assert C.file_sha256(tmp_path / "c") != C.file_sha256(tmp_path / "a")
    assert C.stem_of("run/model.safetensors") == C.stem_of("run/model.json") == C.stem_of("run/model")


def test_checkpoint_files_follow_the_umask_like_other_outputs(tmp_path):
    old = os.umask(0o022)
    try:
        C.save_checkpoint(tmp_path / "ck", MLP(4, [3], 2))
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    want = (tmp_path / "plain").stat().st_mode & 0o777
    assert want == 0o644
    for suffix in (".safetensors", ".json"):
        assert (tmp_path / f"ck{suffix}").stat().st_mode & 0o777 == want

import json

import pytest
import torch

from distill.checkpoints import load_checkpoint, save_checkpoint
from distill.errors import DistillError
from distill.models import MLP
from distill.training import TrainConfig, fit, lr_at, seed_everything


def _model(seed=0, dropout=0.0):
    seed_everything(seed)
    return MLP(784, [32], 10, dropout_input=dropout, dropout_hidden=dropout, max_norm=2.0 if dropout else None)


def _weights(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_learns_and_reports_metrics(small):
    res = fit(_model(), small, TrainConfig(epochs=3, lr=0.1), progress=False)
    assert res.metrics["n"] == 500 and res.metrics["errors"] < 150  # chance would be ~450
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.history[-1]["test_errors"] == res.metrics["errors"]


def test_same_seed_same_result(small):
    cfg = TrainConfig(epochs=2, lr=0.05, jitter=2, seed=3)
    a = fit(_model(1, 0.2), small, cfg, progress=False)
    b = fit(_model(1, 0.2), small, cfg, progress=False)
    assert torch.equal(_weights(a.model), _weights(b.model))
    c = fit(_model(1, 0.2), small, TrainConfig(epochs=2, lr=0.05, jitter=2, seed=4), progress=False)
    assert not torch.equal(_weights(a.model), _weights(c.model))


class Interrupt(Exception):
    pass


def test_resume_after_interrupt_matches_uninterrupted(small, tmp_path):
    cfg = TrainConfig(epochs=3, lr=0.05, jitter=2, seed=0, optimizer="adam", lr_decay=0.5, schedule="exponential")
    full = fit(_model(0, 0.2), small, cfg, run_dir=tmp_path / "a", progress=False)

    m = _model(0, 0.2)
    calls = {"n": 0}

    def bomb(module, inputs):
        if module.training:
            calls["n"] += 1
            if calls["n"] == 8 * 2 + 3:  # in the middle of epoch 3 (8 batches per epoch)
                raise Interrupt

    h = m.register_forward_pre_hook(bomb)
    with pytest.raises(Interrupt):
        fit(m, small, cfg, run_dir=tmp_path / "b", progress=False)
    h.remove()
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["epoch"] == 2
    resumed = fit(_model(5, 0.2), small, cfg, run_dir=tmp_path / "b", progress=False, log=lambda *a: None)
    assert resumed.resumed_from == 2
    assert torch.equal(_weights(full.model), _weights(resumed.model))
    assert resumed.metrics == full.metrics
    assert not (tmp_path / "b" / "state.json").exists()
    # a third call skips: the finished run is loaded, not retrained
    again = fit(_model(9, 0.2), small, cfg, run_dir=tmp_path / "b", progress=False, log=lambda *a: None)
    assert again.skipped and torch.equal(_weights(again.model), _weights(full.model))
    with pytest.raises(DistillError, match="different finished run"):
        fit(_model(), small, TrainConfig(epochs=1), run_dir=tmp_path / "b", progress=False)


def test_distillation_with_cached_targets_and_teacher_module_agree(small):
    teacher = fit(_model(0), small, TrainConfig(epochs=2, lr=0.1), progress=False).model
    from distill.metrics import predict_logits

    targets = predict_logits(teacher, small.x_train)
    cfg = TrainConfig(epochs=1, lr=0.05, temperature=4.0, hard_weight=0.2)
    a = fit(_model(1), small, cfg, teacher_targets=targets, progress=False)
    b = fit(_model(1), small, cfg, teacher=teacher, progress=False)
    assert torch.allclose(_weights(a.model), _weights(b.model), atol=1e-6)
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_teacher_runs_in_eval_mode_under_no_grad_with_jitter(small):
    teacher = _model(0, dropout=0.5)
    seen = []
    teacher.register_forward_hook(lambda mod, i, o: seen.append((mod.training, torch.is_grad_enabled())))
    fit(_model(1), small, TrainConfig(epochs=1, jitter=1, temperature=2.0), teacher=teacher, progress=False)
    assert seen and all(s == (False, False) for s in seen)


def test_cached_targets_refused_with_jitter(small):
    with pytest.raises(ValueError, match="jitter"):
        fit(_model(), small, TrainConfig(epochs=1, jitter=2), teacher_targets=torch.zeros(1000, 10), progress=False)
    with pytest.raises(ValueError, match="rows"):
        fit(_model(), small, TrainConfig(epochs=1), teacher_targets=torch.zeros(10, 10), progress=False)
    with pytest.raises(ValueError, match="needs a teacher"):
        fit(_model(), small, TrainConfig(epochs=1, loss="distill"), progress=False)


def test_config_validation_and_schedules():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="temperature"):
        TrainConfig(temperature=0)
    c = TrainConfig(epochs=10, lr=1.0, schedule="cosine")
    assert lr_at(c, 0) == 1.0 and lr_at(c, 5) == pytest.approx(0.5)
    e = TrainConfig(lr=1.0, schedule="exponential", lr_decay=0.5)
    assert lr_at(e, 3) == pytest.approx(0.125)


def test_checkpoint_round_trip_and_corruption(tmp_path):
    m = _model(0, 0.2)
    save_checkpoint(tmp_path / "ck", m, {"seed": 0, "metrics": {"errors": 1}})
    m2, side = load_checkpoint(tmp_path / "ck.safetensors")
    assert torch.equal(_weights(m), _weights(m2)) and side["seed"] == 0 and "torch" in side["versions"]
    assert side["arch"]["dropout_input"] == 0.2
    blob = (tmp_path / "ck.safetensors").read_bytes()
    (tmp_path / "ck.safetensors").write_bytes(blob[:-10])
    with pytest.raises(DistillError, match="does not match its sidecar"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(DistillError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.safetensors").write_bytes(b"")
    with pytest.raises(DistillError, match="not valid JSON"):
        load_checkpoint(tmp_path / "bad")


def test_device_resolution_and_errors(monkeypatch):
    from distill.training import resolve_device

    monkeypatch.delenv("DISTILL_DEVICE", raising=False)
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setenv("DISTILL_DEVICE", "cpu")
    assert resolve_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        monkeypatch.setenv("DISTILL_DEVICE", "cuda")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            fit(_model(), None, TrainConfig(epochs=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_on_gpu_matches_cpu_and_returns_home(small):
    """Without dropout the only difference is float arithmetic: same order, same steps."""
    cfg = TrainConfig(epochs=2, lr=0.05, jitter=2, seed=1)
    cpu = fit(_model(2), small, cfg, progress=False)
    gpu = fit(_model(2), small, cfg, progress=False, device="cuda")
    assert next(gpu.model.parameters()).device.type == "cpu"
    assert torch.allclose(_weights(cpu.model), _weights(gpu.model), atol=1e-3)
    assert abs(cpu.metrics["errors"] - gpu.metrics["errors"]) <= 3

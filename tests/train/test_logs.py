"""The run's logs: metrics.csv rows (per step and epoch, crash-safe, resumed without duplicates),
the loss terms, TensorBoard events, the callbacks protocol."""
import math

import pytest
import torch

from distill import Teacher, TrainConfig, fit
from distill.losses.objectives import Distillation, TokenDistillation
from distill.models.classifiers import MLP
from distill.train.logs import FIRST_COLUMNS, MetricsLog, read_metrics

QUIET = dict(progress=False, log=lambda *a: None)


def _data(n=400):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 32, generator=g)
    return x, x[:, :5].argmax(1)


def test_metrics_csv_has_a_row_per_log_step_and_per_epoch(tmp_path):
    x, y = _data()
    torch.manual_seed(0)
    r = fit(MLP(32, [24], 5), (x, y), TrainConfig(epochs=3, batch_size=64, log_every=3), val=(x[:100], y[:100]),
            run_dir=tmp_path / "t", **QUIET)
    rows = read_metrics(tmp_path / "t" / "metrics.csv")
    # 400 examples in batches of 64: 7 steps an epoch, 21 in all; a step row at steps 3, 6, 9, ...
    assert [(r_["kind"], r_["step"]) for r_ in rows if r_["kind"] == "step"] == [("step", s) for s in range(3, 22, 3)]
    epochs = [r_ for r_ in rows if r_["kind"] == "epoch"]
    assert [(e["epoch"], e["step"]) for e in epochs] == [(1, 7), (2, 14), (3, 21)]
    header = (tmp_path / "t" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert tuple(header[:len(FIRST_COLUMNS)]) == FIRST_COLUMNS
    # the epoch rows are the history: same loss, same validation errors
    for e, h in zip(epochs, r.history):
        assert e["loss"] == h["train_loss"] and e["val_errors"] == h["val_errors"] and e["lr"] == h["lr"]
        assert e["examples_per_s"] > 0
    # a step row's loss is the mean over the steps since the previous row: the epoch's mean lies among them
    first = [r_["loss"] for r_ in rows if r_["kind"] == "step" and r_["epoch"] == 1]
    assert min(first) - 1e-6 <= epochs[0]["loss"] <= max(first) + 1e-6 or len(first) < 2


def test_log_every_zero_writes_epoch_rows_only_and_no_run_folder_no_file(tmp_path):
    x, y = _data()
    fit(MLP(32, [8], 5), (x, y), TrainConfig(epochs=2, batch_size=64, log_every=0), run_dir=tmp_path / "a", **QUIET)
    assert [r["kind"] for r in read_metrics(tmp_path / "a" / "metrics.csv")] == ["epoch", "epoch"]
    r = fit(MLP(32, [8], 5), (x, y), TrainConfig(epochs=1, batch_size=64), **QUIET)
    assert r.run_dir is None


def test_distillation_terms_add_up_to_the_loss_and_reach_the_log(tmp_path):
    g = torch.Generator().manual_seed(1)
    z, v = torch.randn(16, 5, generator=g), torch.randn(16, 5, generator=g)
    y = torch.randint(0, 5, (16,), generator=g)
    obj = Distillation(temperature=3.0, hard_weight=0.3, soft_weight=0.7)
    terms = obj.terms(z, v, y)
    assert set(terms) == {"soft", "hard"}
    assert torch.allclose(sum(terms.values()), obj(z, v, y))
    # the hard term by hand: 0.3 * CE(y, softmax(z))
    assert torch.allclose(terms["hard"], 0.3 * torch.nn.functional.cross_entropy(z, y))
    assert set(Distillation(temperature=2.0, hard_weight=0.0).terms(z, v, None)) == {"soft"}
    x, yy = _data()
    t = fit(MLP(32, [24], 5), (x, yy), TrainConfig(epochs=1, batch_size=64), **QUIET).model
    fit(MLP(32, [8], 5), (x, yy), TrainConfig(epochs=1, batch_size=64, log_every=2, temperature=4.0, hard_weight=0.5),
        teacher=Teacher(t), run_dir=tmp_path / "s", **QUIET)
    rows = read_metrics(tmp_path / "s" / "metrics.csv")
    assert all("soft" in r and "hard" in r for r in rows)
    epoch = rows[-1]
    steps = [r for r in rows if r["kind"] == "step"]
    assert math.isclose(epoch["soft"], sum(r["soft"] for r in steps) / len(steps), rel_tol=1e-9)


def test_token_distillation_terms_add_up_to_the_loss():
    g = torch.Generator().manual_seed(2)
    z, v = torch.randn(2, 6, 11, generator=g), torch.randn(2, 6, 11, generator=g)
    labels = torch.randint(0, 11, (2, 6), generator=g)
    labels[0, -2:] = -100
    obj = TokenDistillation(temperature=2.0, hard_weight=0.5)
    terms = obj.terms(z, v, labels)
    assert set(terms) == {"soft", "hard"}
    assert torch.allclose(terms["soft"] + terms["hard"], obj(z, v, labels))


def test_resumed_log_drops_rows_after_the_saved_state_and_a_half_written_line(tmp_path):
    log = MetricsLog(tmp_path)
    for e in (1, 2):
        log.write(dict(kind="step", epoch=e, step=2 * e - 1, lr=0.1, loss=1.0))
        log.write(dict(kind="epoch", epoch=e, step=2 * e, lr=0.1, loss=0.9, val_errors=3))
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("step,3,5,0.1,0.")  # a kill in the middle of a row
    again = MetricsLog(tmp_path, kept_epochs=1)  # the state saved covers epoch 1 only
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [(r["kind"], r["epoch"]) for r in rows] == [("step", 1), ("epoch", 1)]
    assert rows[1]["val_errors"] == 3
    again.write(dict(kind="step", epoch=2, step=3, lr=0.1, loss=0.5, soft=0.4))  # a new column: the file rewritten
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["soft"] == 0.4 and "soft" not in rows[0]
    assert MetricsLog(tmp_path).path.read_text().splitlines() == [",".join(FIRST_COLUMNS)]  # a fresh run: header only


def test_killed_and_resumed_run_leaves_one_row_per_step_and_epoch(tmp_path, monkeypatch):
    from distill.train.rundir import RunDir

    x, y = _data()
    cfg = TrainConfig(epochs=3, batch_size=64, log_every=2)
    torch.manual_seed(0)
    fit(MLP(32, [8], 5), (x, y), cfg, run_dir=tmp_path / "ref", **QUIET)

    class Boom(Exception):
        pass

    save = RunDir.save_state

    def dies_saving_epoch_2(self, tensors, sidecar):
        if sidecar["epoch"] == 2:  # as a kill after epoch 2's rows and before its state
            raise Boom
        save(self, tensors, sidecar)

    monkeypatch.setattr(RunDir, "save_state", dies_saving_epoch_2)
    torch.manual_seed(0)
    with pytest.raises(Boom):
        fit(MLP(32, [8], 5), (x, y), cfg, run_dir=tmp_path / "run", **QUIET)
    assert read_metrics(tmp_path / "run" / "metrics.csv")[-1] == {**read_metrics(tmp_path / "run" / "metrics.csv")[-1],
                                                                  "kind": "epoch", "epoch": 2}
    monkeypatch.setattr(RunDir, "save_state", save)
    torch.manual_seed(0)
    fit(MLP(32, [8], 5), (x, y), cfg, run_dir=tmp_path / "run", **QUIET)
    key = lambda rows: [(r["kind"], r["epoch"], r["step"]) for r in rows]  # noqa: E731
    ref, got = read_metrics(tmp_path / "ref" / "metrics.csv"), read_metrics(tmp_path / "run" / "metrics.csv")
    assert key(got) == key(ref)
    assert [r["loss"] for r in got] == [r["loss"] for r in ref]


def test_callbacks_see_every_epoch_record_and_bad_ones_are_refused():
    x, y = _data()
    seen = []

    class Rec:
        def on_epoch_end(self, record):
            seen.append(record)

    r = fit(MLP(32, [8], 5), (x, y), TrainConfig(epochs=2, batch_size=64), callbacks=[Rec()], **QUIET)
    assert [s["epoch"] for s in seen] == [1, 2] and seen[-1]["train_loss"] == r.history[-1]["train_loss"]
    with pytest.raises(ValueError, match="on_epoch_end"):
        fit(MLP(32, [8], 5), (x, y), TrainConfig(epochs=1), callbacks=[print], **QUIET)
    with pytest.raises(ValueError, match="run_dir"):
        fit(MLP(32, [8], 5), (x, y), TrainConfig(epochs=1, tensorboard=True), **QUIET)


def test_logging_settings_do_not_change_the_run_key(tmp_path):
    x, y = _data()
    torch.manual_seed(0)
    fit(MLP(32, [8], 5), (x, y), TrainConfig(epochs=1, batch_size=64), run_dir=tmp_path / "k", **QUIET)
    torch.manual_seed(0)
    again = fit(MLP(32, [8], 5), (x, y), TrainConfig(epochs=1, batch_size=64, log_every=7), run_dir=tmp_path / "k",
                **QUIET)
    assert again.skipped


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = _data()
    fit(MLP(32, [8], 5), (x, y), TrainConfig(epochs=2, batch_size=64, log_every=3, tensorboard=True),
        val=(x[:50], y[:50]), run_dir=tmp_path / "tb", **QUIET)
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "step/loss" in tags and "epoch/val_errors" in tags
    assert [e.step for e in acc.Scalars("epoch/loss")] == [7, 14]
    csv_rows = [r for r in read_metrics(tmp_path / "tb" / "metrics.csv") if r["kind"] == "epoch"]
    assert [pytest.approx(e.value) for e in acc.Scalars("epoch/loss")] == [r["loss"] for r in csv_rows]


def test_every_epoch_record_has_the_students_fidelity_to_its_teacher(tmp_path):
    from distill.metrics import fidelity, predict_logits

    x, y = _data()
    torch.manual_seed(0)
    t = fit(MLP(32, [24], 5), (x, y), TrainConfig(epochs=2, batch_size=64), **QUIET).model
    val = (x[:100], y[:100])
    r = fit(MLP(32, [8], 5), (x, y), TrainConfig(epochs=2, batch_size=64, temperature=2.0), teacher=Teacher(t),
            val=val, test=val, run_dir=tmp_path / "f", **QUIET)
    last = r.history[-1]
    want = fidelity(predict_logits(r.model, val[0]), predict_logits(t, val[0]), val[1])
    for k in ("agreement", "top5_agreement", "kl", "ece", "teacher_ece"):
        assert last[f"val_{k}"] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k
    rows = read_metrics(tmp_path / "f" / "metrics.csv")
    assert rows[-1]["val_agreement"] == pytest.approx(want["agreement"]) and "test_kl" in rows[-1]
    # without a teacher there is nothing to agree with
    h = fit(MLP(32, [8], 5), (x, y), TrainConfig(epochs=1, batch_size=64), val=val, **QUIET)
    assert "val_agreement" not in h.history[-1]

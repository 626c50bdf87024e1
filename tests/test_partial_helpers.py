import os
import time

import torch

from distill.experiments import partial, regularizer
from distill.training import TrainConfig


def test_epochs_for_small_transfer_sets():
    cfg = TrainConfig(epochs=40, batch_size=128)
    assert partial.epochs_for(cfg, 54000, 12000) == 40          # 422 steps/epoch * 40 > 12000
    assert partial.epochs_for(cfg, 12000, 12000) == 128         # ceil(12000 / 94)
    assert partial.epochs_for(cfg, 1800, 0) == 40


def test_errors_on_named_classes():
    labels = torch.tensor([3, 3, 1, 7, 8])
    logits = torch.zeros(5, 10)
    logits[torch.arange(5), torch.tensor([3, 5, 1, 8, 8])] = 1.0  # wrong: second 3 (->5) and the 7 (->8)
    assert partial.errors_on(logits, labels, [3]) == 1
    assert partial.errors_on(logits, labels, [7, 8]) == 1
    assert partial.errors_on(logits, labels, [1]) == 0


def test_calibration_inputs_are_seeded_and_unlabeled(small):
    a = partial.calibration_inputs(small, 100)
    assert a.shape == (100, 784) and torch.equal(a, partial.calibration_inputs(small, 100))


def test_wait_only_for_a_fresh_unfinished_stage(tmp_path):
    d = tmp_path / "stage"
    partial.wait_while_trained_elsewhere(d, poll=0.01)          # nothing there: no wait
    d.mkdir()
    (d / "state.json").write_text("{}")
    old = time.time() - 3600
    os.utime(d / "state.json", (old, old))
    partial.wait_while_trained_elsewhere(d, poll=0.01)          # stale state (a crashed run): resume, no wait
    (d / "state.json").touch()
    (d / "model.json").write_text("{}")
    partial.wait_while_trained_elsewhere(d, poll=0.01)          # finished: no wait
    (d / "model.json").unlink()
    logs = []
    t0 = time.time()
    partial.wait_while_trained_elsewhere(d, log=logs.append, quiet_seconds=0.2, poll=0.05)
    assert time.time() - t0 >= 0.1 and "waiting" in logs[0]     # fresh and unfinished: waited until quiet


def test_regularizer_gap_recovered():
    recs = [dict(model="student-hard", test_errors=150), dict(model="student-hard-3pct", test_errors=450),
            dict(model="student-soft-3pct", test_errors=210)]
    assert regularizer.recovered(recs) == (450 - 210) / (450 - 150)
    assert abs(regularizer.PAPER_RECOVERED - 0.868) < 1e-3

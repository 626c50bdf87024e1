import threading
import time

import pytest
import torch

from distill.data import transfer as transfer
from distill.errors import DistillError
from distill.experiments import regularizer
from distill.train.rundir import RunDir
from distill.train.config import TrainConfig
def test_epochs_for_small_transfer_sets():
    cfg = TrainConfig(epochs=40, batch_size=128)
    assert transfer.epochs_for(cfg, 54000, 12000) == 40          # 422 steps/epoch * 40 > 12000
    assert transfer.epochs_for(cfg, 12000, 12000) == 128         # ceil(12000 / 94)
    assert transfer.epochs_for(cfg, 1800, 0) == 40
    with pytest.raises(ValueError):
        transfer.epochs_for(cfg, 0, 100)


def test_errors_on_named_classes():
    labels = torch.tensor([3, 3, 1, 7, 8])
    logits = torch.zeros(5, 10)
    logits[torch.arange(5), torch.tensor([3, 5, 1, 8, 8])] = 1.0  # wrong: second 3 (->5) and the 7 (->8)
    assert transfer.errors_on(logits, labels, [3]) == 1
    assert transfer.errors_on(logits, labels, [7, 8]) == 1
    assert transfer.errors_on(logits, labels, [1]) == 0


def test_calibration_inputs_are_seeded_and_unlabeled(small):
    a = transfer.calibration_inputs(small, 100)
    assert a.shape == (100, 784) and torch.equal(a, transfer.calibration_inputs(small, 100))
    assert not torch.equal(a, transfer.calibration_inputs(small, 100, seed=1))
    train_rows = {tuple(r.tolist()) for r in small.x_train}
    picked = [tuple(r.tolist()) for r in a]
    assert set(picked) <= train_rows and len(set(picked)) == 100   # training inputs, without replacement


def test_run_folder_lock_refuses_or_waits(tmp_path):
    """Stages shared between experiments (and processes) are protected by the run folder's lock:
    a second RunDir on a held folder fails at once naming the folder and the holder's pid, or,
    with wait=True (what Runner.train uses), waits until the holder is done."""
    import os

    folder = tmp_path / "stage-abc"
    with RunDir(folder, "k"):
        with pytest.raises(DistillError) as e:
            with RunDir(folder, "k", wait=False):
                pass
        msg = str(e.value)
        assert str(folder) in msg and f"process {os.getpid()}@" in msg

    # released on exit: a later RunDir takes it
    with RunDir(folder, "k") as r:
        assert r.path == folder

    # wait=True: blocks while another holder has it, then proceeds once it lets go
    held, release = threading.Event(), threading.Event()

    def holder():
        with RunDir(folder, "k"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    logs = []
    threading.Timer(0.5, release.set).start()
    t0 = time.monotonic()
    with RunDir(folder, "k", wait=True, log=logs.append):
        waited = time.monotonic() - t0
    t.join()
    assert waited >= 0.4 and len(logs) == 1 and "[wait]" in logs[0] and str(folder) in logs[0]


def test_regularizer_gap_recovered():
    recs = [dict(model="student-hard", test_errors=150), dict(model="student-hard-3pct", test_errors=450),
            dict(model="student-soft-3pct", test_errors=210)]
    assert regularizer.recovered(recs) == (450 - 210) / (450 - 150)
    assert abs(regularizer.PAPER_RECOVERED - 0.868) < 1e-3

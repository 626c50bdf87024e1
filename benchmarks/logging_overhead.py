"""What the run's logs cost: a distilled 800-800 MNIST student's epoch with ``metrics.csv`` at its
default ``log_every=50`` (a row, the loss's terms and a loss sync every 50 steps), and with
TensorBoard too, against the same run with epoch rows only (``log_every=0``):

    python benchmarks/logging_overhead.py [--epochs 2] [--rounds 3] [--train-size N] [--batch-size 128]

Every variant trains the same student (same init, same teacher outputs, computed once before the
timings) into a fresh run folder; the rounds alternate the order of the variants. Reported: the
median seconds per epoch of ``fit``'s training phase (``history[i]["train_seconds"]``, which holds
the step rows and their terms) and of the whole ``fit`` call divided by the epochs (which also holds
the epoch rows, the state saved per epoch and the final model), and the ratios to the baseline
(goal: <= 1.02).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from distill import Teacher, TrainConfig, fit
from distill.data import load_mnist
from distill.models.classifiers import MLP

VARIANTS = {"epoch rows only": dict(log_every=0), "log_every=50": dict(log_every=50),
            "log_every=50 + tensorboard": dict(log_every=50, tensorboard=True)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--train-size", type=int, help="the first N training images (default: all 60,000)")
    a = ap.parse_args()
    d = load_mnist(log=lambda *_: None)
    x, y = d.x_train[:a.train_size], d.y_train[:a.train_size]
    torch.manual_seed(0)
    teacher_net = MLP(784, [1200, 1200], 10)
    with torch.no_grad():  # the teacher's logits, once: every variant distils from the same tensor
        logits = torch.cat([teacher_net(x[i:i + 4096]) for i in range(0, len(x), 4096)])
    torch.manual_seed(1)
    init = MLP(784, [800, 800], 10).state_dict()
    train_s = {k: [] for k in VARIANTS}
    wall_s = {k: [] for k in VARIANTS}
    quiet = dict(progress=False, log=lambda *_: None)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            order = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
            for name in order:
                student = MLP(784, [800, 800], 10)
                student.load_state_dict(init)
                cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, temperature=20.0, lr=0.03, seed=r,
                                  schedule="constant", **VARIANTS[name])
                t0 = time.perf_counter()
                res = fit(student, (x, y), cfg, teacher=Teacher(logits), run_dir=Path(tmp) / f"{r}-{name}", **quiet)
                wall_s[name].append((time.perf_counter() - t0) / a.epochs)
                train_s[name].extend(h["train_seconds"] for h in res.history)
    base = list(VARIANTS)[0]
    print(f"threads {torch.get_num_threads()}, {len(y)} examples/epoch, student MLP 800-800 distilled at T = 20, "
          f"batch {a.batch_size}, {a.rounds} rounds x {a.epochs} epochs")
    for name in VARIANTS:
        tr, wa = statistics.median(train_s[name]), statistics.median(wall_s[name])
        print(f"{name:28s}: train {tr:.3f} s/epoch ({tr / statistics.median(train_s[base]):.3f}x)   "
              f"whole fit {wa:.3f} s/epoch ({wa / statistics.median(wall_s[base]):.3f}x)")


if __name__ == "__main__":
    main()

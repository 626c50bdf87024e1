"""Student epochs per second with the soft-target store vs with the teacher run on the fly.

    python benchmarks/soft_target_store.py [--teacher runs/cache/teacher-.../model] [--rounds 3]
                                           [--train-size 20000] [--dtype float32]

Both variants run the same loop over the same tensors (same student init, same data order,
SGD (lr 0.01) + momentum, the distillation loss at T = 20 with hard-label weight 0.1); the only
difference is where each batch's teacher logits come from: ``store[idx]`` (memory-mapped
rows of a store built once, before timing) or ``teacher(x[idx])`` under ``no_grad``. The
variants alternate which goes first in each round; the script prints the median seconds per
epoch of each, their ratio, and the one-off time to build the store; also the process's CPU
seconds per epoch (``time.process_time``), the fairer measure on a machine shared with other jobs. Without ``--teacher`` a
freshly initialised 1200-1200 MLP (the paper teacher's shape; speed does not depend on the
weights) stands in.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import distill
from distill import losses
from distill.data import load_mnist
from distill.models.classifiers import MLP


def epoch(student, opt, x, y, targets, gen, batch_size=128, temperature=20.0, hard_weight=0.1):
    """One epoch; ``targets(idx, xb)`` returns the teacher logits of the batch."""
    perm = torch.randperm(x.shape[0], generator=gen)
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i:i + batch_size]
        xb = x[idx]
        tb = targets(idx, xb)
        loss = losses.distillation_loss(student(xb), tb, y[idx], temperature, hard_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", help="teacher checkpoint (default: a fresh 1200-1200 MLP)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1, help="epochs per variant per round")
    ap.add_argument("--train-size", type=int, default=20000)
    ap.add_argument("--hidden", type=int, nargs="+", default=[800, 800], help="student hidden sizes")
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float32")
    a = ap.parse_args()
    d = load_mnist(log=lambda *_: None)
    d = d.subset(train=a.train_size) if a.train_size < len(d.y_train) else d
    if a.teacher:
        teacher = distill.Teacher(a.teacher)  # a checkpoint: the model rebuilt from its recorded factory
    else:
        torch.manual_seed(123)
        teacher = distill.Teacher(MLP(784, [1200, 1200], 10, 0.2, 0.5, 3.5))
    module = teacher.module  # eval mode, frozen
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        store = distill.get_store(Path(tmp), teacher, d.x_train, dtype=a.dtype, progress=False, log=lambda *_: None)
        build = time.perf_counter() - t

        def from_store(idx, xb):
            return store[idx]

        @torch.no_grad()
        def on_the_fly(idx, xb):
            return module(xb)

        times = {"store": [], "on the fly": []}
        cpu = {"store": [], "on the fly": []}
        for r in range(a.rounds):
            order = ("store", "on the fly") if r % 2 == 0 else ("on the fly", "store")
            for which in order:
                torch.manual_seed(r)
                student = MLP(784, a.hidden, 10)
                opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)  # 0.1 diverges at T = 20
                gen = torch.Generator().manual_seed(r)
                fn = from_store if which == "store" else on_the_fly
                for _ in range(a.epochs):
                    t, c = time.perf_counter(), time.process_time()
                    epoch(student, opt, d.x_train, d.y_train, fn, gen)
                    times[which].append(time.perf_counter() - t)
                    cpu[which].append(time.process_time() - c)
    ms, mf = statistics.median(times["store"]), statistics.median(times["on the fly"])
    print(f"threads {torch.get_num_threads()}, {len(d.y_train)} examples/epoch, student {a.hidden}, "
          f"teacher {getattr(module, 'arch', {}).get('hidden')}, store {a.dtype}")
    print(f"store build (once): {build:.2f} s")
    print(f"store:      {ms:.2f} s/epoch  ({1 / ms:.3f} epochs/s)  all: {[round(v, 2) for v in times['store']]}")
    print(f"on the fly: {mf:.2f} s/epoch  ({1 / mf:.3f} epochs/s)  all: {[round(v, 2) for v in times['on the fly']]}")
    print(f"speed-up (epochs/s with the store / on the fly), wall clock: {mf / ms:.2f}x")
    cs, cf = statistics.median(cpu["store"]), statistics.median(cpu["on the fly"])
    print(f"CPU seconds per epoch (this process only; robust on a shared machine): store {cs:.2f}, "
          f"on the fly {cf:.2f}, speed-up {cf / cs:.2f}x")


if __name__ == "__main__":
    main()

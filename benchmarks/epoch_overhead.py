"""``distill.fit``'s epoch time against a bare PyTorch loop doing the same work, two ways:

    python benchmarks/epoch_overhead.py [--epochs 2] [--rounds 3] [--hidden 800 800] [--batch-size 128]
                                        [--train-size N] [--workers 0]

(a) in-memory tensors: ``fit(model, (x, y), config)`` against a loop that shuffles the same
    tensors and steps on ``x[idx]`` (goal: within 5 %);
(b) a DataLoader: ``fit(model, loader, config)`` against a loop over the same ``DataLoader``
    (shuffled ``TensorDataset``, ``--workers`` worker processes; goal: within 15 %).

Each variant trains an identical MLP (same init) with SGD + momentum at a constant learning rate,
on hard labels, for ``--epochs`` epochs; each round runs the four variants, alternating the order
(bare first in even rounds, fit first in odd ones). ``fit``'s time per epoch is the training time
it records (``history[i]["train_seconds"]``: every batch's copy, forward, loss, backward, step,
max-norm hook and loss bookkeeping, without evaluation, as no val/test set is given). Prints the
median seconds per epoch of each variant and the two ratios ``fit / bare``. The measuring code
is :func:`distill.tools.bench.fit_vs_bare`, which ``distill bench`` runs too.
"""
from __future__ import annotations

import argparse

import torch

from distill.tools.bench import fit_vs_bare
from distill.data import load_mnist


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, nargs="+", default=[800, 800])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--train-size", type=int, help="use the first N training images (default: all 60,000)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for (b)")
    a = ap.parse_args()
    d = load_mnist(log=lambda *_: None)
    x, y = d.x_train[:a.train_size], d.y_train[:a.train_size]
    res = fit_vs_bare(x, y, hidden=a.hidden, batch_size=a.batch_size, epochs=a.epochs, rounds=a.rounds, lr=a.lr,
                      workers=a.workers)
    med, times = res["seconds"], res["all"]
    print(f"threads {torch.get_num_threads()}, {len(y)} examples/epoch, MLP {a.hidden}, batch {a.batch_size}, "
          f"{a.rounds} rounds x {a.epochs} epochs, DataLoader workers {a.workers}")
    for k, v in times.items():
        print(f"{k:13s}: median {med[k]:.3f} s/epoch  (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})")
    print(f"(a) in-memory tensors: fit / bare = {res['ratio tensors']:.3f}  (goal <= 1.05)")
    print(f"(b) DataLoader:        fit / bare = {res['ratio loader']:.3f}  (goal <= 1.15)")


if __name__ == "__main__":
    main()

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
median seconds per epoch of each variant and the two ratios ``fit / bare``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import distill
from distill.data import load_mnist
from distill.models import MLP


def bare_tensors(model, x, y, batch_size, opt, gen):
    """One epoch of the loop a user writes over in-memory tensors."""
    perm = torch.randperm(x.shape[0], generator=gen)
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i:i + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def bare_loader(model, loader, opt):
    """One epoch of the loop a user writes over a DataLoader."""
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def make_loader(x, y, batch_size, workers, seed):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0)


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
    config = distill.TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, momentum=0.9,
                                 schedule="constant")
    times = {k: [] for k in ("bare tensors", "fit tensors", "bare loader", "fit loader")}

    def run(which, r):
        torch.manual_seed(r)
        model = MLP(x.shape[1], a.hidden, 10)
        if which.startswith("bare"):
            opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)
            gen = torch.Generator().manual_seed(r)
            loader = make_loader(x, y, a.batch_size, a.workers, r) if which == "bare loader" else None
            for _ in range(a.epochs):
                t = time.perf_counter()
                if loader is None:
                    bare_tensors(model, x, y, a.batch_size, opt, gen)
                else:
                    bare_loader(model, loader, opt)
                times[which].append(time.perf_counter() - t)
        else:
            data = (x, y) if which == "fit tensors" else make_loader(x, y, a.batch_size, a.workers, r)
            res = distill.fit(model, data, replace(config, seed=r), progress=False, log=lambda *_: None)
            times[which].extend(h["train_seconds"] for h in res.history)

    for r in range(a.rounds):
        for kind in ("tensors", "loader"):
            order = ("bare", "fit") if r % 2 == 0 else ("fit", "bare")
            for who in order:
                run(f"{who} {kind}", r)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"threads {torch.get_num_threads()}, {len(y)} examples/epoch, MLP {a.hidden}, batch {a.batch_size}, "
          f"{a.rounds} rounds x {a.epochs} epochs, DataLoader workers {a.workers}")
    for k, v in times.items():
        print(f"{k:13s}: median {med[k]:.3f} s/epoch  (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})")
    print(f"(a) in-memory tensors: fit / bare = {med['fit tensors'] / med['bare tensors']:.3f}  (goal <= 1.05)")
    print(f"(b) DataLoader:        fit / bare = {med['fit loader'] / med['bare loader']:.3f}  (goal <= 1.15)")


if __name__ == "__main__":
    main()

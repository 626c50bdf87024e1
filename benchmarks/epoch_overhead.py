"""Toolkit epoch time vs a bare PyTorch loop doing the same work on the same tensors.

    python benchmarks/epoch_overhead.py [--epochs 3] [--hidden 800 800] [--batch-size 128]

Both train an identical MLP (same init, same data order) with SGD+momentum on MNIST's
60,000 training images for the same number of epochs, alternating which goes first; the
toolkit's time includes its per-epoch test evaluation, as a user sees it. Prints the median
seconds per epoch of each and their ratio (toolkit / bare).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from distill.data import load_mnist
from distill.models import MLP
from distill.training import TrainConfig, fit


def bare_epoch(model, x, y, batch_size, opt, gen):
    perm = torch.randperm(x.shape[0], generator=gen)
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i:i + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, nargs="+", default=[800, 800])
    ap.add_argument("--batch-size", type=int, default=128)
    a = ap.parse_args()
    d = load_mnist(log=lambda *_: None)
    bare, tool, evals = [], [], []
    for r in range(a.rounds):
        order = ("bare", "tool") if r % 2 == 0 else ("tool", "bare")
        for which in order:
            torch.manual_seed(r)
            m = MLP(784, a.hidden, 10)
            if which == "bare":
                opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
                gen = torch.Generator().manual_seed(r)
                for _ in range(a.epochs):
                    t = time.perf_counter()
                    bare_epoch(m, d.x_train, d.y_train, a.batch_size, opt, gen)
                    bare.append(time.perf_counter() - t)
            else:
                res = fit(m, d, TrainConfig(epochs=a.epochs, lr=0.05, batch_size=a.batch_size, seed=r),
                          progress=False)
                tool.extend(h["train_seconds"] for h in res.history)
                evals.extend(h["seconds"] - h["train_seconds"] for h in res.history)
    mb, mt = statistics.median(bare), statistics.median(tool)
    print(f"bare PyTorch: median {mb:.3f} s/epoch  (min {min(bare):.3f}, max {max(bare):.3f}, n={len(bare)})")
    print(f"distill.fit : median {mt:.3f} s/epoch  (min {min(tool):.3f}, max {max(tool):.3f}, n={len(tool)})")
    print(f"distill.fit per-epoch test evaluation (not in the ratio): median {statistics.median(evals):.3f} s")
    print(f"ratio toolkit/bare: {mt / mb:.3f}")


if __name__ == "__main__":
    main()

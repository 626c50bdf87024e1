"""The cost of full data identity (every example digested) against one training epoch, on MNIST:

    python benchmarks/data_identity.py [--rounds 3] [--hidden 800 800] [--batch-size 128]

For three ways of handing MNIST's 60,000 training images to ``fit`` (in-memory tensors, a
map-style ``TensorDataset``, a shuffled ``DataLoader`` over it) it times, in each round:
(a) computing the fingerprint (tensors: one SHA-256 over the arrays; Dataset and DataLoader: one
pass over every example with :class:`distill.digest.ExampleDigest`), and (b) one epoch of
``fit`` (an MLP of ``--hidden`` units, SGD, no run folder, so no identity is computed inside it).
The identity check ``fit`` does during the first epoch of a run folder on a Dataset or
DataLoader is timed too (c: one epoch with a run folder, minus (a) and (b)). Prints medians and
the ratios (a)/(b) and (c)/(b).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import distill
from distill.data import load_mnist
from distill.models.classifiers import MLP
from distill.data.sources import as_source


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, nargs="+", default=[800, 800])
    ap.add_argument("--batch-size", type=int, default=128)
    a = ap.parse_args()
    d = load_mnist(log=lambda *_: None)
    x, y = d.x_train, d.y_train
    kinds = {
        "tensors": lambda: (x, y),
        "Dataset": lambda: TensorDataset(x, y),
        "DataLoader": lambda: DataLoader(TensorDataset(x, y), batch_size=a.batch_size, shuffle=True),
    }
    cfg = distill.TrainConfig(epochs=1, lr=0.05, batch_size=a.batch_size, optimizer="sgd")
    times = {k: {"identity": [], "epoch": [], "check": []} for k in kinds}
    quiet = lambda *_: None  # noqa: E731
    for r in range(a.rounds):
        for kind, make in kinds.items():
            t0 = time.perf_counter()
            src = as_source(make())
            src.fingerprint  # noqa: B018 - the digest is computed on first access
            times[kind]["identity"].append(time.perf_counter() - t0)
            torch.manual_seed(0)
            res = distill.fit(MLP(784, a.hidden, 10), make(), cfg, progress=False, log=quiet)
            epoch = res.history[0]["train_seconds"]
            times[kind]["epoch"].append(epoch)
            tmp = tempfile.mkdtemp(prefix="distill-identity-")
            try:
                torch.manual_seed(0)
                res = distill.fit(MLP(784, a.hidden, 10), make(), cfg, run_dir=tmp, progress=False, log=quiet)
                times[kind]["check"].append(res.history[0]["train_seconds"] - epoch)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    print(f"MNIST 60,000 x 784, MLP {a.hidden}, batch {a.batch_size}, {a.rounds} rounds, "
          f"{torch.get_num_threads()} threads (medians, seconds)")
    print("| data | identity (a) | epoch (b) | a / b | first-epoch check (c) | c / b |")
    print("|---|---|---|---|---|---|")
    for kind, t in times.items():
        ident, ep, chk = (statistics.median(t[k]) for k in ("identity", "epoch", "check"))
        print(f"| {kind} | {ident:.2f} | {ep:.2f} | {ident / ep:.2f} | {chk:+.2f} | {chk / ep:+.2f} |")


if __name__ == "__main__":
    main()

"""Peak memory and speed of a distilled student's epoch streaming its transfer set from disk.

    python benchmarks/stream_memory.py [--rows 60000 2000000] [--hidden 800 800] [--repeats 2]
                                       [--dir /tmp/stream-bench] [--nproc 1] [--json FILE]

For each row count it writes a synthetic transfer set to disk (``x.npy``: ``rows x 784`` uint8
pixels in {0, 1}, class templates with 10 % of the pixels flipped; ``y.npy``: int64 labels),
builds a sharded soft-target store over it (a fresh 784-10 linear teacher, float16,
:func:`distill.teachers.store.build_store`), then runs one student epoch (``fit``, T = 4, batch 128)
in a fresh process reading the inputs through :class:`distill.data.sources.ArrayDataset`
(``np.load(mmap_mode="r")``, each batch's rows read from the file, one batch ahead) and the targets from
the store by example index. Each child reports its peak RSS (``VmHWM``), its RSS after imports and
its examples/s; the smallest row count also runs with the same rows and targets held in memory
(tensors), for the speed comparison. With ``--nproc 2`` the disk epochs run under ``torchrun``
(one thread per process, each reading its slice of every batch): speed is process 0's, peak RSS the
largest process's.
Goals (issue 16): peak RSS grows by at most 10 % from 60,000 to 2,000,000 rows; examples/s from
disk within 10 % of in memory.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FEATURES, CLASSES = 784, 10


def write_transfer_set(folder: Path, rows: int, seed: int = 0, chunk: int = 100_000) -> None:
    """``x.npy`` (uint8 in {0, 1}) and ``y.npy`` (int64), written chunk by chunk (never all in RAM)."""
    if (folder / "done").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = (np.random.default_rng(1234).random((CLASSES, FEATURES)) < 0.3).astype(np.uint8)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.uint8, shape=(rows, FEATURES))
    y = np.lib.format.open_memmap(folder / "y.npy", mode="w+", dtype=np.int64, shape=(rows,))
    for a in range(0, rows, chunk):
        b = min(a + chunk, rows)
        labels = rng.integers(0, CLASSES, b - a)
        flips = (rng.random((b - a, FEATURES)) < 0.1).astype(np.uint8)
        x[a:b] = templates[labels] ^ flips
        y[a:b] = labels
    x.flush()
    y.flush()
    del x, y
    (folder / "done").write_text("ok\n")


def build(folder: Path, shards: int) -> None:
    from distill.teachers.teacher import Teacher
    from distill.teachers.store import build_store  # distill first: it sets OMP_WAIT_POLICY before torch loads

    import torch
    from distill.data.sources import ArrayDataset

    torch.manual_seed(0)
    teacher = torch.nn.Linear(FEATURES, CLASSES)
    build_store(folder / "store", Teacher(teacher), ArrayDataset(folder / "x.npy", folder / "y.npy"), dtype="float16",
                shards=shards, batch_size=4096, progress=False, log=lambda *a: None)


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(spec: dict) -> None:
    """One epoch in this (fresh) process; prints a JSON line."""
    import distill  # first: it sets OMP_WAIT_POLICY before torch loads

    import torch
    from distill import distributed
    from distill.models.classifiers import MLP
    from distill.teachers.store import SoftTargetStore
    from distill.data.sources import ArrayDataset

    distributed.init_from_env()
    rank, world = distributed.world()
    folder = Path(spec["folder"])
    store = SoftTargetStore.open(folder / "store", verify=False)
    base = _status("VmRSS")
    if spec["mode"] == "memory":
        x = torch.from_numpy(np.load(folder / "x.npy").astype(np.float32))
        y = torch.from_numpy(np.load(folder / "y.npy"))
        data, teacher = (x, y), store.all()
    else:
        data, teacher = ArrayDataset(folder / "x.npy", folder / "y.npy"), store
    distill.seed_everything(0)
    model = MLP(FEATURES, spec["hidden"], CLASSES)
    cfg = distill.TrainConfig(epochs=1, batch_size=128, lr=0.03, temperature=4.0, schedule="constant")
    res = distill.fit(model, data, cfg, teacher=teacher, progress=False, log=lambda *a: None)
    out = dict(rank=rank, world=world, rows=len(store), mode=spec["mode"], rss_after_imports=base,
               peak_rss=_status("VmHWM"))
    if rank == 0:  # process 0 records the history
        sec = res.history[0]["train_seconds"]
        out.update(train_seconds=sec, examples_per_s=len(store) / sec, loss=res.history[0]["train_loss"])
    peaks = [out["peak_rss"]]
    if world > 1:
        peaks = [None] * world
        torch.distributed.all_gather_object(peaks, out["peak_rss"])
    distributed.shutdown()
    if rank == 0:
        out.update(peak_rss=max(peaks), peak_rss_per_process=peaks)  # the largest process's
        print("RESULT " + json.dumps(out), flush=True)


def run_child(spec: dict, nproc: int, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import distill` sets it (README: Speed and scale)
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    if nproc > 1:
        exe = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [exe, "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(port),
               __file__, "--child", json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"child failed:\n{p.stderr[-3000:]}")
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[60_000, 2_000_000])
    ap.add_argument("--hidden", type=int, nargs="+", default=[800, 800])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/distill-stream-bench", help="where the transfer sets are written")
    ap.add_argument("--nproc", type=int, default=1, help="torchrun processes for the disk epochs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process (default 2 / nproc)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(json.loads(a.child))
        return
    threads = a.threads or max(1, (os.cpu_count() or 2) // a.nproc)
    results = []
    for rows in a.rows:
        folder = Path(a.dir) / f"rows-{rows}"
        t = time.perf_counter()
        write_transfer_set(folder, rows)
        if not (folder / "store" / "meta.json").exists():
            build(folder, shards=max(1, a.nproc))
        print(f"[data] {rows:,} rows ready in {folder} ({time.perf_counter() - t:.1f} s; x.npy "
              f"{(folder / 'x.npy').stat().st_size / 1e9:.2f} GB)", flush=True)
        modes = ["disk", "memory"] if rows == min(a.rows) else ["disk"]
        for r in range(a.repeats):
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                spec = dict(folder=str(folder), mode=mode, hidden=a.hidden)
                got = run_child(spec, a.nproc if mode == "disk" else 1, threads)
                results.append(got)
                print(f"  {rows:>9,} rows  {mode:6s} peak RSS {got['peak_rss'] / 2 ** 20:7.1f} MiB  (after imports "
                      f"{got['rss_after_imports'] / 2 ** 20:6.1f})  {got['examples_per_s']:9,.0f} examples/s", flush=True)
    summary = {}
    for rows in a.rows:
        for mode in ("disk", "memory"):
            rs = [g for g in results if g["rows"] == rows and g["mode"] == mode]
            if rs:
                summary[f"{rows} {mode}"] = dict(peak_rss_mib=max(g["peak_rss"] for g in rs) / 2 ** 20,
                                                 examples_per_s=statistics.median(g["examples_per_s"] for g in rs))
    lo, hi = min(a.rows), max(a.rows)
    print(f"\nthreads {threads} x {a.nproc} process(es), student {a.hidden}, batch 128, load average "
          f"{os.getloadavg()[0]:.2f}")
    for k, v in summary.items():
        print(f"{k:>16s}: peak RSS {v['peak_rss_mib']:.1f} MiB, {v['examples_per_s']:,.0f} examples/s (median)")
    if f"{hi} disk" in summary and lo != hi:
        growth = summary[f"{hi} disk"]["peak_rss_mib"] / summary[f"{lo} disk"]["peak_rss_mib"] - 1
        print(f"peak RSS growth {lo:,} -> {hi:,} rows (disk): {100 * growth:+.1f} %  (goal <= +10 %)")
    if f"{lo} memory" in summary:
        ratio = summary[f"{lo} disk"]["examples_per_s"] / summary[f"{lo} memory"]["examples_per_s"]
        print(f"examples/s disk / memory at {lo:,} rows: {ratio:.3f}  (goal >= 0.90)")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(results=results, summary=summary), indent=2) + "\n")


if __name__ == "__main__":
    main()

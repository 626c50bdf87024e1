"""``distill bench``: the speed of this machine and of ``distill`` on it, every figure a median
over repeats taken in the same run, with the machine printed beside them.

Sections (each can be skipped with ``--skip NAME``):

* ``peak``: float32 and bfloat16 GFLOP/s of an ``n x n`` matrix product (``2 n^3`` flops), the
  yardstick for the rest;
* ``overhead``: ``distill.fit`` against a bare PyTorch loop doing the same work (the 800-800 MLP,
  SGD + momentum, hard labels), on in-memory tensors and on a DataLoader (also
  ``benchmarks/epoch_overhead.py``); ratio = fit / bare seconds per epoch, goal <= 1.05;
* ``store``: a distilled student's epoch with the teacher's logits read from a soft-target store
  against the teacher (a 1200-1200 MLP) run on every batch, in the same loop;
* ``precision``: ``fit`` epochs at ``precision="fp32"`` and ``"bf16"`` on a short schedule, with
  both runs' final test errors; examples/s and the fraction of the matrix-product peak reached,
  counting ``6 * sum(in*out)`` flops per example for an MLP (forward 2, backward 4 per weight);
* ``ddp``: under ``torchrun`` with 1 and with 2 processes (one thread each): the sharded store
  build (:func:`distill.teachers.store.build_store`) and a student epoch reading its slice of each
  batch; scaling efficiency = ``t_1 / (2 t_2)``.

Threads: on a machine shared with other jobs, OpenMP's default spin-waiting makes two torch jobs
slow each other down many times over; ``import distill`` sets ``OMP_WAIT_POLICY=PASSIVE`` when it
is unset and torch is not loaded yet (see the README), and the bench measures how busy the CPUs
already are (``/proc/stat`` over half a second) and warns when another job is running.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from distill import data as D, distributed, losses
from distill.data import Dataset
from distill.models.classifiers import MLP
from distill.teachers.store import build_store, get_store
from distill.teachers.teacher import Teacher
from distill.train.config import TrainConfig, seed_everything
from distill.train.fit import fit

SECTIONS = ("peak", "overhead", "store", "precision", "ddp")


def _quiet(*_a) -> None:
    pass


# ---------------------------------------------------------------- the machine

def busy_cpus(seconds: float = 0.5) -> float:
    """How many CPUs other processes keep busy: non-idle time over ``seconds`` from ``/proc/stat``
    (this process sleeps meanwhile), in CPUs; NaN where ``/proc/stat`` is unreadable."""
    def sample():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals), idle

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return float("nan")
    total = t1 - t0
    return (os.cpu_count() or 1) * (total - (i1 - i0)) / total if total > 0 else 0.0


def machine() -> dict:
    """CPU model, cores, torch threads, OpenMP/MKL settings, load, torch version, GPU."""
    model, flags = platform.processor() or "unknown", ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model in ("unknown", "", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("OMP_", "MKL_", "KMP_", "DISTILL_"))}
    return dict(cpu=model, cores=os.cpu_count(), usable_cores=usable, torch_threads=torch.get_num_threads(),
                env=env, avx512_bf16="avx512_bf16" in flags, amx="amx_tile" in flags,
                load_average=[round(v, 2) for v in os.getloadavg()], busy_cpus=round(busy_cpus(), 2),
                torch=torch.__version__, python=platform.python_version(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def busy_warning(info: dict) -> str | None:
    """A warning when other jobs keep at least half a CPU busy (timings then measure them too)."""
    busy = info.get("busy_cpus")
    if busy is not None and not math.isnan(busy) and busy >= 0.5:
        return (f"[warning] other processes keep {busy:.1f} of {info['cores']} CPUs busy (load average "
                f"{info['load_average'][0]}): these figures are measured under load; rerun on a quiet machine")
    return None


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5, device="cpu") -> float:
    """GFLOP/s of an ``n x n`` by ``n x n`` product (``2 n^3`` flops), median of ``repeats``."""
    a = torch.rand(n, n, device=device).to(dtype)
    b = torch.rand(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def step():
        a @ b
        sync()

    step()
    return 2 * n ** 3 / median_seconds(step, repeats) / 1e9


def mlp_flops_per_example(in_features: int, hidden, classes: int) -> int:
    """Training flops per example of an MLP: ``6 * sum(in * out)`` over its linear layers (forward
    ``2 in out``, backward ``4 in out``: input and weight gradients); biases and activations ignored."""
    sizes = [in_features, *hidden, classes]
    return 6 * sum(a * b for a, b in zip(sizes, sizes[1:]))


# ---------------------------------------------------------------- data

def synthetic(n_train: int, n_test: int, features: int = 784, classes: int = 10, seed: int = 0):
    """A separable image-like data set (a fixed random template per class plus noise), as a
    :class:`distill.data.Dataset` (28 x 28 when ``features`` is 784)."""

    g = torch.Generator().manual_seed(seed)
    templates = (torch.rand(classes, features, generator=g) > 0.7).float()

    def draw(n):
        y = torch.randint(0, classes, (n,), generator=g)
        return (templates[y] + 0.5 * torch.randn(n, features, generator=g)).clamp(0, 1), y

    (xt, yt), (xe, ye) = draw(n_train), draw(n_test)
    side = int(math.isqrt(features))
    return Dataset(name="synthetic", x_train=xt, y_train=yt, x_test=xe, y_test=ye,
                   classes=tuple(str(c) for c in range(classes)),
                   fingerprint=f"synthetic:{n_train}/{n_test}/{features}/{classes}/{seed}",
                   image_shape=(side, side) if side * side == features else None)


#: the data sets the bench can load: the built-in ones it times on, and a synthetic one (no download)
DATASETS = ("mnist", "fashion-mnist", "synthetic")


def load_data(name: str, train_size: int | None, test_size: int | None):
    if name not in DATASETS:
        raise ValueError(f"the bench loads one of {DATASETS}, got {name!r}")
    if name == "synthetic":
        return synthetic(train_size or 60000, test_size or 10000)
    d = D.load(name, log=_quiet)
    if train_size or test_size:
        d = d.subset(train=train_size, test=test_size)
    return d


# ---------------------------------------------------------------- fit vs a bare loop

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


def fit_vs_bare(x, y, *, hidden=(800, 800), batch_size=128, epochs=2, rounds=3, lr=0.05, workers=0,
                kinds=("tensors", "loader")) -> dict:
    """Median seconds per epoch of ``fit`` and of a bare loop doing the same work (identical MLP
    init, SGD + momentum, constant lr, hard labels), on in-memory tensors and on a DataLoader;
    each round alternates which goes first. ``fit``'s time is its recorded ``train_seconds``
    (every batch's copy, forward, loss, backward, step and bookkeeping; no evaluation)."""

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, schedule="constant")
    times = {f"{who} {kind}": [] for kind in kinds for who in ("bare", "fit")}

    def run(which, r):
        torch.manual_seed(r)
        model = MLP(x.shape[1], list(hidden), int(y.max()) + 1)
        if which.startswith("bare"):
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
            gen = torch.Generator().manual_seed(r)
            loader = make_loader(x, y, batch_size, workers, r) if which == "bare loader" else None
            for _ in range(epochs):
                t = time.perf_counter()
                if loader is None:
                    bare_tensors(model, x, y, batch_size, opt, gen)
                else:
                    bare_loader(model, loader, opt)
                times[which].append(time.perf_counter() - t)
        else:
            data = (x, y) if which == "fit tensors" else make_loader(x, y, batch_size, workers, r)
            res = fit(model, data, replace(config, seed=r), progress=False, log=_quiet)
            times[which].extend(h["train_seconds"] for h in res.history)

    for r in range(rounds):
        for kind in kinds:
            for who in (("bare", "fit") if r % 2 == 0 else ("fit", "bare")):
                run(f"{who} {kind}", r)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = dict(examples=len(y), hidden=list(hidden), batch_size=batch_size, rounds=rounds, epochs=epochs,
               workers=workers, seconds=med, all=times)
    for kind in kinds:
        out[f"ratio {kind}"] = med[f"fit {kind}"] / med[f"bare {kind}"]
    return out


# ---------------------------------------------------------------- store vs teacher on the fly

def store_vs_on_the_fly(x, y, *, hidden=(800, 800), teacher_hidden=(1200, 1200), batch_size=128, rounds=3,
                        dtype="float32") -> dict:
    """Seconds per student epoch (the same distillation loop, T = 20, hard weight 0.1) with the
    teacher's logits read from a store by example index vs computed by the teacher on each batch;
    and the one-off store build. A fresh teacher of ``teacher_hidden`` stands in (speed does not
    depend on its weights)."""

    classes = int(y.max()) + 1
    torch.manual_seed(123)
    teacher = Teacher(MLP(x.shape[1], list(teacher_hidden), classes, 0.2, 0.5, 3.5))
    module = teacher.module

    def epoch(student, opt, targets, gen):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            xb = x[idx]
            loss = losses.distillation_loss(student(xb), targets(idx, xb), y[idx], 20.0, 0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        store = get_store(Path(tmp), Teacher(teacher), x, dtype=dtype, progress=False, log=_quiet)
        build = time.perf_counter() - t

        @torch.no_grad()
        def fly(idx, xb):
            return module(xb)

        fns = {"store": lambda idx, xb: store[idx], "on the fly": fly}
        times = {k: [] for k in fns}
        for r in range(rounds):
            for which in (("store", "on the fly") if r % 2 == 0 else ("on the fly", "store")):
                torch.manual_seed(r)
                student = MLP(x.shape[1], list(hidden), classes)
                opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
                t = time.perf_counter()
                epoch(student, opt, fns[which], torch.Generator().manual_seed(r))
                times[which].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(examples=len(y), hidden=list(hidden), teacher_hidden=list(teacher_hidden), dtype=dtype,
                build_seconds=build, seconds=med, all=times, speedup=med["on the fly"] / med["store"])


# ---------------------------------------------------------------- bf16 vs fp32

def precision_compare(data, *, hidden=(800, 800), batch_size=128, epochs=3, seeds=1, lr=0.1,
                      peaks: dict | None = None) -> dict:
    """``fit`` on ``data`` (hard labels; the MNIST ``paper`` student recipe: SGD lr 0.1, momentum 0.9,
    cosine schedule over ``epochs``, 40 in that recipe) at fp32 and at bf16, for
    each of ``seeds`` seeds (alternating which precision goes first): the median seconds per
    epoch (``train_seconds``), the final test errors, examples/s and, given ``peaks``
    (``{"fp32": GFLOP/s, "bf16": GFLOP/s}``), the fraction of that peak the epoch reaches."""

    x = data.x_train.reshape(len(data.x_train), -1)
    classes = int(data.y_train.max()) + 1
    times = {"fp32": [], "bf16": []}
    errors = {"fp32": [], "bf16": []}
    test = (data.x_test.reshape(len(data.x_test), -1), data.y_test)
    for s in range(seeds):
        for prec in (("fp32", "bf16") if s % 2 == 0 else ("bf16", "fp32")):
            seed_everything(s)
            model = MLP(x.shape[1], list(hidden), classes)
            cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, schedule="cosine",
                                      seed=s, precision=prec)
            res = fit(model, (x, data.y_train), cfg, test=test, progress=False, log=_quiet)
            times[prec].extend(h["train_seconds"] for h in res.history)
            errors[prec].append(res.test["errors"])
    flops = mlp_flops_per_example(x.shape[1], hidden, classes)
    out = dict(examples=len(x), hidden=list(hidden), batch_size=batch_size, epochs=epochs, seeds=seeds,
               test_n=len(data.y_test), flops_per_example=flops)
    for prec in times:
        sec = statistics.median(times[prec])
        rate = len(x) / sec
        out[prec] = dict(seconds=sec, all=times[prec], examples_per_s=rate, gflops=rate * flops / 1e9,
                         test_errors=errors[prec])
        if peaks and peaks.get(prec):
            out[prec]["peak_fraction"] = rate * flops / 1e9 / peaks[prec]
    out["speedup"] = out["fp32"]["seconds"] / out["bf16"]["seconds"]
    return out


# ---------------------------------------------------------------- torchrun scaling

def _torchrun_cmd(nproc: int) -> list[str]:
    exe = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [exe, "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(port)]


def ddp_scaling(spec: dict, *, rounds: int = 2, processes=(1, 2), timeout: float = 1800) -> dict:
    """Store build and student epoch under ``torchrun`` with 1 and with 2 processes of one thread
    each (alternating the order per round); ``spec`` says what :func:`_ddp_worker` runs. Scaling
    efficiency ``t_1 / (P t_P)`` (1 = perfect)."""
    times = {p: {"build": [], "epoch": []} for p in processes}
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for p in (processes if r % 2 == 0 else tuple(reversed(processes))):
                out = Path(tmp) / f"r{r}-p{p}.json"
                cmd = [*_torchrun_cmd(p), "-m", "distill.tools.bench", "--worker",
                       json.dumps(dict(spec, out=str(out), store=str(Path(tmp) / f"store-r{r}-p{p}")))]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
                if proc.returncode != 0:
                    raise RuntimeError(f"torchrun with {p} processes failed:\n{proc.stderr[-2000:]}")
                got = json.loads(out.read_text())
                times[p]["build"].append(got["build"])
                times[p]["epoch"].extend(got["epochs"])
    med = {p: {k: statistics.median(v) for k, v in t.items()} for p, t in times.items()}
    base = processes[0]
    res = dict(spec={k: v for k, v in spec.items() if k not in ("out", "store")}, rounds=rounds,
               seconds={str(p): m for p, m in med.items()}, all={str(p): t for p, t in times.items()})
    for p in processes[1:]:
        res[f"efficiency {p}"] = {k: med[base][k] / (p / base * med[p][k]) for k in ("build", "epoch")}
    return res


def _ddp_worker(spec: dict) -> None:
    """One torchrun process: build the sharded store (timed, all processes), then ``fit`` a
    student from it, reading its slice of each batch; process 0 writes the times to ``out``."""

    torch.set_num_threads(1)
    distributed.init_from_env()
    try:
        rank, _ = distributed.world()
        data = load_data(spec["data"], spec["train_size"], 1000)
        x = data.x_train.reshape(len(data.x_train), -1)
        classes = int(data.y_train.max()) + 1
        torch.manual_seed(123)
        teacher = Teacher(MLP(x.shape[1], spec["teacher_hidden"], classes))
        distributed.barrier()
        t = time.perf_counter()
        store = build_store(spec["store"], Teacher(teacher), (x, data.y_train), batch_size=spec.get("store_batch", 2000),
                            progress=False, log=_quiet)
        distributed.barrier()
        build = time.perf_counter() - t
        seed_everything(0)
        cfg = TrainConfig(epochs=spec["epochs"], batch_size=spec["batch_size"], lr=0.01, temperature=20.0,
                                  schedule="constant")
        res = fit(MLP(x.shape[1], spec["hidden"], classes), (x, data.y_train), cfg, teacher=store,
                          progress=False, log=_quiet)
        if rank == 0:
            Path(spec["out"]).write_text(json.dumps(dict(build=build,
                                                         epochs=[h["train_seconds"] for h in res.history])))
    finally:
        distributed.shutdown()


# ---------------------------------------------------------------- the command

QUICK = dict(train_size=1000, test_size=200, hidden=[32], teacher_hidden=[64], rounds=1, epochs=1,
             precision_epochs=1, seeds=1, matmul=128, data="synthetic")
FULL = dict(train_size=None, test_size=None, hidden=[800, 800], teacher_hidden=[1200, 1200], rounds=3, epochs=2,
            precision_epochs=3, seeds=1, matmul=2048, data="mnist")


def run(*, quick: bool = False, skip=(), data: str | None = None, train_size: int | None = None,
        rounds: int | None = None, seeds: int | None = None, precision_epochs: int | None = None,
        batch_size: int = 128, log=print) -> dict:
    """Every section not in ``skip``; returns the results (what ``--json`` writes)."""
    p = dict(QUICK if quick else FULL)
    for k, v in dict(data=data, train_size=train_size, rounds=rounds, seeds=seeds,
                     precision_epochs=precision_epochs).items():
        if v is not None:
            p[k] = v
    bad = set(skip) - set(SECTIONS)
    if bad:
        raise ValueError(f"unknown bench section(s) {sorted(bad)}; choose from {SECTIONS}")
    info = machine()
    results = dict(machine=info, settings=dict(p, batch_size=batch_size, quick=quick, skip=sorted(skip)))
    warning = busy_warning(info)
    if warning:
        log(warning)
        results["warning"] = warning
    d = load_data(p["data"], p["train_size"], p["test_size"])
    x, y = d.x_train.reshape(len(d.x_train), -1), d.y_train
    if "peak" not in skip:
        log("[bench] matrix-product peak ...")
        results["peak"] = {name: matmul_gflops(dt, p["matmul"]) for name, dt in
                           (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    if "overhead" not in skip:
        log("[bench] fit vs a bare loop ...")
        results["overhead"] = fit_vs_bare(x, y, hidden=p["hidden"], batch_size=batch_size, epochs=p["epochs"],
                                          rounds=p["rounds"])
    if "store" not in skip:
        log("[bench] soft-target store vs the teacher on the fly ...")
        results["store"] = store_vs_on_the_fly(x, y, hidden=p["hidden"], teacher_hidden=p["teacher_hidden"],
                                               batch_size=batch_size, rounds=p["rounds"])
    if "precision" not in skip:
        log("[bench] bf16 vs fp32 ...")
        results["precision"] = precision_compare(d, hidden=p["hidden"], batch_size=batch_size,
                                                 epochs=p["precision_epochs"], seeds=p["seeds"],
                                                 peaks=results.get("peak"))
    if "ddp" not in skip:
        log("[bench] torchrun, 1 and 2 processes ...")
        spec = dict(data=p["data"], train_size=p["train_size"], hidden=p["hidden"], teacher_hidden=p["teacher_hidden"],
                    epochs=max(1, p["epochs"]), batch_size=batch_size)
        results["ddp"] = ddp_scaling(spec, rounds=max(1, p["rounds"] - 1))
    return results


def table(results: dict) -> str:
    """The results as a Markdown table (one row per figure) under the machine's description."""
    m = results["machine"]
    env = " ".join(f"{k}={v}" for k, v in m["env"].items()) or "(no OMP_/MKL_ variables set)"
    lines = [f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), torch {m['torch']} with "
             f"{m['torch_threads']} threads, {env}; load average {m['load_average'][0]}, busy CPUs before start "
             f"{m['busy_cpus']}" + (f", GPU {m['gpu']}" if m.get("gpu") else ""),
             "", "| figure | value | detail |", "|---|---|---|"]

    def row(name, value, detail=""):
        lines.append(f"| {name} | {value} | {detail} |")

    if "peak" in results:
        pk = results["peak"]
        row("matrix product fp32 / bf16", f"{pk['fp32']:.0f} / {pk['bf16']:.0f} GFLOP/s",
            f"{results['settings']['matmul']}² (bf16 {pk['bf16'] / pk['fp32']:.1f}x)")
    if "overhead" in results:
        o = results["overhead"]
        s = o["seconds"]
        for kind, goal in (("tensors", 1.05), ("loader", 1.15)):
            if f"ratio {kind}" in o:
                row(f"fit / bare loop, {kind}", f"**{o[f'ratio {kind}']:.3f}**",
                    f"{s[f'fit {kind}']:.3f} vs {s[f'bare {kind}']:.3f} s/epoch, MLP {o['hidden']}, "
                    f"{o['examples']:,} examples (goal <= {goal})")
    if "store" in results:
        st = results["store"]
        row("student epoch: store vs teacher on the fly", f"**{st['speedup']:.2f}x**",
            f"{st['seconds']['store']:.2f} vs {st['seconds']['on the fly']:.2f} s/epoch; store build (once) "
            f"{st['build_seconds']:.2f} s; teacher {st['teacher_hidden']}")
    if "precision" in results:
        pr = results["precision"]
        row("epoch bf16 vs fp32", f"**{pr['speedup']:.2f}x**",
            f"{pr['bf16']['seconds']:.2f} vs {pr['fp32']['seconds']:.2f} s/epoch, MLP {pr['hidden']}, batch "
            f"{pr['batch_size']}")
        for prec in ("fp32", "bf16"):
            q = pr[prec]
            frac = f", {100 * q['peak_fraction']:.0f} % of the {prec} matrix-product peak" if "peak_fraction" in q \
                else ""
            row(f"{prec} student", f"{q['examples_per_s']:,.0f} examples/s",
                f"{q['gflops']:.0f} GFLOP/s{frac}; test errors {q['test_errors']} / {pr['test_n']} after "
                f"{pr['epochs']} epochs")
    if "ddp" in results:
        dd = results["ddp"]
        s1, s2 = dd["seconds"]["1"], dd["seconds"]["2"]
        eff = dd["efficiency 2"]
        row("torchrun 2 processes: store build", f"**{100 * eff['build']:.0f} %** efficiency",
            f"{s2['build']:.2f} s vs {s1['build']:.2f} s with 1 process (1 thread each)")
        row("torchrun 2 processes: student epoch", f"**{100 * eff['epoch']:.0f} %** efficiency",
            f"{s2['epoch']:.2f} s vs {s1['epoch']:.2f} s with 1 process (1 thread each)")
    if results.get("warning"):
        lines += ["", results["warning"]]
    return "\n".join(lines)


if __name__ == "__main__":  # torchrun ... -m distill.tools.bench --worker SPEC (used by ddp_scaling)
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _ddp_worker(json.loads(sys.argv[2]))
    else:
        print("run `distill bench`; this module's main is the torchrun worker of its ddp section", file=sys.stderr)
        sys.exit(2)

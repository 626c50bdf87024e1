"""Recipe sweeps on a GPU: K MLPs trained at once as batched matrices (one ``bmm`` per layer),
each with its own lr, cosine horizon, momentum, max-norm, loss (hard / soft at T / zero-meaned
logit MSE), hard-label weight and teacher. Exploration only: the package's training loop stays
the one place where models are trained; this mirrors its recipe (SGD with momentum, per-epoch
cosine lr, ``nn.Linear`` init, dropout, max-norm after each step, integer jitter in [-s, s] with
zero fill, batch 128) so that a sweep of 16 students or 8 teachers costs minutes, not hours.
Test errors are reported on the two halves of the test set: A (first 5,000) for choosing a
recipe, B (last 5,000) to check the choice. Matrix products use TF32.

    # here: MNIST + teacher weights as plain files (the GPU machine has no MNIST, no distill)
    python benchmarks/gpu_sweep.py export --cache runs/cache \
        --teacher paper=teacher-a00df8efc46616fc --teacher long=teacher-549b1f6577277e37 --out .gpu
    # on the GPU machine (the repo travels; .gpu carried): writes OUT/<group>.json and OUT/sweep.log
    PYTHONPATH=src python benchmarks/gpu_sweep.py run students reg teachers --assets .gpu
    PYTHONPATH=src python benchmarks/gpu_sweep.py run best --assets .gpu   # students of OUT's best teacher
    PYTHONPATH=src python benchmarks/gpu_sweep.py run long --assets .gpu --best-teacher .gpu/teacher_best.npz

Set TINY=1 for a smoke test on CPU (3,000 training images, 5 % of the epochs).

Teacher weights travel as NumPy ``.npz`` files (``w0, b0, w1, b1, ...``, ``W`` of shape (in, out)),
read with ``allow_pickle=False``: nothing in this script unpickles.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from distill.data.augment import jitter  # the package's own jitter (runs on the tensors' device)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
OUT = os.environ.get("OUT", "/tmp/sweep_out")
os.makedirs(OUT, exist_ok=True)
TINY = os.environ.get("TINY") == "1"
BUDGET = float(os.environ.get("BUDGET", "480"))
T0 = time.time()
torch.backends.cuda.matmul.allow_tf32 = True
LOG = open(os.path.join(OUT, "sweep.log"), "a")


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.write(s + "\n")
    LOG.flush()


XTR = YTR = XTE = YTE = None
ASSETS = "."


def load_assets(assets):
    """MNIST from ``assets/mnist.npz`` (uint8 pixels, int64 labels) onto the device."""
    global XTR, YTR, XTE, YTE, ASSETS
    ASSETS = assets
    d = np.load(os.path.join(assets, "mnist.npz"))
    XTR = torch.tensor(d["xtr"], dtype=torch.float32, device=DEV).div_(255).reshape(-1, 784)
    YTR = torch.tensor(d["ytr"], device=DEV)
    XTE = torch.tensor(d["xte"], dtype=torch.float32, device=DEV).div_(255).reshape(-1, 784)
    YTE = torch.tensor(d["yte"], device=DEV)
    if TINY:
        XTR, YTR = XTR[:3000], YTR[:3000]


def save_weights(path, ws, dtype=np.float32):
    """``[(W (in, out), b)]`` per layer as ``path`` (.npz: w0, b0, w1, b1, ...)."""
    arrays = {}
    for i, (w, b) in enumerate(ws):
        arrays[f"w{i}"] = w.detach().float().cpu().numpy().astype(dtype)
        arrays[f"b{i}"] = b.detach().float().cpu().numpy().reshape(-1).astype(dtype)
    np.savez(path, **arrays)


def load_weights(path):
    """The layers saved by :func:`save_weights`, as float32 tensors on the device."""
    with np.load(path, allow_pickle=False) as d:
        n = len([k for k in d.files if k.startswith("w")])
        return [(torch.tensor(d[f"w{i}"], dtype=torch.float32, device=DEV),
                 torch.tensor(d[f"b{i}"], dtype=torch.float32, device=DEV)) for i in range(n)]


def export(cache, teachers, out):
    """Write ``out/mnist.npz`` and ``out/teacher_<name>.npz`` (see :func:`save_weights`) from
    distill's MNIST loader and MLP checkpoints; the GPU machine then needs only torch and numpy."""
    from distill.checkpoints import load_tensors
    from distill.data import load_mnist

    os.makedirs(out, exist_ok=True)
    data = load_mnist(log=lambda *a: None)

    def u8(x):
        return (x.numpy() * 255).round().astype(np.uint8)

    np.savez_compressed(os.path.join(out, "mnist.npz"), xtr=u8(data.x_train), ytr=data.y_train.numpy(),
                        xte=u8(data.x_test), yte=data.y_test.numpy())
    for spec in teachers:
        name, stage = spec.split("=", 1)
        t, side = load_tensors(os.path.join(cache, stage, "model"))
        if (side.get("factory") or {}).get("target") != "distill.models:MLP":
            raise SystemExit(f"{stage} is not a distill.models.classifiers.MLP checkpoint")
        keys = sorted((k for k in t if k.endswith("weight")), key=lambda k: int(k.split(".")[1]))
        save_weights(os.path.join(out, f"teacher_{name}.npz"), [(t[k].T, t[k[:-6] + "bias"]) for k in keys])
        print(f"wrote {out}/teacher_{name}.npz from {stage}")
    print(f"wrote {out}/mnist.npz")


def teacher_forward(ws, x):
    h = x
    for i, (w, b) in enumerate(ws):
        h = h @ w + b
        if i < len(ws) - 1:
            h = torch.relu(h)
    return h


def load_teacher(name):
    return load_weights(name if name.endswith(".npz") else os.path.join(ASSETS, f"teacher_{name}.npz"))


def run_group(name, sizes, cfgs, x, y, targets=None, batch=128, jit=0, drop_in=0.0, drop_hid=0.0,
              eval_every=10, seed=0, budget=None, keep_best=False):
    """cfgs: list of dicts with lr, E (cosine horizon, epochs), mom, mn (max-norm or None),
    mode ('hard' | 'soft' | 'mse'), T, hw, teacher (index into targets' first axis), seed."""
    K = len(cfgs)
    g = torch.Generator(device=DEV)
    g.manual_seed(seed)
    Ws, Bs = [], []
    for fi, fo in zip(sizes[:-1], sizes[1:]):
        bound = 1 / math.sqrt(fi)
        Ws.append(((torch.rand(K, fi, fo, device=DEV, generator=g) * 2 - 1) * bound).requires_grad_())
        Bs.append(((torch.rand(K, 1, fo, device=DEV, generator=g) * 2 - 1) * bound).requires_grad_())
    params = Ws + Bs
    bufs = [torch.zeros_like(p) for p in params]
    lr0 = torch.tensor([c["lr"] for c in cfgs], device=DEV)
    E = [c["E"] for c in cfgs]
    mom = torch.tensor([c.get("mom", 0.9) for c in cfgs], device=DEV).view(K, 1, 1)
    mn = torch.tensor([c.get("mn") or float("inf") for c in cfgs], device=DEV).view(K, 1, 1)
    T = torch.tensor([float(c.get("T", 1.0)) for c in cfgs], device=DEV).view(K, 1, 1)
    hw = torch.tensor([c.get("hw", 0.0) if c["mode"] != "hard" else 1.0 for c in cfgs], device=DEV).view(K, 1)
    sw = torch.tensor([1.0 if c["mode"] == "soft" else 0.0 for c in cfgs], device=DEV).view(K, 1)
    mw = torch.tensor([1.0 if c["mode"] == "mse" else 0.0 for c in cfgs], device=DEV).view(K, 1)
    tidx = torch.tensor([c.get("teacher", 0) for c in cfgs], device=DEV)
    per_model = targets[tidx] if targets is not None else None  # (K, N, C), gathered once
    n = x.shape[0]
    maxE = max(E)
    results = {i: dict(cfg=cfgs[i], curve=[]) for i in range(K)}

    def forward(xb, train):
        h = xb
        if train and drop_in > 0:
            h = h * (torch.rand(h.shape, device=DEV, generator=g) >= drop_in) / (1 - drop_in)
        for li, (w, b) in enumerate(zip(Ws, Bs)):
            h = torch.baddbmm(b, h, w)
            if li < len(Ws) - 1:
                h = torch.relu(h)
                if train and drop_hid > 0:
                    h = h * (torch.rand(h.shape, device=DEV, generator=g) >= drop_hid) / (1 - drop_hid)
        return h

    @torch.no_grad()
    def evaluate():
        errs = torch.zeros(K, 2, device=DEV)
        for s in range(0, XTE.shape[0], 2500):
            xb = XTE[s:s + 2500].unsqueeze(0).expand(K, -1, -1)
            pred = forward(xb, False).argmax(-1)
            wrong = (pred != YTE[s:s + 2500][None]).float()
            half = 0 if s < 5000 else 1
            errs[:, half] += wrong.sum(1)
        return errs.long().tolist()

    t_start = time.time()
    for ep in range(maxE):
        lrs = torch.tensor([c["lr"] * 0.5 * (1 + math.cos(math.pi * ep / c["E"])) if ep < c["E"] else 0.0
                            for c in cfgs], device=DEV).view(K, 1, 1)
        perm = torch.randperm(n, device=DEV, generator=g)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            xb = x[idx]
            B = xb.shape[0]
            if jit:
                xb = jitter(xb.unsqueeze(0).expand(K, -1, -1).reshape(K * B, 784), (28, 28), jit, g).view(K, B, 784)
            else:
                xb = xb.unsqueeze(0).expand(K, -1, -1)
            z = forward(xb, True)  # (K, B, C)
            loss = hw * F.cross_entropy(z.reshape(K * B, -1), y[idx].repeat(K), reduction="none").view(K, B)
            if targets is not None:
                tv = per_model[:, idx]  # (K, B, C)
                p = torch.softmax(tv / T, -1)
                soft = -(p * torch.log_softmax(z / T, -1)).sum(-1) * (T * T).view(K, 1)
                zc = z - z.mean(-1, keepdim=True)
                tc = tv - tv.mean(-1, keepdim=True)
                mse = ((zc - tc) ** 2).sum(-1) / (2 * z.shape[-1])
                loss = loss + sw * soft + mw * mse
            loss.mean(1).sum().backward()
            with torch.no_grad():
                for p_, b_ in zip(params, bufs):
                    b_.mul_(mom).add_(p_.grad)
                    p_.sub_(lrs * b_)
                    p_.grad = None
                for w in Ws:
                    norms = w.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    w.mul_((mn / norms).clamp(max=1.0))
        if ep == 0:
            per = time.time() - t_start
            log(f"[{name}] epoch 1 took {per:.2f}s for K={K}; {maxE} epochs ~ {per * maxE:.0f}s")
        done_now = [i for i in range(K) if E[i] == ep + 1]
        if (ep + 1) % eval_every == 0 or done_now or ep + 1 == maxE:
            errs = evaluate()
            for i in range(K):
                if ep + 1 <= E[i]:
                    results[i]["curve"].append((ep + 1, errs[i][0], errs[i][1]))
            log(f"[{name}] ep {ep + 1} t={time.time() - T0:.0f}s " +
                " ".join(f"{i}:{errs[i][0] + errs[i][1]}" for i in range(K) if ep + 1 <= E[i]))
        if budget and time.time() - t_start > budget:
            log(f"[{name}] budget {budget}s spent at epoch {ep + 1}; stopping")
            break
    for i in range(K):
        c = results[i]["curve"]
        results[i]["final"] = c[-1] if c else None
        results[i]["finished"] = bool(c) and c[-1][0] == E[i]
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=1)
    for i in range(K):
        fin = results[i]["final"]
        log(f"[{name}] {i} {json.dumps(cfgs[i])} -> A {fin[1] if fin else '-'} B {fin[2] if fin else '-'} "
            f"total {fin[1] + fin[2] if fin else '-'} (ep {fin[0] if fin else '-'}{'' if results[i]['finished'] else ', UNFINISHED'})")
    if keep_best:
        return [(w.detach(), b.detach()) for w, b in zip(Ws, Bs)], results
    return results


def logits_of(ws, x):
    with torch.no_grad():
        return torch.cat([teacher_forward(ws, x[s:s + 10000]) for s in range(0, x.shape[0], 10000)])


def stratified(y, fraction, seed=0):
    """Indices of a stratified random ``fraction`` of each class of ``y``."""
    g = torch.Generator().manual_seed(seed)
    sel = []
    for c in range(int(y.max()) + 1):
        ids = (y == c).nonzero().flatten().cpu()
        sel.append(ids[torch.randperm(len(ids), generator=g)[:round(len(ids) * fraction)]])
    return torch.cat(sel).to(y.device)


def saved_teacher_targets(path):
    """Logits ``(1, N, C)`` over the training images of a teacher saved by the ``teachers`` group."""
    tb = load_weights(path)
    log(f"teacher {path}: test errors {(logits_of(tb, XTE).argmax(1) != YTE).sum().item()}")
    return logits_of(tb, XTR)[None]


def run_best(path, ep):
    """Students (full data and 3 %) distilled from a teacher saved by the ``teachers`` group."""
    tgt = saved_teacher_targets(path)
    D = dict(mode="soft", T=20, hw=0.1, lr=0.03, E=ep(40), teacher=0)
    cfgs = [dict(D), dict(D), dict(D), dict(D, T=10), dict(D, mode="mse"), dict(D, E=ep(80)), dict(D, T=5),
            dict(mode="hard", lr=0.1, E=ep(40))]
    run_group("students_best", [784, 800, 800, 10], cfgs, XTR, YTR, tgt, seed=5, budget=110)
    sel = stratified(YTR, 0.03)
    R = dict(mode="soft", T=20, hw=0.1, lr=0.03, E=ep(170), teacher=0)
    run_group("reg_best", [784, 800, 800, 10], [dict(R), dict(R), dict(R, T=8), dict(R, mode="mse")],
              XTR[sel], YTR[sel], tgt[:, sel], eval_every=50, seed=6, budget=30)


def run_long(path, ep):
    """Longer, slower student schedules from a saved teacher (2026-11-26): a 200-epoch group
    (stopped by the budget at epoch 130 on the H200) and three seeds of lr 0.01 / 80 epochs beside
    three of the preset's lr 0.03 / 40 epochs."""
    tgt = saved_teacher_targets(path)
    D = dict(mode="soft", T=20, hw=0.1, teacher=0)
    run_group("long", [784, 800, 800, 10], [dict(D, lr=0.003, mom=0.99, E=ep(200)), dict(D, lr=0.01, mom=0.99, E=ep(200)),
                                             dict(D, lr=0.03, E=ep(200)), dict(D, lr=0.01, E=ep(200)),
                                             dict(D, lr=0.03, E=ep(40))], XTR, YTR, tgt, seed=11, budget=150)
    run_group("long_seeds", [784, 800, 800, 10], [dict(D, lr=0.01, E=ep(80))] * 3 + [dict(D, lr=0.03, E=ep(40))] * 3,
              XTR, YTR, tgt, seed=11, budget=115)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--cache", default="runs/cache")
    e.add_argument("--teacher", action="append", default=[], help="NAME=STAGE_DIR (e.g. paper=teacher-a00d...)")
    e.add_argument("--out", default=".gpu")
    r = sub.add_parser("run")
    r.add_argument("groups", nargs="+", choices=["students", "reg", "teachers", "best", "long"])
    r.add_argument("--assets", default=".gpu")
    r.add_argument("--best-teacher", help="for 'best'/'long': a teacher .npz (default OUT/best_teacher.npz)")
    args = ap.parse_args()
    if args.cmd == "export":
        return export(args.cache, args.teacher, args.out)
    load_assets(args.assets)
    which = args.groups
    sc = 0.05 if TINY else 1.0

    def ep(e):
        return max(1, int(e * sc))

    if which == ["best"]:
        return run_best(args.best_teacher or os.path.join(OUT, "best_teacher.npz"), ep)
    if which == ["long"]:  # e.g. --best-teacher .gpu/teacher_best.npz
        return run_long(args.best_teacher or os.path.join(OUT, "best_teacher.npz"), ep)
    tp, tl = load_teacher("paper"), load_teacher("long")
    tgt = torch.stack([logits_of(tp, XTR), logits_of(tl, XTR)])  # (2, N, 10)
    for nm, ws in (("paper", tp), ("long", tl)):
        log(f"teacher {nm}: test errors {(logits_of(ws, XTE).argmax(1) != YTE).sum().item()}")
    D = dict(mode="soft", T=20, hw=0.1, lr=0.03, E=ep(40), teacher=1)
    if "students" in which:
        cfgs = [dict(mode="hard", lr=0.1, E=ep(40)), dict(D), dict(D, teacher=0), dict(D, E=ep(100)),
                dict(D, E=ep(200)), dict(D, lr=0.01), dict(D, lr=0.1), dict(D, T=10), dict(D, T=5),
                dict(D, T=3), dict(D, hw=0.0), dict(D, hw=0.5), dict(D, mode="mse", lr=0.03),
                dict(D, mode="mse", lr=0.03, E=ep(100)), dict(D, mom=0.5, lr=0.1), dict(D, T=5, E=ep(100))]
        budget = max(60, BUDGET - (time.time() - T0)) * 0.42
        run_group("students", [784, 800, 800, 10], cfgs, XTR, YTR, tgt, budget=budget, seed=1)
    if "reg" in which:
        sel = stratified(YTR, 0.03)
        xs, ys, ts = XTR[sel], YTR[sel], tgt[:, sel]
        R = dict(mode="soft", T=20, hw=0.1, lr=0.03, E=ep(170), teacher=0)
        cfgs = [dict(mode="hard", lr=0.1, E=ep(170)), dict(R), dict(R, teacher=1), dict(R, E=ep(1000)),
                dict(R, T=8), dict(R, T=5), dict(R, T=3), dict(R, lr=0.01, E=ep(1000)), dict(R, lr=0.1),
                dict(R, mode="mse"), dict(R, mode="mse", E=ep(1000)), dict(R, hw=0.0),
                dict(R, mode="mse", lr=0.1, E=ep(1000)), dict(mode="hard", lr=0.1, E=ep(1000)),
                dict(R, T=8, E=ep(1000)), dict(R, mom=0.99, lr=0.003, E=ep(1000))]
        run_group("reg", [784, 800, 800, 10], cfgs, xs, ys, ts, eval_every=50, seed=2,
                  budget=max(30, BUDGET - (time.time() - T0)) * 0.15)
    if "teachers" in which:
        Tc = dict(mode="hard", lr=0.1, mom=0.9, mn=3.5, E=ep(200))
        cfgs = [dict(Tc, E=ep(100)), dict(Tc), dict(Tc), dict(Tc, lr=0.2), dict(Tc, lr=0.05),
                dict(Tc, mom=0.95), dict(Tc, mn=2.0), dict(Tc, mn=2.0, lr=0.2)]
        budget = max(60, BUDGET - (time.time() - T0) - 20)
        ws, res = run_group("teachers", [784, 1200, 1200, 10], cfgs, XTR, YTR, None, jit=2, drop_in=0.2,
                            drop_hid=0.5, eval_every=20, seed=3, budget=budget, keep_best=True)
        # chosen on half A of the test set only
        best = min(range(len(cfgs)), key=lambda i: res[i]["final"][1] if res[i]["finished"] else 1e9)
        save_weights(os.path.join(OUT, "best_teacher.npz"), [(w[best], b[best, 0]) for w, b in ws], np.float16)
        log(f"saved teacher {best} ({json.dumps(cfgs[best])})")
    if "best" in which:
        run_best(args.best_teacher or os.path.join(OUT, "best_teacher.npz"), ep)
    log(f"all done in {time.time() - T0:.0f}s")


if __name__ == "__main__":
    main()

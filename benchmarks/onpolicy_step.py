"""The cost of on-policy distillation: an on-policy step (λ = 1: the student samples the
completions, the teacher scores them) against an off-policy step (λ = 0), and the built-in GPT's
decoding with its key/value cache against decoding without it.

    python benchmarks/onpolicy_step.py [--steps 20] [--rounds 3] [--batch-size 16] [--prompt-tokens 64]
                                       [--new-tokens 64] [--vocab 4096] [--models gpt,hf,trl] [--json out.json] [--tiny]
                                       [--trl-python /tmp/trlvenv/bin/python]

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

``trl``: the same GPT-2 pair and the same rows in TRL's ``GKDTrainer`` (``lmbda`` = 0 and 1, ``beta``
= 0: forward KL, sampling temperature 1, top-p 1, top-k 0, ``max_new_tokens`` as above, Hugging Face
``generate`` with its KV cache, AdamW at a constant lr, no gradient clipping), run as a subprocess
of this file (``--trl-worker``) in the TRL environment (``--trl-python``; see
``benchmarks/README_lm.md``), which builds the models from the same configs and seeds. Its ms per
step is the seconds between the trainer's ``on_train_begin`` and ``on_train_end`` over the steps;
each round trains both settings from the same initial weights, after one warm-up round.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_TRL_PYTHON = "/tmp/trlvenv/bin/python"


def sizes(tiny: bool) -> dict:
    """(layers, heads, width) of the student and the teacher."""
    return dict(student=(1, 1, 16), teacher=(1, 2, 32)) if tiny else dict(student=(2, 2, 128), teacher=(4, 4, 256))


def hf_pair(vocab: int, context: int, tiny: bool):
    """The GPT-2 student and teacher built from configs (seeds 0 and 1); imports nothing of distill,
    so that the TRL worker builds the very same models."""
    from transformers import AutoModelForCausalLM, GPT2Config

    out = {}
    for role, (layers, heads, width) in sizes(tiny).items():
        torch.manual_seed(0 if role == "student" else 1)
        cfg = GPT2Config(vocab_size=vocab, n_positions=context, n_layer=layers, n_head=heads, n_embd=width,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                         pad_token_id=0)
        out[role] = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    return out["student"], out["teacher"]


def models(kind: str, vocab: int, context: int, tiny: bool):
    if kind == "hf":
        return hf_pair(vocab, context, tiny)
    from distill.models.lm import GPT

    out = {}
    for role, (layers, heads, width) in sizes(tiny).items():
        torch.manual_seed(0 if role == "student" else 1)
        out[role] = GPT(vocab, block_size=context, n_layer=layers, n_head=heads, n_embd=width)
    return out["student"], out["teacher"]


def token_pairs(n: int, prompt: int, completion: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts [n, prompt] and completions [n, completion] (ids 1..vocab-1; 0 is EOS/pad)."""
    g = torch.Generator().manual_seed(seed)
    both = torch.randint(1, vocab, (n, prompt + completion), generator=g)
    return both[:, :prompt], both[:, prompt:]


def rows(prompts: torch.Tensor, completions: torch.Tensor, vocab: int):
    from distill.data.prompts import prompt_pairs

    return prompt_pairs(list(zip(prompts.tolist(), completions.tolist())), eos_id=0, pad_id=0, vocab_size=vocab)


def step_ms(student, teacher, data, lam: float, new_tokens: int, batch: int, steps: int) -> tuple[float, float]:
    """(ms per step, generate share) of one epoch of ``steps`` steps."""
    import distill

    init = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = distill.TrainConfig(epochs=1, batch_size=batch, optimizer="adamw", lr=1e-3, schedule="constant",
                              log_every=0, on_policy=distill.OnPolicy(lam=lam, max_new_tokens=new_tokens))
    res = distill.fit(student, data.head(batch * steps), cfg, teacher=teacher, progress=False, log=lambda *a: None)
    student.load_state_dict(init)
    h = res.history[0]
    return 1000 * h["train_seconds"] / steps, h["generate_share"]


def decode(student, prompts, new_tokens: int, use_cache: bool):
    from distill.models.lm import generate, left_pad

    ids, mask = left_pad(prompts, 0)
    t0 = time.perf_counter()
    seq, _ = generate(student, ids, mask, max_new_tokens=new_tokens, temperature=0.0, use_cache=use_cache)
    return ids.shape[0] * new_tokens / (time.perf_counter() - t0), seq


def trl_worker(spec_file: str) -> None:
    """Time GKDTrainer steps at lmbda 0 and 1 as ``spec`` says and write the result JSON. Runs in the
    TRL environment: imports nothing of distill."""
    import copy

    import transformers
    import trl
    from datasets import Dataset
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    spec = json.loads(Path(spec_file).read_text())
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(spec["threads"])
    vocab = spec["vocab"]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({str(i): i for i in range(vocab)}, unk_token="0")),
                                  pad_token="0", eos_token="0")
    student0, teacher = hf_pair(vocab, spec["context"], spec["tiny"])
    teacher.eval()
    data = torch.load(spec["data"], weights_only=True)
    prompts, completions = data["prompts"], data["completions"]
    ids = torch.cat([prompts, completions], 1)
    labels = ids.clone()
    labels[:, :prompts.shape[1]] = -100
    cols = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, prompts=prompts,
                prompt_attention_mask=torch.ones_like(prompts))
    ds = Dataset.from_dict({k: v.tolist() for k, v in cols.items()})

    def collate(batch):
        return {k: torch.tensor([r[k] for r in batch], dtype=torch.long) for k in cols}

    gen_seconds = [0.0]
    plain = GKDTrainer.generate_on_policy_outputs

    def timed(model, inputs, config):
        t = time.perf_counter()
        out = plain(model, inputs, config)
        gen_seconds[0] += time.perf_counter() - t
        return out

    GKDTrainer.generate_on_policy_outputs = staticmethod(timed)

    class Clock(TrainerCallback):
        begin = end = 0.0

        def on_train_begin(self, args, state, control, **kw):
            self.begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.end = time.perf_counter()

    def one(lmbda: float, steps: int) -> tuple[float, float]:
        clock = Clock()
        gen_seconds[0] = 0.0
        args = GKDConfig(
            output_dir=str(Path(spec["out"]) / "trainer"), max_steps=steps, per_device_train_batch_size=spec["batch_size"],
            gradient_accumulation_steps=1, learning_rate=1e-3, weight_decay=0.0, lr_scheduler_type="constant",
            warmup_steps=0, max_grad_norm=0.0, optim="adamw_torch", lmbda=lmbda, beta=0.0, seq_kd=False,
            temperature=1.0, max_new_tokens=spec["new_tokens"], max_length=spec["context"],
            train_sampling_strategy="sequential", dataloader_num_workers=0, logging_strategy="no", save_strategy="no",
            eval_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=0,
            dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
        trainer = GKDTrainer(model=copy.deepcopy(student0), teacher_model=teacher, args=args, train_dataset=ds,
                             data_collator=collate, processing_class=tok, callbacks=[clock])
        trainer.train()
        seconds = clock.end - clock.begin
        return 1000 * seconds / steps, gen_seconds[0] / seconds

    one(1.0, 1)  # warm-up
    off, on, share = [], [], []
    for _ in range(spec["rounds"]):
        o, _ = one(0.0, spec["steps"])
        n, g = one(1.0, spec["steps"])
        off.append(o), on.append(n), share.append(g)
    Path(spec["out"], "result.json").write_text(json.dumps(dict(
        off=off, on=on, share=share, trl=trl.__version__, transformers=transformers.__version__,
        torch=torch.__version__, threads=torch.get_num_threads())))


def run_trl(python: str, prompts, completions, a, context: int) -> dict:
    """One row for TRL's GKDTrainer, measured by the worker in the TRL environment."""
    with tempfile.TemporaryDirectory() as work:
        torch.save(dict(prompts=prompts, completions=completions), Path(work, "data.pt"))
        spec = dict(vocab=a.vocab, context=context, tiny=a.tiny, data=str(Path(work, "data.pt")), out=work,
                    steps=a.steps, rounds=a.rounds, batch_size=a.batch_size, new_tokens=a.new_tokens,
                    threads=torch.get_num_threads())
        Path(work, "spec.json").write_text(json.dumps(spec))
        log_file = Path(work, "trl.log")
        with open(log_file, "w") as f:
            proc = subprocess.run([python, os.path.abspath(__file__), "--trl-worker", str(Path(work, "spec.json"))],
                                  stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1"))
        if proc.returncode != 0 or not Path(work, "result.json").is_file():
            tail = log_file.read_text().strip().splitlines()[-25:]
            raise SystemExit(f"the TRL worker failed (exit {proc.returncode}):\n" + "\n".join(tail))
        res = json.loads(Path(work, "result.json").read_text())
    return dict(model=f"hf, trl {res['trl']} GKDTrainer", off_ms=statistics.median(res["off"]),
                on_ms=statistics.median(res["on"]),
                ratio=statistics.median(n / o for n, o in zip(res["on"], res["off"])),
                generate_share=statistics.median(res["share"]), versions={k: res[k] for k in ("trl", "transformers", "torch")})


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--trl-worker":
        return trl_worker(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--models", default="gpt,hf,trl")
    ap.add_argument("--trl-python", default=DEFAULT_TRL_PYTHON)
    ap.add_argument("--json")
    ap.add_argument("--tiny", action="store_true", help="a smoke run of the same code (not a measurement)")
    a = ap.parse_args()
    if a.tiny:
        a.steps, a.rounds, a.batch_size, a.prompt_tokens, a.new_tokens, a.decode_tokens, a.vocab = 2, 1, 4, 8, 8, 16, 64
    context = max(a.prompt_tokens + a.new_tokens, a.prompt_tokens + a.decode_tokens)
    prompts, completions = token_pairs(a.batch_size * a.steps, a.prompt_tokens, a.new_tokens, a.vocab)
    data = rows(prompts, completions, a.vocab)
    results = []
    for kind in a.models.split(","):
        if kind == "trl":
            if not Path(a.trl_python).is_file():
                print(f"trl: no interpreter at {a.trl_python} (see benchmarks/README_lm.md); skipped")
                continue
            results.append(run_trl(a.trl_python, prompts, completions, a, context))
            print(json.dumps(results[-1]))
            continue
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
            heads = data.prompts()[:a.batch_size]
            decode(student, heads, 4, True)
            cached, uncached, same = [], [], True
            for _ in range(a.rounds):
                c, sc = decode(student, heads, a.decode_tokens, True)
                u, su = decode(student, heads, a.decode_tokens, False)
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

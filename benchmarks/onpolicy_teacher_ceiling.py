"""Two readings of a finished ``distill reproduce lm --preset onpolicy --out OUT`` run.

    python benchmarks/onpolicy_teacher_ceiling.py --out OUT --teacher OUT/stages/teacher-KEY/model
    python benchmarks/onpolicy_teacher_ceiling.py --out OUT --paired

``--teacher``: the teacher's NLL of its *own* greedy and sampled continuations of the preset's
held-out prompts (sampling seeds 0-2), the reference a student that wrote exactly like its teacher
would reach. ``--paired``: each row's teacher NLL of its sampled continuations and its test NLL
against the off-policy control of the same seed (which continued the same warm start).
"""
from __future__ import annotations

import argparse
import json
import statistics


def ceiling(out: str, teacher_path: str) -> dict:
    from distill.checkpoints import load_checkpoint
    from distill.data.prompts import split_blocks
    from distill.data.text import load_text
    from distill.experiments.lm import PRESETS, REPORT_PROMPTS
    from distill.tools.generations import generation_report

    p = PRESETS["onpolicy"]
    splits = load_text("gutenberg", tokenizer=f"bpe:{p.vocab}", block_size=p.block_size, folder=out, log=lambda *a: None)
    tok, new = splits.tokenizer, p.block_size - p.prompt_tokens
    held = split_blocks(splits.test.head(p.eval_blocks), p.prompt_tokens, new, eos_id=tok.eos_id,
                        pad_id=tok.pad_id).head(REPORT_PROMPTS)
    teacher = load_checkpoint(teacher_path)[0]
    got = {}
    for seed in range(3):
        rep = generation_report(teacher, teacher, held.prompts(), max_new_tokens=new, seed=seed,
                                eos_id=tok.eos_id, pad_id=tok.pad_id, tokenizer=tok)
        for mode in ("greedy", "sampled"):
            got.setdefault(f"{mode}_teacher_nll", []).append(rep[mode]["teacher_nll"])
            got.setdefault(f"{mode}_distinct_2", []).append(rep[mode]["distinct_2"])
    return {k: statistics.mean(v) for k, v in got.items()}


def paired(out: str) -> str:
    by = {}
    for r in json.load(open(f"{out}/results.json")):
        if "sampled_teacher_nll" in r:
            by.setdefault(r["model"], {})[r["seed"]] = r
    ctrl = by["offpolicy-forward-kl"]
    lines = ["| row | Δ teacher NLL of sampled continuations, per seed | mean | Δ test NLL, per seed |",
             "|---|---|---:|---|"]
    for name, rows in by.items():
        if name == "offpolicy-forward-kl":
            continue
        seeds = [s for s in sorted(rows) if s in ctrl]
        ds = [rows[s]["sampled_teacher_nll"] / ctrl[s]["sampled_teacher_nll"] - 1 for s in seeds]
        dt = [rows[s]["test_nll"] - ctrl[s]["test_nll"] for s in seeds]
        lines.append(f"| {name} | {', '.join(f'{100 * d:+.1f} %' for d in ds)} | {100 * statistics.mean(ds):+.1f} % "
                     f"| {', '.join(f'{d:+.3f}' for d in dt)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the --out folder of the onpolicy preset's run")
    ap.add_argument("--teacher", help="its teacher checkpoint (OUT/stages/teacher-KEY/model)")
    ap.add_argument("--paired", action="store_true")
    a = ap.parse_args()
    if a.teacher:
        print(json.dumps(ceiling(a.out, a.teacher)))
    if a.paired:
        print(paired(a.out))


if __name__ == "__main__":
    main()

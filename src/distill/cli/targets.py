"""``distill targets``: a teacher's (or ensemble's) logits over the training set, computed once into
a sharded soft-target store that ``distill student --teacher STORE`` reads; under ``torchrun``
each process computes its own shards."""
from __future__ import annotations

from pathlib import Path

from distill import distributed
from distill.checkpoints import load_tensors
from distill.cli import lm
from distill.cli.common import check_fits, load_any, log, run_on
from distill.data.files import first_inputs
from distill.errors import DistillError
from distill.teachers.store import build_store
from distill.teachers.teacher import Teacher
from distill.train.config import resolve_device


def targets(args) -> None:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DistillError(f"--out {out} is a file; give a folder for the store")
    if args.task == "lm":
        return lm.targets(args)
    if args.tokenizer is not None or args.block_size is not None:
        raise DistillError(f"--{'tokenizer' if args.tokenizer is not None else 'block-size'} is for language models: "
                           "add --task lm")
    dev = resolve_device(args.device)
    notes: list[str] = []  # the [defaults] lines, printed once the checks pass (as a training run does)
    # the splits and image size a student run on the same file trains on
    data = load_any(args, training=True, notes=notes)
    for path in args.teacher:
        check_fits(f"teacher {path}", load_tensors(path)[1], data)
    teacher = Teacher(args.teacher, combine=args.combine, temperature=args.temperature,
                      trust_factory=args.trust_factory)
    run_on("the teacher" if len(args.teacher) == 1 else "the teacher ensemble", teacher.forward,
           first_inputs(data.train), data)
    for line in notes:
        log(line)
    store = build_store(out, teacher, data.train, dtype=args.dtype, top_k=args.top_k, shards=args.shards,
                        batch_size=args.batch_size, device=dev, progress=not args.no_progress, log=log)
    if distributed.world()[0] or store is None:
        return  # process 0 reports
    k = store.meta.get("top_k")
    print(f"targets: {len(store):,} x {store.num_classes} {args.dtype}{f' top-{k}' if k else ''} logits in "
          f"{store.num_shards} shard(s), key {store.key} -> {out}")

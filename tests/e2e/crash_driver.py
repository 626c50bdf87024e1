"""Fault-injection driver for tests/test_crash_safety.py (run as a script, not collected by pytest).

A small job (a teacher with dropout, its soft-target store, a distilled student, then a sharded
store of the teacher as ``distill targets`` builds it and a student distilled from that; every
write goes through distill's checkpoint/store code) is run once uninterrupted, then once per file-system step
k of its writes with ``$DISTILL_FAULT_AT=k`` (the process SIGKILLs itself right after that step),
each time followed by a rerun of the same job in the same folder. Every attempt runs in a forked
child of this process, which imports torch but never computes with it (so forking is safe).
Prints one JSON object: the number of steps and, per step, whether the rerun finished with weights
identical to the uninterrupted run.

    python tests/crash_driver.py WORKDIR [--max-steps N]
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

import distill  # noqa: F401  (imported before forking, as are the optimisers' lazy imports below;

# no computation happens in this process)
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def job(work: Path) -> None:
    import torch

    from distill import Teacher, TrainConfig, fit
    from distill.models.classifiers import MLP
    from distill.teachers.store import build_store

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 32, generator=g)
    y = x[:, :5].argmax(1)
    quiet = dict(progress=False, log=lambda *a: None)
    torch.manual_seed(0)
    teacher = fit(MLP(32, [24], 5, dropout_input=0.1, dropout_hidden=0.2, max_norm=3.0), (x, y),
                  TrainConfig(epochs=2, batch_size=64, lr=0.1, log_every=3), run_dir=work / "teacher", **quiet)
    torch.manual_seed(1)
    fit(MLP(32, [16], 5), (x, y), TrainConfig(epochs=2, batch_size=64, temperature=4.0, hard_weight=0.2),
        teacher=Teacher(teacher.model, store=work / "stores"), run_dir=work / "student", **quiet)
    sharded = build_store(work / "sharded", Teacher(teacher.model), x, shards=2, batch_size=100, **quiet)
    torch.manual_seed(2)
    fit(MLP(32, [16], 5), (x, y), TrainConfig(epochs=1, batch_size=64, temperature=4.0, hard_weight=0.2),
        teacher=sharded, run_dir=work / "student2", **quiet)


def run_child(work: Path, fault_at: int | None, log: Path | None = None) -> int:
    """Run :func:`job` in a forked child; returns its wait status (killed: a signal number < 0)."""
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            if fault_at is not None:
                os.environ["DISTILL_FAULT_AT"] = str(fault_at)
                if log is not None:
                    os.environ["DISTILL_FAULT_LOG"] = str(log)
            job(work)
            code = 0
        except BaseException as e:  # report, then exit without running the parent's cleanup
            print(f"child error: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def weights(work: Path) -> dict:
    from distill.checkpoints import load_tensors

    return {name: load_tensors(work / name / "model")[0] for name in ("teacher", "student", "student2")}


def metric_rows(work: Path) -> dict:
    """Each run's metrics.csv rows as (kind, epoch, step, loss): the same after any kill and rerun."""
    from distill.train.logs import read_metrics

    return {name: [(r["kind"], r["epoch"], r["step"], r["loss"]) for r in read_metrics(work / name / "metrics.csv")]
            for name in ("teacher", "student", "student2")}


def same(a: dict, b: dict) -> bool:
    return all(a[n].keys() == b[n].keys() and all(torch.equal(a[n][k], b[n][k]) for k in a[n]) for n in a)


def main() -> None:
    root = Path(sys.argv[1])
    max_steps = int(sys.argv[sys.argv.index("--max-steps") + 1]) if "--max-steps" in sys.argv else 200
    steps_log = root / "steps.log"
    assert run_child(root / "reference", 10 ** 9, steps_log) == 0, "the uninterrupted job failed"
    steps = [line.split(" ", 1)[1].strip() for line in steps_log.read_text().splitlines()]
    reference = weights(root / "reference")
    reference_rows = metric_rows(root / "reference")
    results = []
    for k in range(1, min(len(steps), max_steps) + 1):
        work = root / f"kill-{k}"
        killed = run_child(work, k)
        rerun = run_child(work, None)
        litter = sorted(str(p.relative_to(work)) for p in work.rglob("*")
                        if p.name.endswith(".tmp") or ".old-" in p.name)
        ok = rerun == 0 and same(weights(work), reference) and metric_rows(work) == reference_rows
        results.append(dict(step=k, where=steps[k - 1].replace(str(work), "WORK"), killed=killed == -9,
                            resumed=rerun == 0, identical=ok, litter=litter))
    print(json.dumps(dict(steps=len(steps), results=results)))


if __name__ == "__main__":
    main()

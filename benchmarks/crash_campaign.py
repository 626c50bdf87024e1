"""Crash campaign: SIGKILL a training job at random moments, rerun it, and count the outcomes.

    python benchmarks/crash_campaign.py [--runs 50] [--seed 0] [--work /tmp/distill-crash]

The job is the one of the fault-injection test (tests/crash_driver.py: a teacher with dropout,
its soft-target store and a distilled student, every write through distill's checkpoint and store
code). It is first run uninterrupted (the reference, and its wall time t). Then, ``--runs`` times:
a fresh folder, the job started in a forked child, killed with SIGKILL after a delay drawn uniformly
from [0, 1.1 t] (seeded), and rerun to the end in the same folder. Counts:

* resumed:   the rerun finished (exit 0);
* identical: its final teacher and student weights equal the reference's bit for bit;
* lost:      the folder could not be resumed (the rerun failed) -- the goal is 0;
plus how many kills landed before the job ended, and whether any temporary file was left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import crash_driver as D  # noqa: E402  (the job and its helpers live with the fault-injection test)


def start_child(work: Path) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            D.job(work)
            code = 0
        finally:
            os._exit(code)
    return pid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/distill-crash")
    a = ap.parse_args()
    root = Path(a.work)
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    assert D.run_child(root / "reference", None) == 0, "the uninterrupted job failed"
    t_ref = time.perf_counter() - t0
    reference = D.weights(root / "reference")
    rng = random.Random(a.seed)
    counts = dict(runs=a.runs, killed_mid_job=0, resumed=0, identical=0, lost=0, litter=0)
    for i in range(a.runs):
        work = root / f"run-{i}"
        pid = start_child(work)
        time.sleep(rng.uniform(0, 1.1 * t_ref))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
        counts["killed_mid_job"] += int(os.WIFSIGNALED(status))
        rerun = D.run_child(work, None)
        counts["resumed"] += int(rerun == 0)
        counts["lost"] += int(rerun != 0)
        counts["identical"] += int(rerun == 0 and D.same(D.weights(work), reference))
        counts["litter"] += int(any(p.name.endswith(".tmp") or ".old-" in p.name for p in work.rglob("*")))
        shutil.rmtree(work, ignore_errors=True)
    counts["reference_seconds"] = round(t_ref, 2)
    print(json.dumps(counts))
    print(f"{counts['runs']} kills ({counts['killed_mid_job']} mid-job): resumed {counts['resumed']} / identical "
          f"{counts['identical']} / lost {counts['lost']}; temporaries left: {counts['litter']}")


if __name__ == "__main__":
    main()

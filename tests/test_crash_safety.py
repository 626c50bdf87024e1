"""Crash safety: a SIGKILL right after ANY file-system step of a checkpoint or store write leaves a
folder from which rerunning the same job resumes and ends with the weights of an uninterrupted run.

The driver (tests/crash_driver.py) runs a teacher (with dropout), its soft-target store and a
distilled student, first uninterrupted, then killed at step k for every k, each followed by a rerun.
"""
import json
import os
import subprocess
import sys
from pathlib import Path


def test_kill_at_every_write_step_resumes_to_identical_weights(tmp_path):
    driver = Path(__file__).with_name("crash_driver.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("DISTILL_FAULT_AT", None)
    out = subprocess.run([sys.executable, str(driver), str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    where = [r["where"] for r in report["results"]]
    # every kind of write is covered: teacher and student state and final model, the store, the clean-up
    for part in ("teacher/state.safetensors", "teacher/state.json", "teacher/model.safetensors", "teacher/model.json",
                 "student/state.safetensors", "student/model.safetensors", "stores/soft-", "meta.json",
                 "removed state.safetensors", "removed state.json"):
        assert any(part in w for w in where), f"no fault point at {part}"
    assert len(report["results"]) == report["steps"] >= 25
    bad = [r for r in report["results"] if not (r["killed"] and r["resumed"] and r["identical"] and not r["litter"])]
    assert not bad, bad

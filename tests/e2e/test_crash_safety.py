"""Crash safety: a SIGKILL right after ANY file-system step of a checkpoint, store or metrics.csv
write leaves a folder from which rerunning the same job resumes and ends with the weights of an
uninterrupted run and the same metrics.csv rows (one per logged step and epoch).

The driver (tests/crash_driver.py) runs a teacher (with dropout), its soft-target store and a
distilled student, a sharded store and a student from it, first uninterrupted, then killed at step
k for every k, each followed by a rerun. Two `distill targets` into one folder: the folder's lock
lets one build run, the other stops with one line, and the store is valid.
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
                 "removed state.safetensors", "removed state.json", "sharded/values-00001-of-00002.npy",
                 "sharded/shard-00001-of-00002.json", "sharded/meta.json", "student2/model.safetensors",
                 "append ", "fsync ", "teacher/metrics.csv", "student/metrics.csv", "student2/metrics.csv"):
        assert any(part in w for w in where), f"no fault point at {part}"
    assert len(report["results"]) == report["steps"] >= 25
    bad = [r for r in report["results"] if not (r["killed"] and r["resumed"] and r["identical"] and not r["litter"])]
    assert not bad, bad


# ---------------------------------------------------------------- two `distill targets` into one folder

def _targets_setup(root: Path) -> list[str]:
    """A teacher trained by the CLI and a transfer set big enough that two builds overlap; the
    `distill targets` command line (without --shards and --out)."""
    import numpy as np
    import torch

    from distill.cli import main

    g = torch.Generator().manual_seed(0)
    x = torch.rand(20000, 32, generator=g)
    np.savez(root / "data.npz", x_train=x.numpy(), y_train=x[:, :5].argmax(1).numpy())
    assert main(["teacher", "--data", str(root / "data.npz"), "--hidden", "16", "--epochs", "1", "--out",
                 str(root / "t"), "--no-progress"]) == 0
    # --test-fraction 0: the store covers all 20,000 rows (a file without a test split is cut as for training)
    return ["targets", "--teacher", str(root / "t" / "model"), "--data", str(root / "data.npz"), "--batch-size",
            "100", "--test-fraction", "0", "--no-progress"]


def _check_store(folder: Path, root: Path):
    import numpy as np
    import torch

    from distill.teachers import store as ST
    from distill.checkpoints import load_checkpoint

    store = ST.SoftTargetStore.open(folder, verify=True)  # every listed file present and intact
    model, _ = load_checkpoint(root / "t" / "model")
    x = np.load(root / "data.npz")["x_train"]
    with torch.no_grad():
        assert torch.allclose(store.all(), model(torch.from_numpy(x)), atol=1e-5)
    listed = {f["name"] for sh in store.meta["shards"] for f in sh["files"].values()}
    strays = {p.name for p in folder.iterdir() if ST.SHARD_FILE.fullmatch(p.name) and p.name.endswith(".npy")}
    assert strays == listed, strays ^ listed  # no other build's shards left behind
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_two_concurrent_targets_into_one_folder_leave_one_valid_store(tmp_path):
    cmd = _targets_setup(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("DISTILL_FAULT_AT", None)
    for attempt in range(3):
        out = tmp_path / f"store{attempt}"
        # other shard counts: each build would delete the other's shards as leftovers of an older build
        procs = [subprocess.Popen([sys.executable, "-m", "distill", *cmd, "--shards", str(shards), "--out", str(out)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for shards in (20, 21)]
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        for rc, stdout, stderr in results:
            assert "Traceback" not in stderr and "unexpected" not in stderr, stderr[-2000:]
            assert "written on other machines" not in stderr, stderr[-2000:]
            if rc == 0:
                assert stdout.startswith("targets: 20,000 x 5 float32 logits in 2"), stdout
            else:
                errors = [line for line in stderr.splitlines() if line.startswith("distill: error: ")]
                assert rc == 2 and len(errors) == 1 and "another process" in errors[0], stderr[-2000:]
                assert "is writing the soft-target store" in errors[0]
        assert any(rc == 0 for rc, _, _ in results)
        _check_store(out, tmp_path)


def test_targets_into_a_folder_another_build_holds_stops_with_one_line(tmp_path, capsys):
    from distill.teachers import store as ST
    from distill.cli import main
    from distill.atomic import FolderLock

    cmd = _targets_setup(tmp_path)
    out = tmp_path / "store"
    out.mkdir()
    capsys.readouterr()
    with FolderLock(out / ST.LOCK_NAME, out):  # as a running build holds it
        assert main([*cmd, "--shards", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "another process" in err and f"{os.getpid()}@" in err
        assert sorted(p.name for p in out.iterdir()) == [ST.LOCK_NAME]  # nothing written
    assert main([*cmd, "--shards", "2", "--out", str(out)]) == 0  # once it is released
    _check_store(out, tmp_path)


# ---------------------------------------------------------------- `distill export`, killed at each step

def test_an_export_killed_at_any_step_leaves_the_old_file_or_none_and_the_rerun_cleans_up(tmp_path):
    import torch

    from distill.checkpoints import save_checkpoint
    from distill.models.classifiers import MLP

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ck", MLP(6, [5], 3), {"input_shape": [6]})
    cmd = [sys.executable, "-m", "distill", "export", str(tmp_path / "ck"), "--format", "torchscript", "--out",
           str(tmp_path / "out" / "m.pt"), "--check-inputs", "20"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("DISTILL_FAULT_AT", None)
    log = tmp_path / "steps.log"
    assert subprocess.run(cmd, env=dict(env, DISTILL_FAULT_AT="999", DISTILL_FAULT_LOG=str(log)),
                          capture_output=True, timeout=300).returncode == 0
    steps = len(log.read_text().splitlines())
    assert steps == 2  # written into the scratch folder, renamed into place
    for k in range(1, steps + 1):
        (tmp_path / "out" / "m.pt").unlink(missing_ok=True)
        r = subprocess.run(cmd, env=dict(env, DISTILL_FAULT_AT=str(k)), capture_output=True, timeout=300)
        assert r.returncode == -9, r.stderr[-500:]
        out = tmp_path / "out" / "m.pt"
        assert (k > 1) == out.exists()  # killed before the rename: no file at all, never a half-written one
        if out.exists():
            torch.jit.load(str(out))
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        torch.jit.load(str(out))
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["m.pt"]  # the killed run's scratch is swept

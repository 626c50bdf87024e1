import json
import subprocess
import sys

import pytest

from distill.cli import main

SMALL = ["--train-size", "1000", "--test-size", "500"]


def test_end_to_end_teacher_student_evaluate(tmp_path, capsys):
    assert main(["teacher", *SMALL, "--hidden", "64", "64", "--epochs", "2", "--out", str(tmp_path / "t"),
                 "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("teacher: ") and "test errors / 500" in line and str(tmp_path / "t") in line
    assert main(["student", *SMALL, "--hidden", "32", "--epochs", "2", "--out", str(tmp_path / "h"), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("student-hard: ")
    assert main(["student", *SMALL, "--hidden", "32", "--epochs", "2", "--teacher", str(tmp_path / "t" / "model"),
                 "--temperature", "4", "--hard-weight", "0.2", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("student-distilled: ")
    side = json.loads((tmp_path / "d" / "model.json").read_text())
    assert side["config"]["temperature"] == 4.0 and side["config"]["hard_weight"] == 0.2
    assert side["teacher"] and side["data_fingerprint"].startswith(side["data_fingerprint"][:16])
    assert main(["evaluate", str(tmp_path / "d" / "model.safetensors"), "--test-size", "500", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test_errors"] == side["metrics"]["errors"]
    assert {"test_errors", "test_accuracy", "test_nll", "params"} <= set(ev)
    assert ev["params"] == 784 * 32 + 32 + 32 * 10 + 10


def _run(*args):
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True, timeout=120)


def test_bad_flag_and_missing_file_exit_2_without_traceback(tmp_path):
    r = _run("student", "--temperature", "-3", "--out", str(tmp_path))
    assert r.returncode == 2 and "must be > 0" in r.stderr and "Traceback" not in r.stderr
    r = _run("evaluate", str(tmp_path / "nope"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = _run("student", "--out", str(tmp_path / "s"), "--teacher", str(tmp_path / "nope"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = _run("teacher", "--frobnicate", "--out", str(tmp_path / "f"))
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr
    r = _run("teacher", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("cmd", [[], ["teacher"], ["student"], ["evaluate"], ["reproduce"], ["reproduce", "mnist"],
                                 ["plot", "temperature"]])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


def test_plot_temperature(tmp_path, capsys):
    assert main(["plot", "temperature", "--out", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"

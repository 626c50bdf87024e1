"""Fidelity beside accuracy in the CLI: ``distill evaluate CHECKPOINT --teacher T`` on a classifier, and
``distill compare``'s fidelity columns, path labels, parameter shares and picture; on generated 8x8
images of 4 classes (conftest's ``write_npz``), tiny MLPs trained for a couple of epochs."""
from __future__ import annotations

import json

import pytest

from distill.tools.compare import path_labels, share

from conftest import one_line_error, run, write_npz

FIDELITY_KEYS = {"test_agreement", "test_top5_agreement", "test_kl", "test_ece", "test_teacher_ece"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A teacher and two distilled students of different widths, under runs/ (trained once)."""
    from distill.cli import main  # capsys is function-scoped: a module fixture calls main() directly

    root = tmp_path_factory.mktemp("fidelity")
    data = write_npz(root / "d.npz", n_train=160, n_val=40, n_test=80)
    common = ["--data", str(data), "--epochs", "2", "--batch-size", "32", "--no-progress"]
    assert main(["teacher", *common, "--hidden", "32", "--out", str(root / "runs" / "teacher")]) == 0
    for name, hidden in (("wide", "16"), ("narrow", "2")):
        assert main(["student", *common, "--teacher", str(root / "runs" / "teacher" / "model"), "--hidden", hidden,
                     "--temperature", "4", "--lr", "0.1", "--out", str(root / "runs" / name)]) == 0
    return root


def test_evaluate_with_a_teacher_reports_agreement_kl_and_both_eces(runs, capsys):
    t, s = runs / "runs" / "teacher" / "model", runs / "runs" / "narrow" / "model"
    code, out, err = run(capsys, "evaluate", s, "--teacher", t, "--json")
    assert code == 0, err
    ev = json.loads(out)
    assert FIDELITY_KEYS <= set(ev) and ev["teacher"] == str(t) and ev["test_n"] == 80
    assert 0 <= ev["test_agreement"] <= ev["test_top5_agreement"] == 1.0  # 4 classes: top-5 holds all of them
    assert ev["test_kl"] > 0 and 0 <= ev["test_ece"] <= 1 and 0 <= ev["test_teacher_ece"] <= 1
    # the teacher's own ECE is what evaluating the teacher reports
    code, out, _ = run(capsys, "evaluate", t, "--json")
    alone = json.loads(out)
    assert alone["test_ece"] == pytest.approx(ev["test_teacher_ece"])
    assert not (FIDELITY_KEYS - {"test_ece"}) & set(alone)
    # a teacher compared with itself: full agreement, no divergence, one calibration
    code, out, _ = run(capsys, "evaluate", t, "--teacher", t, "--json")
    same = json.loads(out)
    assert same["test_agreement"] == 1.0 and same["test_kl"] == pytest.approx(0.0, abs=1e-6)
    assert same["test_ece"] == pytest.approx(same["test_teacher_ece"])
    # the human line
    code, out, err = run(capsys, "evaluate", s, "--teacher", t)
    assert code == 0, err
    line = out.strip()
    assert line.startswith(f"{s}: ") and "test errors / 80" in line
    assert f"agreement with the teacher {100 * ev['test_agreement']:.2f}% (top-5 100.00%)" in line
    assert f"KL {ev['test_kl']:.4f}, ECE {ev['test_ece']:.4f} (teacher {ev['test_teacher_ece']:.4f})" in line
    # without --teacher the line still gives the ECE
    code, out, _ = run(capsys, "evaluate", s)
    assert f"ECE {ev['test_ece']:.4f}, " in out and "agreement" not in out


def test_evaluate_teacher_that_does_not_fit_is_a_one_line_error(runs, tmp_path, capsys):
    import numpy as np

    from conftest import images

    x, _ = images(16)
    np.savez(tmp_path / "six.npz", x_train=x, y_train=np.arange(16) % 6, x_test=x, y_test=np.arange(16) % 6)
    assert run(capsys, "teacher", "--data", tmp_path / "six.npz", "--hidden", "4", "--epochs", "1", "--no-progress",
               "--out", tmp_path / "t6")[0] == 0
    err = one_line_error(capsys, "evaluate", runs / "runs" / "narrow" / "model", "--teacher", tmp_path / "t6" / "model",
                         "--data", runs / "d.npz")
    assert "the teacher predicts 6 classes" in err and "need the same classes" in err


def test_compare_writes_fidelity_columns_path_labels_and_the_picture(runs, capsys):
    t = runs / "runs" / "teacher" / "model"
    students = [runs / "runs" / "wide" / "model", runs / "runs" / "narrow" / "model.safetensors"]
    out_dir = runs / "cmp"
    code, out, err = run(capsys, "compare", t, *students, "--onnx", "off", "--repeats", "2", "--warmup", "0",
                         "--out", out_dir)
    assert code == 0, err
    result = json.loads((out_dir / "compare.json").read_text())
    teacher, wide, narrow = result["models"]
    assert [r["label"] for r in result["models"]] == ["teacher", "wide", "narrow"]
    assert [r["role"] for r in result["models"]] == ["teacher", "student-distilled", "student-distilled"]
    assert result["ece_bins"] == 15
    assert teacher["agreement"] is teacher["top5_agreement"] is teacher["kl"] is None
    for r in (wide, narrow):
        assert 0 <= r["agreement"] <= r["top5_agreement"] <= 1 and r["kl"] >= 0
    for r in result["models"]:
        rel = r["reliability"]
        assert len(rel["count"]) == 15 and sum(rel["count"]) == 80 and rel["ece"] == r["ece"]
    # the numbers are evaluate --teacher's
    code, out_ev, _ = run(capsys, "evaluate", students[1], "--teacher", t, "--json")
    ev = json.loads(out_ev)
    assert narrow["agreement"] == pytest.approx(ev["test_agreement"]) and narrow["kl"] == pytest.approx(ev["test_kl"])
    assert narrow["ece"] == pytest.approx(ev["test_ece"]) and teacher["ece"] == pytest.approx(ev["test_teacher_ece"])
    md = (out_dir / "compare.md").read_text()
    assert md in out
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    for column in ("| role |", "| top-1 agreement |", "| top-5 agreement |", "| KL(teacher ‖ model) |", "| ECE |"):
        assert column in header
    row = next(line for line in md.splitlines() if line.startswith("| narrow |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "student-distilled" and cells[6] == f"{100 * narrow['agreement']:.2f} %"
    assert cells[7] == "100.00 %" and cells[8] == f"{narrow['kl']:.4f}" and cells[9] == f"{narrow['ece']:.4f}"
    assert next(line for line in md.splitlines() if line.startswith("| teacher |")).count("| – |") >= 3
    note = next(line for line in md.splitlines() if line.startswith("- narrow: "))
    assert f"{share(narrow['params'] / teacher['params'])} of the teacher's parameters" in note
    assert f"agrees with the teacher on {100 * narrow['agreement']:.2f} %" in note and "ECE " in note
    png = out_dir / "compare.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_path_labels():
    assert path_labels(["runs/teacher/model", "runs/s1/model.safetensors", "runs/s2/model.json"]) == [
        "teacher", "s1", "s2"]
    assert path_labels(["a/s/model", "b/s/model", "c/t/model"]) == ["a/s", "b/s", "t"]
    assert path_labels(["runs/t/model", "runs/t/best"]) == ["t", "best"]
    assert path_labels(["runs/t/model", "runs/t/model"]) == ["t (1)", "t (2)"]
    assert path_labels(["model", "/abs/x/model"]) == ["model", "x"]


def test_small_shares_keep_two_significant_digits():
    assert share(139 / 1.4e6) == "0.0099 %"
    assert share(0.012) == "1.2 %" and share(0.45) == "45 %" and share(1.0) == "100 %" and share(2.5) == "250 %"
    assert share(0.000001) == "0.00010 %" and share(0.0) == "0 %"

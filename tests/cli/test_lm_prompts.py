"""The CLI on prompt/completion data: a JSONL file trains a teacher on its completions, a student
distils on-policy (its generations judged by the teacher in OUT/generations.json) or on the
teacher's cached completions (sequence-level KD), and bad input is one line, exit 2."""
from __future__ import annotations

import json

import pytest

from conftest import one_line_error, run

WORDS = "the cat dog sat ran on a mat log red".split()
SMALL = ["--layers", "1", "--embd", "16", "--heads", "2", "--no-progress"]


@pytest.fixture(scope="module")
def prompted(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompted")
    lines = []
    for i in range(120):
        p = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 4)]
        lines.append(json.dumps({"prompt": " ".join(p), "completion": " " + " ".join(reversed(p))}))
    data = root / "pairs.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return root, data


@pytest.fixture(scope="module")
def lm_teacher(prompted):
    from distill.cli import main  # capsys is function-scoped: a module fixture calls main itself
    root, data = prompted
    assert main(["teacher", "--task", "lm", "--data", str(data), "--tokenizer", "bpe:280", "--epochs", "2",
                 "--out", str(root / "t"), *SMALL]) in (0, None)
    return root / "t"


def test_on_policy_writes_the_generation_report_and_records_the_setting(prompted, lm_teacher, capsys, tmp_path):
    _, data = prompted
    code, out, err = run(capsys, "student", "--task", "lm", "--data", data, "--teacher", lm_teacher, "--epochs", "1",
                         "--on-policy", "1", "--new-tokens", "6", "--out", tmp_path / "s", *SMALL)
    assert code == 0, err
    assert "continuations of 12 held-out prompts (6 new tokens)" in out
    rep = json.loads((tmp_path / "s" / "generations.json").read_text())
    assert {"greedy", "sampled"} <= set(rep)
    side = json.loads((tmp_path / "s" / "model.json").read_text())
    assert side["config"]["on_policy"]["lam"] == 1.0 and side["config"]["on_policy"]["max_new_tokens"] == 6
    steps = [json.loads(r) if isinstance(r, str) else r for r in side["history"]]
    assert steps[-1]["on_policy_steps"] >= 1 and 0 < steps[-1]["generate_share"] < 1


def test_sequence_kd_trains_on_the_teachers_cached_completions(prompted, lm_teacher, capsys, tmp_path):
    _, data = prompted
    argv = ["student", "--task", "lm", "--data", data, "--teacher", lm_teacher, "--epochs", "1", "--sequence-kd",
            "--new-tokens", "6", *SMALL]
    code, out, err = run(capsys, *argv, "--out", tmp_path / "a")
    assert code == 0, err
    assert len(list((tmp_path / "a" / "sequence-kd").glob("*.npz"))) == 1
    side = json.loads((tmp_path / "a" / "model.json").read_text())
    off = tmp_path / "b"
    assert run(capsys, "student", "--task", "lm", "--data", data, "--teacher", lm_teacher, "--epochs", "1",
               "--out", off, *SMALL)[0] == 0
    assert json.loads((off / "model.json").read_text())["data_fingerprint"] != side["data_fingerprint"]


def test_bad_prompted_runs_are_one_line(prompted, lm_teacher, capsys, tmp_path):
    _, data = prompted
    base = ["student", "--task", "lm", "--data", data, "--out", tmp_path / "x", *SMALL]
    assert "--on-policy needs --teacher" in one_line_error(capsys, *base, "--on-policy", "0.5")
    assert "--sequence-kd needs --teacher" in one_line_error(capsys, *base, "--sequence-kd")
    assert "--on-policy" in one_line_error(capsys, *base, "--teacher", lm_teacher, "--on-policy", "1.5")
    code, _, err = run(capsys, *base, "--teacher", lm_teacher, "--on-policy", "1", "--new-tokens", "500")
    last = err.strip().splitlines()[-1]  # after the data's summary line
    assert code == 2 and "Traceback" not in err and last.startswith("distill: error: ")
    assert "--new-tokens 500" in last and "context (128" in last
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 3}\n')
    assert "bad.jsonl:2" in one_line_error(capsys, "teacher", "--task", "lm", "--data", bad, "--out", tmp_path / "y",
                                           "--tokenizer", "bpe:260", *SMALL)


def test_init_starts_the_student_from_a_checkpoint_and_guards_its_folder(prompted, lm_teacher, capsys, tmp_path):
    from distill.checkpoints import load_checkpoint
    from distill.teachers.teacher import module_id

    _, data = prompted
    base = ["student", "--task", "lm", "--data", data, "--teacher", lm_teacher, "--epochs", "1", "--no-progress"]
    assert run(capsys, *base, "--out", tmp_path / "warm", *SMALL[:-1])[0] == 0  # an off-policy warm start
    warm = load_checkpoint(tmp_path / "warm" / "model")[0]
    code, out, err = run(capsys, *base, "--init", tmp_path / "warm" / "model", "--on-policy", "1", "--new-tokens", "6",
                         "--out", tmp_path / "op")
    assert code == 0, err
    side = json.loads((tmp_path / "op" / "model.json").read_text())
    assert side["init_weights"] == module_id(warm)  # trained on from the warm start's weights
    assert side["factory"]["kwargs"]["n_embd"] == 16  # its architecture, not the default student's
    # another start into the same folder is refused: the run key does not cover initial weights
    assert run(capsys, *base, "--out", tmp_path / "other", *SMALL[:-1], "--seed", "1")[0] == 0
    err = one_line_error(capsys, *base, "--init", tmp_path / "other" / "model", "--on-policy", "1",
                         "--new-tokens", "6", "--out", tmp_path / "op")
    assert "started from other weights" in err
    assert "brings its own architecture; drop --layers" in one_line_error(
        capsys, *base, "--init", tmp_path / "warm" / "model", "--layers", "2", "--out", tmp_path / "x")

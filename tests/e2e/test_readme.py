"""The README's own-model example runs as written.

The Python blocks of the sections "Distil your own model on your own data", "Your own loss" and
"Teachers" form one program on scikit-learn's 8x8 digits: the first block is the user's model
module (``digits_models.py``), the second the main script, the rest continue in the script's
namespace. They are executed here, in that order, in a temporary working directory, and what they
define is checked; so is the output the README quotes for the main script.
"""
from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"
SECTIONS = ("Distil your own model on your own data", "Your own loss", "Teachers")


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section (up to the next ``## `` heading)."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, f"README has no section '## {title}'"
    return m.group(1)


def code_blocks(body: str, lang: str) -> list[str]:
    """The fenced code blocks of ``body`` whose info string is ``lang`` ("" for a bare fence)."""
    blocks, current, info = [], None, ""
    for line in body.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                if info == lang:
                    blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    assert current is None, "unclosed code fence in the README"
    return blocks


def readme_program() -> tuple[str, str, list[str], str]:
    """(model module, main script, continuation blocks, quoted output of the main script)."""
    text = README.read_text(encoding="utf-8")
    blocks = [b for title in SECTIONS for b in code_blocks(section(text, title), "python")]
    assert len(blocks) >= 3, "expected the model module, the script and at least one continuation"
    module, script, rest = blocks[0], blocks[1], blocks[2:]
    assert module.startswith("# digits_models.py"), "the first Python block must be digits_models.py"
    assert script.startswith("# distil_digits.py"), "the second Python block must be distil_digits.py"
    quoted = code_blocks(section(text, SECTIONS[0]), "")
    assert quoted, "the README quotes no output of distil_digits.py"
    return module, script, rest, quoted[0]


def run_script(script: str) -> tuple[dict, str]:
    ns: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(script, "distil_digits.py", "exec"), ns)
    return ns, out.getvalue()


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """Run the README program once in a fresh folder; yield its namespaces and outputs."""
    module, script, rest, quoted = readme_program()
    work = tmp_path_factory.mktemp("readme")
    (work / "digits_models.py").write_text(module, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.syspath_prepend(str(work))
        sys.modules.pop("digits_models", None)
        try:
            torch.manual_seed(1234)  # the script seeds itself; this only proves it does
            first, first_out = run_script(script)
            second, second_out = run_script(script)  # the same script again: every run folder is reused
            ns = dict(first)
            for i, block in enumerate(rest):
                with contextlib.redirect_stdout(io.StringIO()):
                    exec(compile(block, f"README block {i + 3}", "exec"), ns)
            yield dict(work=work, first=first, first_out=first_out, second=second, second_out=second_out,
                       ns=ns, quoted=quoted)
        finally:
            sys.modules.pop("digits_models", None)


def summary(output: str) -> dict[str, int]:
    """``{name: test errors}`` from the script's result lines (the per-epoch log is skipped)."""
    found = dict(re.findall(r"^(teacher|hard|student)\s+(\d+) test errors of 497", output, re.MULTILINE))
    found.update(re.findall(r"^(reloaded): (\d+) test errors", output, re.MULTILINE))
    return {k: int(v) for k, v in found.items()}


def test_main_script_trains_teacher_and_students(program):
    ns = program["first"]
    teacher, hard, student = ns["teacher"], ns["hard"], ns["student"]
    for r in (teacher, hard, student):
        assert not r.skipped and r.resumed_from == 0
        assert r.test["n"] == 497
        assert r.val is None or r.val["n"] == 300
    assert teacher.test["accuracy"] > 0.95
    assert hard.test["accuracy"] > 0.90
    assert student.test["accuracy"] > 0.90
    # select="best": the kept epoch has the fewest validation errors of the history
    for r in (hard, student):
        best = min(h["val_errors"] for h in r.history)
        assert r.history[r.epoch - 1]["val_errors"] == best and r.val["errors"] == best
    assert teacher.epoch == 20 and teacher.val is None
    # the student learned from the teacher (distillation), the others from labels
    assert student.sidecar["teacher"] and hard.sidecar["teacher"] is None and teacher.sidecar["teacher"] is None
    assert len({teacher.run_dir, hard.run_dir, student.run_dir}) == 3
    for r in (teacher, hard, student):
        assert (r.run_dir / "model.safetensors").is_file() and not (r.run_dir / "state.safetensors").exists()


def test_checkpoints_reload_with_and_without_factory(program):
    ns = program["first"]
    student, model, sidecar, same, meta = (ns[k] for k in ("student", "model", "sidecar", "same", "meta"))
    assert type(model).__name__ == "SmallCNN" and model is not student.model
    assert sidecar["factory"] == {"target": "digits_models:SmallCNN",
                                  "kwargs": {"channels": 4, "hidden": 16, "dropout": 0.0}}
    assert sidecar["epoch"] == student.epoch and sidecar["test"]["errors"] == student.test["errors"]
    assert meta["note"] == "4-channel student"
    assert (program["work"] / "digits-student.safetensors").is_file()
    for m in (model, same):
        for (k, a), (k2, b) in zip(student.model.state_dict().items(), m.state_dict().items()):
            assert k == k2 and torch.equal(a, b)


def test_rerun_reuses_every_run_folder(program):
    first, second = program["first"], program["second"]
    for name in ("teacher", "hard", "student"):
        a, b = first[name], second[name]
        assert b.skipped and b.run_dir == a.run_dir
        assert b.test == a.test and b.epoch == a.epoch
    assert program["second_out"].count("[skip]") == 3
    assert summary(program["first_out"]) == summary(program["second_out"])


def test_readme_quotes_what_the_script_printed(program):
    """The quoted result lines are the script's, up to a few errors of float rounding across CPUs."""
    got, quoted = summary(program["first_out"]), summary(program["quoted"])
    assert set(quoted) == {"teacher", "hard", "student", "reloaded"} == set(got), (quoted, got)
    for k in quoted:
        assert abs(quoted[k] - got[k]) <= 5, f"README quotes {k} {quoted[k]}, the script printed {got[k]}"
    assert got["reloaded"] == got["student"]


def test_continuation_blocks_run(program):
    ns = program["ns"]
    for name in ("from_dataset", "from_loader", "unlabeled", "custom"):
        r = ns[name]
        assert r.test["accuracy"] > 0.85, (name, r.test)
        assert len(r.history) == 20
    assert ns["kl_at_4"].needs_labels is False
    # every teacher form of the Teachers section trained a student
    assert len(ns["students"]) == len(ns["teachers"]) == 8
    for t, r in zip(ns["teachers"], ns["students"]):
        assert r.test["accuracy"] > 0.85, (t, r.test)
    # the module, its checkpoint, its stored logits and its soft-target stores are one teacher
    same = [ns["students"][i] for i in (0, 1, 4, 6, 7)]
    assert len({r.test["errors"] for r in same}) == 1 and len({r.history[-1]["train_loss"] for r in same}) == 1
    # the tree's outputs are distributions
    probs = ns["tree_probs"]
    assert probs.shape == (497, 10)
    assert abs(float(probs.sum(1).min()) - 1) < 1e-6 and abs(float(probs.sum(1).max()) - 1) < 1e-6
    assert list((program["work"] / "runs" / "soft-targets").glob("soft-*"))

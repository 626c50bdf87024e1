"""The documentation's examples run as written, and its links lead somewhere.

* The README's "Quick start" Python block runs, and prints what the README quotes.
* The Python blocks of the sections "Distil your own model on your own data", "Your own loss" and
  "Teachers" of docs/guide.md form one program on scikit-learn's 8x8 digits: the first block is
  the user's model module (``digits_models.py``), the second the main script, the rest continue in
  the script's namespace. They are executed here, in that order, in a temporary working directory,
  and what they define is checked; so is the output the guide quotes for the main script.
* Every relative link (and image) in README.md and docs/*.md points to an existing file, and every
  ``#anchor`` to a heading of its target; the README and the guides name no issue numbers and
  the source and test paths they mention exist; docs/design.md lists the package's layers as
  ``src/distill/__init__.py`` does.

(docs/segmentation.md's example runs in tests/models/test_segmentation.py.)
"""
from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide.md"
SECTIONS = ("Distil your own model on your own data", "Your own loss", "Teachers")
#: the documents this project's documentation owns (docs/results.md is a lab notebook, appended to)
GUIDES = ("README.md", "docs/guide.md", "docs/cli.md", "docs/scale.md", "docs/segmentation.md", "docs/design.md",
          "docs/lm.md")


def section(text: str, title: str, doc: str = "README") -> str:
    """The body of the ``## title`` section (up to the next ``## `` heading)."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, f"{doc} has no section '## {title}'"
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
    assert current is None, "unclosed code fence"
    return blocks


def guide_program() -> tuple[str, str, list[str], str]:
    """(model module, main script, continuation blocks, quoted output of the main script)."""
    text = GUIDE.read_text(encoding="utf-8")
    blocks = [b for title in SECTIONS for b in code_blocks(section(text, title, "docs/guide.md"), "python")]
    assert len(blocks) >= 3, "expected the model module, the script and at least one continuation"
    module, script, rest = blocks[0], blocks[1], blocks[2:]
    assert module.startswith("# digits_models.py"), "the first Python block must be digits_models.py"
    assert script.startswith("# distil_digits.py"), "the second Python block must be distil_digits.py"
    quoted = code_blocks(section(text, SECTIONS[0], "docs/guide.md"), "")
    assert quoted, "docs/guide.md quotes no output of distil_digits.py"
    return module, script, rest, quoted[0]


def run_script(script: str) -> tuple[dict, str]:
    ns: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(script, "distil_digits.py", "exec"), ns)
    return ns, out.getvalue()


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """Run the guide's program once in a fresh folder; yield its namespaces and outputs."""
    module, script, rest, quoted = guide_program()
    work = tmp_path_factory.mktemp("guide")
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
                    exec(compile(block, f"docs/guide.md block {i + 3}", "exec"), ns)
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


def test_guide_quotes_what_the_script_printed(program):
    """The quoted result lines are the script's, up to a few errors of float rounding across CPUs."""
    got, quoted = summary(program["first_out"]), summary(program["quoted"])
    assert set(quoted) == {"teacher", "hard", "student", "reloaded"} == set(got), (quoted, got)
    for k in quoted:
        assert abs(quoted[k] - got[k]) <= 5, f"docs/guide.md quotes {k} {quoted[k]}, the script printed {got[k]}"
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


# ---------------------------------------------------------------- the README's quick start

def numbers_match(printed: str, quoted: str, tolerance: int = 5) -> bool:
    """The same text, with every integer within ``tolerance`` of the quoted one (float rounding
    across CPUs moves an error count or two)."""
    split = re.compile(r"(\d+)")
    a, b = split.split(printed.strip()), split.split(quoted.strip())
    return len(a) == len(b) and all(x == y if i % 2 == 0 else abs(int(x) - int(y)) <= tolerance
                                    for i, (x, y) in enumerate(zip(a, b)))


def run_readme_section(title: str, folder, monkeypatch) -> tuple[dict, str, str]:
    """Run the Python blocks of the README section ``title`` in ``folder``: ``(their namespace,
    what they printed, the output the section quotes)``."""
    body = section(README.read_text(encoding="utf-8"), title)
    blocks, quoted = code_blocks(body, "python"), code_blocks(body, "")
    assert blocks and quoted, f"the README's {title} needs a Python block and its quoted output"
    monkeypatch.chdir(folder)
    ns: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, block in enumerate(blocks):
            exec(compile(block, f"README {title} block {i + 1}", "exec"), ns)
    return ns, out.getvalue(), quoted[0]


def test_readme_quick_start_runs_and_prints_what_it_quotes(tmp_path, monkeypatch):
    ns, printed, quoted = run_readme_section("Quick start", tmp_path, monkeypatch)
    assert numbers_match(printed, quoted), (printed, quoted)
    teacher, student = ns["teacher"], ns["student"]
    assert teacher.epoch == student.epoch == 20 and student.test["n"] == 497
    assert teacher.test["accuracy"] > 0.9 and student.test["accuracy"] > 0.85


def test_readme_language_model_quick_start_runs(tmp_path, monkeypatch):
    """The Hugging Face quick start: it runs as printed (a teacher and a distilled student built
    from configs, the student saved for from_pretrained) and prints what it quotes, perplexities
    within 5 % and the agreement within 3 points (float sums differ across CPUs)."""
    pytest.importorskip("transformers")
    ns, printed, quoted = run_readme_section("Quick start: a language model", tmp_path, monkeypatch)
    got = [int(n) for n in re.findall(r"\d+", printed.strip().splitlines()[-1])]
    want = [int(n) for n in re.findall(r"\d+", quoted)]
    assert len(got) == len(want) == 3, (printed, quoted)
    assert abs(got[0] - want[0]) <= 0.05 * want[0] and abs(got[1] - want[1]) <= 0.05 * want[1], (got, want)
    assert abs(got[2] - want[2]) <= 3, (got, want)
    assert (tmp_path / "runs" / "lm-student" / "hf" / "config.json").is_file()
    assert ns["student"].test["perplexity"] > ns["teacher"].test["perplexity"] * 0.5


# ---------------------------------------------------------------- links, names, paths

FENCE = re.compile(r"^```.*?^```[^\n]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """``text`` without its fenced code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation (backticks, colons, ...) dropped,
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeats get GitHub's ``-1``, ``-2`` suffixes)."""
    found: set[str] = set()
    for m in re.finditer(r"^#{1,6} (.+)$", FENCE.sub("", path.read_text(encoding="utf-8")), re.MULTILINE):
        base = slug(m.group(1))
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_guides_exist():
    for name in GUIDES:
        assert (ROOT / name).is_file(), name


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files_and_headings(doc):
    broken = []
    for target in LINK.findall(prose(doc.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: {broken}"


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the rest belongs in docs/"


@pytest.mark.parametrize("name", GUIDES)
def test_no_issue_numbers(name):
    """Sections are named by what they are, not by the issue that asked for them."""
    text = (ROOT / name).read_text(encoding="utf-8")
    found = re.findall(r"\bissues? #?\d+", text, re.IGNORECASE)
    assert not found, f"{name} names {found}"


@pytest.mark.parametrize("name", GUIDES)
def test_mentioned_source_and_test_paths_exist(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    paths = set(re.findall(r"`((?:src|tests|benchmarks)/[\w./-]+\.py)`", text))
    paths |= set(re.findall(r"`python ((?:benchmarks)/[\w./-]+\.py)", text))
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert not missing, f"{name} mentions files that do not exist: {missing}"


def test_design_lists_the_layers_of_the_package_docstring():
    import distill

    doc = distill.__doc__
    listed = doc[doc.index("\n\n", doc.index("built in layers")):].strip("\n")
    layers = [line.strip() for line in listed.splitlines() if line.strip()]
    design = section((ROOT / "docs" / "design.md").read_text(encoding="utf-8"), "The layers", "docs/design.md")
    block = code_blocks(design, "")[0]
    assert [line.strip() for line in block.splitlines() if line.strip()] == \
        [line.replace("``", "`") for line in layers]


def test_readme_feature_quick_start_runs_and_leaves_no_hooks(tmp_path, monkeypatch):
    """The feature-distillation quick start on the user's own CNN: it runs as printed, prints what the
    section says it prints (the teacher within 5 errors; the small student, whose training is less
    stable across thread counts, within 25), and leaves no hook on either network."""
    title = "Quick start: intermediate features of your own CNN"
    body = section(README.read_text(encoding="utf-8"), title)
    (block,) = code_blocks(body, "python")
    quoted = re.search(r"prints `([^`]+)`", body).group(1)
    monkeypatch.chdir(tmp_path)
    ns, out = {"__name__": "__main__"}, io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, f"README {title}", "exec"), ns)
    got = [int(n) for n in re.findall(r"\d+", out.getvalue().strip().splitlines()[-1])]
    want = [int(n) for n in re.findall(r"\d+", quoted)]
    assert len(got) == len(want) == 3 and got[2] == want[2] == 497, (out.getvalue(), quoted)
    assert abs(got[0] - want[0]) <= 5 and abs(got[1] - want[1]) <= 25, (got, want)
    for model in (ns["teacher"].model, ns["student"].model):
        assert not any(m._forward_hooks for m in model.modules())

"""CLI manners: a mistyped flag gets its subcommand's usage and a "did you mean"; lists of columns
are complete; a run folder stands for its checkpoint; an .onnx file is evaluated in ONNX Runtime;
``--restart`` clears only what distill wrote; optional dependencies are one-line hints."""
import json
import os
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import main, one_line_error, run, write_npz

from distill.errors import DistillError, MissingDependency, require

ROOT = Path(__file__).resolve().parents[2]


def _argparse_error(capsys, *argv) -> tuple[str, str]:
    """``(usage, the error line)`` of an argparse error: exit 2, the usage, then one line."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert sum("error:" in line for line in lines) == 1 and "error:" in lines[-1], err
    return err[:err.rindex(lines[-1])], lines[-1]


# ---------------------------------------------------------------- did you mean

def test_a_mistyped_flag_gets_the_subcommands_usage_and_the_flag_meant(capsys):
    usage, line = _argparse_error(capsys, "student", "--temprature", "3", "--out", "x")
    assert usage.startswith("usage: distill student ") and "--temperature" in usage
    assert line == "distill student: error: unrecognized arguments: --temprature 3 (did you mean --temperature?)"
    # without --out as well: the mistyped flag is named first (a typo often hides a required flag)
    usage, line = _argparse_error(capsys, "student", "--temprature", "3")
    assert usage.startswith("usage: distill student ")
    assert line == ("distill student: error: unrecognized arguments: --temprature (did you mean --temperature?); "
                    "and the following arguments are required: --out")


def test_suggestions_for_several_flags_values_after_equals_and_nested_subcommands(capsys):
    _, line = _argparse_error(capsys, "student", "--out", "x", "--temprature=3", "--sed", "1")
    assert line.endswith("(did you mean --temperature for --temprature, --seed for --sed?)"), line
    usage, line = _argparse_error(capsys, "reproduce", "mnist", "--presett", "tiny")
    assert usage.startswith("usage: distill reproduce mnist ")
    assert line.endswith("unrecognized arguments: --presett tiny (did you mean --preset?)"), line
    usage, line = _argparse_error(capsys, "plot", "temperature", "--ot", "t.png")
    assert usage.startswith("usage: distill plot temperature ") and line.endswith("(did you mean --out?)")
    _, line = _argparse_error(capsys, "evaluate", "a", "b")  # a stray positional: no suggestion
    assert line == "distill evaluate: error: unrecognized arguments: b"


def test_mistyped_choices_and_commands_get_the_one_meant(capsys):
    usage, line = _argparse_error(capsys, "studnet")
    assert usage.startswith("usage: distill ") and line.endswith("did you mean 'student'?"), line
    usage, line = _argparse_error(capsys, "teacher", "--optimizer", "adm", "--out", "x")
    assert usage.startswith("usage: distill teacher ") and line.endswith("did you mean 'adam'?"), line


def test_known_flags_abbreviations_and_negative_numbers_are_not_called_unknown(capsys):
    # only the missing --out is reported: --lr's negative value and the abbreviation --epo are fine
    _, line = _argparse_error(capsys, "student", "--lr", "-1", "--epo", "2")
    assert line == "distill student: error: the following arguments are required: --out"


# ---------------------------------------------------------------- lists of columns

def _wide_table(path, columns):
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.standard_normal((12, len(columns))), columns=columns)
    df[columns[-1]] = np.arange(12) % 2
    df.to_csv(path, index=False)


def test_a_missing_target_lists_every_column_and_the_one_meant_ignoring_case(capsys, tmp_path):
    cols = [f"feature_{i}" for i in range(13)] + ["label"]  # the label last: once cut off after 12
    _wide_table(tmp_path / "t.csv", cols)
    err = one_line_error(capsys, "teacher", "--data", tmp_path / "t.csv", "--target", "Label", "--out", tmp_path / "r")
    assert f"(columns: {', '.join(cols)})" in err and err.rstrip().endswith("did you mean 'label'?"), err
    err = one_line_error(capsys, "teacher", "--data", tmp_path / "t.csv", "--target", "lable", "--out", tmp_path / "r")
    assert err.rstrip().endswith("did you mean 'label'?"), err  # close, not only case
    err = one_line_error(capsys, "teacher", "--data", tmp_path / "t.csv", "--target", "zzz", "--out", tmp_path / "r")
    assert "did you mean" not in err


def test_a_very_wide_table_says_how_many_more_columns_it_has(capsys, tmp_path):
    cols = [f"f{i}" for i in range(59)] + ["y"]
    _wide_table(tmp_path / "w.csv", cols)
    err = one_line_error(capsys, "teacher", "--data", tmp_path / "w.csv", "--out", tmp_path / "r")
    assert "name its label column with --target" in err and "f39, and 20 more)" in err, err


# ---------------------------------------------------------------- a run folder names its model

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A teacher and a distilled student on a generated .npz, as `distill` writes them."""
    root = tmp_path_factory.mktemp("manners")
    write_npz(root / "d.npz")
    common = ["--data", root / "d.npz", "--epochs", "1", "--no-progress"]
    assert main([str(a) for a in ["teacher", *common, "--hidden", "16", "--out", root / "t"]]) == 0
    assert main([str(a) for a in ["student", *common, "--hidden", "8", "--teacher", root / "t",
                                  "--out", root / "s"]]) == 0  # --teacher: the run folder
    return root


def test_a_run_folder_is_taken_wherever_a_checkpoint_is(capsys, runs):
    code, out_folder, err = run(capsys, "evaluate", runs / "t")
    assert code == 0, err
    code, out_file, err = run(capsys, "evaluate", runs / "t" / "model")
    assert code == 0, err
    assert out_folder.split(": ", 1)[1] == out_file.split(": ", 1)[1]  # the same numbers
    code, out, err = run(capsys, "evaluate", runs / "s", "--teacher", runs / "t")
    assert code == 0 and "agreement with the teacher" in out, err
    code, out, err = run(capsys, "export", runs / "t", "--format", "torchscript", "--check-inputs", "8")
    assert code == 0 and (runs / "t" / "model.pt").is_file(), err  # written inside the folder, beside the model
    code, out, err = run(capsys, "compare", runs / "t", runs / "s", "--repeats", "1", "--warmup", "0", "--onnx",
                         "off", "--out", runs / "cmp")
    assert code == 0, err
    import distill

    model, side = distill.load_checkpoint(runs / "t")
    assert side["weights_sha256"] == json.loads((runs / "t" / "model.json").read_text())["weights_sha256"]


def test_a_near_miss_of_a_checkpoint_suggests_it(capsys, runs, tmp_path):
    err = one_line_error(capsys, "evaluate", runs / "t" / "modle")
    assert f"did you mean {runs / 't' / 'model'}?" in err, err
    err = one_line_error(capsys, "evaluate", runs)  # the folder above the run folders
    assert "holds the checkpoints" in err and str(runs / "t") in err and str(runs / "s") in err, err
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "state.safetensors").write_bytes(b"")
    err = one_line_error(capsys, "evaluate", tmp_path / "only")
    assert "without a finished model" in err and "rerun its command" in err, err
    err = one_line_error(capsys, "compare", runs / "t", runs / "t" / "model.pt", "--onnx", "off")
    assert "is an export, not a checkpoint" in err and str(runs / "t" / "model") in err, err


def test_saving_to_a_folder_name_is_not_redirected_into_it(tmp_path):
    import torch

    from distill import save_checkpoint
    from distill.checkpoints import stem_of

    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / "model", torch.nn.Linear(2, 2))
    assert stem_of(tmp_path / "run") == tmp_path / "run" / "model"
    save_checkpoint(tmp_path / "run", torch.nn.Linear(2, 3))  # names a file beside the folder, as before
    assert (tmp_path / "run.safetensors").is_file()


def test_the_tokenizer_beside_a_run_folder_is_inside_it(tmp_path):
    from distill.cli.lm import tokenizer_beside

    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "model.safetensors").write_bytes(b"")
    assert tokenizer_beside(tmp_path / "lm") == tmp_path / "lm" / "tokenizer.json"
    assert tokenizer_beside(tmp_path / "lm" / "model") == tmp_path / "lm" / "tokenizer.json"


# ---------------------------------------------------------------- .onnx in ONNX Runtime

def test_an_onnx_file_is_evaluated_in_onnx_runtime(capsys, runs, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    code, _, err = run(capsys, "export", runs / "t", "--check-inputs", "8")
    assert code == 0 and (runs / "t" / "model.onnx").is_file(), err
    code, torch_line, err = run(capsys, "evaluate", runs / "t" / "model")
    assert code == 0, err
    code, onnx_line, err = run(capsys, "evaluate", runs / "t" / "model.onnx")
    assert code == 0, err
    assert onnx_line.startswith(f"{runs / 't' / 'model.onnx'}: ") and "(ONNX Runtime " in onnx_line, onnx_line
    # the same errors, accuracy and nll as the PyTorch model on the same (recorded) data
    assert torch_line.split(": ", 1)[1].split(", ECE")[0] == onnx_line.split(": ", 1)[1].split(", ECE")[0]
    code, out, err = run(capsys, "evaluate", runs / "t" / "model.onnx", "--json")
    got = json.loads(out)
    assert code == 0 and got["runtime"].startswith("ONNX Runtime") and got["data_fingerprint_matches"] is True
    # moved away from its checkpoint: the export's own metadata says what data it was trained on
    alone = tmp_path / "alone.onnx"
    alone.write_bytes((runs / "t" / "model.onnx").read_bytes())
    code, out, err = run(capsys, "evaluate", alone)
    assert code == 0 and out.split(": ", 1)[1] == onnx_line.split(": ", 1)[1], err
    err = one_line_error(capsys, "evaluate", alone, "--teacher", runs / "t")
    assert "not for ONNX files" in err


def test_without_onnxruntime_an_onnx_file_is_one_line_saying_what_to_install(capsys, runs, monkeypatch):
    (runs / "fake.onnx").write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    err = one_line_error(capsys, "evaluate", runs / "fake.onnx")
    assert "needs ONNX Runtime: pip install 'distill[export]'" in err, err


# ---------------------------------------------------------------- --restart

def test_restart_clears_what_distill_wrote_and_trains_again(capsys, runs, tmp_path):
    out = tmp_path / "r"
    argv = ["teacher", "--data", runs / "d.npz", "--epochs", "1", "--hidden", "8", "--no-progress", "--out", out]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out").write_text("x")
    (out / "state.json.abc.distill.tmp").write_text("x")
    first = (out / "model.safetensors").stat().st_mtime_ns
    code, stdout, err = run(capsys, *argv, "--restart")
    assert code == 0 and "[restart] removed" in err and "[skip]" not in err + stdout, err
    assert not (out / "tensorboard").exists() and not (out / "state.json.abc.distill.tmp").exists()
    assert (out / "model.safetensors").stat().st_mtime_ns != first
    assert "restart" not in tomllib.loads((out / "config.toml").read_text())  # an action, not a setting
    # anything distill did not write: refused, nothing removed
    (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    err = one_line_error(capsys, *argv, "--restart")
    assert "--restart clears only what distill writes" in err and "notes.txt" in err, err
    assert sorted(p.name for p in out.iterdir()) == before


def test_clear_run_folder(tmp_path):
    from distill.atomic import FolderLock
    from distill.train.rundir import clear_run_folder

    assert clear_run_folder(tmp_path / "none") == []
    d = tmp_path / "run"
    d.mkdir()
    for name in ("model.safetensors", "model.json", "model.onnx", "model.pt", "state.safetensors", "state.json",
                 "metrics.csv", "config.toml", "tokenizer.json", ".lock", "x.distill.tmp"):
        (d / name).write_text("")
    for folder in ("hf", "tensorboard", ".distill-export.host.1.abc"):
        (d / folder).mkdir()
        (d / folder / "f").write_text("")
    removed = clear_run_folder(d, log=lambda *_: None)
    assert ".lock" not in removed and "hf" in removed and "model.onnx" in removed
    assert [p.name for p in d.iterdir()] == [".lock"]
    for foreign in ("model.py", "data/"):  # a user's module is not "model.*"; nor is any other folder
        (d / foreign.rstrip("/")).mkdir() if foreign.endswith("/") else (d / foreign).write_text("")
        with pytest.raises(DistillError, match=foreign.replace(".", r"\.")):
            clear_run_folder(d)
        p = d / foreign.rstrip("/")
        p.rmdir() if p.is_dir() else p.unlink()
    os.symlink(tmp_path, d / "hf")  # a link is never distill's
    with pytest.raises(DistillError, match="hf"):
        clear_run_folder(d)
    (d / "hf").unlink()
    (d / "model.json").write_text("")
    with FolderLock(d / ".lock", d), pytest.raises(DistillError, match="in use"):
        clear_run_folder(d)  # a run in progress there
    assert (d / "model.json").exists()


# ---------------------------------------------------------------- optional dependencies

def test_a_missing_optional_dependency_is_one_line_naming_its_extra(capsys, tmp_path, monkeypatch):
    from distill.tools import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    plots.pyplot.cache_clear()
    try:
        err = one_line_error(capsys, "plot", "temperature", "--out", tmp_path / "t.png")
        assert "needs matplotlib: pip install 'distill[plots]'" in err, err
        err = one_line_error(capsys, "reproduce", "trees", "--out", tmp_path / "tr")
        assert "needs matplotlib: pip install 'distill[experiments]'" in err and not (tmp_path / "tr").exists()
    finally:
        plots.pyplot.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(MissingDependency, match=r"needs scikit-learn: pip install 'distill\[experiments\]'") as e:
        require("sklearn.cluster", "experiments", "clustering")
    assert isinstance(e.value, ImportError) and isinstance(e.value, DistillError)


def test_torch_is_a_range_in_the_package_and_pinned_where_it_is_installed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = [d for d in project["dependencies"] if d.startswith("torch")]
    assert torch_req == ["torch>=2.6"], torch_req
    assert not any(d.startswith(("matplotlib", "scikit-learn")) for d in project["dependencies"])
    extras = project["optional-dependencies"]
    for name in ("matplotlib", "scikit-learn"):
        assert any(d.startswith(name) for d in extras["test"]) and any(d.startswith(name) for d in extras["experiments"])
    make = (ROOT / "Makefile").read_text()
    assert make.index("torch==2.13.0") < make.index("-e '.[test]'")

"""`distill run FILE.toml` and `--print-config`: a command line and its file are the same command."""
import pytest
from conftest import one_line_error, run, write_npz

from distill.checks import check_number_flags
from distill.cli import build_parser
from distill.cli.config import config_text, file_argv

LINES = [
    ["teacher", "--data", "d.npz", "--hidden", "16", "8", "--epochs", "2", "--out", "runs/t", "--lr", "0.05",
     "--jitter", "1", "--no-progress", "--log-every", "5"],
    ["student", "--teacher", "runs/t/model", "--teacher", "runs/t2/model", "--combine", "geometric",
     "--temperature", "4", "--hard-weight", "0.2", "--data", "d.npz", "--out", "runs/s", "--select", "best"],
    ["student", "--task", "lm", "--data", "gutenberg", "--layers", "2", "--embd", "64", "--divergence", "jsd",
     "--beta", "0.3", "--teacher", "runs/lm/model", "--out", "runs/lms", "--tensorboard", "--parallel", "fsdp"],
    ["evaluate", "runs/t/model", "--data", "d.npz", "--json"],
    ["export", "runs/t/model", "--format", "torchscript", "--tolerance", "0.001"],
    ["compare", "runs/t/model", "runs/s/model", "runs/s2/model", "--threads", "2", "--onnx", "off"],
    ["targets", "--teacher", "runs/t/model", "--data", "d.npz", "--out", "store", "--top-k", "3"],
    ["reproduce", "mnist", "--preset", "quick", "--out", "runs/demo"],
    ["plot", "history", "runs/t", "runs/s", "--out", "c.png"],
    ["plot", "temperature", "--temperatures", "1", "2.5"],
]


def _parsed(argv):
    ns = build_parser().parse_args(argv)
    check_number_flags(ns)
    return vars(ns)


@pytest.mark.parametrize("argv", LINES, ids=lambda a: " ".join(a[:2]))
def test_every_command_line_and_its_file_parse_to_the_same_command(argv, tmp_path):
    import tomllib

    text = config_text(_ns(argv), build_parser())
    table = tomllib.loads(text)
    assert table["command"] == argv[0]
    assert _parsed(file_argv("f.toml", table, build_parser())) == _parsed(argv)
    # the file's keys are the flags' names
    assert {a[2:] for a in argv if a.startswith("--")} <= set(table)


def _ns(argv):
    ns = build_parser().parse_args(argv)
    check_number_flags(ns)
    return ns


def test_a_toml_file_trains_to_the_command_lines_run_key_and_the_run_folder_keeps_it(capsys, tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    write_npz(tmp_path / "d.npz")
    argv = ["teacher", "--data", "d.npz", "--hidden", "16", "--epochs", "2", "--out", "runs/a", "--no-progress"]
    assert run(capsys, *argv)[0] == 0
    code, text, err = run(capsys, "run", "--print-config", *argv)
    assert code == 0, err
    assert (tmp_path / "runs/a/config.toml").read_text() == text  # the folder keeps the resolved file
    (tmp_path / "t.toml").write_text(text.replace('"runs/a"', '"runs/b"'))
    code, out, err = run(capsys, "run", "t.toml")
    assert code == 0, err
    keys = [json.loads((tmp_path / f"runs/{n}/model.json").read_text())["run_key"] for n in "ab"]
    assert keys[0] == keys[1]
    # flags after the file override its keys: the same run, so it is found finished
    code, out, err = run(capsys, "run", "t.toml", "--no-progress", "--log-every", "3")
    assert code == 0 and "already holds this finished run" in err


@pytest.mark.parametrize("body, message", [
    ('command = "teacher"\nout = "x"\nepocs = 3\n', "unknown key 'epocs' for `distill teacher` (did you mean 'epochs'?)"),
    ('command = "teacher"\nout = "x"\nepochs = "3"\n', "key 'epochs' must be a number"),
    ('command = "teacher"\nout = "x"\nepochs = 0\n', "key 'epochs' must be >= 1"),
    ('command = "teacher"\nout = "x"\nlr = true\n', "key 'lr' takes one value"),
    ('command = "teacher"\nout = "x"\nschedule = "cos"\n', "key 'schedule' must be one of constant, cosine"),
    ('command = "teacher"\nout = "x"\nno-progress = 1\n', "key 'no-progress' is true or false"),
    ('command = "teacher"\nout = 3\n', "key 'out' must be a string"),
    ('command = "teacher"\n', "needs the key 'out'"),
    ('command = "techer"\n', "did you mean 'teacher'?"),
    ('out = "x"\n', "no 'command' key"),
    ('command = "reproduce"\nexperiment = "mnsit"\n', "did you mean 'mnist'?"),
    ('command = "teacher"\nout = "x"\n[train]\nlr = 0.1\n', "unknown key 'train'"),
    ('command = "teacher"\nout = [\n', "is not valid TOML"),
])
def test_bad_files_get_one_line_naming_the_file_and_key(capsys, tmp_path, body, message):
    f = tmp_path / "exp.toml"
    f.write_text(body)
    err = one_line_error(capsys, "run", f)
    assert message in err and str(f) in err, err


def test_run_needs_a_file_or_a_command_to_print(capsys, tmp_path):
    assert "needs a FILE.toml" in one_line_error(capsys, "run")
    assert "needs the command line" in one_line_error(capsys, "run", "--print-config")
    assert "not found" in one_line_error(capsys, "run", tmp_path / "none.toml")


def test_parallel_is_for_language_models(capsys, tmp_path):
    write_npz(tmp_path / "d.npz")
    err = one_line_error(capsys, "teacher", "--data", tmp_path / "d.npz", "--parallel", "fsdp", "--out", tmp_path / "o")
    assert "--parallel is for language models" in err

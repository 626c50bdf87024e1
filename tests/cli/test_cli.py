import json
import os
import subprocess
import sys

import pytest
import torch

from distill.cli import EXPERIMENTS, main

SMALL = ["--train-size", "1000", "--test-size", "500"]


def test_end_to_end_teacher_student_evaluate(tmp_path, capsys):
    assert main(["teacher", *SMALL, "--hidden", "64", "64", "--epochs", "2", "--out", str(tmp_path / "t"),
                 "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("teacher: ") and "test errors / 500" in line and str(tmp_path / "t") in line
    side_t = json.loads((tmp_path / "t" / "model.json").read_text())
    assert side_t["factory"]["target"] == "distill.models:MLP" and "arch" not in side_t
    assert side_t["num_classes"] == 10 and side_t["input_shape"] == [784]
    assert side_t["config"]["lr"] == 0.1 and side_t["config"]["jitter"] == 2  # hard labels: lr 0.1
    assert main(["student", *SMALL, "--hidden", "32", "--epochs", "2", "--out", str(tmp_path / "h"), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("student-hard: ")
    side_h = json.loads((tmp_path / "h" / "model.json").read_text())
    assert side_h["teacher"] is None and side_h["config"]["lr"] == 0.1
    assert main(["student", *SMALL, "--hidden", "32", "--epochs", "2", "--teacher", str(tmp_path / "t" / "model"),
                 "--temperature", "4", "--hard-weight", "0.2", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("student-distilled: ")
    side = json.loads((tmp_path / "d" / "model.json").read_text())
    assert side["config"]["temperature"] == 4.0 and side["config"]["hard_weight"] == 0.2
    assert side["config"]["lr"] == 0.03  # distilling: lr 0.03
    from distill.teachers.teacher import load_teacher

    assert side["teacher"] == load_teacher(tmp_path / "t" / "model")[1]  # a single teacher's id does not depend on T
    assert side["teacher_checkpoint"] == [str(tmp_path / "t" / "model")]
    assert main(["evaluate", str(tmp_path / "d" / "model.safetensors"), *SMALL, "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test_errors"] == side["test"]["errors"] and ev["test_n"] == 500
    assert {"test_errors", "test_accuracy", "test_nll", "params"} <= set(ev)
    assert ev["params"] == 784 * 32 + 32 + 32 * 10 + 10
    assert ev["data_fingerprint_matches"] is True
    assert main(["evaluate", str(tmp_path / "d" / "model"), "--test-size", "500", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data_fingerprint_matches"] is False  # trained on 1,000 only
    # logit matching: the LogitMatching objective, the distillation lr
    assert main(["student", *SMALL, "--hidden", "32", "--epochs", "1", "--teacher", str(tmp_path / "t" / "model"),
                 "--logit-matching", "--out", str(tmp_path / "m"), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("student-distilled: ")
    side_m = json.loads((tmp_path / "m" / "model.json").read_text())
    assert side_m["config"]["objective"]["objective"] == "distill.losses.LogitMatching"
    assert side_m["config"]["lr"] == 0.03
    # the same command again returns the finished run at once
    assert main(["student", *SMALL, "--hidden", "32", "--epochs", "1", "--teacher", str(tmp_path / "t" / "model"),
                 "--logit-matching", "--out", str(tmp_path / "m"), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("student-distilled: ")


def _run(*args):
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_bad_flag_and_missing_file_exit_2_without_traceback(tmp_path):
    r = _run("student", "--temperature", "-3", "--teacher", "x", "--out", str(tmp_path))
    assert r.returncode == 2 and "--temperature must be > 0" in r.stderr and "Traceback" not in r.stderr
    r = _run("evaluate", str(tmp_path / "nope"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = _run("student", "--out", str(tmp_path / "s"), "--teacher", str(tmp_path / "nope"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = _run("teacher", "--frobnicate", "--out", str(tmp_path / "f"))
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr
    r = _run("teacher", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("flags, message", [
    (["--hard-weight", "nan"], "--hard-weight must be a finite number"),
    (["--soft-weight", "nan"], "--soft-weight must be a finite number"),
    (["--soft-weight", "-1"], "--soft-weight must be >= 0"),
    (["--hard-weight", "0", "--soft-weight", "0"], "--hard-weight and --soft-weight are both 0"),
    (["--temperature", "inf"], "--temperature must be a finite number"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--seed", "1e23"], "--seed is too large"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--momentum", "nan"], "--momentum must be a finite number"),
    (["--momentum", "1"], "--momentum must be < 1"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr", "fast"], "--lr must be a number, got 'fast'"),
    (["--epochs", "2.5"], "--epochs must be a whole number"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--hidden", "32", "0"], "--hidden must be >= 1"),
    (["--train-size", "nan"], "--train-size must be a finite number"),
    (["--test-size", "0"], "--test-size must be >= 1"),
])
def test_bad_numbers_are_one_line_naming_the_flag_before_anything_runs(tmp_path, capsys, flags, message):
    teacher = ["--teacher", str(tmp_path / "not-read-yet")]
    assert main(["student", *flags, *teacher, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("distill: error: ") and message in err, err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("cmd", [["teacher", "--dropout-hidden", "1"], ["teacher", "--dropout-input", "nan"],
                                 ["teacher", "--max-norm", "0"], ["teacher", "--jitter", "-1"],
                                 ["teacher", "--jitter", "1.5"]])
def test_bad_teacher_numbers(tmp_path, capsys, cmd):
    assert main([*cmd, "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and cmd[1] in err, err
    assert not (tmp_path / "t").exists()


def test_plot_numbers_are_checked(tmp_path, capsys):
    assert main(["plot", "temperature", "--temperatures", "1", "0", "--out", str(tmp_path / "t.png")]) == 2
    assert "--temperatures must be > 0" in capsys.readouterr().err
    assert main(["plot", "temperature", "--logits", "1", "nan", "--out", str(tmp_path / "t.png")]) == 2
    assert "--logits must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists()


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "4"], "--temperature needs --teacher"),
    (["--logit-matching"], "--logit-matching needs --teacher"),
    (["--logit-matching", "--teacher", "t", "--temperature", "4", "--hard-weight", "0.1"],
     "--temperature, --hard-weight do not apply to --logit-matching"),
])
def test_flags_that_would_be_ignored_are_errors(tmp_path, capsys, flags, message):
    assert main(["student", *flags, "--out", str(tmp_path / "s")]) == 2
    assert message in capsys.readouterr().err


def test_sizes_larger_than_the_data_and_out_as_a_file_are_errors(tmp_path, capsys):
    assert main(["student", "--train-size", "60001", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--train-size 60001 is larger than mnist's training set (60,000" in err
    assert main(["evaluate", str(tmp_path / "x"), "--test-size", "10001"]) == 2  # the checkpoint is checked first
    assert "not found" in capsys.readouterr().err
    (tmp_path / "file").write_text("not a folder")
    assert main(["teacher", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err
    assert (tmp_path / "file").read_text() == "not a folder"


def _toy_checkpoint(path, in_features=5, classes=3, with_fit=True):
    """A checkpoint that does not fit MNIST: trained by fit (sidecar with input_shape and
    num_classes), or saved bare (no such fields)."""
    import distill
    from distill.models.classifiers import MLP

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, in_features, generator=g), torch.randint(0, classes, (40,), generator=g)
    model = MLP(in_features, [4], classes)
    if with_fit:
        distill.fit(model, (x, y), distill.TrainConfig(epochs=1, batch_size=20), run_dir=path, progress=False,
                    log=lambda *a: None)
        return path / "model"
    distill.save_checkpoint(path / "model", model)
    return path / "model"


def test_checkpoints_that_do_not_fit_the_data_are_one_line_errors(tmp_path, capsys):
    small = ["--train-size", "100", "--test-size", "100"]
    ckpt = _toy_checkpoint(tmp_path / "a")
    assert main(["evaluate", str(ckpt), *small]) == 2  # a checkpoint of the API records no data
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "records no data to evaluate on" in err and "pass --data" in err, err
    assert main(["evaluate", str(ckpt), "--dataset", "mnist", *small]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "takes inputs of shape (5,), but mnist's are (784,)" in err, err
    ckpt = _toy_checkpoint(tmp_path / "b", in_features=784)
    assert main(["evaluate", str(ckpt), "--dataset", "mnist", *small]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "predicts 3 classes, but mnist has 10" in err, err
    # as a teacher: the same checks name the teacher, before any training
    assert main(["student", *small, "--teacher", str(ckpt), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"teacher {ckpt} predicts 3 classes" in err, err
    assert not (tmp_path / "s").exists()
    # a checkpoint saved without those fields: the forward pass's error, in one line
    bare = _toy_checkpoint(tmp_path / "c", with_fit=False)
    assert main(["evaluate", str(bare), "--dataset", "mnist", *small]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot run on mnist's inputs of shape (784,)" in err, err
    bare = _toy_checkpoint(tmp_path / "d", in_features=784, with_fit=False)
    assert main(["evaluate", str(bare), "--dataset", "mnist", *small]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "returns outputs of shape (3,), but mnist has 10 classes" in err, err
    assert main(["student", *small, "--teacher", str(bare), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the teacher returns outputs of shape (3,)" in err, err


LAZY = """
import sys
from distill.cli import build_parser, main
code = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'matplotlib')
               or m.startswith('distill.experiments'))
print('CODE', code)
print('HEAVY', ','.join(heavy))
"""


def test_training_and_evaluate_commands_import_no_experiment_sklearn_or_matplotlib(tmp_path):
    ckpt = _toy_checkpoint(tmp_path / "a", in_features=784, classes=10)
    for code, argv in ((0, ["evaluate", str(ckpt), "--dataset", "mnist", "--train-size", "100", "--test-size", "100"]),
                       (0, ["teacher", "--train-size", "100", "--test-size", "50", "--hidden", "8", "--epochs", "1",
                            "--no-progress", "--out", str(tmp_path / "t")]),
                       (2, ["student", "--seed", "nan", "--out", str(tmp_path / "s")])):
        r = subprocess.run([sys.executable, "-c", LAZY, *argv], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert f"CODE {code}\n" in r.stdout, (argv[0], r.stdout, r.stderr)
        assert "HEAVY \n" in r.stdout, (argv[0], r.stdout)


def test_reproduce_help_lists_every_experiment_without_importing_them():
    code = ("import sys\nfrom distill.cli import main\ntry:\n    main(['reproduce', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('HEAVY', [m for m in sys.modules if m.startswith('distill.experiments')])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in r.stdout, r.stdout
    for name, (_, help_) in EXPERIMENTS.items():
        assert name in r.stdout
        assert help_.split()[0] in r.stdout


def test_an_experiment_module_is_imported_only_when_run(capsys):
    from distill.cli import build_parser

    # parsing `reproduce mnist` adds mnist's own flags (and only mnist's)
    args = build_parser().parse_args(["reproduce", "mnist", "--preset", "tiny", "--out", "x"])
    assert args.experiment == "mnist" and args.preset == "tiny"
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["reproduce", "ensemble", "--seeds", "3"])  # an mnist flag, not ensemble's
    assert e.value.code == 2
    args = build_parser().parse_args(["specialists", "--preset", "tiny", "--out", "x"])
    assert args.command == "specialists" and args.experiment == "specialists" and args.preset == "tiny"
    for name, (module, _) in EXPERIMENTS.items():
        import importlib.util

        assert importlib.util.find_spec(module) is not None, name


@pytest.mark.parametrize("cmd", [[], ["teacher"], ["student"], ["evaluate"], ["reproduce"], ["reproduce", "mnist"],
                                 ["reproduce", "omit-3"], ["specialists"], ["plot", "temperature"]])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


def test_lr_default_is_documented_once_for_both_commands(capsys):
    for cmd in ("teacher", "student"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "0.1 when training on hard labels" in text and "0.03 when distilling" in text


def test_plot_temperature(tmp_path, capsys):
    assert main(["plot", "temperature", "--out", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"

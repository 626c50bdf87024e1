"""`distill plot history`: the curves of run folders (metrics.csv, else the sidecar's history)."""
import json

from conftest import one_line_error, run, write_npz

from distill.tools.history import _spans_decades, run_history


def _train(capsys, tmp_path, name, *extra):
    code, out, err = run(capsys, "teacher", "--data", tmp_path / "d.npz", "--hidden", "16", "--epochs", "3",
                         "--out", tmp_path / name, "--no-progress", *extra)
    assert code == 0, err
    return tmp_path / name


def test_plot_history_draws_several_runs_from_their_metrics(capsys, tmp_path):
    write_npz(tmp_path / "d.npz")
    a = _train(capsys, tmp_path, "a")
    b = _train(capsys, tmp_path, "b", "--lr", "0.03")
    h = run_history(a / "model")  # the checkpoint's stem names its folder too
    assert h.name == "a" and [r["epoch"] for r in h.epochs] == [1, 2, 3]
    assert "lr 0.1" in h.settings and "batch 12," in h.settings  # the batch chosen from 120 examples
    assert all("val_errors" in r and "test_errors" in r for r in h.epochs)
    code, out, err = run(capsys, "plot", "history", a, b, "--out", tmp_path / "curves.png")
    assert code == 0, err
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "curves.png" in out


def test_a_run_without_metrics_csv_plots_from_its_sidecar(capsys, tmp_path):
    write_npz(tmp_path / "d.npz")
    a = _train(capsys, tmp_path, "a")
    (a / "metrics.csv").unlink()
    h = run_history(a)
    side = json.loads((a / "model.json").read_text())
    assert [r["loss"] for r in h.epochs] == [r["train_loss"] for r in side["history"]]


def test_log_scale_only_when_values_span_decades_and_bad_paths_are_one_line(capsys, tmp_path):
    assert _spans_decades([100.0, 2.0]) and not _spans_decades([3.0, 1.0, None])
    err = one_line_error(capsys, "plot", "history", tmp_path / "nowhere")
    assert "not a run folder" in err
    (tmp_path / "empty").mkdir()
    assert "no training history" in one_line_error(capsys, "plot", "history", tmp_path / "empty")

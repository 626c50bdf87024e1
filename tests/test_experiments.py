import json

import pytest

from distill.experiments import mnist, temperature
from distill.experiments.common import gap_closed, mean_std


def test_gap_closed_arithmetic():
    assert gap_closed(67, 146, 74) == pytest.approx(72 / 79)  # the paper's 91 %
    assert gap_closed(100, 200, 100) == 1.0 and gap_closed(100, 200, 200) == 0.0
    m, s = mean_std([1, 2, 3])
    assert m == 2 and s == pytest.approx(1.0)


def test_summary_table_arithmetic():
    recs = [dict(model="teacher", test_errors=70, params=10, wall_seconds=1.0, seed=0)] + [
        dict(model=m, test_errors=e, params=5, wall_seconds=1.0, seed=i)
        for m, errs in (("student-hard", (140, 160)), ("student-distilled", (80, 90))) for i, e in enumerate(errs)]
    md = mnist.summarize(recs)
    assert "| student-hard | 150.0 ± 14.1 | 2 | 146 | 196 |" in md
    assert "**81 %**" in md  # (150 - 85) / (150 - 70) = 0.8125


def test_mnist_experiment_skips_and_resumes(tmp_path, monkeypatch):
    logs = []
    recs = mnist.run("tiny", out=tmp_path, progress=False, log=logs.append)
    names = [r["model"] for r in recs]
    assert names == ["teacher", "student-hard", "student-distilled"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["model"] for r in data] == names
    for r in data:
        assert {"model", "seed", "test_errors", "test_accuracy", "wall_seconds", "params"} <= set(r)
    assert data[2]["temperature"] == 20.0 and data[1]["temperature"] is None
    assert "paper" in (tmp_path / "results.md").read_text()

    # second run: every stage is skipped, results identical
    logs.clear()
    again = mnist.run("tiny", out=tmp_path, progress=False, log=logs.append)
    assert sum("[skip]" in m for m in logs) == 3
    assert [r["test_errors"] for r in again] == [r["test_errors"] for r in recs]

    # a stage interrupted mid-way resumes: drop the distilled student's final model, fake a crash state
    import shutil

    d = next(p for p in (tmp_path / "stages").iterdir() if p.name.startswith("student-distilled"))
    shutil.rmtree(d)
    from distill.training import fit as real_fit

    def crash_after_first_epoch(model, data, config, **kw):
        from dataclasses import replace

        real_fit(model, data, replace(config, epochs=1), **{**kw, "run_dir": None})
        raise KeyboardInterrupt

    calls = {"n": 0}

    def flaky_fit(*a, **kw):
        calls["n"] += 1
        return real_fit(*a, **kw)

    monkeypatch.setattr("distill.experiments.common.fit", flaky_fit)
    logs.clear()
    third = mnist.run("tiny", out=tmp_path, progress=False, log=logs.append)
    assert sum("[skip]" in m for m in logs) == 2 and calls["n"] == 3
    assert third[2]["test_errors"] == recs[2]["test_errors"]  # retrained deterministically


def test_temperature_claims_logic():
    def rec(h, t, e):
        return dict(model="student-distilled", hidden=[h, h], temperature=t, test_errors=e)

    recs = [rec(300, 8.0, 100), rec(300, 20.0, 105), rec(30, 2.5, 300), rec(30, 4.0, 310), rec(30, 20.0, 400),
            rec(30, 1.0, 350)]
    c = temperature.claims(recs)
    assert any("300 units" in x and "holds" in x and "not" not in x for x in c)
    assert any("30 units" in x and "holds" in x and "not" not in x for x in c)
    recs2 = recs[:2] + [rec(30, 2.5, 300), rec(30, 20.0, 250)]
    assert any("30 units" in x and "does not hold" in x for x in temperature.claims(recs2))

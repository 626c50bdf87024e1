import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from distill.data import transfer as transfer
from distill.checkpoints import load_checkpoint
from distill.experiments import ensemble, mnist, partial, regularizer, temperature
from distill.experiments.common import MNIST_PRESETS, gap_closed, load_mnist_data, mean_std
from distill.metrics import classification_metrics, predict_logits
from distill.train.rundir import RunDir
from distill.teachers.teacher import Ensemble, module_id


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


def _configs(obj):
    from dataclasses import fields, is_dataclass

    from distill.train.config import TrainConfig
    if isinstance(obj, TrainConfig):
        yield obj
    elif is_dataclass(obj):
        for f in fields(obj):
            yield from _configs(getattr(obj, f.name))


def test_presets_give_explicit_learning_rates():
    """lr=None now means 0.1 on hard labels / 0.03 with a teacher; every preset keeps its own lr."""
    for module in (mnist, temperature, partial, regularizer, ensemble):
        for name, preset in module.PRESETS.items():
            base = MNIST_PRESETS[preset.base] if module is temperature else preset
            for cfg in _configs(base):
                assert cfg.lr is not None and cfg.objective is None, (module.__name__, name, cfg)
    quick = MNIST_PRESETS["quick"]
    assert quick.distilled() == replace(quick.student, lr=0.03, temperature=20.0, hard_weight=0.1)
    assert quick.distilled(4.0).temperature == 4.0 and quick.student.lr == 0.1
    assert partial.PRESETS["paper"].student == MNIST_PRESETS["paper"].distilled()


class Interrupted(Exception):
    """Stands for a killed process in the resume test."""


def _stage_dir(out, name):
    dirs = [p for p in (out / "stages").iterdir() if p.name.startswith(name + "-")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _trajectory(history):
    """What an uninterrupted and a resumed run must agree on, epoch by epoch (timings aside)."""
    return [(h["epoch"], h["lr"], h["train_loss"], h["test_errors"], h["test_nll"]) for h in history]


def test_mnist_experiment_skips_and_resumes(tmp_path, monkeypatch):
    logs = []
    a = tmp_path / "a"
    recs = mnist.run("tiny", out=a, progress=False, log=logs.append)
    names = [r["model"] for r in recs]
    assert names == ["teacher", "student-hard", "student-distilled"]
    data = json.loads((a / "results.json").read_text())
    assert [r["model"] for r in data] == names
    for r in data:
        assert {"model", "seed", "test_errors", "test_accuracy", "wall_seconds", "params"} <= set(r)
        assert "resumed_from" not in r
    assert data[2]["temperature"] == 20.0 and data[2]["hard_weight"] == 0.1
    assert data[1]["temperature"] is None and data[0]["temperature"] is None
    assert "paper" in (a / "results.md").read_text()
    # the distilled student's soft targets came from the teacher through one store in the cache
    assert any("[soft targets] computing" in m for m in logs)
    assert len([p for p in (a / "stages" / "soft-targets").iterdir() if p.is_dir()]) == 1

    # second run: every stage is skipped, results identical
    logs.clear()
    again = mnist.run("tiny", out=a, progress=False, log=logs.append)
    assert sum("[skip]" in m for m in logs) == 3
    assert [r["test_errors"] for r in again] == [r["test_errors"] for r in recs]

    # a run killed after the distilled student's first epoch (its state saved) ...
    b = tmp_path / "b"
    save_state = RunDir.save_state

    def save_then_die(self, tensors, sidecar):
        save_state(self, tensors, sidecar)
        if self.path.name.startswith("student-distilled-") and sidecar["epoch"] == 1:
            raise Interrupted

    monkeypatch.setattr(RunDir, "save_state", save_then_die)
    with pytest.raises(Interrupted):
        mnist.run("tiny", out=b, progress=False, log=logs.append)
    monkeypatch.setattr(RunDir, "save_state", save_state)
    d = _stage_dir(b, "student-distilled")
    assert d.name == _stage_dir(a, "student-distilled").name          # same run key as the clean run
    assert (d / "state.safetensors").is_file() and not (d / "model.safetensors").exists()
    assert [r["model"] for r in json.loads((b / "results.json").read_text())] == names[:2]

    # ... resumes on the rerun: the finished stages are skipped, the student continues after epoch 1
    logs.clear()
    resumed = mnist.run("tiny", out=b, progress=False, log=logs.append)
    assert sum("[skip]" in m for m in logs) == 2
    assert sum("[resume]" in m and "after epoch 1/2" in m for m in logs) == 1
    assert [r.get("resumed_from") for r in resumed] == [None, None, 1]  # the record says so
    assert json.loads((b / "results.json").read_text())[2]["resumed_from"] == 1
    assert not (d / "state.safetensors").exists()                       # finished: resume state dropped
    # and ends exactly where the uninterrupted run did
    assert [r["test_errors"] for r in resumed] == [r["test_errors"] for r in recs]
    assert resumed[2]["test_nll"] == recs[2]["test_nll"]
    hist_a = json.loads((_stage_dir(a, "student-distilled") / "model.json").read_text())["history"]
    hist_b = json.loads((d / "model.json").read_text())["history"]
    assert [h["epoch"] for h in hist_b] == [1, 2]                       # history continues
    assert _trajectory(hist_b) == _trajectory(hist_a)


def test_partial_omit3_bias_corrections(tmp_path):
    """omit-3 end to end (tiny): one distilled student, three rows (no / paper / automatic
    correction); the automatic offset moves only the absent class and is fit_offsets of the
    student against the teacher on the unlabeled calibration inputs."""
    logs = []
    recs = partial.run("omit-3", "tiny", out=tmp_path, progress=False, log=logs.append)
    assert [(r["model"], r["correction"]) for r in recs] == [
        ("teacher", "none"), ("student-distilled", "none"), ("student-distilled", "paper"),
        ("student-distilled", "auto")]
    none, paper, auto = recs[1:]
    assert len({r["checkpoint"] for r in recs[1:]}) == 1               # one network, post-hoc offsets
    for r in recs[1:]:
        assert r["absent_classes"] == [3] and r["omitted_classes"] == [3] and r["temperature"] == 20.0
    assert none["offsets"] == {} and paper["offsets"] == {3: 3.5}
    assert set(auto["offsets"]) == {3} and auto["offsets"][3] > 0       # only the absent class, raised
    assert "500 unlabeled training images" in auto["calibration"] and none["calibration"] is None

    data = load_mnist_data(MNIST_PRESETS["tiny"], log=lambda *_: None)
    assert none["transfer_size"] == int((data.y_train != 3).sum())
    teacher, _ = load_checkpoint(recs[0]["checkpoint"])
    student, side = load_checkpoint(none["checkpoint"])
    assert side["teacher"] == module_id(teacher)                        # distilled from that teacher
    calib = transfer.calibration_inputs(data, partial.PRESETS["tiny"].calibration_size)
    b = transfer.fit_offsets(predict_logits(student, calib), torch.softmax(predict_logits(teacher, calib), -1),
                             classes=[3])
    assert auto["offsets"][3] == pytest.approx(float(b[3]), abs=1e-3)
    z = predict_logits(student, data.x_test)
    assert none["test_errors"] == side["test"]["errors"]
    for r in recs[1:]:
        logits = transfer.apply_offsets(z, transfer.offset_vector(data.num_classes, r["offsets"]))
        assert r["test_errors"] == classification_metrics(logits, data.y_test)["errors"]
        assert r["errors_on_omitted"] == r["errors_on_absent"] == transfer.errors_on(logits, data.y_test, [3])
    # the automatic offset matches the student's mean probability of the 3s to the teacher's (on the
    # calibration inputs); raising the 3's bias can only turn predictions into 3s
    q = transfer.mean_probabilities(transfer.apply_offsets(predict_logits(student, calib), b))
    assert float(q[3]) == pytest.approx(float(torch.softmax(predict_logits(teacher, calib), -1)[:, 3].mean()),
                                        abs=1e-4)
    assert paper["errors_on_omitted"] < none["errors_on_omitted"]
    assert auto["errors_on_omitted"] <= none["errors_on_omitted"]
    t_logits = predict_logits(teacher, data.x_test)
    assert recs[0]["errors_on_omitted"] == transfer.errors_on(t_logits, data.y_test, [3])
    assert "| auto | 3: +" in (tmp_path / "results.md").read_text()


def test_experiments_share_the_teacher_and_stages_through_the_cache(tmp_path, monkeypatch):
    """temperature and regularizer reuse mnist's teacher (and its soft-target store, and the
    100 % hard-label student) through a common cache instead of training them again."""
    # the tiny preset's 200-image set makes 2 SGD steps an epoch; repeated to 1,000 rows the soft
    # student leaves the constant-prediction loss within its 3 epochs (the divergence check's limit)
    monkeypatch.setitem(regularizer.PRESETS, "tiny", replace(regularizer.PRESETS["tiny"], epoch_size=1000))
    cache = tmp_path / "cache"
    mnist.run("tiny", out=tmp_path / "mnist", cache=cache, progress=False, log=lambda *_: None)
    logs = []
    recs = temperature.run("tiny", out=tmp_path / "temperature", cache=cache, progress=False, log=logs.append)
    assert [(r["model"], r.get("temperature")) for r in recs] == [("teacher", None), ("student-distilled", 1.0),
                                                                  ("student-distilled", 4.0)]
    assert [r["hidden"] for r in recs[1:]] == [[16, 16], [16, 16]]
    assert any("[skip]" in m and "/teacher-" in m for m in logs)
    assert sum("[soft targets] reusing" in m for m in logs) == 2        # one store serves every T
    assert not any("[soft targets] computing" in m for m in logs)

    logs.clear()
    recs = regularizer.run("tiny", out=tmp_path / "regularizer", cache=cache, progress=False, log=logs.append)
    assert [r["model"] for r in recs] == ["teacher", "student-hard", "student-hard-3pct", "student-soft-3pct"]
    assert sum("[skip]" in m for m in logs) == 2                         # teacher and mnist's student-hard
    by = {r["model"]: r for r in recs}
    assert by["student-soft-3pct"]["temperature"] == 20.0 and by["student-hard-3pct"]["temperature"] is None
    assert by["student-hard-3pct"]["transfer_size"] == by["student-soft-3pct"]["transfer_size"] == 200
    assert all(isinstance(r["best_epoch_errors"], int) for r in recs[1:])
    assert "Share of the 3 % → 100 % gap" in (tmp_path / "regularizer" / "results.md").read_text()


def test_ensemble_experiment_distils_both_combinations(tmp_path):
    recs = ensemble.run("tiny", out=tmp_path, progress=False, log=lambda *_: None)
    assert [r["model"] for r in recs] == ["member-0", "member-1", "ensemble-arithmetic", "student-arithmetic",
                                          "ensemble-geometric", "student-geometric"]
    members = [load_checkpoint(r["checkpoint"])[0] for r in recs[:2]]
    teachers = {}
    for r in recs:
        if r["model"].startswith("student"):
            side = json.loads((Path(r["checkpoint"]).parent / "model.json").read_text())
            teachers[r["combine"]] = side["teacher"]
            assert r["temperature"] == 20.0 and r["hard_weight"] == 0.1
    # the arithmetic mean's effective logits depend on T, so its identity carries T; the geometric's do not
    assert teachers["arithmetic"] == Ensemble(members, "arithmetic").teacher_id + "@T20"
    assert teachers["geometric"] == Ensemble(members, "geometric").teacher_id
    assert len([p for p in (tmp_path / "stages" / "soft-targets").iterdir() if p.is_dir()]) == 2


def test_experiments_do_not_import_each_other():
    import ast

    import distill.experiments as pkg

    folder = Path(pkg.__file__).parent
    for f in sorted(folder.glob("*.py")):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                if n.startswith("distill.experiments.") and n.split(".")[2] not in ("common",):
                    raise AssertionError(f"{f.name} imports {n}; shared wiring belongs in experiments/common.py")


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


def test_onpolicy_summary_compares_each_row_with_the_off_policy_control():
    from distill.experiments.lm import onpolicy_summary, onpolicy_table

    def rec(model, nll, test, lr=3e-3):
        return dict(model=model, lr=lr, test_nll=test, greedy_teacher_nll=nll, sampled_teacher_nll=nll,
                    sampled_distinct_2=0.9, greedy_repetition_4=0.1)
    recs = [rec("offpolicy-forward-kl", 4.0, 5.0), rec("offpolicy-forward-kl", 4.2, 5.2),
            rec("onpolicy-1-reverse-kl", 3.0, 5.1), dict(model="onpolicy-1-jsd", lr=1e-3, test_nll=5.0),
            rec("onpolicy-1-forward-kl", 4.1, 5.12)]
    text = onpolicy_summary(recs)
    # (3.0 / 4.1 - 1) = -26.8 %; test perplexity exp(5.1 - 5.1) - 1 = +0.00 %, exp(5.12 - 5.1) - 1 = +2.02 %;
    # a row still training is left out
    assert "onpolicy-1-reverse-kl: teacher NLL of sampled continuations -26.8 %" in text
    assert "test perplexity +0.00 %" in text and "test perplexity +2.02 %" in text
    assert "jsd" not in text and "jsd" not in onpolicy_table(recs)
    assert "| offpolicy-forward-kl | 2 |" in onpolicy_table(recs)
    assert onpolicy_summary(recs[2:]) == ""  # no control: nothing to compare

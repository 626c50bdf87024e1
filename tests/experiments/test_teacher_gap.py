"""The teacher-gap experiment at a tiny size: every row, the choices on the held-out split, the
feature rows on top of the logit row's setting, the curves, the cache."""
import pytest

from distill.experiments import teacher_gap
from distill.losses.objectives import Distillation, FeatureDistillation


def test_teacher_gap_experiment_tiny(toy, tmp_path):
    out, logs = tmp_path / "g", []
    recs = teacher_gap.run("mnist", "tiny", out=out, progress=False, log=logs.append, data=toy)
    members = [r for r in recs if r.get("role") == "member"]
    ens = next(r for r in recs if r.get("role") == "ensemble")
    assert len(members) == teacher_gap.PRESETS["tiny"].members and ens["params"] == sum(r["params"] for r in members)
    final = [r for r in recs if r.get("role") == "final"]
    assert [r["row"] for r in final] == list(teacher_gap.ROWS)
    # the small CNN student has at most a tenth of a member's parameters
    assert all(10 * r["params"] <= members[0]["params"] for r in final if r["row"].startswith("cnn"))
    # every choice is the candidate with the fewest validation errors (the first of equals)
    select = [r for r in recs if r.get("role") == "select"]
    assert {r["seed"] for r in select} == {0} and {r["seed"] for r in final} == {1}
    for row in ("mlp-kd", "cnn-kd-features"):
        cands = [r for r in select if r["row"] == row]
        assert len(cands) == 2
        assert next(r for r in final if r["row"] == row)["setting"] == min(cands, key=lambda r: r["val_errors"])["setting"]
    # the feature rows carry the logit row's temperature
    kd_T = next(r for r in final if r["row"] == "cnn-kd")["choice"]["T"]
    assert all(r["temperature"] == kd_T for r in final if r["row"] in teacher_gap.ON_KD)
    consistent = next(r for r in final if r["row"] == "mlp-consistent")
    assert consistent["epochs"] == teacher_gap.PRESETS["tiny"].consistent_epochs
    long = next(r for r in final if r["row"] == "mlp-hard-long")  # the control at (c)'s epochs
    assert long["epochs"] == consistent["epochs"] and long["temperature"] is None
    assert "vs (a'), the same epochs" in (out / "results.md").read_text()
    assert all(len(r["test_curve"]) == r["epochs"] for r in final)
    md = (out / "results.md").read_text()
    assert "ensemble" in md and "(f) small CNN, logit KD + features" in md and "Validation choices" in md
    assert (out / "teacher_gap.png").stat().st_size
    again = teacher_gap.run("mnist", "tiny", out=tmp_path / "g2", cache=out / "stages", progress=False,
                            log=logs.append, data=toy)
    assert [r["test_errors"] for r in again] == [r["test_errors"] for r in recs]


def test_row_configs_build_on_the_logit_row():
    p = teacher_gap.PRESETS["quick"]
    cfg = teacher_gap.row_config(p, "cnn-kd-features", dict(loss="attention", weight=100.0), kd=dict(T=4.0))
    assert isinstance(cfg.objective, FeatureDistillation)
    assert cfg.objective.objective == Distillation(4.0, hard_weight=0.1)
    assert cfg.objective.pairs == (("layer3", "members.0.layer3", "attention", 100.0),)
    assert teacher_gap.row_config(p, "mlp-consistent", dict(T=1.0, lr=0.1)).epochs == p.consistent_epochs
    assert teacher_gap.row_config(p, "mlp-hard-aug", dict(lr=0.03), flip=True).augment.flip
    with pytest.raises(ValueError, match="cnn-kd's setting"):
        teacher_gap.row_config(p, "cnn-relational", dict(loss="relational", weight=1.0))


def test_a_student_larger_than_a_tenth_of_a_member_is_refused():
    from dataclasses import replace

    with pytest.raises(ValueError, match="at most a tenth"):
        replace(teacher_gap.PRESETS["quick"], cnn_width=8).check()


def test_paired_differences_and_their_standard_error():
    from distill.experiments.common import paired, versus

    # differences -41, -15, 31, 1, -15: mean -7.8, sample sd 26.405..., s.e. sd / sqrt(5) = 11.81
    assert paired([164, 174, 209, 220, 164], [205, 189, 178, 219, 179]) == "paired -7.8 ± 11.8 (s.e., 5 seeds)"
    assert paired([1, 2], [1, 2, 3]) == "" and paired([1], [2]) == ""
    assert versus([10, 12], [20, 22]) == "-10.0 (better)" and versus([10, 30], [20, 22]) == "-1.0 (within the spread)"

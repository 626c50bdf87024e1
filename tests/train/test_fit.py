import json
import math
import re

import pytest

from distill.losses.objectives import Objective
import torch
import torch.nn.functional as F

import distill
from distill.checkpoints import load_checkpoint, load_tensors, save_checkpoint
from distill.errors import DistillError
from distill.losses import Distillation
from distill.metrics import evaluate, predict_logits
from distill.models.classifiers import MLP
from distill.train.config import TrainConfig, lr_at, seed_everything
from distill.train.divergence import TrainingDiverged, divergence
from distill.train.fit import fit
from conftest import quiet




def _model(seed=0, dropout=0.0, hidden=32, d_in=64, classes=10):
    seed_everything(seed)
    return MLP(d_in, [hidden], classes, dropout_input=dropout, dropout_hidden=dropout,
               max_norm=2.0 if dropout else None)


def _weights(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_learns_and_reports_metrics(toy):
    res = fit(_model(), toy, TrainConfig(epochs=3, lr=0.1), progress=False, log=quiet)
    assert res.test["n"] == 200 and res.test["errors"] < 20  # chance would be ~180
    assert res.val is None and res.epoch == 3 and not res.skipped and res.run_dir is None
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.history[-1]["test_errors"] == res.test["errors"]
    assert evaluate(res.model, (toy.x_test, toy.y_test)) == res.test
    cosine = 0.1 * 0.5 * (1 + math.cos(math.pi / 3))  # epoch 2 of 3
    assert res.history[0]["lr"] == 0.1 and res.history[1]["lr"] == pytest.approx(cosine)
    assert not res.model.training


def test_default_lr_depends_on_the_teacher(toy):
    hard = fit(_model(), toy, TrainConfig(epochs=1), progress=False, log=quiet)
    assert hard.history[0]["lr"] == 0.1
    soft = fit(_model(1), toy, TrainConfig(epochs=1), teacher=hard.model, progress=False, log=quiet)
    assert soft.history[0]["lr"] == 0.03


def test_same_seed_same_result(toy):
    cfg = TrainConfig(epochs=2, lr=0.05, jitter=2, seed=3)
    a = fit(_model(1, 0.2), toy, cfg, progress=False, log=quiet)
    b = fit(_model(1, 0.2), toy, cfg, progress=False, log=quiet)
    assert torch.equal(_weights(a.model), _weights(b.model))
    c = fit(_model(1, 0.2), toy, TrainConfig(epochs=2, lr=0.05, jitter=2, seed=4), progress=False, log=quiet)
    assert not torch.equal(_weights(a.model), _weights(c.model))


class Interrupt(Exception):
    pass


def test_resume_after_interrupt_matches_uninterrupted(toy, tmp_path):
    cfg = TrainConfig(epochs=3, lr=0.05, jitter=2, seed=0, optimizer="adam", lr_decay=0.5, schedule="exponential",
                      batch_size=100)
    full = fit(_model(0, 0.2), toy, cfg, run_dir=tmp_path / "a", progress=False, log=quiet)

    m = _model(0, 0.2)
    calls = {"n": 0}

    def bomb(module, inputs):
        if module.training:
            calls["n"] += 1
            if calls["n"] == 6 * 2 + 3:  # in the middle of epoch 3 (6 batches per epoch)
                raise Interrupt

    h = m.register_forward_pre_hook(bomb)
    with pytest.raises(Interrupt):
        fit(m, toy, cfg, run_dir=tmp_path / "b", progress=False, log=quiet)
    h.remove()
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["epoch"] == 2
    resumed = fit(_model(5, 0.2), toy, cfg, run_dir=tmp_path / "b", progress=False, log=quiet)
    assert resumed.resumed_from == 2
    assert torch.equal(_weights(full.model), _weights(resumed.model))
    assert resumed.test == full.test
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert not (tmp_path / "b" / "state.json").exists()
    # a third call skips: the finished run is loaded, not retrained
    again = fit(_model(9, 0.2), toy, cfg, run_dir=tmp_path / "b", progress=False, log=quiet)
    assert again.skipped and torch.equal(_weights(again.model), _weights(full.model))
    assert again.test == full.test and again.epoch == 3
    with pytest.raises(DistillError, match="different finished run"):
        fit(_model(), toy, TrainConfig(epochs=1), run_dir=tmp_path / "b", progress=False, log=quiet)


# ---------------------------------------------------------------- distillation paths

def _hand_distill(student, teacher, x, y, cfg: TrainConfig):
    """The training loop written out: the seeded permutation, the cosine schedule, SGD with
    momentum, and Hinton's loss ``sw * T^2 * CE(softmax(v/T), softmax(z/T)) + hw * CE(y, softmax(z))``
    with the teacher's logits ``v`` computed once."""
    with torch.no_grad():
        v = teacher.eval()(x)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    t = cfg.temperature
    student.train()
    for e in range(cfg.epochs):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * e / cfg.epochs))
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            z = student(x[idx])
            soft = -(torch.softmax(v[idx] / t, 1) * torch.log_softmax(z / t, 1)).sum(1).mean() * t * t
            loss = cfg.soft_weight * soft + cfg.hard_weight * F.cross_entropy(z, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return student


def test_distillation_equals_a_hand_written_loop(toy):
    teacher = fit(_model(0), toy, TrainConfig(epochs=2, lr=0.1), progress=False, log=quiet).model
    cfg = TrainConfig(epochs=2, lr=0.05, temperature=4.0, hard_weight=0.2, soft_weight=0.7, batch_size=64, seed=2)
    got = fit(_model(1, hidden=16), toy, cfg, teacher=teacher, progress=False, log=quiet).model
    want = _hand_distill(_model(1, hidden=16), teacher, toy.x_train, toy.y_train, cfg)
    assert torch.allclose(_weights(got), _weights(want), atol=1e-5)
    # and the teacher matters: another teacher gives another student
    other = _model(7)
    assert not torch.allclose(_weights(fit(_model(1, hidden=16), toy, cfg, teacher=other, progress=False,
                                           log=quiet).model), _weights(got), atol=1e-3)


def test_teacher_module_store_and_tensor_agree_and_teacher_runs_once(toy, tmp_path):
    teacher = fit(_model(0), toy, TrainConfig(epochs=2, lr=0.1), progress=False, log=quiet).model
    seen = []
    teacher.register_forward_hook(lambda mod, inp, out: seen.append(len(inp[0])))
    cfg = TrainConfig(epochs=3, lr=0.05, temperature=4.0, hard_weight=0.2)
    # a module: its outputs are computed in ONE pass over the training set, not once per epoch (and
    # one over the test split, kept for the records' agreement with the teacher)
    test = len(toy.x_test)
    a = fit(_model(1), toy, cfg, teacher=teacher, progress=False, log=quiet)
    assert sum(seen) == len(toy.x_train) + test
    # a store under a folder: computed once by the first run, read (teacher not run) by the second
    seen.clear()
    b = fit(_model(1), toy, cfg, teacher=distill.Teacher(teacher, store=tmp_path), progress=False, log=quiet)
    assert sum(seen) == len(toy.x_train) + test and len([p for p in tmp_path.glob("soft-*") if p.is_dir()]) == 1
    seen.clear()
    b2 = fit(_model(1), toy, cfg, teacher=distill.Teacher(teacher, store=tmp_path), progress=False, log=quiet)
    assert sum(seen) == test  # the training set's outputs read from the store
    # stored logits given as a tensor
    c = fit(_model(1), toy, cfg, teacher=predict_logits(teacher, toy.x_train), progress=False, log=quiet)
    for r in (b, b2, c):
        assert torch.equal(_weights(a.model), _weights(r.model))
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_teacher_runs_in_eval_mode_under_no_grad_with_jitter(toy):
    teacher = _model(0, dropout=0.5)
    seen = []
    teacher.register_forward_hook(lambda mod, i, o: seen.append((mod.training, torch.is_grad_enabled())))
    fit(_model(1), toy, TrainConfig(epochs=1, jitter=1, temperature=2.0), teacher=teacher, progress=False, log=quiet)
    assert len(seen) == math.ceil(600 / 128) + 1  # every batch, since the inputs are jittered; and the test split
    assert all(s == (False, False) for s in seen)


def test_stored_targets_refused_with_jitter_or_wrong_rows(toy):
    with pytest.raises(ValueError, match="jitter"):
        fit(_model(), toy, TrainConfig(epochs=1, jitter=2), teacher=torch.zeros(600, 10), progress=False, log=quiet)
    with pytest.raises(ValueError, match="10 rows for 600"):
        fit(_model(), toy, TrainConfig(epochs=1), teacher=torch.zeros(10, 10), progress=False, log=quiet)
    with pytest.raises(ValueError, match="needs a teacher"):
        fit(_model(), toy, TrainConfig(epochs=1, objective=Distillation(4.0)), progress=False, log=quiet)
    with pytest.raises(ValueError, match="does not use one"):
        fit(_model(), toy, TrainConfig(epochs=1, objective=distill.HardLabels()), teacher=_model(3), progress=False,
            log=quiet)


def test_config_validation_and_schedules():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="temperature"):
        TrainConfig(temperature=0)
    with pytest.raises(ValueError, match="select"):
        TrainConfig(select="first")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="batch_size must be a whole number"):
        TrainConfig(batch_size=2.5)
    with pytest.raises(ValueError, match="momentum"):
        TrainConfig(momentum=1.0)
    with pytest.raises(ValueError, match="temperature are the shorthand"):
        TrainConfig(temperature=4.0, objective=Distillation(4.0))
    with pytest.raises(ValueError, match="callable"):
        TrainConfig(objective="distill")
    c = TrainConfig(epochs=10, lr=1.0, schedule="cosine")
    assert lr_at(c, 0) == 1.0 and lr_at(c, 5) == pytest.approx(0.5)
    e = TrainConfig(lr=1.0, schedule="exponential", lr_decay=0.5)
    assert lr_at(e, 3) == pytest.approx(0.125)
    assert lr_at(TrainConfig(lr=0.3, schedule="constant"), 7) == 0.3
    assert TrainConfig().objective_for(True) == Distillation(1.0, 0.1, 1.0)
    assert TrainConfig().objective_for(False) == distill.HardLabels()


def test_checkpoint_round_trip_and_corruption(tmp_path):
    m = _model(0, 0.2)
    save_checkpoint(tmp_path / "ck", m, {"seed": 0, "metrics": {"errors": 1}})
    m2, side = load_checkpoint(tmp_path / "ck.safetensors")
    assert torch.equal(_weights(m), _weights(m2)) and side["seed"] == 0 and "torch" in side["versions"]
    assert side["factory"] == {"target": "distill.models:MLP", "kwargs": m.arch}
    assert side["factory"]["kwargs"]["dropout_input"] == 0.2 and "arch" not in side
    x = torch.rand(5, 64)
    m.eval()
    assert torch.equal(m(x), m2(x))
    blob = (tmp_path / "ck.safetensors").read_bytes()
    (tmp_path / "ck.safetensors").write_bytes(blob[:-10])
    with pytest.raises(DistillError, match="damaged"):
        load_checkpoint(tmp_path / "ck")
    flipped = bytearray(blob)
    flipped[-3] ^= 0xFF  # a weight byte: the file parses, the digest catches it
    (tmp_path / "ck.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(DistillError, match="do not match the digest"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(DistillError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.safetensors").write_bytes(b"")
    with pytest.raises(DistillError, match="truncated"):
        load_checkpoint(tmp_path / "bad")


# ---------------------------------------------------------------- divergence

@pytest.mark.parametrize("losses, chance, why", [
    ([2.0, 1.0, float("nan")], 2.3, "the loss is nan"),
    ([2.0, 1.0, float("inf")], None, "the loss is inf"),
    ([2.2, 0.8, 0.5, 40.0, 50.0], 2.3, "rose from 0.5 to 50"),  # exploded and stayed, above chance
    ([2.2, 0.8, 0.5, 40.0, 50.0], None, "rose from 0.5 to 50"),  # chance unknown: the factor alone
    ([2.303, 1.5, 1.4, 2.3027, 2.3026], 2.302585, "came back to the cost of a constant prediction"),  # collapsed
])
def test_divergence_detects(losses, chance, why):
    got = divergence(losses, chance)
    assert got is not None and why in got


@pytest.mark.parametrize("losses, chance", [
    ([], 2.3),
    ([2.3, 1.2, 0.7, 0.5, 0.45], 2.3),  # a normal decreasing curve
    ([2.0, 0.1, 0.5, 0.6], 2.3),  # rose 5x but stays far below chance: noisy, not diverged
    ([2.2, 0.8, 0.5, 40.0], 2.3),  # exploded for one epoch only (patience 2)
    ([2.3026, 2.3026], 2.302585),  # at chance for 2 epochs only: early training may sit there
    ([2.303, 2.3027, 2.3026], 2.302585),  # at chance from the start: the starting plateau, only a warning
    ([5.0, 5.0, 5.0], -1.0),  # a chance that means nothing is ignored
])
def test_divergence_leaves_healthy_curves_alone(losses, chance):
    assert divergence(losses, chance) is None


def test_divergence_measures_stuck_against_what_the_teacher_allows():
    """``floor`` is the loss of copying the teacher (T^2 H(p) for the soft term): with a soft teacher
    the attainable loss sits close to a constant prediction's, and a student that closes a fair
    share of that small gap is learning, not stuck."""
    from distill.train.divergence import stuck
    chance = 37.30
    curve = [37.29, 37.26, 37.24]  # within 0.2 % of chance
    assert "constant prediction" in stuck(curve, chance)  # judged against 0 the curve looks stuck
    assert stuck(curve, chance, floor=37.0) is None  # it closed 20 % of the attainable gap
    assert "constant prediction" in stuck([37.30, 37.30, 37.299], chance, floor=37.0)  # this one did not
    assert stuck(curve, chance, floor=38.0) is None  # a teacher worse than uniform: no floor to judge by
    assert divergence([37.30, 37.30, 37.299], chance, floor=37.0) is None  # stuck is a warning, not divergence
    assert "rose from" in divergence([37.3, 37.1, 80.0, 90.0], chance, floor=37.0)


def test_a_soft_teacher_at_high_temperature_is_not_mistaken_for_divergence(toy):
    teacher = fit(_model(0), toy, TrainConfig(epochs=2, lr=0.1), progress=False, log=quiet).model
    cfg = TrainConfig(epochs=6, lr=0.05, temperature=4.0, hard_weight=0.2)
    res = fit(_model(1), toy, cfg, teacher=teacher, progress=False, log=quiet)
    chance = (16 + 0.2) * math.log(10)  # T^2 log C + hard_weight log C
    # the first three epochs sit within 0.5 % of a constant prediction's loss (a check against
    # chance alone stops the run here), yet the student is learning from the teacher
    assert all(h["train_loss"] >= 0.995 * chance for h in res.history[:3])
    assert len(res.history) == 6 and res.history[0]["test_errors"] > 150 and res.test["errors"] < 100


def test_huge_lr_on_a_distilled_student_raises_naming_epoch_and_lr(toy):
    teacher = _model(0)
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch \d+: .*learning rate 1e\+03 is likely too high "
                                               r"for the T²-scaled soft loss at T = 4"):
        fit(_model(1), toy, TrainConfig(epochs=4, lr=1000.0, schedule="constant", temperature=4.0), teacher=teacher,
            progress=False, log=quiet)
    assert issubclass(TrainingDiverged, DistillError)


def test_divergence_keeps_the_last_saved_state_in_run_dir(toy, tmp_path):
    teacher = _model(0)
    # epoch 1 at lr 0.05, epoch 2 at lr 0.05 * 1e30: the weights overflow and the loss becomes nan
    cfg = TrainConfig(epochs=3, lr=0.05, schedule="exponential", lr_decay=1e30, temperature=2.0)
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 2: the (loss is nan|model.s outputs became nan)"
                                               r".* 5e\+28 .*the state after epoch 1 .* is kept in") as e:
        fit(_model(1), toy, cfg, teacher=teacher, run_dir=tmp_path / "run", progress=False, log=quiet)
    assert str(tmp_path / "run") in str(e.value)
    tensors, side = load_tensors(tmp_path / "run" / "state")
    assert side["epoch"] == 1 and len(side["history"]) == 1 and math.isfinite(side["history"][0]["train_loss"])
    assert not (tmp_path / "run" / "model.safetensors").exists()
    # the kept state is exactly epoch 1 of the run (the same as a one-epoch run with the same lr)
    one = fit(_model(1), toy, TrainConfig(epochs=1, lr=0.05, schedule="exponential", temperature=2.0),
              teacher=teacher, progress=False, log=quiet)
    for k, v in one.model.state_dict().items():
        assert torch.equal(tensors[f"model.{k}"], v)
    # without a run folder, or diverging in epoch 1, nothing is claimed to be kept
    with pytest.raises(TrainingDiverged) as e:
        fit(_model(1), toy, TrainConfig(epochs=2, lr=1e30, temperature=2.0), teacher=teacher,
            run_dir=tmp_path / "other", progress=False, log=quiet)
    assert "epoch 1" in str(e.value) and "kept" not in str(e.value)


# ---------------------------------------------------------------- choosing the epoch

@pytest.fixture()
def noisy(blobs):
    """Overlapping blobs where a large constant lr makes the validation errors go up and down:
    val errors per epoch are 9, 6, 13, 11, 14, 14 (epoch 2 is the best)."""
    x, y = blobs(600, 10, 3, seed=0, spread=1.0)
    return (x[:400], y[:400]), (x[400:], y[400:])


def test_select_best_returns_the_best_validation_epoch(noisy):
    train, val = noisy
    cfg = TrainConfig(epochs=6, lr=1.0, schedule="constant", select="best")
    res = fit(_model(0, d_in=10, hidden=16, classes=3), train, cfg, val=val, progress=False, log=quiet)
    errs = [h["val_errors"] for h in res.history]
    assert min(errs) < errs[-1]  # the construction: a later epoch is worse
    assert res.val["errors"] == min(errs) and res.epoch == errs.index(min(errs)) + 1
    assert evaluate(res.model, val)["errors"] == min(errs)
    # the weights are those of that epoch: with a constant lr, a run that stops there gives them too
    stop = fit(_model(0, d_in=10, hidden=16, classes=3), train,
               TrainConfig(epochs=res.epoch, lr=1.0, schedule="constant"), progress=False, log=quiet)
    assert torch.equal(_weights(stop.model), _weights(res.model))
    last = fit(_model(0, d_in=10, hidden=16, classes=3), train, TrainConfig(epochs=6, lr=1.0, schedule="constant"),
               val=val, progress=False, log=quiet)
    assert last.epoch == 6 and last.val["errors"] == errs[-1]


def test_select_best_needs_val(noisy):
    train, _ = noisy
    with pytest.raises(ValueError, match='select="best".*pass val='):
        fit(_model(0, d_in=10, hidden=16, classes=3), train, TrainConfig(epochs=1, select="best"), progress=False,
            log=quiet)


def test_the_test_set_never_chooses(noisy):
    train, val = noisy
    x_val, y_val = val
    cfg = TrainConfig(epochs=6, lr=1.0, schedule="constant", select="best")
    # a "test" set whose errors would pick another epoch than val does
    test = (x_val, (y_val + 1) % 3)
    with_test = fit(_model(0, d_in=10, hidden=16, classes=3), train, cfg, val=val, test=test, progress=False,
                    log=quiet)
    without = fit(_model(0, d_in=10, hidden=16, classes=3), train, cfg, val=val, progress=False, log=quiet)
    test_errs = [h["test_errors"] for h in with_test.history]
    assert test_errs.index(min(test_errs)) + 1 != with_test.epoch
    assert with_test.epoch == without.epoch and torch.equal(_weights(with_test.model), _weights(without.model))
    assert with_test.val == without.val and without.test is None
    assert with_test.test == evaluate(with_test.model, test)


# ---------------------------------------------------------------- plateaus, collapses, the guard switch

LN10, LN3 = math.log(10), math.log(3)
# the reviewer's digits CNN at lr 0.05: at ln 10 for three epochs, then learning
PLATEAU_THEN_LEARN = [2.306, 2.302, 2.298, 2.291, 2.262, 2.15, 1.95, 1.78, 1.62, 1.51]


def test_a_run_that_has_not_left_its_starting_plateau_has_not_diverged():
    for k in range(1, len(PLATEAU_THEN_LEARN) + 1):
        assert divergence(PLATEAU_THEN_LEARN[:k], LN10) is None
    assert divergence([2.306, 2.302, 2.298, 2.3, 2.301], LN10, prior=LN10 - 1e-4) is None


def test_stuck_at_chance_or_at_the_class_prior_is_a_warning():
    from distill.train.divergence import stuck
    assert "chance level" in stuck([2.306, 2.302, 2.298], LN10, steps_per_epoch=22)
    prior = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # labels 50/25/25: 1.0397 < ln 3
    at_prior = [1.0425, 1.0399, 1.0398]
    assert stuck(at_prior, LN3) is None  # judged against chance alone it passes
    assert divergence(at_prior, LN3, prior=prior) is None  # not an error
    got = stuck(at_prior, LN3, prior=prior)
    assert "cost of a constant prediction" in got and "class prior" in got and "1.04" in got
    assert stuck(at_prior[:2], LN3, prior=prior) is None  # two epochs: early training may sit there
    assert stuck([1.0425, 1.03, 1.0], LN3, prior=prior) is None  # learning past the prior
    assert stuck([2.31, 2.30, 2.30], LN10, steps_per_epoch=5) is None  # 15 steps: too few to judge


def test_falling_well_below_chance_and_coming_back_is_divergence():
    got = divergence([2.30, 1.6, 1.4, 2.302, 2.303], LN10)
    assert got is not None and "fell to 1.4" in got and "cost of a constant prediction" in got
    prior = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    got = divergence([1.09, 0.7, 0.75, 1.0398, 1.0399], LN3, prior=prior)  # back at the prior's cost
    assert got is not None and "class prior" in got
    assert divergence([2.30, 2.25, 2.302, 2.303], LN10) is None  # a small dip is still the plateau


def test_exploding_back_to_the_class_prior_and_staying_is_divergence():
    prior = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    exploded = [1.09, 0.3, 0.2, 1.05, 1.06]  # below chance, but at the prior's cost: a constant prediction
    assert divergence(exploded, LN3) is None  # judged against chance alone
    got = divergence(exploded, LN3, prior=prior)
    assert got is not None and "rose from 0.2 to 1.06" in got
    assert divergence(exploded[:4], LN3, prior=prior) is None  # one epoch only
    assert divergence([2.3, 0.5, 0.4, 1.9, 2.0], LN10) is None  # risen but below chance: a high lr's noise
    assert "the loss is nan" in divergence([2.3, 2.302, float("nan")], LN10)


def _digits(n=1000):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16, dtype=torch.float32).unsqueeze(1)
    return x[:n], torch.tensor(d.target)[:n], x[n:n + 400], torch.tensor(d.target)[n:n + 400]


def _tiny_cnn():
    seed_everything(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


@pytest.mark.parametrize("as_stream", [False, True])
def test_a_cnn_that_plateaus_before_it_learns_is_warned_about_not_stopped(as_stream):
    x, y, xt, yt = _digits()
    train = _Stream(x, y) if as_stream else (x, y)
    logged = []
    cfg = TrainConfig(epochs=14, lr=0.05, momentum=0.6, batch_size=64, schedule="constant")
    res = fit(_tiny_cnn(), train, cfg, test=(xt, yt), progress=False, log=logged.append)
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 14 and all(v > 2.29 for v in losses[:3]), losses  # the plateau the old check stopped
    assert losses[-1] < 1.5 and res.test["errors"] < 200, losses  # a constant prediction makes ~358 of 397
    warnings = [m for m in logged if m.startswith("[warning]")]
    assert len(warnings) == 1 and "chance level" in warnings[0] and "learning rate 0.05" in warnings[0]


def test_a_model_stuck_at_the_class_prior_is_warned_about(blobs):
    x, _ = blobs(600, 4, 3, seed=1)
    y = torch.tensor([0, 0, 1, 2] * 150)  # labels 50/25/25
    seed_everything(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # dead ReLUs: the output is the last bias, whatever the input
    logged = []
    res = fit(model, (x, y), TrainConfig(epochs=6, lr=0.3, batch_size=32), progress=False, log=logged.append)
    assert len(res.history) == 6
    warnings = [m for m in logged if m.startswith("[warning]")]
    assert len(warnings) == 1 and "class prior" in warnings[0] and "1.04" in warnings[0], logged


class _Scripted(Objective):
    """An objective whose loss per epoch is fixed in advance (no gradient): it reads the epoch that
    fit passes with every call (the objective protocol)."""
    needs_teacher, needs_labels, temperature, epoch_dependent = False, False, None, True

    def __init__(self, curve):
        self.curve = curve

    def __call__(self, out, teacher_out, labels, *, mask=None, epoch=None):
        return out.sum() * 0.0 + self.curve[epoch - 1]


def test_the_guard_can_be_turned_off(toy, tmp_path):
    from distill.checks import check_number_flags
    from distill.cli import build_parser
    from distill.cli.train import train_config as _config

    def parsed(argv):
        args = build_parser().parse_args(argv)
        check_number_flags(args)
        return args

    curve = [2.0, 0.5, 30.0, 30.0, 30.0]
    with pytest.raises(TrainingDiverged, match=r"epoch 4: the loss rose from 0.5 to 30.*divergence=None"):
        fit(_model(), toy, TrainConfig(epochs=5, objective=_Scripted(curve)), progress=False, log=quiet)
    logged = []
    res = fit(_model(), toy, TrainConfig(epochs=5, objective=_Scripted(curve), divergence=None), progress=False,
              log=logged.append)
    assert [h["train_loss"] for h in res.history] == curve and not any("[warning]" in m for m in logged)
    assert TrainConfig().divergence == "stop"
    with pytest.raises(ValueError, match="divergence must be one of"):
        TrainConfig(divergence="off")
    # the switch does not change which run a run folder holds
    first = fit(_model(), toy, TrainConfig(epochs=1), run_dir=tmp_path / "{key}", progress=False, log=quiet)
    again = fit(_model(), toy, TrainConfig(epochs=1, divergence=None), run_dir=tmp_path / "{key}", progress=False,
                log=quiet)
    assert again.skipped and again.run_dir == first.run_dir
    for command in (["teacher", "--jitter", "0"], ["student"]):
        args = parsed(command + ["--out", "x", "--no-guard"])
        assert args.no_guard and _config(args, command[0] == "teacher").divergence is None
        args = parsed(command + ["--out", "x"])
        assert _config(args, command[0] == "teacher").divergence == "stop"


def _collapse_at(model, batch):
    """Kill the hidden layer (dead ReLUs) just before training batch number ``batch``."""
    calls = {"n": 0}

    def hook(module, inputs):
        if module.training:
            calls["n"] += 1
            if calls["n"] == batch:
                with torch.no_grad():
                    model.hidden_layers[0].weight.zero_()
                    model.hidden_layers[0].bias.fill_(-10.0)

    model.register_forward_pre_hook(hook)
    return model


def test_select_best_says_when_it_kept_an_epoch_before_a_collapse(blobs):
    x, y = blobs(500, 10, 3, seed=2)
    train, val = (x[:300], y[:300]), (x[300:], y[300:])
    steps = 300 // 50
    # collapsed from epoch 4 on, with the guard off; and in the last epoch only, with the guard on
    for config, batch in ((TrainConfig(epochs=6, lr=0.1, batch_size=50, select="best", divergence=None), 3 * steps),
                          (TrainConfig(epochs=6, lr=0.1, batch_size=50, select="best"), 5 * steps)):
        logged = []
        res = fit(_collapse_at(_model(0, d_in=10, hidden=16, classes=3), batch + 1), train, config, val=val,
                  progress=False, log=logged.append)
        notes = [m for m in logged if m.startswith("[note]")]
        assert len(notes) == 1 and res.note == notes[0][len("[note] "):], logged
        assert re.match(rf"\[note\] kept epoch {res.epoch} of 6: the loss rose from [\d.]+ to [\d.]+ after it "
                        r"\(validation errors from \d+ to \d+\)", notes[0]), notes
    # a healthy select="best" run says nothing
    logged = []
    res = fit(_model(0, d_in=10, hidden=16, classes=3), train, TrainConfig(epochs=6, lr=0.1, batch_size=50,
              select="best"), val=val, progress=False, log=logged.append)
    assert res.note is None and not any(m.startswith("[note]") for m in logged)


def test_collapse_note_rule():
    from distill.train.divergence import collapse_note
    h = [dict(train_loss=v, val_errors=e, val_accuracy=1 - e / 200) for v, e in
         ((1.0, 60), (0.3, 10), (0.25, 12), (0.9, 150))]
    assert collapse_note(h, 2) == "kept epoch 2 of 4: the loss rose from 0.3 to 0.9 after it " \
                                  "(validation errors from 10 to 150)"
    assert collapse_note(h[:3], 2) is None  # a little worse after it: the usual noise
    assert collapse_note(h, 4) is None and collapse_note([], 0) is None
    h[-1].update(train_loss=0.26)
    assert collapse_note(h, 2) == "kept epoch 2 of 4: the validation errors rose from 10 to 150 after it"


# ---------------------------------------------------------------- devices

def test_device_resolution_and_errors(monkeypatch, toy):
    from distill.train.config import resolve_device
    monkeypatch.delenv("DISTILL_DEVICE", raising=False)
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setenv("DISTILL_DEVICE", "cpu")
    assert resolve_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        monkeypatch.setenv("DISTILL_DEVICE", "cuda")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            fit(_model(), toy, TrainConfig(epochs=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_on_gpu_matches_cpu_and_returns_home(toy):
    """Without dropout the only difference is float arithmetic: same order, same steps."""
    cfg = TrainConfig(epochs=2, lr=0.05, jitter=2, seed=1)
    cpu = fit(_model(2), toy, cfg, progress=False, log=quiet)
    gpu = fit(_model(2), toy, cfg, progress=False, log=quiet, device="cuda")
    assert next(gpu.model.parameters()).device.type == "cpu"
    assert torch.allclose(_weights(cpu.model), _weights(gpu.model), atol=1e-3)
    assert abs(cpu.test["errors"] - gpu.test["errors"]) <= 3


# ---------------------------------------------------------------- the seam: batches, outputs, objectives

def test_jitter_is_augment_shift_with_identical_draws(toy):
    from distill.data.augment import Augment

    a = fit(_model(), toy, TrainConfig(epochs=2, jitter=2, lr=0.1), progress=False, log=quiet)
    b = fit(_model(), toy, TrainConfig(epochs=2, augment=Augment(shift=2), lr=0.1), progress=False, log=quiet)
    for (k, u), (_, v) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(u, v), k
    assert TrainConfig(jitter=2).to_dict()["jitter"] == 2 and "augment" not in TrainConfig(jitter=2).to_dict()


class _WithLogits(torch.nn.Module):
    """A model returning an object with ``.logits``, as Hugging Face models do."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(64, 10)

    def forward(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.net(x))


def test_a_model_output_with_logits_trains_like_a_tensor(toy):
    from distill.modelio import logits_of, model_forward

    torch.manual_seed(0)
    m = _WithLogits()
    torch.manual_seed(0)
    plain = torch.nn.Linear(64, 10)
    r1 = fit(m, toy, TrainConfig(epochs=2, lr=0.1), progress=False, log=quiet)
    r2 = fit(plain, toy, TrainConfig(epochs=2, lr=0.1), progress=False, log=quiet)
    assert torch.equal(r1.model.net.weight, r2.model.weight) and r1.test == r2.test
    # inputs as a dict of named tensors go in as keyword arguments
    seen = {}

    def f(input_ids=None, attention_mask=None):
        seen.update(input_ids=input_ids, attention_mask=attention_mask)
        return {"logits": input_ids.float()}

    out = model_forward(f, {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3)})
    assert torch.equal(logits_of(out), torch.ones(2, 3)) and seen["attention_mask"] is not None
    with pytest.raises(ValueError, match="must return logits"):
        logits_of((1, 2))


def test_objectives_average_over_the_masked_positions_and_take_the_epoch_per_call():
    from distill.losses import DKD, Distillation, HardLabels, LogitMatching
    from distill.losses.objectives import as_objective

    torch.manual_seed(0)
    z, v, y = torch.randn(6, 4), torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    mask = torch.tensor([True, False, True, True, False, True])
    for obj in (HardLabels(), Distillation(3.0, 0.2), LogitMatching(), DKD(warmup_epochs=3)):
        got = obj(z, v, y, mask=mask, epoch=2)
        want = obj(z[mask], v[mask], y[mask], epoch=2)
        assert torch.allclose(got, want), type(obj).__name__
    assert torch.allclose(DKD(warmup_epochs=4, hard_weight=0)(z, v, y, epoch=1),
                          0.25 * DKD(hard_weight=0)(z, v, y))
    user = as_objective(lambda s, t, lab: (s - t).pow(2).mean())  # a user's callable still works
    assert torch.allclose(user(z, v, y, mask=mask, epoch=5), (z[mask] - v[mask]).pow(2).mean())

import math

import pytest
import torch

import distill
from distill.errors import DistillError
from distill.models.classifiers import MLP
from distill.data.sources import as_source
from distill.teachers.teacher import Ensemble, Teacher, combine_probabilities, effective_logits, load_teacher, module_id
from distill.train.config import TrainConfig
from distill.train.fit import fit
def _softmax(v):
    e = [math.exp(a) for a in v]
    return [a / sum(e) for a in e]


# two members, one example, three classes; hand-computed at T = 2
Z1 = [2.0, 0.0, -2.0]
Z2 = [0.0, 4.0, 0.0]


def test_arithmetic_mean_hand_computed():
    t = 2.0
    p1, p2 = _softmax([a / t for a in Z1]), _softmax([a / t for a in Z2])
    want = torch.tensor([[(a + b) / 2 for a, b in zip(p1, p2)]])
    got = combine_probabilities(torch.tensor([[Z1], [Z2]]), t, "arithmetic")
    assert torch.allclose(got, want, atol=1e-6)
    # numbers written out: p1 = softmax(1,0,-1), p2 = softmax(0,2,0)
    assert abs(got[0, 0].item() - (0.665241 + 0.106507) / 2) < 1e-5


def test_geometric_mean_hand_computed():
    t = 2.0
    p1, p2 = _softmax([a / t for a in Z1]), _softmax([a / t for a in Z2])
    g = [math.sqrt(a * b) for a, b in zip(p1, p2)]
    want = torch.tensor([[a / sum(g) for a in g]])
    got = combine_probabilities(torch.tensor([[Z1], [Z2]]), t, "geometric")
    assert torch.allclose(got, want, atol=1e-6)
    # the normalised geometric mean is softmax of the mean logits / T = softmax(0.5, 1, -0.5)
    assert torch.allclose(got, torch.tensor([_softmax([0.5, 1.0, -0.5])]), atol=1e-6)
    assert not torch.allclose(got, combine_probabilities(torch.tensor([[Z1], [Z2]]), t, "arithmetic"), atol=1e-3)


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
@pytest.mark.parametrize("t", [1.0, 3.0, 20.0])
def test_effective_logits_reproduce_the_combined_distribution(combine, t):
    z = torch.randn(4, 5, 7, generator=torch.Generator().manual_seed(1)) * 5
    v = effective_logits(z, t, combine)
    assert torch.allclose(torch.softmax(v / t, -1), combine_probabilities(z, t, combine), atol=1e-6)


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
def test_ensemble_of_one_equals_the_model(combine):
    torch.manual_seed(0)
    m = MLP(6, [5], 4)
    x = torch.randn(9, 6)
    e = Ensemble([m], combine=combine)
    with torch.no_grad():
        z = m(x)
    for t in (1.0, 4.0):
        assert torch.allclose(e.probabilities(x, t), torch.softmax(z / t, -1), atol=1e-6)
    # at T = 1 forward() differs from the model's logits only by a per-row constant
    d = e(x) - z
    assert torch.allclose(d, d[:, :1].expand_as(d), atol=1e-5)


def test_ensemble_members_from_checkpoints_and_ids(tmp_path):
    from distill.checkpoints import load_tensors, save_checkpoint

    torch.manual_seed(0)
    a, b = MLP(6, [5], 4), MLP(6, [5], 4)
    save_checkpoint(tmp_path / "a", a)
    save_checkpoint(tmp_path / "b", b)
    e = Ensemble([tmp_path / "a", tmp_path / "b"], combine="geometric")
    x = torch.randn(3, 6)
    with torch.no_grad():
        want = torch.softmax((a(x) + b(x)) / 2 / 5.0, -1)
    assert torch.allclose(e.probabilities(x, 5.0), want, atol=1e-6)
    assert torch.allclose(torch.softmax(e.logits(x, 5.0) / 5.0, -1), want, atol=1e-6)
    assert e.teacher_id != Ensemble([tmp_path / "a", tmp_path / "b"], combine="arithmetic").teacher_id
    assert e.teacher_id == Ensemble([a, b], combine="geometric").teacher_id  # a checkpoint = its weights
    # a checkpoint's identity is its weights and structure, the same as the module's
    single, sid = load_teacher(tmp_path / "a")
    assert isinstance(single, MLP) and sid == module_id(a)
    assert not any(p.requires_grad for p in single.parameters())
    assert Teacher(tmp_path / "a").id == sid and Teacher([tmp_path / "a"]).id == sid
    assert Teacher([tmp_path / "a", tmp_path / "b"], combine="geometric").id == e.teacher_id
    with pytest.raises(DistillError, match="not found"):
        Teacher(tmp_path / "missing")


def test_ensemble_bad_input():
    with pytest.raises(ValueError, match="combine"):
        Ensemble([MLP(4, [3], 2)], combine="median")
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])
    with pytest.raises(ValueError, match="nn.Modules or checkpoint paths, got int"):
        Ensemble([MLP(4, [3], 2), 42])
    with pytest.raises(ValueError, match="disagree on the output shape"):
        Ensemble([MLP(4, [3], 2), MLP(4, [3], 3)]).probabilities(torch.zeros(1, 4), 2.0)
    with pytest.raises(ValueError, match="temperature"):
        combine_probabilities(torch.zeros(1, 1, 2), 0.0)
    with pytest.raises(ValueError, match="temperature"):
        Ensemble([MLP(4, [3], 2)]).logits(torch.zeros(1, 4), "2")


# ---------------------------------------------------------------- Teacher

def _nets(n=2, d=6, c=4):
    torch.manual_seed(0)
    return [MLP(d, [5], c) for _ in range(n)]


def test_teacher_id_has_temperature_only_where_outputs_depend_on_it():
    a, b = _nets()
    probs = torch.softmax(torch.randn(10, 4), 1)
    logits = torch.randn(10, 4)
    for t in (1.0, 4.0):
        assert Teacher(a, temperature=t).id == module_id(a)  # a module's logits do not depend on T
        assert Teacher(logits, temperature=t).id.startswith("logits:") and "@T" not in Teacher(logits, temperature=t).id
        assert Teacher(Ensemble([a, b], "geometric"), temperature=t).id == Ensemble([a, b], "geometric").teacher_id
        assert "@T" not in Teacher(Ensemble([a], "arithmetic"), temperature=t).id  # one member: no mixing
        assert Teacher(Ensemble([a, b], "arithmetic"), temperature=t).id.endswith(f"@T{t:g}")
        assert Teacher(probs, kind="probs", temperature=t).id.endswith(f"@T{t:g}")
    assert Teacher(probs, kind="probs", temperature=2).id != Teacher(probs, kind="probs", temperature=3).id
    assert Teacher(a, id="mine").id == "mine" and Teacher(probs, kind="probs", id="p", temperature=2).id == "p@T2"
    # fit binds the objective's temperature
    assert distill.Teacher(probs, kind="probs").at(20.0).id.endswith("@T20")


def test_teacher_given_as_probabilities_gives_T_log_p():
    probs = torch.softmax(torch.randn(10, 4, generator=torch.Generator().manual_seed(0)) * 3, 1)
    t = 4.0
    teacher = Teacher(probs, kind="probs", temperature=t)
    idx = torch.tensor([7, 2, 2, 0])
    v = teacher.targets(torch.zeros(4, 6), idx)
    assert torch.allclose(v, t * torch.log(probs[idx]))
    assert torch.allclose(torch.softmax(v / t, 1), probs[idx], atol=1e-6)  # softmax at T gives p back
    # logits are handed over unchanged
    assert torch.equal(Teacher(probs.log() * 3, temperature=t).targets(torch.zeros(4, 6), idx), probs[idx].log() * 3)
    with pytest.raises(ValueError, match="sum to 1"):
        Teacher(probs * 2, kind="probs")
    with pytest.raises(ValueError, match="kind must be one of"):
        Teacher(probs, kind="soft")
    with pytest.raises(ValueError, match="NaN"):
        Teacher(torch.full((3, 4), float("nan")))
    with pytest.raises(ValueError, match="float array"):
        Teacher(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="a teacher must be"):
        Teacher({"logits": [1.0]})


def test_stored_outputs_refuse_jitter_and_wrong_row_counts():
    src = as_source((torch.rand(20, 16), torch.arange(20) % 4))
    stored = Teacher(torch.randn(20, 4))
    stored.prepare(src, augmented=False, progress=False)  # fine
    with pytest.raises(ValueError, match="augmentation"):
        stored.prepare(src, augmented=True, progress=False)
    with pytest.raises(ValueError, match="19 rows for 20 training examples"):
        Teacher(torch.randn(19, 4)).prepare(src, augmented=False, progress=False)
    with pytest.raises(ValueError, match="cannot run on new"):
        stored.forward(torch.zeros(2, 16))


def test_with_jitter_the_teacher_sees_exactly_the_students_inputs(toy):
    torch.manual_seed(0)
    teacher, student = MLP(64, [16], 10), MLP(64, [16], 10)
    seen_t, seen_s = [], []
    teacher.register_forward_hook(lambda m, i, o: seen_t.append((i[0].clone(), m.training, torch.is_grad_enabled())))
    student.register_forward_hook(lambda m, i, o: seen_s.append(i[0].clone()) if m.training else None)
    fit(student, toy, TrainConfig(epochs=2, jitter=2, batch_size=100, temperature=3.0), teacher=teacher,
        progress=False, log=lambda *a: None)
    # the test split, once, for the records' agreement with the teacher; the rest are training batches
    held_out = [x for x, *_ in seen_t if x.shape == toy.x_test.shape and torch.equal(x, toy.x_test)]
    seen_t = [e for e in seen_t if not (e[0].shape == toy.x_test.shape and torch.equal(e[0], toy.x_test))]
    assert len(held_out) == 1
    assert len(seen_s) == 2 * 6 and len(seen_t) == len(seen_s)
    for (xt, training, grad), xs in zip(seen_t, seen_s):
        assert torch.equal(xt, xs)  # the same jittered batch, batch by batch
        assert not training and not grad  # eval mode, no autograd
    # and they were jittered: most inputs are not rows of the training set
    seen = torch.cat(seen_s)
    unchanged = (torch.cdist(seen, toy.x_train).min(1).values < 1e-6).float().mean()
    assert unchanged < 0.5


def test_without_jitter_the_teacher_runs_once_and_rows_follow_the_shuffle(toy):
    torch.manual_seed(0)
    teacher = MLP(64, [16], 10)
    src = as_source(toy)
    t = Teacher(teacher, temperature=2.0)
    t.prepare(src, augmented=False, progress=False)
    assert t.stored and t.table.shape == (600, 10)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for xb, _, idx in src.batches(64, g):
            assert torch.allclose(t.targets(xb, idx), teacher(xb), atol=1e-6)


def test_cli_student_from_an_ensemble_of_checkpoints(tmp_path, capsys):
    from distill.checkpoints import load_checkpoint
    from distill.cli import main

    common = ["--train-size", "300", "--test-size", "100", "--hidden", "16", "--epochs", "1", "--no-progress"]
    for seed in (0, 1):
        assert main(["teacher", *common, "--seed", str(seed), "--jitter", "0", "--out", str(tmp_path / f"t{seed}")]) == 0
    teachers = ["--teacher", str(tmp_path / "t0/model"), "--teacher", str(tmp_path / "t1/model")]
    assert main(["student", *common, *teachers, "--combine", "geometric", "--out", str(tmp_path / "s")]) == 0
    assert "student-distilled" in capsys.readouterr().out
    side = load_checkpoint(tmp_path / "s/model")[1]
    assert len(side["teacher_checkpoint"]) == 2 and "@T" not in side["teacher"]  # geometric: valid at every T
    assert main(["student", *common, *teachers, "--combine", "arithmetic", "--out", str(tmp_path / "a")]) == 0
    side_a = load_checkpoint(tmp_path / "a/model")[1]
    assert side_a["teacher"].endswith("@T20") and side_a["teacher"].split("@")[0] != side["teacher"]
    with pytest.raises(SystemExit) as e:
        main(["student", *common, *teachers, "--combine", "mean", "--out", str(tmp_path / "x")])
    assert e.value.code == 2


def test_a_store_folder_is_a_teacher_and_an_unfinished_one_says_so(tmp_path):
    from distill.teachers.store import build_store

    torch.manual_seed(0)
    x = torch.rand(40, 6)
    t = MLP(6, [5], 4)
    build_store(tmp_path / "store", Teacher(t), (x,), progress=False, log=lambda *_: None)
    teacher = Teacher(tmp_path / "store")
    assert teacher.stored and torch.allclose(teacher.table[torch.arange(3)], t(x[:3]).detach(), atol=1e-6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match="neither a checkpoint nor a soft-target store"):
        Teacher(tmp_path / "empty")

import math

import pytest
import torch

from distill.models import MLP
from distill.teachers import Ensemble, combine_probabilities, effective_logits, load_teachers


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
    from distill.checkpoints import save_checkpoint

    torch.manual_seed(0)
    a, b = MLP(6, [5], 4), MLP(6, [5], 4)
    save_checkpoint(tmp_path / "a", a)
    save_checkpoint(tmp_path / "b", b)
    e, eid = load_teachers([tmp_path / "a", tmp_path / "b"], combine="geometric")
    x = torch.randn(3, 6)
    with torch.no_grad():
        want = torch.softmax((a(x) + b(x)) / 2 / 5.0, -1)
    assert torch.allclose(e.probabilities(x, 5.0), want, atol=1e-6)
    assert eid != Ensemble([tmp_path / "a", tmp_path / "b"], combine="arithmetic").teacher_id
    single, sid = load_teachers([tmp_path / "a"])
    assert isinstance(single, MLP) and len(sid) == 16
    assert e.at_temperature(5.0)(x).shape == (3, 4)


def test_ensemble_bad_input():
    with pytest.raises(ValueError, match="combine"):
        Ensemble([MLP(4, [3], 2)], combine="median")
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])
    with pytest.raises(ValueError, match="different numbers of classes"):
        Ensemble([MLP(4, [3], 2), MLP(4, [3], 3)])
    with pytest.raises(ValueError, match="temperature"):
        combine_probabilities(torch.zeros(1, 1, 2), 0.0)


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
    assert len(side["teacher_checkpoint"]) == 2 and side["teacher"].endswith("@T20")
    with pytest.raises(SystemExit) as e:
        main(["student", *common, *teachers, "--combine", "mean", "--out", str(tmp_path / "x")])
    assert e.value.code == 2

import pytest
import torch

from distill.data import transfer as TR
from distill.errors import DistillError
from distill.models.classifiers import MLP


def test_without_and_only_classes(toy):
    t = TR.without_classes(toy, [3])
    assert len(t.y_train) == int((toy.y_train != 3).sum()) and not (t.y_train == 3).any()
    assert t.fingerprint != toy.fingerprint and "omit=3" in t.fingerprint
    assert torch.equal(t.x_test, toy.x_test)  # the test set is untouched
    # rows stay paired with their labels
    idx = TR.indices_without(toy.y_train, [3], 10)
    assert torch.equal(t.x_train, toy.x_train[idx]) and torch.equal(t.y_train, toy.y_train[idx])
    o = TR.only_classes(toy, [7, 8])
    assert set(o.y_train.unique().tolist()) == {7, 8}
    assert len(o.y_train) == int(((toy.y_train == 7) | (toy.y_train == 8)).sum())
    assert TR.absent_classes(toy, t) == [3]
    assert TR.absent_classes(toy, o) == [0, 1, 2, 3, 4, 5, 6, 9]
    assert TR.all_data(toy) is toy


def test_fraction_is_stratified_seeded_and_sorted():
    y = torch.tensor([0] * 100 + [1] * 50 + [2] * 7)
    a = TR.indices_fraction(y, 0.1, seed=0)
    counts = torch.bincount(y[a], minlength=3).tolist()
    assert counts == [10, 5, 1]  # round(0.7) = 1 and never fewer than one per class
    assert torch.equal(a, torch.sort(a).values) and len(a.unique()) == len(a)
    assert torch.equal(a, TR.indices_fraction(y, 0.1, seed=0))
    assert not torch.equal(a, TR.indices_fraction(y, 0.1, seed=1))
    assert len(TR.indices_fraction(y, 1.0)) == len(y)


def test_random_fraction_dataset(toy):
    f = TR.random_fraction(toy, 0.03, seed=0)
    assert len(f.y_train) == sum(max(1, round(0.03 * int((toy.y_train == c).sum()))) for c in range(10))
    assert "frac=0.03" in f.fingerprint and f.fingerprint != TR.random_fraction(toy, 0.03, seed=1).fingerprint


def test_unlabeled_transfer_set(toy):
    u = TR.unlabeled(toy, toy.x_test[:50], name="mnist-test-inputs")
    assert u.y_train is None and u.x_train.shape == (50, 64) and "unlabeled" in u.fingerprint
    with pytest.raises(ValueError, match="unlabeled transfer set has no known classes"):
        TR.absent_classes(toy, u)
    with pytest.raises(ValueError, match=r"\(n, 64\)"):
        TR.unlabeled(toy, torch.zeros(3, 5), name="bad")


def test_selection_errors(toy):
    with pytest.raises(ValueError, match="outside 0..9"):
        TR.without_classes(toy, [10])
    with pytest.raises(ValueError, match="at least one class"):
        TR.only_classes(toy, [])
    with pytest.raises(DistillError, match="leaves no training examples"):
        TR.without_classes(toy, range(10))
    with pytest.raises(ValueError, match="fraction"):
        TR.random_fraction(toy, 0.0)


def test_offsets_arithmetic():
    b = TR.offset_vector(10, {3: 3.5})
    assert b[3] == 3.5 and b.abs().sum() == 3.5
    b78 = TR.offset_vector(10, {7: -7.6, 8: -7.6})
    z = torch.zeros(2, 10)
    z[0, 7] = 5.0  # class 7 wins by 5; lowering 7 and 8 by 7.6 hands the win to the rest
    zc = TR.apply_offsets(z, b78)
    assert zc[0, 7].item() == pytest.approx(-2.6) and zc[0, 0] == 0 and zc.argmax(1)[0] != 7
    torch.manual_seed(0)
    m = MLP(6, [4], 10)
    x = torch.randn(5, 6)
    with torch.no_grad():
        assert torch.allclose(TR.with_offsets(m, b)(x), m(x) + b, atol=1e-6)
    assert m.output_layer.bias[3] != TR.with_offsets(m, b).output_layer.bias[3]  # a copy, original untouched
    with pytest.raises(ValueError, match="outside"):
        TR.offset_vector(10, {11: 1.0})
    with pytest.raises(ValueError, match="do not fit"):
        TR.apply_offsets(z, torch.zeros(3))


def test_fit_offsets_recovers_a_known_shift():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2000, 10, generator=g) * 3  # teacher logits on an unlabeled calibration set
    p = torch.softmax(v, -1)
    shift = TR.offset_vector(10, {3: -4.0})  # the student under-rates class 3 by 4 nats
    z = v + shift
    b = TR.fit_offsets(z, p, classes=[3])
    assert b[3].item() == pytest.approx(4.0, abs=1e-3) and b.abs().sum().item() == pytest.approx(4.0, abs=1e-3)
    # all offsets free: recovered up to the irrelevant common constant
    shift2 = torch.randn(10, generator=g)
    b2 = TR.fit_offsets(v + shift2, p)
    assert torch.allclose(b2, -(shift2 - shift2.mean()), atol=1e-3)


def test_fit_offsets_matches_mean_probabilities():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(500, 5, generator=g) * 2
    p = torch.softmax(torch.randn(500, 5, generator=g) * 2, -1)
    b = TR.fit_offsets(z, p, classes=[0, 2])
    q = TR.mean_probabilities(z + b)
    pm = p.mean(0)
    assert q[0].item() == pytest.approx(pm[0].item(), abs=1e-5) and q[2].item() == pytest.approx(pm[2].item(), abs=1e-5)
    assert b[1] == 0 and b[3] == 0 and b[4] == 0
    # and it is the KL minimiser: any perturbation of the free offsets increases the objective
    base = TR.offset_objective(z, p, b)
    for d in (0.05, -0.05):
        for c in (0, 2):
            assert TR.offset_objective(z, p, b + TR.offset_vector(5, {c: d})) > base


def test_fit_offsets_bad_input():
    with pytest.raises(ValueError, match="same"):
        TR.fit_offsets(torch.zeros(3, 4), torch.full((3, 5), 0.2))
    with pytest.raises(ValueError, match="probabilities"):
        TR.fit_offsets(torch.zeros(3, 4), torch.ones(3, 4))
    with pytest.raises(ValueError, match="empty"):
        TR.fit_offsets(torch.zeros(0, 4), torch.zeros(0, 4))


def test_repeat_small_transfer_sets(toy):
    f = TR.random_fraction(toy, 0.05, seed=0)
    r = TR.repeat(f, 3)
    n = len(f.y_train)
    assert r.x_train.shape[0] == 3 * n and torch.equal(r.x_train[2 * n + 5], f.x_train[5])
    assert torch.equal(r.y_train[n:2 * n], f.y_train) and r.fingerprint.endswith(":repeat3")
    assert TR.repeat(f, 1) is f
    assert TR.repeats_for(1801, 30000) == 17 and TR.repeats_for(54000, 30000) == 1 and TR.repeats_for(10, 0) == 1
    u = TR.repeat(TR.unlabeled(toy, toy.x_test[:4], name="t"), 2)
    assert u.y_train is None and u.x_train.shape[0] == 8
    with pytest.raises(ValueError, match="times"):
        TR.repeat(f, 0)

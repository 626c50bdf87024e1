"""The feature losses (FitNets hint, attention transfer, relational KD) against formulas written
out independently in NumPy loops, their gradients (gradcheck, float64), their shape errors and
their closed forms; and the FeatureDistillation objective's sum and run-key fields."""
import math

import numpy as np
import pytest
import torch

import distill
from distill import losses as L
from distill.losses.objectives import objective_spec


def _rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)


def _one_line(excinfo):
    return "\n" not in str(excinfo.value)


def _huber(x):
    """smooth-L1 with beta = 1, written out: 0.5 x^2 where |x| < 1, |x| - 0.5 elsewhere."""
    a = np.abs(x)
    return np.where(a < 1, 0.5 * x * x, a - 0.5)


# ---------------------------------------------------------------- references, in loops

def hint_ref(s, t):
    s, t = s.numpy().ravel(), t.numpy().ravel()
    return sum((a - b) ** 2 for a, b in zip(s, t)) / len(s)


def attention_ref(s, t, p=2.0):
    def att(x):
        x = x.numpy()
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1)
        out = np.zeros((b, flat.shape[2]))
        for i in range(b):
            for j in range(flat.shape[2]):
                out[i, j] = sum(abs(flat[i, k, j]) ** p for k in range(c)) / c
            out[i] /= max(math.sqrt(sum(v * v for v in out[i])), 1e-12)
        return out
    a, b = att(s), att(t)
    return float(((a - b) ** 2).sum() / a.size)


def rkd_ref(s, t, wd=25.0, wa=50.0):
    def dist(e):
        n = len(e)
        d = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                d[i, j] = math.sqrt(sum((e[i] - e[j]) ** 2))
        mu = sum(d[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return d / mu

    def angles(e):
        n = len(e)
        a = np.zeros((n, n, n))
        for j in range(n):  # the anchor
            for i in range(n):
                for k in range(n):
                    u, v = e[i] - e[j], e[k] - e[j]
                    nu, nv = math.sqrt(u @ u), math.sqrt(v @ v)
                    a[j, i, k] = 0.0 if nu == 0 or nv == 0 else (u @ v) / (nu * nv)
        return a

    s = s.reshape(len(s), -1).numpy()
    t = t.reshape(len(t), -1).numpy()
    return float(wd * _huber(dist(s) - dist(t)).mean() + wa * _huber(angles(s) - angles(t)).mean())


# ---------------------------------------------------------------- hint

def test_hint_matches_the_mean_squared_difference():
    s, t = _rand(3, 4, 5, 5, seed=1), _rand(3, 4, 5, 5, seed=2)
    assert float(L.hint_loss(s, t)) == pytest.approx(hint_ref(s, t), rel=1e-12)
    assert float(L.hint_loss(s, s)) == 0.0
    e, f = _rand(6, 7, seed=3), _rand(6, 7, seed=4)
    assert float(L.hint_loss(e, f)) == pytest.approx(float(((e - f) ** 2).mean()), rel=1e-12)


def test_hint_gradient_and_shape_error():
    s, t = _rand(2, 3, 4, seed=5).requires_grad_(), _rand(2, 3, 4, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(L.hint_loss, (s, t))
    with pytest.raises(ValueError, match="one shape") as e:
        L.hint_loss(_rand(2, 3), _rand(2, 4))
    assert _one_line(e)


# ---------------------------------------------------------------- attention transfer

@pytest.mark.parametrize("p", [2, 1.5, 4])
def test_attention_transfer_matches_the_loop_formula(p):
    s, t = _rand(3, 4, 5, 6, seed=7), _rand(3, 2, 5, 6, seed=8)  # channels may differ
    assert float(L.attention_transfer_loss(s, t, p=p)) == pytest.approx(attention_ref(s, t, p), rel=1e-10)


def test_attention_transfer_closed_forms():
    s, t = _rand(4, 3, 6, 6, seed=9), _rand(4, 5, 6, 6, seed=10)
    assert float(L.attention_transfer_loss(s, s)) == 0.0
    base = float(L.attention_transfer_loss(s, t))
    # invariant to a positive scaling of either map (the map is L2-normalised), and to the sign
    for k in (0.01, 3.0, 1e3):
        assert float(L.attention_transfer_loss(k * s, t)) == pytest.approx(base, rel=1e-9)
        assert float(L.attention_transfer_loss(s, -k * t)) == pytest.approx(base, rel=1e-9)
    # the map is unit-norm per example: the loss is at most (1/P) * 2^2 * ... and |a| = 1
    a = L.attention_map(s)
    assert torch.allclose(a.norm(dim=1), torch.ones(4, dtype=a.dtype))
    assert a.shape == (4, 36)
    # a map of zeros stays finite (eps in the normalisation)
    z = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    assert torch.isfinite(L.attention_transfer_loss(z, _rand(2, 3, 4, 4)))
    # 1-D positions (sequences) work as well
    assert float(L.attention_transfer_loss(_rand(2, 3, 7), _rand(2, 5, 7, seed=1))) == pytest.approx(
        attention_ref(_rand(2, 3, 7), _rand(2, 5, 7, seed=1)), rel=1e-10)


def test_attention_transfer_gradient_and_errors():
    s = _rand(2, 3, 4, 4, seed=11).requires_grad_()
    t = _rand(2, 2, 4, 4, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: L.attention_transfer_loss(a, b), (s, t))
    assert torch.autograd.gradcheck(lambda a, b: L.attention_transfer_loss(a, b, p=3), (s, t))
    with pytest.raises(ValueError, match="spatial size") as e:
        L.attention_transfer_loss(_rand(2, 3, 4, 4), _rand(2, 3, 2, 2))
    assert _one_line(e)
    with pytest.raises(ValueError, match="one batch"):
        L.attention_transfer_loss(_rand(2, 3, 4, 4), _rand(3, 3, 4, 4))
    with pytest.raises(ValueError, match="positions"):
        L.attention_transfer_loss(_rand(2, 3), _rand(2, 3))
    with pytest.raises(ValueError, match="p"):
        L.attention_transfer_loss(_rand(2, 3, 4, 4), _rand(2, 3, 4, 4), p=0)


# ---------------------------------------------------------------- relational KD

def test_relational_matches_park_et_al_in_loops():
    s, t = _rand(5, 4, seed=13), _rand(5, 7, seed=14)  # widths may differ
    assert float(L.relational_loss(s, t)) == pytest.approx(rkd_ref(s, t), rel=1e-10)
    assert float(L.relational_loss(s, t, 1.0, 0.0)) == pytest.approx(rkd_ref(s, t, 1.0, 0.0), rel=1e-10)
    assert float(L.relational_loss(s, t, 0.0, 2.0)) == pytest.approx(rkd_ref(s, t, 0.0, 2.0), rel=1e-10)
    # an outlier makes some normalised distances differ by more than 1: the L1 branch of smooth-L1
    far = t.clone()
    far[0] *= 40
    assert float(L.relational_loss(s, far)) == pytest.approx(rkd_ref(s, far), rel=1e-10)
    # extra dimensions are flattened
    m, n = _rand(4, 2, 3, 3, seed=15), _rand(4, 5, seed=16)
    assert float(L.relational_loss(m, n)) == pytest.approx(rkd_ref(m, n), rel=1e-10)


def test_relational_closed_forms():
    s, t = _rand(6, 5, seed=17), _rand(6, 3, seed=18)
    assert float(L.relational_loss(s, s)) == 0.0
    base = float(L.relational_loss(s, t))
    # both terms are invariant to scaling and translating the embeddings
    shift = _rand(1, 5, seed=19)
    assert float(L.relational_loss(7.5 * s + shift, t)) == pytest.approx(base, rel=1e-9)
    assert float(L.relational_loss(s, 0.01 * t)) == pytest.approx(base, rel=1e-9)
    # the distance term alone: distances divided by their mean over distinct pairs (so a scaled
    # copy has loss 0), angles alone likewise
    assert float(L.relational_loss(s, 3 * s, 1.0, 0.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(L.relational_loss(s, 3 * s, 0.0, 1.0)) == pytest.approx(0.0, abs=1e-12)
    # a rotation keeps every distance and angle
    q, _ = torch.linalg.qr(_rand(5, 5, seed=20))
    assert float(L.relational_loss(s @ q, s)) == pytest.approx(0.0, abs=1e-10)


def test_relational_gradient_and_errors():
    s = _rand(4, 3, seed=21).requires_grad_()
    t = _rand(4, 5, seed=22).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: L.relational_loss(a, b), (s, t))
    # a batch with two equal rows: distance 0 off the diagonal, still a finite gradient
    d = _rand(4, 3, seed=23)
    d[1] = d[0]
    d.requires_grad_()
    L.relational_loss(d, t.detach()).backward()
    assert torch.isfinite(d.grad).all()
    with pytest.raises(ValueError, match="one batch") as e:
        L.relational_loss(_rand(4, 3), _rand(5, 3))
    assert _one_line(e)
    with pytest.raises(ValueError, match="at least 2"):
        L.relational_loss(_rand(1, 3), _rand(1, 3))
    with pytest.raises(ValueError, match="distance_weight"):
        L.relational_loss(_rand(3, 3), _rand(3, 3), distance_weight=-1)


def test_the_losses_are_public_and_named():
    assert L.FEATURE_LOSSES == {"hint": L.hint_loss, "attention": L.attention_transfer_loss,
                                "relational": L.relational_loss, "channel_wise": L.channel_wise_feature_loss}
    for name in ("hint_loss", "attention_transfer_loss", "relational_loss", "channel_wise_feature_loss",
                 "FEATURE_LOSSES", "FeatureDistillation"):
        assert name in L.__all__ and getattr(L, name) is not None
    assert distill.FeatureDistillation is L.FeatureDistillation and "FeatureDistillation" in distill.__all__
    for fn in (L.hint_loss, L.attention_transfer_loss, L.relational_loss):
        assert "``" in fn.__doc__  # the formula in the docstring
    import inspect
    assert list(inspect.signature(L.attention_transfer_loss).parameters) == ["student", "teacher", "p"]
    assert inspect.signature(L.attention_transfer_loss).parameters["p"].default == 2
    sig = inspect.signature(L.relational_loss).parameters
    assert list(sig) == ["student", "teacher", "distance_weight", "angle_weight"]
    assert (sig["distance_weight"].default, sig["angle_weight"].default) == (25.0, 50.0)


# ---------------------------------------------------------------- the objective

def test_feature_distillation_adds_the_weighted_feature_losses():
    z, v = _rand(6, 4, seed=24).float(), _rand(6, 4, seed=25).float()
    y = torch.arange(6) % 4
    s1, t1 = _rand(6, 3, 4, 4, seed=26).float(), _rand(6, 3, 4, 4, seed=27).float()
    s2, t2 = _rand(6, 5, seed=28).float(), _rand(6, 2, seed=29).float()
    inner = L.Distillation(2.0, 0.3)
    obj = L.FeatureDistillation(inner, [("a", "b", "hint", 0.5), ("c", "d", "relational", 2.0)])
    want = inner(z, v, y) + 0.5 * L.hint_loss(s1, t1) + 2.0 * L.relational_loss(s2, t2)
    got = obj(z, v, y, features=[(s1, t1), (s2, t2)])
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert float(obj(z, v, y)) == pytest.approx(float(inner(z, v, y)), rel=1e-6)  # without features: the logits
    terms = obj.terms(z, v, y, features=[(s1, t1), (s2, t2)])
    assert set(terms) == {"soft", "hard", "hint:a", "relational:c"}
    assert float(sum(terms.values())) == pytest.approx(float(want), rel=1e-6)
    assert set(L.FeatureDistillation(L.HardLabels(), [("a", "b", "hint", 1.0)]).terms(z, v, y)) == {"logits"}
    # a row mask keeps those rows of the features too
    keep = torch.tensor([True, False, True, True, False, True])
    masked = obj.feature_terms([(s1, t1), (s2, t2)], keep)
    assert float(masked["hint:a"]) == pytest.approx(0.5 * float(L.hint_loss(s1[keep], t1[keep])), rel=1e-6)
    # what it declares is its inner objective's, except that it always needs a teacher
    hard = L.FeatureDistillation(L.HardLabels(), [("a", "b", "attention", 1.0)])
    assert hard.needs_teacher and hard.needs_labels and hard.temperature is None
    assert obj.temperature == 2.0
    assert not L.FeatureDistillation(L.Distillation(3.0, 0.0), [("a", "b", "hint", 1.0)]).needs_labels


def test_feature_distillation_is_keyed_by_its_pairs_and_checks_them():
    a = L.FeatureDistillation(L.Distillation(4.0), [("layer1", "layer2", "hint", 1.0)])
    spec = objective_spec(a)
    assert spec["objective"] == "distill.losses.FeatureDistillation"
    assert spec["pairs"] == [["layer1", "layer2", "hint", 1.0]]
    assert spec["inner"] == objective_spec(L.Distillation(4.0))
    specs = [objective_spec(o) for o in (
        a, L.FeatureDistillation(L.Distillation(4.0), [("layer1", "layer2", "hint", 2.0)]),
        L.FeatureDistillation(L.Distillation(4.0), [("layer1", "layer3", "hint", 1.0)]),
        L.FeatureDistillation(L.Distillation(4.0), [("layer1", "layer2", "attention", 1.0)]),
        L.FeatureDistillation(L.Distillation(2.0), [("layer1", "layer2", "hint", 1.0)]),
        L.FeatureDistillation(L.HardLabels(), [("layer1", "layer2", "hint", 1.0)]))]
    assert len({repr(s) for s in specs}) == len(specs)
    assert objective_spec(L.FeatureDistillation(L.Distillation(4.0), [["layer1", "layer2", "hint", 1]])) == spec
    for pairs, match in (([], "at least one"), ([("a", "b", "mse", 1.0)], "one of"), ([("a", "b", "hint")], "pair"),
                         ([("a", "b", "hint", 0.0)], "weight"), ([(1, "b", "hint", 1.0)], "strings"),
                         ("a", "list")):
        with pytest.raises(ValueError, match=match):
            L.FeatureDistillation(L.HardLabels(), pairs)
    with pytest.raises(ValueError, match="another FeatureDistillation"):
        L.FeatureDistillation(a, [("a", "b", "hint", 1.0)])


# ---------------------------------------------------------------- channel-wise, as a feature pair

def channel_wise_ref(s, t, T=4.0):
    """T^2/(B*C) * sum_b,c KL(softmax_s(t_bc/T) || softmax_s(s_bc/T)), in loops."""
    s, t = s.numpy(), t.numpy()
    b, c = s.shape[:2]
    total = 0.0
    for i in range(b):
        for j in range(c):
            zs, zt = s[i, j].ravel() / T, t[i, j].ravel() / T
            ls = zs - zs.max() - math.log(np.exp(zs - zs.max()).sum())
            lt = zt - zt.max() - math.log(np.exp(zt - zt.max()).sum())
            total += float((np.exp(lt) * (lt - ls)).sum())
    return T * T * total / (b * c)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_channel_wise_feature_loss_against_the_formula_and_its_gradient(T):
    s, t = _rand(3, 4, 5, 5, seed=1, scale=3), _rand(3, 4, 5, 5, seed=2, scale=3)
    assert math.isclose(float(L.channel_wise_feature_loss(s, t, T)), channel_wise_ref(s, t, T), rel_tol=1e-9)
    assert float(L.channel_wise_feature_loss(t, t)) == pytest.approx(0.0, abs=1e-12)
    assert torch.autograd.gradcheck(lambda x: L.channel_wise_feature_loss(x, t, T), (s.clone().requires_grad_(),))
    assert L.FEATURE_LOSSES["channel_wise"] is L.channel_wise_feature_loss
    with pytest.raises(ValueError, match="one shape") as e:
        L.channel_wise_feature_loss(s, t[:, :2])
    assert _one_line(e)
    with pytest.raises(ValueError, match="channels"):
        L.channel_wise_feature_loss(s.flatten(1), t.flatten(1))

import math

import pytest
import torch

from distill import losses as L
def _pair(b=4, n=10, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, generator=g) * scale, torch.randn(b, n, generator=g) * scale


def test_soften_closed_form_and_limits():
    z = torch.tensor([[1.0, 2.0, 3.0]])
    t = 2.0
    e = torch.exp(z / t)
    assert torch.allclose(L.soften(z, t), e / e.sum())
    assert torch.allclose(L.soften(z, 1e6), torch.full((1, 3), 1 / 3), atol=1e-5)
    assert L.soften(z, 1e-3).argmax() == 2 and L.soften(z, 1e-3)[0, 2] > 0.999


@pytest.mark.parametrize("t", [1.0, 2.5, 20.0])
def test_soft_gradient_is_q_minus_p_over_t(t):
    z, v = _pair()
    z.requires_grad_(True)
    (L.soft_cross_entropy(z, v, t) / t**2).backward()
    q, p = torch.softmax(z.detach() / t, 1), torch.softmax(v / t, 1)
    # per-example mean over the batch of B=4: dC/dz = (q - p) / (T * B)
    assert torch.allclose(z.grad, (q - p) / t / z.shape[0], atol=1e-6)


def test_t_squared_keeps_gradient_size_comparable():
    z, v = _pair(b=64, seed=1, scale=2.0)
    z0, v0 = L.zero_mean(z), L.zero_mean(v)
    sizes, raw = [], []
    for t in (5.0, 10.0, 20.0, 40.0):
        zz = z0.clone().requires_grad_(True)
        L.soft_cross_entropy(zz, v0, t).backward()
        sizes.append(zz.grad.norm().item())
        raw.append(sizes[-1] / t**2)
    assert max(sizes) / min(sizes) < 1.5  # with T**2: comparable
    assert raw[0] / raw[-1] > 50  # without it: shrinks like 1/T**2


def test_high_temperature_gradient_approaches_logit_difference():
    z, v = _pair(b=8, seed=2, scale=1.0)
    z, v = L.zero_mean(z).double(), L.zero_mean(v).double()
    n, b, t = z.shape[1], z.shape[0], 200.0
    zz = z.clone().requires_grad_(True)
    (L.soft_cross_entropy(zz, v, t) / t**2).backward()
    expected = (z - v) / (n * t**2) / b
    assert torch.allclose(zz.grad, expected, rtol=0.02, atol=1e-9)
    # and equals the logit-matching gradient after the T**2 factor
    zz2 = z.clone().requires_grad_(True)
    L.logit_matching_loss(zz2, v).backward()
    assert (zz.grad * t**2 - zz2.grad).abs().max() < 0.02 * zz2.grad.abs().max()


def test_reduction_is_per_example_mean_not_per_class():
    z, v = _pair(b=3, n=10)
    t = 3.0
    p, logq = torch.softmax(v / t, 1), torch.log_softmax(z / t, 1)
    per_example = -(p * logq).sum(1)
    assert torch.allclose(L.soft_cross_entropy(z, v, t), t * t * per_example.mean())
    # duplicating the batch does not change it; doubling the classes' count is not divided out
    assert torch.allclose(L.soft_cross_entropy(torch.cat([z, z]), torch.cat([v, v]), t), L.soft_cross_entropy(z, v, t))


def test_minimum_at_teacher_logits_up_to_a_constant():
    _, v = _pair(b=2, seed=3)
    t = 4.0
    at_teacher = L.soft_cross_entropy(v + 7.0, v, t)
    for seed in range(5):
        z = v + 0.3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(seed))
        assert L.soft_cross_entropy(z, v, t) > at_teacher
    zz = (v + 7.0).clone().requires_grad_(True)
    L.soft_cross_entropy(zz, v, t).backward()
    assert zz.grad.abs().max() < 1e-6
    assert L.logit_matching_loss(v + 5.0, v).item() == pytest.approx(0.0, abs=1e-10)


def test_teacher_as_probabilities_equals_teacher_as_logits():
    z, v = _pair()
    t = 5.0
    p = torch.softmax(v / t, 1)
    assert torch.allclose(L.soft_cross_entropy(z, p, t, teacher_kind="probs"), L.soft_cross_entropy(z, v, t))


def test_distillation_loss_is_weighted_sum():
    z, v = _pair()
    y = torch.tensor([0, 3, 9, 1])
    t, hw, sw = 20.0, 0.3, 0.7
    expected = sw * L.soft_cross_entropy(z, v, t) + hw * torch.nn.functional.cross_entropy(z, y)
    assert torch.allclose(L.distillation_loss(z, v, y, t, hard_weight=hw, soft_weight=sw), expected)
    assert torch.allclose(L.distillation_loss(z, v, None, t, hard_weight=0.0), L.soft_cross_entropy(z, v, t))


def test_logit_matching_closed_form():
    z = torch.tensor([[1.0, 2.0, 6.0]])
    v = torch.tensor([[0.0, 0.0, 3.0]])
    d = (z - z.mean()) - (v - v.mean())  # [-2, -1, 3] - [-1, -1, 2] = [-1, 0, 1]
    assert L.logit_matching_loss(z, v).item() == pytest.approx(0.5 * (d**2).mean().item())
    assert L.logit_matching_loss(z, v).item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("bad_t", [0, -1.0, float("nan"), float("inf"), "x"])
def test_bad_temperature(bad_t):
    z, v = _pair()
    with pytest.raises(ValueError, match="temperature"):
        L.soft_cross_entropy(z, v, bad_t)


def test_shape_and_value_errors_say_which():
    z, v = _pair()
    with pytest.raises(ValueError, match="batch sizes differ"):
        L.soft_cross_entropy(z, v[:3], 2.0)
    with pytest.raises(ValueError, match="class counts differ"):
        L.soft_cross_entropy(z, v[:, :5], 2.0)
    bad = v.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        L.soft_cross_entropy(z, bad, 2.0)
    with pytest.raises(ValueError, match="non-finite"):
        L.logit_matching_loss(z * math.inf, v)
    with pytest.raises(ValueError, match="sum to 1"):
        L.soft_cross_entropy(z, v.abs(), 2.0, teacher_kind="probs")
    with pytest.raises(ValueError, match="labels are required"):
        L.distillation_loss(z, v, None, 2.0, hard_weight=0.5)
    with pytest.raises(ValueError, match="labels must"):
        L.hard_cross_entropy(z, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="shape"):
        L.soften(torch.zeros(3), 1.0)


@pytest.mark.parametrize("bad_t", ["2", True, False, None, [2.0]])
def test_temperature_must_be_a_real_number_not_a_string_or_bool(bad_t):
    z, v = _pair()
    with pytest.raises(ValueError, match="temperature must be a"):
        L.soft_cross_entropy(z, v, bad_t)
    with pytest.raises(ValueError, match="temperature"):
        L.Distillation(temperature=bad_t)
    with pytest.raises(ValueError, match="temperature"):
        L.check_temperature(bad_t)
    assert L.check_temperature(2) == 2.0 and isinstance(L.check_temperature(2), float)


def test_empty_batch_is_an_error_not_nan():
    z = torch.zeros(0, 10)
    y = torch.zeros(0, dtype=torch.long)
    for call in (lambda: L.soft_cross_entropy(z, z, 2.0), lambda: L.hard_cross_entropy(z, y),
                 lambda: L.logit_matching_loss(z, z), lambda: L.distillation_loss(z, z, y, 2.0),
                 lambda: L.Distillation(2.0)(z, z, y), lambda: L.HardLabels()(z, None, y)):
        with pytest.raises(ValueError, match="empty batch"):
            call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, "0.5", True])
def test_bad_weights(bad):
    z, v = _pair()
    y = torch.tensor([0, 3, 9, 1])
    with pytest.raises(ValueError, match="hard_weight"):
        L.distillation_loss(z, v, y, 2.0, hard_weight=bad)
    with pytest.raises(ValueError, match="soft_weight"):
        L.distillation_loss(z, v, y, 2.0, soft_weight=bad)
    with pytest.raises(ValueError, match="hard_weight"):
        L.Distillation(2.0, hard_weight=bad)


def test_integer_labels_of_any_width_are_accepted():
    z, v = _pair()
    y = torch.tensor([0, 3, 9, 1])
    want = torch.nn.functional.cross_entropy(z, y)
    for dtype in (torch.int32, torch.int16, torch.uint8, torch.int64):
        assert torch.equal(L.hard_cross_entropy(z, y.to(dtype)), want)
        assert torch.allclose(L.Distillation(3.0, 0.5, 1.0)(z, v, y.to(dtype)),
                              L.soft_cross_entropy(z, v, 3.0) + 0.5 * want)
    for bad in (y.float(), y.bool(), [0, 3, 9, 1]):
        with pytest.raises(ValueError, match="labels must be an integer tensor"):
            L.hard_cross_entropy(z, bad)


def test_objectives_compute_their_formula_and_say_what_they_need():
    z, v = _pair()
    y = torch.tensor([0, 3, 9, 1])
    d = L.Distillation(temperature=4.0, hard_weight=0.25, soft_weight=0.5)
    assert torch.allclose(d(z, v, y), 0.5 * L.soft_cross_entropy(z, v, 4.0)
                          + 0.25 * torch.nn.functional.cross_entropy(z, y))
    assert torch.equal(L.HardLabels()(z, None, y), torch.nn.functional.cross_entropy(z, y))
    assert torch.equal(L.LogitMatching()(z, v, None), L.logit_matching_loss(z, v))
    assert L.needs(d, "teacher") and L.needs(d, "labels")
    assert not L.needs(L.Distillation(4.0, hard_weight=0.0), "labels")
    assert not L.needs(L.HardLabels(), "teacher") and L.needs(L.HardLabels(), "labels")
    assert L.needs(L.LogitMatching(), "teacher") and not L.needs(L.LogitMatching(), "labels")
    assert L.needs(lambda s, t, y: s.sum(), "teacher")  # a callable that does not say needs everything
    with pytest.raises(ValueError, match="both 0"):
        L.Distillation(2.0, hard_weight=0.0, soft_weight=0.0)
    # the objective's identity (run keys) follows its parameters
    assert L.objective_spec(d) == L.objective_spec(L.Distillation(4.0, 0.25, 0.5))
    assert L.objective_spec(d) != L.objective_spec(L.Distillation(4.0, 0.25, 0.6))
    assert L.objective_spec(L.HardLabels()) != L.objective_spec(L.LogitMatching())


@pytest.mark.parametrize("value, kw, msg", [
    (float("nan"), {}, "finite"), ("3", {}, "a number"), (True, {}, "a number"), (None, {}, "a number"),
    (0, dict(positive=True), "> 0"), (-1, dict(minimum=0), ">= 0"), (2.5, dict(integer=True), "whole number"),
    (2 ** 64, dict(integer=True), "too large"),
])
def test_check_number_refuses(value, kw, msg):
    with pytest.raises(ValueError, match=f"lr .*{msg}|lr must be {msg}"):
        L.check_number("lr", value, **kw)


def test_check_number_accepts():
    import numpy as np

    assert L.check_number("lr", np.float32(0.5), positive=True) == 0.5
    assert L.check_number("epochs", 3.0, integer=True, minimum=1) == 3 and isinstance(
        L.check_number("epochs", 3.0, integer=True), int)

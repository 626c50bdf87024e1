"""Property-based tests (Hypothesis) of the losses: for random shapes, temperatures and weights,
including NaN, infinity, empty batches, wrong dtypes and strings, every loss either returns a
finite value that matches its formula or raises ValueError -- never a silent nan."""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill import losses as L
EXAMPLES = 300

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(min_value=-3, max_value=50),
    st.sampled_from(["2", True, False, None, float("nan"), float("inf"), -0.0, 1e-300, 1e300]),
)


@st.composite
def batches(draw):
    b = draw(st.integers(min_value=0, max_value=6))
    c = draw(st.integers(min_value=1, max_value=7))
    scale = draw(st.sampled_from([0.1, 1.0, 30.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    z = torch.randn(b, c, generator=g) * scale
    v = torch.randn(b, c, generator=g) * scale
    y = torch.randint(0, c, (b,), generator=g)
    poison = draw(st.sampled_from(["none", "none", "none", "nan", "inf", "int", "labels-float", "labels-int32",
                                   "labels-out", "1d"]))
    if poison == "nan" and b:
        z[0, 0] = float("nan")
    elif poison == "inf" and b:
        v[-1, -1] = float("inf")
    elif poison == "int":
        z = z.long()
    elif poison == "labels-float":
        y = y.float()
    elif poison == "labels-int32":
        y = y.int()
    elif poison == "labels-out" and b:
        y[0] = c
    elif poison == "1d":
        z = z.flatten()
    return z, v, y


def _reference(z, v, y, t, hw, sw):
    """The formula, written out: sw * T^2 * mean_b(-sum_i softmax(v/T) log softmax(z/T)) + hw * CE."""
    z, v = z.double(), v.double()
    soft = -(torch.softmax(v / t, 1) * torch.log_softmax(z / t, 1)).sum(1).mean() * t * t
    hard = -torch.log_softmax(z, 1)[torch.arange(len(y)), y.long()].mean() if hw > 0 else 0.0
    return float(sw * soft + hw * hard)


@settings(max_examples=EXAMPLES, deadline=None)
@given(batches(), numbers, numbers, numbers)
def test_distillation_loss_is_right_or_a_value_error(batch, t, hw, sw):
    z, v, y = batch
    try:
        out = L.distillation_loss(z, v, y, t, hard_weight=hw, soft_weight=sw)
    except ValueError:
        return
    assert math.isfinite(float(out)), (z, v, y, t, hw, sw)
    assert float(out) == __import__("pytest").approx(_reference(z, v, y, float(t), float(hw), float(sw)),
                                                      rel=1e-4, abs=1e-4)


@settings(max_examples=EXAMPLES, deadline=None)
@given(batches(), numbers)
def test_soft_cross_entropy_and_softening_are_right_or_a_value_error(batch, t):
    z, v, _ = batch
    try:
        q = L.soften(z, t)
    except ValueError:
        q = None
    if q is not None:
        assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(len(q)), atol=1e-5)
    try:
        out = L.soft_cross_entropy(z, v, t)
    except ValueError:
        return
    assert math.isfinite(float(out)) and float(out) >= -1e-4


@settings(max_examples=EXAMPLES, deadline=None)
@given(batches())
def test_hard_and_logit_matching_are_right_or_a_value_error(batch):
    z, v, y = batch
    for fn in (lambda: L.hard_cross_entropy(z, y), lambda: L.logit_matching_loss(z, v)):
        try:
            out = fn()
        except ValueError:
            continue
        assert math.isfinite(float(out)) and float(out) >= 0


@settings(max_examples=EXAMPLES, deadline=None)
@given(numbers, numbers, numbers)
def test_objective_objects_validate_their_numbers(t, hw, sw):
    try:
        obj = L.Distillation(t, hw, sw)
    except ValueError:
        return
    for value in (obj.temperature, obj.hard_weight, obj.soft_weight):
        assert isinstance(value, float) and math.isfinite(value)
    assert obj.temperature > 0 and obj.hard_weight >= 0 and obj.soft_weight >= 0

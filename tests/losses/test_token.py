"""Token-level divergences for language-model distillation (``distill.losses.functional``'s
``token_divergence`` and friends, the ``TokenDistillation`` / ``NextTokenLoss`` objectives), checked
against independent numpy formulas in float64."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import distill
from distill import losses as L

DIVS = L.TOKEN_DIVERGENCES
NEG = float("-inf")


def _logits(*shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def _ref_div(p, q, div, beta=0.5, skew=0.1):
    """One position's divergence, written out term by term (p, q: float64 vectors, all > 0)."""
    def kl(a, b):
        return sum(ai * math.log(ai / bi) for ai, bi in zip(a, b) if ai > 0)
    if div == "forward_kl":
        return kl(p, q)
    if div == "reverse_kl":
        return kl(q, p)
    if div == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if div == "skew_kl":
        return kl(p, skew * p + (1 - skew) * q)
    if div == "skew_reverse_kl":
        return kl(q, skew * q + (1 - skew) * p)
    assert div == "tvd"
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q))


def _ref_mean(rows):
    return sum(rows) / len(rows)


def _topk(teacher, k):
    """The teacher's k largest log-probabilities at T = 1 and their ids (what a top-k store holds)."""
    lp = F.log_softmax(teacher, dim=-1)
    vals, ids = lp.topk(k, dim=-1)
    return ids, vals


# ---------------------------------------------------------------- the divergences against their formulas

@pytest.mark.parametrize("t", [1.0, 2.0])
def test_every_dense_divergence_matches_its_formula_over_the_masked_positions(t):
    s, v = _logits(2, 3, 6, seed=1), _logits(2, 3, 6, seed=2)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    for div in DIVS:
        got = L.token_divergence(s, v, mask, divergence=div, temperature=t, beta=0.3, skew=0.2)
        rows = [_ref_div(_softmax(v[b, i].numpy() / t), _softmax(s[b, i].numpy() / t), div, 0.3, 0.2)
                for b in range(2) for i in range(3) if mask[b, i]]
        assert got.dtype == torch.float32 and got.dim() == 0
        assert got.item() == pytest.approx(_ref_mean(rows), rel=1e-5, abs=1e-6), div
    # no mask: every position
    rows = [_ref_div(_softmax(v[b, i].numpy()), _softmax(s[b, i].numpy()), "jsd") for b in range(2) for i in range(3)]
    assert L.token_divergence(s, v, divergence="jsd").item() == pytest.approx(_ref_mean(rows), rel=1e-5)


@pytest.mark.parametrize("tail,t", [("renormalize", 1.0), ("renormalize", 2.0), ("bucket", 1.0)])
def test_topk_with_k_equal_v_is_the_dense_result(tail, t):
    s, v = _logits(2, 3, 7, seed=3), _logits(2, 3, 7, seed=4, scale=3.0)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    ids, lp = _topk(v, 7)
    for dtype in (torch.int64, torch.int32, torch.int16):
        for div in DIVS:
            a = s.clone().requires_grad_(True)
            b = s.clone().requires_grad_(True)
            dense = L.token_divergence(a, v, mask, divergence=div, temperature=t)
            top = L.token_divergence(b, (ids.to(dtype), lp), mask, divergence=div, temperature=t, tail=tail)
            assert top.item() == pytest.approx(dense.item(), rel=1e-5, abs=1e-6), (div, dtype)
            dense.backward()
            top.backward()
            assert torch.allclose(a.grad, b.grad, atol=1e-6), div


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_topk_renormalize_with_k_below_v_matches_a_hand_computation(t):
    s, v = _logits(2, 2, 8, seed=5), _logits(2, 2, 8, seed=6, scale=3.0)
    ids, lp = _topk(v, 3)
    for div in DIVS:
        got = L.token_divergence(s, (ids, lp), divergence=div, temperature=t, tail="renormalize")
        rows = []
        for b in range(2):
            for i in range(2):
                kk = ids[b, i].numpy()
                pk = np.exp(lp[b, i].numpy().astype(np.float64)) ** (1 / t)
                pk = pk / pk.sum()  # p(k)^(1/T), renormalised over the k
                qfull = _softmax(s[b, i].numpy() / t)  # the student's FULL vocabulary
                qk = qfull[kk]  # gathered, not renormalised: mass outside the k is not free
                rows.append(_ref_div(pk, qk, div))
        assert got.item() == pytest.approx(_ref_mean(rows), rel=1e-5, abs=1e-6), div


def test_topk_bucket_with_k_below_v_matches_a_hand_computation():
    s, v = _logits(2, 2, 8, seed=7), _logits(2, 2, 8, seed=8, scale=2.0)
    ids, lp = _topk(v, 3)
    for div in DIVS:
        got = L.token_divergence(s, (ids, lp), divergence=div, tail="bucket")
        rows = []
        for b in range(2):
            for i in range(2):
                kk = ids[b, i].numpy()
                pk = np.exp(lp[b, i].numpy().astype(np.float64))
                qk = _softmax(s[b, i].numpy())[kk]  # not renormalised
                rows.append(_ref_div(np.append(pk, 1 - pk.sum()), np.append(qk, 1 - qk.sum()), div))
        assert got.item() == pytest.approx(_ref_mean(rows), rel=1e-5, abs=1e-6), div
    # the two tails differ when the k ids miss mass
    r = L.token_divergence(s, (ids, lp), tail="renormalize")
    assert abs(r.item() - L.token_divergence(s, (ids, lp), tail="bucket").item()) > 1e-3


def test_topk_renormalize_pushes_the_student_mass_outside_the_k_ids_down():
    """Forward KL against the renormalised top-k teacher with the student's full-vocabulary
    probabilities: d/dz_j = q_j / (T N) > 0 for every id j outside the teacher's k (a student that
    renormalised over the k would get no gradient there, and nothing would keep its mass inside)."""
    s, v = _logits(1, 2, 8, seed=9), _logits(1, 2, 8, seed=10)
    ids, lp = _topk(v, 3)
    s.requires_grad_(True)
    L.token_divergence(s, (ids, lp), temperature=2.0).backward()
    outside = torch.ones_like(s, dtype=torch.bool).scatter(-1, ids, False)
    q = torch.softmax(s.detach() / 2.0, -1)
    torch.testing.assert_close(s.grad[outside], (q / (2.0 * 2))[outside])


# ---------------------------------------------------------------- masks, -inf, empty, gradients

@pytest.mark.parametrize("topk", [False, True])
def test_masked_positions_change_neither_value_nor_gradient(topk):
    s, v = _logits(2, 4, 6, seed=11), _logits(2, 4, 6, seed=12)
    mask = torch.tensor([[True, False, True, False], [False, True, True, True]])
    teacher = _topk(v, 4) if topk else v
    for div in DIVS:
        a = s.clone().requires_grad_(True)
        wild = s.clone()
        wild[~mask] = torch.tensor([1e4, -1e4, 3e4, 0.0, -3e4, 1e4])
        wild[0, 1, 2] = NEG
        wild[1, 0, 3] = float("nan")  # never read
        b = wild.requires_grad_(True)
        va = L.token_divergence(a, teacher, mask, divergence=div, temperature=2.0)
        vb = L.token_divergence(b, teacher, mask, divergence=div, temperature=2.0)
        assert va.item() == vb.item(), div
        va.backward()
        vb.backward()
        assert torch.equal(a.grad, b.grad), div
        assert (b.grad[~mask] == 0).all() and torch.isfinite(b.grad).all()


@pytest.mark.parametrize("teacher", ["dense", "renormalize", "bucket"])
@pytest.mark.parametrize("wild", [None, 3e4, float("nan"), NEG])
def test_logits_scored_in_place_equal_the_counted_rows_copied_out(monkeypatch, wild, teacher):
    """With most positions counted, the divergence is computed at every position and the uncounted
    ones left out of the sum; that must equal copying the counted rows out (value and gradient),
    also when an uncounted position holds wild, NaN or -inf logits (then the copying path runs)."""
    s, v = _logits(3, 10, 6, seed=21), _logits(3, 10, 6, seed=22)
    tail = "renormalize" if teacher == "dense" else teacher
    t = 1.0 if teacher == "bucket" else 1.5
    if teacher != "dense":
        v = _topk(v, 3)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[:, -1] = False  # the causal shift's last position: 27 of 30 counted
    if wild is not None:
        s[1, -1, 2] = wild
    results = {}
    for share in (L.functional.UNINDEXED_SHARE, 2.0):  # 2.0: never in place
        monkeypatch.setattr(L.functional, "UNINDEXED_SHARE", share)
        for div in DIVS:
            a = s.clone().requires_grad_(True)
            val = L.token_divergence(a, v, mask, divergence=div, temperature=t, tail=tail)
            val.backward()
            results.setdefault(div, []).append((val.item(), a.grad))
    for div, ((v1, g1), (v2, g2)) in results.items():
        assert v1 == pytest.approx(v2, rel=1e-6, abs=1e-7), div
        assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-8) and (g1[~mask] == 0).all(), div


def test_minus_inf_student_logits_give_finite_values_and_gradients_for_every_divergence():
    s, v = _logits(2, 3, 6, seed=13), _logits(2, 3, 6, seed=14)
    s[..., 2] = NEG  # an entry the student masks out (the teacher keeps mass there)
    s[0, 1, 4] = NEG
    ids, lp = _topk(v, 4)
    cases = [(v, "renormalize"), ((ids, lp), "renormalize"), ((ids, lp), "bucket")]
    for teacher, tail in cases:
        for div in DIVS:
            x = s.clone().requires_grad_(True)
            out = L.token_divergence(x, teacher, divergence=div, tail=tail)
            out.backward()
            assert torch.isfinite(out), (div, tail)
            assert torch.isfinite(x.grad).all(), (div, tail)
    # teacher logits at -inf too (the teacher's padded entries): finite both ways
    v2 = v.clone()
    v2[..., 5] = NEG
    for div in DIVS:
        x = s.clone().requires_grad_(True)
        out = L.token_divergence(x, v2, divergence=div, temperature=2.0)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(x.grad).all(), div


def test_entries_at_minus_inf_on_both_sides_are_as_if_not_in_the_vocabulary():
    s, v = _logits(2, 3, 7, seed=15), _logits(2, 3, 7, seed=16)
    s[..., 5:] = NEG
    v[..., 5:] = NEG
    for div in DIVS:
        x = s.clone().requires_grad_(True)
        y = s[..., :5].clone().requires_grad_(True)
        full = L.token_divergence(x, v, divergence=div, temperature=2.0)
        short = L.token_divergence(y, v[..., :5], divergence=div, temperature=2.0)
        assert full.item() == pytest.approx(short.item(), rel=1e-6, abs=1e-7), div
        full.backward()
        short.backward()
        assert torch.allclose(x.grad[..., :5], y.grad) and (x.grad[..., 5:] == 0).all()


def test_an_empty_mask_gives_zero_with_a_working_backward():
    s, v = _logits(2, 3, 5, seed=17), _logits(2, 3, 5, seed=18)
    s[0, 0] = NEG  # even a row of -inf: nothing is read
    x = s.requires_grad_(True)
    none = torch.zeros(2, 3, dtype=torch.bool)
    for teacher in (v, _topk(v, 2)):
        out = L.token_divergence(x, teacher, none, divergence="jsd")
        assert out.item() == 0.0 and out.grad_fn is not None
        out.backward()
        assert torch.equal(x.grad, torch.zeros_like(x))
    y = torch.full((2, 3), -100)
    assert L.token_cross_entropy(x, y, none).item() == 0.0


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_forward_kl_gradient_is_q_minus_p_over_t_per_valid_position(t):
    s, v = _logits(2, 3, 6, seed=19), _logits(2, 3, 6, seed=20)
    mask = torch.tensor([[True, True, False], [False, True, False]])
    x = s.clone().requires_grad_(True)
    L.token_divergence(x, v, mask, temperature=t).backward()
    q, p = torch.softmax(s / t, -1), torch.softmax(v / t, -1)
    want = torch.where(mask[..., None], (q - p) / t / int(mask.sum()), 0.0)
    assert torch.allclose(x.grad, want, atol=1e-7)


def test_half_precision_inputs_are_computed_in_float32():
    s, v = _logits(2, 3, 6, seed=21), _logits(2, 3, 6, seed=22)
    x = s.bfloat16().requires_grad_(True)
    out = L.token_divergence(x, v.half(), divergence="jsd")
    assert out.dtype == torch.float32
    ref = L.token_divergence(s.bfloat16().float(), v.half().float(), divergence="jsd")
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)
    out.backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_skew_zero_is_plain_kl_and_the_teacher_gets_no_gradient():
    s, v = _logits(2, 3, 6, seed=23), _logits(2, 3, 6, seed=24)
    v.requires_grad_(True)
    f = L.token_divergence(s, v, divergence="forward_kl")
    assert L.token_divergence(s, v, divergence="skew_kl", skew=0.0).item() == pytest.approx(f.item(), rel=1e-6)
    r = L.token_divergence(s, v, divergence="reverse_kl")
    assert L.token_divergence(s, v, divergence="skew_reverse_kl", skew=0).item() == pytest.approx(r.item(), rel=1e-6)
    assert f.grad_fn is None  # the teacher is detached and the student needs no grad here


# ---------------------------------------------------------------- errors

def test_bad_settings_are_value_errors_that_say_what_to_do():
    s, v = _logits(1, 2, 5, seed=25), _logits(1, 2, 5, seed=26)
    for beta in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="forward_kl.*reverse_kl"):
            L.token_divergence(s, v, divergence="jsd", beta=beta)
    L.token_divergence(s, v, divergence="forward_kl", beta=0.0)  # beta is jsd's only
    for skew in (-0.1, 1.0):
        for div in ("skew_kl", "skew_reverse_kl"):
            with pytest.raises(ValueError, match="skew"):
                L.token_divergence(s, v, divergence=div, skew=skew)
    with pytest.raises(ValueError, match="forward_kl.*tvd"):
        L.token_divergence(s, v, divergence="kl")
    with pytest.raises(ValueError, match="renormalize.*bucket"):
        L.token_divergence(s, _topk(v, 2), tail="drop")
    with pytest.raises(ValueError, match="temperature 1"):
        L.token_divergence(s, _topk(v, 2), tail="bucket", temperature=2.0)
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        L.token_divergence(s, _logits(1, 2, 6))
    ids, lp = _topk(v, 2)
    with pytest.raises(ValueError, match="0..4"):
        L.token_divergence(s, (ids + 4, lp))
    with pytest.raises(ValueError, match="integer"):
        L.token_divergence(s, (ids.float(), lp))
    with pytest.raises(ValueError, match="mask"):
        L.token_divergence(s, v, torch.ones(1, 2))
    bad = s.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="nan"):
        L.token_divergence(bad, v)
    assert "jsd" in L.TOKEN_DIVERGENCES and L.TOKEN_TAILS == ("renormalize", "bucket")


# ---------------------------------------------------------------- the objectives

def _lm_batch(b=2, n=5, v=7, seed=30):
    s, t = _logits(b, n, v, seed=seed), _logits(b, n, v, seed=seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    labels = torch.randint(0, v, (b, n), generator=g)
    labels[1, 3:] = -100  # padding
    return s, t, labels


def test_next_token_pairs_shifts_once_and_builds_the_valid_mask():
    s, t, y = _lm_batch()
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 2] = False
    z, v, targets, valid = L.next_token_pairs(s, t, y, mask)
    assert torch.equal(z, s[:, :-1]) and torch.equal(v, t[:, :-1]) and torch.equal(targets, y[:, 1:])
    assert valid.tolist() == [[True, False, True, True], [True, True, False, False]]
    ids, lp = _topk(t, 3)
    _, (i2, l2), _, _ = L.next_token_pairs(s, (ids, lp), y)
    assert torch.equal(i2, ids[:, :-1]) and torch.equal(l2, lp[:, :-1])
    assert L.next_token_pairs(s, None, y)[1] is None
    assert L.valid_token_count(y, mask).item() == 5 and L.valid_token_count(y).dtype == torch.int64
    assert L.TokenDistillation().count_tokens(y).item() == 6  # 4 + 2 (the padding is not counted)
    assert L.NextTokenLoss().count_tokens(y, torch.tensor([True, False])).item() == 4


@pytest.mark.parametrize("div", DIVS)
def test_a_teacher_equal_to_the_student_but_at_the_last_position_gives_zero(div):
    s, t, y = _lm_batch(seed=40)
    t = s.clone()
    t[:, -1] = _logits(2, 7, seed=41) * 5  # the last position predicts nothing: the shift drops it
    obj = L.TokenDistillation(divergence=div, temperature=2.0)
    assert obj(s, t, y).item() == 0.0
    t2 = s.clone()
    t2[:, 0] = t[:, -1]  # the first position does count
    assert obj(s, t2, y).item() > 1e-3


def test_token_distillation_is_t_squared_times_the_divergence_plus_the_weighted_ce():
    s, t, y = _lm_batch(seed=50)
    mask = torch.tensor([[True, True, True, False, True], [True] * 5])
    z, v, targets, valid = L.next_token_pairs(s, t, y, mask)
    d = L.token_divergence(z, v, valid, divergence="jsd", temperature=3.0, beta=0.2)
    ce = F.cross_entropy(z[valid], targets[valid])
    obj = L.TokenDistillation("jsd", 3.0, beta=0.2, hard_weight=0.5, soft_weight=2.0)
    assert obj(s, t, y, mask=mask).item() == pytest.approx((2.0 * 9.0 * d + 0.5 * ce).item(), rel=1e-6)
    assert L.TokenDistillation("jsd", 3.0, beta=0.2)(s, t, y, mask=mask).item() == pytest.approx(9 * d.item(),
                                                                                                  rel=1e-6)
    hard_only = L.TokenDistillation(hard_weight=1.0, soft_weight=0.0)
    assert hard_only(s, None, y, mask=mask).item() == pytest.approx(ce.item(), rel=1e-6)
    # a top-k teacher through the objective
    ids, lp = _topk(t, 7)
    assert L.TokenDistillation(temperature=2.0)(s, (ids, lp), y).item() == pytest.approx(
        L.TokenDistillation(temperature=2.0)(s, t, y).item(), rel=1e-5)


def test_a_padded_vocabulary_tail_is_cut_to_the_shared_prefix():
    s, t, y = _lm_batch(seed=60)
    ref = L.TokenDistillation(temperature=2.0)(s, t, y)
    tail = torch.full((2, 5, 3), 8.0)  # large logits in the padding: would dominate if kept
    assert L.TokenDistillation(temperature=2.0)(s, torch.cat([t, tail], -1), y).item() == pytest.approx(
        ref.item(), rel=1e-6)
    assert L.TokenDistillation(temperature=2.0)(torch.cat([s, tail], -1), t, y).item() == pytest.approx(
        ref.item(), rel=1e-6)
    ids, lp = _topk(torch.cat([t, tail], -1), 4)  # the teacher's ids reach into the padding
    with pytest.raises(ValueError, match="student's vocabulary"):
        L.TokenDistillation()(s, (ids, lp), y)


def test_next_token_loss_is_cross_entropy_on_the_shifted_pairs():
    s, _, y = _lm_batch(seed=70)
    x = s.clone().requires_grad_(True)
    got = L.NextTokenLoss()(x, None, y)
    want = F.cross_entropy(s[:, :-1].reshape(-1, 7), y[:, 1:].reshape(-1), ignore_index=-100)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    got.backward()
    assert (x.grad[:, -1] == 0).all() and (x.grad[1, 2:] == 0).all()  # no target after / padding targets
    mask = torch.tensor([[True, True, False, True, True], [True] * 5])
    y2 = y.masked_fill(~mask, -100)
    want2 = F.cross_entropy(s[:, :-1].reshape(-1, 7), y2[:, 1:].reshape(-1), ignore_index=-100)
    assert L.NextTokenLoss()(s, None, y, mask=mask).item() == pytest.approx(want2.item(), rel=1e-6)
    assert L.NextTokenLoss.needs_teacher is False and L.NextTokenLoss().temperature is None
    with pytest.raises(ValueError, match="labels"):
        L.NextTokenLoss()(s, None, None)


def test_objective_fields_are_checked_and_key_the_run():
    for kw, match in [(dict(divergence="kl"), "divergence"), (dict(tail="x"), "tail"),
                      (dict(divergence="jsd", beta=1.0), "forward_kl"), (dict(divergence="skew_kl", skew=1.0), "skew"),
                      (dict(temperature=0.0), "temperature"), (dict(hard_weight=-1.0), "hard_weight"),
                      (dict(soft_weight=0.0), "both 0"), (dict(tail="bucket", temperature=2.0), "temperature 1"),
                      (dict(beta="0.5"), "beta")]:
        with pytest.raises(ValueError, match=match):
            L.TokenDistillation(**kw)
    obj = L.TokenDistillation("skew_kl", 2, skew=0.25, hard_weight=0.1)
    assert L.objective_spec(obj) == dict(objective="distill.losses.TokenDistillation", divergence="skew_kl",
                                         temperature=2.0, beta=0.5, skew=0.25, hard_weight=0.1, soft_weight=1.0,
                                         tail="renormalize")
    assert L.objective_spec(obj) != L.objective_spec(L.TokenDistillation("skew_kl", 2, beta=0.4, skew=0.25,
                                                                         hard_weight=0.1))
    assert L.objective_spec(L.NextTokenLoss()) == dict(objective="distill.losses.NextTokenLoss")
    assert obj.needs_teacher and obj.needs_labels and not obj.epoch_dependent
    assert distill.TokenDistillation is L.TokenDistillation and "NextTokenLoss" in distill.__all__


def _naive64(s, v, div, t, beta=0.3, skew=0.2, ids=None, lp=None, tail=None):
    """The plain formula in float64 torch ops (for autograd), one mean over all positions."""
    q = torch.softmax(s.double() / t, -1)
    if ids is None:
        p = torch.softmax(v.double() / t, -1)
    else:
        q = q.gather(-1, ids)
        p = lp.double().exp()
        if tail == "renormalize":
            p = p ** (1 / t)
            p = p / p.sum(-1, keepdim=True)  # the teacher's renormalised; the student's q as gathered
        else:
            p = torch.cat([p, 1 - p.sum(-1, keepdim=True)], -1)
            q = torch.cat([q, 1 - q.sum(-1, keepdim=True)], -1)

    def kl(a, b):
        return (a * (a.log() - b.log())).sum(-1)
    rows = {"forward_kl": lambda: kl(p, q), "reverse_kl": lambda: kl(q, p),
            "jsd": lambda: beta * kl(p, beta * p + (1 - beta) * q) + (1 - beta) * kl(q, beta * p + (1 - beta) * q),
            "skew_kl": lambda: kl(p, skew * p + (1 - skew) * q),
            "skew_reverse_kl": lambda: kl(q, skew * q + (1 - skew) * p),
            "tvd": lambda: 0.5 * (p - q).abs().sum(-1)}[div]()
    return rows.mean()


@pytest.mark.parametrize("case", ["dense-1", "dense-2", "renormalize-2", "bucket-1"])
def test_every_divergence_has_the_gradient_of_its_plain_formula(case):
    kind, t = case.split("-")
    t = float(t)
    s, v = _logits(2, 3, 6, seed=80), _logits(2, 3, 6, seed=81)
    s[0, 0, :3] = v[0, 0, :3]  # some entries where p = q (ties in the mixture's branches)
    ids, lp = _topk(v, 4)
    for div in DIVS:
        x = s.clone().requires_grad_(True)
        y = s.double().requires_grad_(True)
        if kind == "dense":
            got, want = L.token_divergence(x, v, divergence=div, temperature=t, beta=0.3, skew=0.2), \
                _naive64(y, v, div, t)
        else:
            got = L.token_divergence(x, (ids, lp), divergence=div, temperature=t, beta=0.3, skew=0.2, tail=kind)
            want = _naive64(y, v, div, t, ids=ids, lp=lp, tail=kind)
        got.backward()
        want.backward()
        assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-7), div
        assert torch.allclose(x.grad.double(), y.grad, atol=2e-6), div

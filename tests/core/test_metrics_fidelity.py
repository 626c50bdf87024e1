"""Fidelity beside accuracy: :func:`distill.metrics.fidelity` (top-1/top-5 agreement, KL(teacher ‖
student) at T = 1, ECE of both) against formulas written out again with numpy loops, closed forms,
and the same numbers per token from :func:`distill.metrics.lm_evaluate`."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.metrics import (ECE_BINS, calibration_bins, expected_calibration_error, fidelity, lm_evaluate,
                             reliability)


def np_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_fidelity(s, t, y=None, bins=15, k=5):
    """The formulas, one example at a time."""
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    n, c = s.shape
    agree = top = kl = 0.0
    for i in range(n):
        p, q = np_softmax(t[i]), np_softmax(s[i])
        agree += int(np.argmax(q) == np.argmax(p))
        order = sorted(range(c), key=lambda j: -s[i, j])[:min(k, c)]
        top += int(int(np.argmax(t[i])) in order)
        kl += sum(p[j] * (math.log(p[j]) - math.log(q[j])) for j in range(c) if p[j] > 0)
    out = dict(agreement=agree / n, top5_agreement=top / n, kl=kl / n)
    if y is not None:
        out["ece"], out["teacher_ece"] = np_ece(s, y, bins), np_ece(t, y, bins)
    return out


def np_ece(z, y, bins=15):
    probs = np_softmax(z)
    members = [[] for _ in range(bins)]
    for i in range(len(y)):
        conf = probs[i].max()
        b = min(bins - 1, max(0, math.ceil(conf * bins) - 1))  # (b/bins, (b+1)/bins]
        members[b].append((conf, int(np.argmax(probs[i]) == y[i])))
    total = 0.0
    for m in members:
        if m:
            total += len(m) / len(y) * abs(sum(a for _, a in m) / len(m) - sum(c for c, _ in m) / len(m))
    return total


@pytest.mark.parametrize("n, c, scale", [(200, 10, 2.0), (64, 3, 1.0), (50, 7, 5.0)])
def test_fidelity_matches_the_formulas(n, c, scale):
    g = torch.Generator().manual_seed(n + c)
    t = scale * torch.randn(n, c, generator=g)
    s = t + scale * 0.8 * torch.randn(n, c, generator=g)  # a student that mostly follows
    y = torch.randint(0, c, (n,), generator=g)
    got = fidelity(s, t, y)
    want = np_fidelity(s.numpy(), t.numpy(), y.numpy())
    assert set(got) == {"agreement", "top5_agreement", "kl", "ece", "teacher_ece", "n"} and got["n"] == n
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-5), key
    assert got["agreement"] <= got["top5_agreement"] <= 1
    if c <= 5:
        assert got["top5_agreement"] == 1.0  # k = C: every class is in the top k
    assert 0 < got["agreement"] < 1 and got["kl"] > 0


def test_without_labels_there_is_no_ece_and_identical_logits_agree_fully():
    z = torch.randn(30, 6, generator=torch.Generator().manual_seed(1))
    assert fidelity(z, z) == dict(agreement=1.0, top5_agreement=1.0, kl=0.0, n=30)
    # KL(p ‖ q) with one-hot-ish teachers stays finite, and zero-probability classes count 0
    t = torch.tensor([[0.0, float("-inf"), 1.0]])
    s = torch.tensor([[1.0, 2.0, 0.0]])
    p = torch.softmax(t, -1)[0].tolist()
    q = torch.softmax(s, -1)[0].tolist()
    want = p[0] * math.log(p[0] / q[0]) + p[2] * math.log(p[2] / q[2])
    assert fidelity(s, t)["kl"] == pytest.approx(want, rel=1e-6)


def test_top5_is_the_teachers_class_among_the_students_five_best():
    # teacher: class 0; the student ranks class 0 sixth of eight, then fifth
    t = torch.tensor([[9.0, 0, 0, 0, 0, 0, 0, 0]] * 2)
    s = torch.tensor([[2.0, 8, 7, 6, 5, 4, 0, 0], [4.5, 8, 7, 6, 5, 0, 0, 0]])
    f = fidelity(s, t)
    assert f["agreement"] == 0.0 and f["top5_agreement"] == 0.5


def _logits_of_confidence(conf: float, predicted: int, classes: int = 2):
    """Logits whose softmax gives ``conf`` to ``predicted`` and shares the rest evenly."""
    p = torch.full((classes,), (1 - conf) / (classes - 1))
    p[predicted] = conf
    return p.log()


def test_ece_is_zero_when_each_bin_is_as_accurate_as_it_is_confident():
    # 4 rows at confidence 0.75 with 3 right, 20 rows at 0.65 with 13 right: calibrated in both bins
    rows, labels = [], []
    for conf, n, right in ((0.75, 4, 3), (0.65, 20, 13)):
        for i in range(n):
            rows.append(_logits_of_confidence(conf, 0))
            labels.append(0 if i < right else 1)
    z, y = torch.stack(rows), torch.tensor(labels)
    assert expected_calibration_error(z, y) == pytest.approx(0.0, abs=1e-6)
    r = reliability(calibration_bins(z, y))
    used = [i for i, c in enumerate(r["count"]) if c]
    assert used == [9, 11] and [r["count"][i] for i in used] == [20, 4]  # 0.65 in (9/15, 10/15], 0.75 in (11/15, 12/15]
    assert [r["accuracy"][i] for i in used] == pytest.approx([0.65, 0.75])
    assert [r["confidence"][i] for i in used] == pytest.approx([0.65, 0.75])
    assert r["confidence"][0] is None and r["edges"][0] == 0 and r["edges"][-1] == 1 and len(r["edges"]) == 16


def test_ece_of_a_known_overconfident_model():
    # 4 classes; 10 rows at confidence 0.9, 6 right (gap 0.3); 10 rows at 0.7, all right (gap 0.3 the
    # other way); 5 rows at 0.3, 1 right (gap 0.1): ECE = (10*0.3 + 10*0.3 + 5*0.1) / 25 = 0.26
    rows, labels = [], []
    for conf, n, right, classes in ((0.9, 10, 6, 4), (0.7, 10, 10, 4), (0.3, 5, 1, 4)):
        for i in range(n):
            rows.append(_logits_of_confidence(conf, 2, classes))
            labels.append(2 if i < right else 3)
    z, y = torch.stack(rows), torch.tensor(labels)
    assert expected_calibration_error(z, y) == pytest.approx(0.26, abs=1e-6)
    assert expected_calibration_error(z, y) == pytest.approx(np_ece(z.numpy(), y.numpy()), abs=1e-6)
    assert reliability(calibration_bins(z, y))["ece"] == pytest.approx(0.26, abs=1e-6)
    # as the teacher's ECE, beside a student that is calibrated on the same rows
    f = fidelity(torch.zeros_like(z), z, y)
    assert f["teacher_ece"] == pytest.approx(0.26, abs=1e-6)
    assert f["ece"] == pytest.approx(abs(0.25 - sum(l == 0 for l in labels) / 25))  # uniform: conf 1/4, predicts 0


def test_bins_add_up_over_batches_and_other_bin_counts():
    g = torch.Generator().manual_seed(3)
    z, y = 3 * torch.randn(300, 5, generator=g), torch.randint(0, 5, (300,), generator=g)
    whole = calibration_bins(z, y)
    parts = calibration_bins(z[:100], y[:100]) + calibration_bins(z[100:], y[100:])
    torch.testing.assert_close(whole, parts)
    assert whole.shape == (3, ECE_BINS) and int(whole[0].sum()) == 300
    for bins in (1, 4, 10):
        assert expected_calibration_error(z, y, bins) == pytest.approx(np_ece(z.numpy(), y.numpy(), bins), abs=1e-6)
    # one bin: |accuracy - mean confidence|
    acc = float((z.argmax(1) == y).double().mean())
    conf = float(torch.softmax(z, 1).max(1).values.double().mean())
    assert expected_calibration_error(z, y, 1) == pytest.approx(abs(acc - conf), abs=1e-6)


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="same shape"):
        fidelity(torch.zeros(4, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="one per row"):
        fidelity(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="bins must be"):
        calibration_bins(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 0)


class _Blocks:
    """The least a token source needs for lm_evaluate: ``ordered(batch)`` yielding (inputs, labels, idx)."""

    def __init__(self, ids, labels):
        self.ids, self.labels = ids, labels

    def ordered(self, batch_size):
        for i in range(0, len(self.ids), batch_size):
            yield self.ids[i:i + batch_size], self.labels[i:i + batch_size], None


class _Table(torch.nn.Module):
    """A bigram 'language model': logits at position t are a row of a fixed table picked by token t."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, ids):
        return self.table[ids]


def test_lm_evaluate_reports_the_same_keys_per_valid_token():
    g = torch.Generator().manual_seed(5)
    V, B, L = 7, 6, 9
    ids = torch.randint(0, V, (B, L), generator=g)
    labels = ids.clone()
    labels[0, 4:] = -100  # padding after position 4
    labels[3, :2] = -100  # a prompt that is not scored
    student, teacher = _Table(2 * torch.randn(V, V, generator=g)), _Table(2 * torch.randn(V, V, generator=g))
    m = lm_evaluate(student, _Blocks(ids, labels), batch_size=4, teacher=teacher)
    assert {"agreement", "top5_agreement", "kl", "ece", "teacher_ece"} <= set(m)
    # the valid positions: logits at t predict token t+1, where that target is not -100
    s = student.table.detach()[ids[:, :-1]]
    t = teacher.table.detach()[ids[:, :-1]]
    targets = labels[:, 1:]
    valid = targets != -100
    want = np_fidelity(s[valid].numpy(), t[valid].numpy(), targets[valid].numpy())
    assert m["n"] == int(valid.sum()) == B * (L - 1) - 5 - 1
    for key, v in want.items():
        assert m[key] == pytest.approx(v, abs=1e-5), key
    assert fidelity(s[valid], t[valid], targets[valid]) == pytest.approx(dict(
        {k: m[k] for k in want}, n=m["n"]), abs=1e-6)  # float32 sums, batched or not
    # without a teacher: the student's ECE alone
    alone = lm_evaluate(student, _Blocks(ids, labels), batch_size=4)
    assert set(alone) & {"agreement", "top5_agreement", "kl", "teacher_ece"} == set()
    assert alone["ece"] == pytest.approx(want["ece"], abs=1e-6)
    # itself as the teacher: full agreement, no divergence
    same = lm_evaluate(student, _Blocks(ids, labels), batch_size=4, teacher=student)
    assert same["agreement"] == same["top5_agreement"] == 1.0 and same["kl"] == pytest.approx(0.0, abs=1e-7)
    assert same["ece"] == pytest.approx(same["teacher_ece"])

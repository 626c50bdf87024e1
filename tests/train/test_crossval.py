"""Cross-validation among a few candidate models: stratified folds, the pooled held-out NLL, a
diverged fold, the choice."""
import math

import pytest
import torch

from distill.train.crossval import CVScore, beats, best, cross_validate, stratified_folds
from distill.train.divergence import TrainingDiverged


@pytest.mark.parametrize("counts,k", [([142, 146, 141, 147, 145, 146, 145, 143, 138, 145], 5), ([50, 50, 50], 5),
                                      ([3, 40, 7], 4), ([1, 9], 2)])
def test_stratified_folds_deal_every_class_evenly(counts, k):
    # labels in periodic order, as scikit-learn's digits: interleaving classes and then dealing
    # round-robin would send class c to fold c mod k
    y = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    y = y[torch.argsort(torch.arange(len(y)) % max(counts), stable=True)]
    folds = stratified_folds(y, k, seed=3)
    sizes = torch.bincount(folds, minlength=k)
    assert int(sizes.max() - sizes.min()) <= 1 and int(sizes.sum()) == len(y)
    for c, n in enumerate(counts):
        per_fold = torch.bincount(folds[y == c], minlength=k)
        assert set(per_fold.tolist()) <= {n // k, -(-n // k)}, (c, per_fold)
    assert torch.equal(folds, stratified_folds(y, k, seed=3))
    if len(y) > 20:
        assert not torch.equal(folds, stratified_folds(y, k, seed=4))


def test_stratified_folds_refuse_too_few():
    with pytest.raises(ValueError, match="k >= 2"):
        stratified_folds(torch.zeros(10, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="cannot fill"):
        stratified_folds(torch.zeros(3, dtype=torch.int64), 5)


def test_cross_validate_scores_every_held_out_example_and_builds_on_training_rows_only():
    x = torch.arange(10, dtype=torch.float32)[:, None]
    y = torch.tensor([0, 1] * 5)
    folds = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    seen = []

    def build(rows):
        seen.append(rows[:, 0].tolist())
        return len(seen) - 1  # the "model": its fold

    def train(model, tr, held):
        assert torch.equal(tr[0], x[folds != model]) and torch.equal(held, x[folds == model])
        # fold f predicts class 0 with logit f, class 1 with 0
        return torch.stack([torch.full((len(held),), float(model)), torch.zeros(len(held))], 1)

    sc = cross_validate(build, x, y, folds, train)
    logp = {f: torch.log_softmax(torch.tensor([float(f), 0.0], dtype=torch.float64), 0) for f in range(3)}
    want = torch.tensor([-logp[int(f)][int(c)] for f, c in zip(folds, y)], dtype=torch.float64)
    assert torch.allclose(sc.losses, want) and sc.nll == pytest.approx(float(want.mean()))
    # fold 0 ties (argmax picks class 0): its class-1 examples are wrong; folds 1, 2 predict class 0
    assert sc.wrong.tolist() == [bool(c) for c in y.tolist()] and sc.errors == 5 and sc.n == 10
    assert seen[0] == [4, 5, 6, 7, 8, 9]  # fold 0's model saw only the other folds' rows


def _score(losses, wrong=None):
    losses = torch.tensor(losses, dtype=torch.float64)
    return CVScore(losses, torch.zeros(len(losses), dtype=torch.bool) if wrong is None else torch.tensor(wrong))


def test_a_fold_that_diverges_makes_the_candidate_lose():
    x, y = torch.zeros(6, 1), torch.tensor([0, 1] * 3)
    folds = torch.tensor([0, 0, 1, 1, 2, 2])
    calls = iter(range(3))

    def train(model, tr, held):
        if model == 1:
            raise TrainingDiverged("the loss became nan")
        return torch.zeros(len(held), 2)

    sc = cross_validate(lambda rows: next(calls), x, y, folds, train)
    assert sc.nll == math.inf and sc.diverged == 1 and sc.errors == 2 + 2  # fold 1 all wrong; ties -> class 0
    worse = _score([0.9] * 6, [True] * 6)  # more errors, but the default diverged
    assert best({"default": sc, "other": worse}, default="default") == "other"


def test_the_default_is_kept_unless_beaten_beyond_the_margin():
    default = _score([0.5] * 8, [True] * 4 + [False] * 4)
    # right on all four of the default's errors: differences 1,1,1,1,0,0,0,0: mean 0.5, se
    # sqrt(2/7) / sqrt(8) = 0.189: beaten
    better = _score([0.6] * 8, [False] * 8)
    assert best({"d": default, "b": better}, default="d") == "b"
    assert best({"d": default, "b": better}, default="d", margin=3) == "d"  # 0.5 < 3 x 0.189
    # one error fewer: differences 1,0,...,0: mean 0.125, se sqrt(1/8) / sqrt(8) = 0.125: not beyond, kept
    slightly = _score([0.5] * 8, [False] + [True] * 3 + [False] * 4)
    assert best({"d": default, "b": slightly}) == "b" and best({"d": default, "b": slightly}, default="d") == "d"
    # as many errors but a lower NLL on every example (sd 0): the better fit replaces the default;
    # one more error, or a noisy NLL gain, does not
    fits = _score([0.2] * 8, [True] * 4 + [False] * 4)
    assert best({"d": default, "f": fits}, default="d", margin=3) == "f"
    assert best({"d": default, "f": _score([0.2] * 8, [True] * 5 + [False] * 3)}, default="d", margin=3) == "d"
    noisy = _score([0.0, 1.0] * 4, [True] * 4 + [False] * 4)  # d = 0.5, -0.5, ...: mean 0
    assert best({"d": default, "f": noisy}, default="d") == "d"
    # an infinite loss decides by its sign
    assert beats(torch.tensor([math.inf, 0.1]), torch.tensor([0.2, 0.2]), 3)
    assert not beats(torch.tensor([0.2, 0.2]), torch.tensor([math.inf, 0.1]), 3)
    # without a default: the fewest errors, then the lowest NLL, then the first given
    a, b = _score([0.2, 0.3], [False, False]), _score([0.2, 0.2], [False, False])
    assert best({"a": a, "b": b}) == "b" and best({"a": b, "c": b}) == "a"
    assert best({"a": _score([0.1, 0.1], [True, False]), "b": _score([0.9, 0.9], [False, False])}) == "b"

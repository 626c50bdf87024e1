"""distinct_n and repetition_rate against hand-computed values and their edge cases."""
import pytest
import torch

from distill.metrics import distinct_n, repetition_rate


def test_distinct_n_hand_computed():
    # bigrams: (1,2) (2,1) (1,2) | (3,3): 4 bigrams, 3 distinct
    assert distinct_n([[1, 2, 1, 2], [3, 3]], 2) == pytest.approx(3 / 4)
    # unigrams: 1 2 1 2 3 3: 6 tokens, 3 distinct -- counted over all sequences, not per sequence
    assert distinct_n([[1, 2, 1, 2], [3, 3]], 1) == pytest.approx(3 / 6)
    assert distinct_n([[1, 2], [1, 2]], 2) == pytest.approx(1 / 2)  # pooled across sequences
    assert distinct_n([[1, 2, 3, 4]], 2) == 1.0
    assert distinct_n([[5, 5, 5, 5, 5]], 2) == pytest.approx(1 / 4)


def test_distinct_n_tensors_match_lists():
    seqs = [[1, 2, 1, 2, 7], [3, 3, 1]]
    assert distinct_n([torch.tensor(s) for s in seqs], 2) == distinct_n(seqs, 2)
    assert distinct_n((s for s in seqs), 3) == distinct_n(seqs, 3)  # any iterable


def test_distinct_n_edge_cases():
    assert distinct_n([], 2) == 0.0
    assert distinct_n([[1], [2], []], 2) == 0.0  # no bigram anywhere
    assert distinct_n([[1], [2, 3]], 2) == 1.0  # the short sequence adds nothing
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            distinct_n([[1, 2, 3]], bad)
    with pytest.raises(ValueError):
        distinct_n([], 0)  # checked even with nothing to count


def test_repetition_rate_hand_computed():
    # [1,2,1,2,1,2]: 2-grams (1,2)(2,1)(1,2)(2,1)(1,2): 5, unique 2 -> 1 - 2/5 = 0.6
    assert repetition_rate([[1, 2, 1, 2, 1, 2]], 2) == pytest.approx(0.6)
    # averaged per sequence: [1,2,3] -> 0; [4,4,4,4] -> 1 - 1/3; mean (0 + 2/3) / 2
    assert repetition_rate([[1, 2, 3], [4, 4, 4, 4]], 2) == pytest.approx(1 / 3)
    # not pooled: the same two sequences repeat each other's grams but each is repetition-free
    assert repetition_rate([[1, 2, 3, 4], [1, 2, 3, 4]], 2) == 0.0
    # seq-rep-4 of a loop tends to 1
    assert repetition_rate([[7] * 50], 4) == pytest.approx(1 - 1 / 47)


def test_repetition_rate_edge_cases():
    assert repetition_rate([], 4) == 0.0
    assert repetition_rate([[1, 2, 3]], 4) == 0.0  # no 4-gram
    # sequences without an n-gram are left out of the average, not counted as 0
    assert repetition_rate([[1], [], [4, 4, 4, 4]], 2) == pytest.approx(2 / 3)
    assert repetition_rate([[1, 2], [4, 4, 4, 4]], 2) == pytest.approx(1 / 3)  # [1, 2] has one: rate 0
    assert repetition_rate([torch.tensor([4, 4, 4, 4])], 2) == pytest.approx(2 / 3)
    for bad in (0, -3, 2.0, False):
        with pytest.raises(ValueError):
            repetition_rate([[1, 2, 3]], bad)
    with pytest.raises(ValueError):
        repetition_rate([], 0)

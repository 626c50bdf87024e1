"""An IterableDataset whose items are whole batches ``(x_batch, y_batch)`` is used as those batches
(not stacked into batches of batches); shapes that are neither one example nor one batch, and a
DataLoader that stacks such batches, are one-line errors saying what to do."""
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from distill import TrainConfig, fit
from distill.data.sources import LoaderSource, as_source, stream_batch_size
from distill.models import MLP


class Batches(IterableDataset):
    """``(x[i:i+b], y[i:i+b])`` in order: a stream that batches itself."""

    def __init__(self, x, y, b):
        self.x, self.y, self.b = x, y, b

    def __iter__(self):
        return iter([(self.x[i:i + self.b], self.y[i:i + self.b]) for i in range(0, len(self.x), self.b)])


class Items(IterableDataset):
    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


def _data(blobs):
    return blobs(90, 5, 3, seed=2)


def test_a_stream_of_batches_is_used_as_its_batches(blobs):
    x, y = _data(blobs)
    s = as_source(Batches(x, y, 8))
    assert isinstance(s, LoaderSource) and s.batched and s.batch_size == 8 and s.labeled and s.n is None
    got = list(s.batches(32, None))  # fit's batch size does not re-batch them
    assert [len(b[0]) for b in got] == [8] * 11 + [2]
    assert torch.equal(torch.cat([b[0] for b in got]), x) and torch.equal(torch.cat([b[1] for b in got]), y)
    # the same examples as the tensors: the same identity (order-independent content digest)
    assert s.fingerprint == as_source(DataLoader(TensorDataset(x, y), batch_size=30)).fingerprint


def test_fit_on_a_stream_of_batches_trains_as_on_the_same_batches_from_a_dataloader(blobs):
    x, y = _data(blobs)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.1, seed=0)
    runs = []
    for train in (Batches(x, y, 10), DataLoader(TensorDataset(x, y), batch_size=10)):
        torch.manual_seed(0)
        res = fit(MLP(5, [16], 3), train, cfg, test=(x, y), progress=False, log=lambda *_: None)
        runs.append(res)
    a, b = (r.model.state_dict() for r in runs)
    assert all(torch.allclose(a[k], b[k]) for k in a)
    assert runs[0].history[-1]["train_loss"] == pytest.approx(runs[1].history[-1]["train_loss"])
    assert runs[0].test["accuracy"] > 0.9


def test_what_an_item_is_told_by_its_labels():
    x8, x1 = torch.rand(8, 5), torch.rand(5)
    assert stream_batch_size((x1, 3)) is None  # one example, a scalar label
    assert stream_batch_size((x1, torch.tensor(3))) is None
    assert stream_batch_size((x1, torch.tensor([3]))) is None  # a label of shape (1,)
    assert stream_batch_size((x1,)) is None and stream_batch_size(x1) is None  # unlabeled: cannot tell
    assert stream_batch_size((x8, torch.arange(8))) == 8
    assert stream_batch_size((x8, torch.arange(8)[:, None])) == 8  # (B, 1) labels
    img, mask = torch.rand(1, 6, 6), torch.zeros(6, 6, dtype=torch.long)
    assert stream_batch_size((img, mask)) is None  # one image and its (H, W) mask
    assert stream_batch_size((torch.rand(4, 1, 6, 6), torch.zeros(4, 6, 6, dtype=torch.long))) == 4
    assert stream_batch_size({"x": x8, "y": torch.arange(8)}) == 8


def test_labels_that_are_neither_one_example_nor_a_batch_are_one_line(blobs):
    with pytest.raises(ValueError, match=r"x of shape \(5,\) and y of shape \(10,\).*batch_size=None") as e:
        as_source(Items([(torch.rand(5), torch.zeros(10, dtype=torch.long))] * 3))
    assert "\n" not in str(e.value)


def test_a_dataloader_that_stacks_batches_says_how_to_fix_it(blobs):
    x, y = _data(blobs)
    with pytest.raises(ValueError, match=r"yields whole batches \(of 8\).*stacks 4 of them.*batch_size=None") as e:
        as_source(DataLoader(Batches(x, y, 8), batch_size=4))
    assert "\n" not in str(e.value)
    s = as_source(DataLoader(Batches(x, y, 8), batch_size=None))  # the fix it names
    assert [len(b[0]) for b in s.batches(3, None)] == [8] * 11 + [2]


def test_a_stream_of_single_examples_is_still_batched_by_fit(blobs):
    x, y = _data(blobs)
    s = as_source(Items(list(zip(x, y))))
    assert not s.batched and [len(b[0]) for b in s.batches(32, None)] == [32, 32, 26]

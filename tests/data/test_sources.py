"""Data sources: coercion (scikit-learn's rules), batching, indices and fingerprints."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import distill
from distill.data.sources import LoaderSource, MapSource, TensorSource, as_features, as_labels, as_source, dataset_test_split
from conftest import quiet




# ---------------------------------------------------------------- coercion

def test_features_are_float32_from_any_real_dtype():
    for a in (np.arange(6, dtype=np.float64).reshape(3, 2), np.arange(6, dtype=np.int32).reshape(3, 2),
              np.arange(6, dtype=np.uint8).reshape(3, 2), torch.arange(6, dtype=torch.float16).reshape(3, 2),
              [[0, 1], [2, 3], [4, 5]]):
        t = as_features(a)
        assert t.dtype == torch.float32 and torch.equal(t, torch.arange(6.0).reshape(3, 2))


@pytest.mark.parametrize("bad, msg", [
    (np.array([[1.0, np.nan]]), "NaN or infinity"),
    (torch.tensor([[1.0, float("inf")]]), "NaN or infinity"),
    (np.array([["1", "2"]]), "strings or mixed objects"),
    (np.array([[1, "a"]], dtype=object), "strings or mixed objects"),
    (np.array([[1 + 2j]]), "real numbers"),
    (torch.tensor([[1 + 2j]]), "complex"),
    (np.array([[True, False]]), "boolean"),
    (torch.tensor(3.0), "scalar"),
    (np.zeros((0, 4)), "no examples"),
    ([[1, 2], [3]], "could not be read as an array"),
])
def test_bad_features(bad, msg):
    with pytest.raises(ValueError, match=msg):
        as_features(bad, "x")


def test_labels_are_int64_from_any_integer_dtype():
    for y in (np.array([0, 2, 1], dtype=np.int32), np.array([0, 2, 1], dtype=np.uint8), torch.tensor([0, 2, 1]).int(),
              np.array([[0], [2], [1]]), [0, 2, 1]):
        t = as_labels(y, 3)
        assert t.dtype == torch.int64 and t.tolist() == [0, 2, 1]


@pytest.mark.parametrize("bad, msg", [
    (np.array([0.0, 1.0, 2.0]), r"integer class labels, got dtype float64 \(cast with y.astype\(int\)"),
    (torch.tensor([0.0, 1.0, 2.0]), "got dtype torch.float32"),
    (np.array(["a", "b", "c"]), "got dtype <U1"),
    (torch.tensor([True, False, True]), "got dtype torch.bool"),
    (np.array([[0, 1], [1, 0], [0, 1]]), r"vector of class labels, got shape \(3, 2\)"),
    (np.array([0, -1, 2]), "negative labels"),
    (np.array([0, 1]), "2 labels for 3 examples"),
])
def test_bad_labels(bad, msg):
    with pytest.raises(ValueError, match=msg):
        as_labels(bad, 3)


def test_as_source_shapes_of_input():
    x, y = torch.rand(10, 4), torch.arange(10) % 2
    for data in ((x, y), [x, y], {"x": x, "y": y}, (x.numpy(), y.numpy())):
        s = as_source(data)
        assert isinstance(s, TensorSource) and s.labeled and torch.equal(s.x, x) and torch.equal(s.y, y)
    for data in (x, (x,), {"x": x}, x.numpy()):
        s = as_source(data)
        assert isinstance(s, TensorSource) and not s.labeled and s.y is None
    assert isinstance(as_source(TensorDataset(x, y)), MapSource)
    assert isinstance(as_source(DataLoader(TensorDataset(x, y), batch_size=3)), LoaderSource)
    with pytest.raises(ValueError, match="dict without an 'x'"):
        as_source({"inputs": x})
    with pytest.raises(ValueError, match="cannot use a int as data"):
        as_source(42)
    with pytest.raises(ValueError, match=r"\(x, y\) or \(x,\)"):
        as_source(TensorDataset(x, y, y))


def test_image_shape_for_jitter(toy):
    assert as_source(torch.rand(5, 8, 8)).image_shape == (8, 8)
    assert as_source(torch.rand(5, 3, 8, 6)).image_shape == (8, 6)
    assert as_source(torch.rand(5, 64)).image_shape is None
    assert as_source(toy).image_shape == (8, 8)  # a distill Dataset says it
    with pytest.raises(ValueError, match="jitter needs image data"):
        distill.fit(torch.nn.Linear(64, 10), (toy.x_train, toy.y_train), distill.TrainConfig(epochs=1, jitter=1),
                    progress=False, log=quiet)


# ---------------------------------------------------------------- batching

def test_map_source_and_tensor_source_give_the_same_batches():
    x, y = torch.rand(103, 5), torch.arange(103) % 4
    t, m = TensorSource(x, y), MapSource(TensorDataset(x, y))
    for gen_t, gen_m in ((torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)), (None, None)):
        bt, bm = list(t.batches(16, gen_t)), list(m.batches(16, gen_m))
        assert len(bt) == len(bm) == 7
        for (xa, ya, ia), (xb, yb, ib) in zip(bt, bm):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
            assert torch.equal(xa, x[ia]) and torch.equal(ya, y[ia])  # indices pick the rows
        if gen_t is not None:
            assert torch.equal(gen_t.get_state(), gen_m.get_state())  # the same draws from the generator
            order = torch.cat([i for _, _, i in bt])
            assert sorted(order.tolist()) == list(range(103)) and order.tolist() != list(range(103))


def test_map_source_batches_do_not_touch_the_global_rng():
    m = MapSource(TensorDataset(torch.rand(20, 3), torch.arange(20) % 2))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    list(m.batches(8, torch.Generator().manual_seed(1)))
    assert torch.equal(torch.get_rng_state(), before)


def test_loader_source_keeps_the_loaders_batches_and_has_no_indices():
    x, y = torch.rand(50, 3), torch.arange(50) % 2
    s = as_source(DataLoader(TensorDataset(x, y), batch_size=20))
    assert s.n == 50 and s.batch_size == 20 and not s.indexable
    sizes = [(len(xb), idx) for xb, _, idx in s.batches(7, torch.Generator())]
    assert sizes == [(20, None), (20, None), (10, None)]

    class Stream(IterableDataset):
        def __iter__(self):
            return iter([(x[i], y[i]) for i in range(len(x))])

    st = as_source(Stream())
    assert st.n is None and st.labeled and [len(b[0]) for b in st.batches(16, None)] == [16, 16, 16, 2]

    class Empty(IterableDataset):
        def __iter__(self):
            return iter([])

    with pytest.raises(ValueError, match="yielded no examples"):
        as_source(Empty())


# ---------------------------------------------------------------- fingerprints

def test_fingerprints_follow_the_content():
    x, y = torch.rand(300, 4), torch.arange(300) % 3
    assert TensorSource(x, y).fingerprint == TensorSource(x.clone(), y.clone()).fingerprint
    x2 = x.clone()
    x2[123, 1] += 1e-3
    assert TensorSource(x2, y).fingerprint != TensorSource(x, y).fingerprint  # every value counts in memory
    assert TensorSource(x, y, fingerprint="mine").fingerprint == "mine"
    fm = MapSource(TensorDataset(x, y)).fingerprint
    assert fm == MapSource(TensorDataset(x.clone(), y.clone())).fingerprint
    assert fm != MapSource(TensorDataset(x[:-1], y[:-1])).fingerprint  # the length counts
    for row in (0, 1, 299):  # every example counts, not a sample of them
        x3 = x.clone()
        x3[row] += 1e-3
        assert fm != MapSource(TensorDataset(x3, y)).fingerprint
    y2 = y.clone()
    y2[17:] = 0  # labels too
    assert fm != MapSource(TensorDataset(x, y2)).fingerprint
    # the same examples in another order: another map-style data set (stores look rows up by index)
    perm = torch.randperm(300)
    assert fm != MapSource(TensorDataset(x[perm], y[perm])).fingerprint


def test_a_loaders_fingerprint_covers_every_example_and_not_its_order():
    from torch.utils.data import DataLoader

    x, y = torch.rand(300, 4), torch.arange(300) % 3
    fp = LoaderSource(DataLoader(TensorDataset(x, y), batch_size=32)).fingerprint
    # shuffled, without a seed, in other batch sizes: the same examples, the same identity
    assert LoaderSource(DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)).fingerprint == fp
    assert LoaderSource(DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True)).fingerprint == fp
    y2 = y.clone()
    y2[16:] = 0  # the first batch unchanged, every later label changed
    assert LoaderSource(DataLoader(TensorDataset(x, y2), batch_size=16)).fingerprint != fp
    assert LoaderSource(DataLoader(TensorDataset(x[:-1], y[:-1]), batch_size=32)).fingerprint != fp
    assert LoaderSource(DataLoader(TensorDataset(x, y)), fingerprint="mine").fingerprint == "mine"


def test_a_distill_dataset_brings_its_test_split(toy):
    t = dataset_test_split(toy)
    assert t is not None and torch.equal(t.x, toy.x_test) and torch.equal(t.y, toy.y_test)
    assert dataset_test_split((toy.x_train, toy.y_train)) is None
    torch.manual_seed(0)
    res = distill.fit(torch.nn.Linear(64, 10), toy, distill.TrainConfig(epochs=1), progress=False, log=quiet)
    assert res.test["n"] == 200
    res = distill.fit(torch.nn.Linear(64, 10), toy, distill.TrainConfig(epochs=1),
                      test=(toy.x_test[:50], toy.y_test[:50]), progress=False, log=quiet)
    assert res.test["n"] == 50

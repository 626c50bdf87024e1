"""Double-MNIST: two MNIST digits side by side, class 10a + b, built deterministically
from MNIST's own splits. Most tests use a small fake MNIST whose training pixels lie in
[0.01, 0.5) and test pixels in [0.5, 1], so a test digit in a training pair would show."""
import numpy as np
import pytest
import torch

from distill.data import LOADERS, Dataset
from distill.data import double_mnist as DM
from distill.errors import DistillError


def fake_mnist(train_per_digit=30, test_per_digit=12, seed=0, fingerprint="fake-mnist"):
    g = torch.Generator().manual_seed(seed)

    def split(per_digit, lo, hi):
        y = torch.arange(10).repeat(per_digit)[torch.randperm(10 * per_digit, generator=g)]
        x = lo + (hi - lo) * torch.rand(len(y), 784, generator=g)
        return x, y

    xtr, ytr = split(train_per_digit, 0.01, 0.5)
    xte, yte = split(test_per_digit, 0.5, 1.0)
    return Dataset(name="mnist", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
                   classes=tuple(str(d) for d in range(10)), fingerprint=fingerprint, image_shape=(28, 28))


@pytest.fixture(scope="module")
def fake():
    return fake_mnist()


@pytest.fixture(scope="module")
def built(fake):
    return DM.build_double_mnist(fake, train_per_class=5, test_per_class=2, seed=0)


def test_class_is_ten_first_plus_second(fake, built):
    data, src = built
    for split, y, labels in (("train", data.y_train, fake.y_train), ("test", data.y_test, fake.y_test)):
        left, right = src[split]
        assert torch.equal(y, 10 * labels[left] + labels[right])
    assert data.classes[0] == "00" and data.classes[47] == "47" and data.num_classes == 100


def test_halves_are_the_source_digits(fake, built):
    data, src = built
    assert data.image_shape == (28, 56) and data.num_features == 1568 and data.x_train.dtype == torch.float32
    for split, x, images in (("train", data.x_train, fake.x_train), ("test", data.x_test, fake.x_test)):
        left, right = src[split]
        img = x.view(-1, 28, 56)
        assert torch.equal(img[:, :, :28].reshape(len(x), -1), images[left])
        assert torch.equal(img[:, :, 28:].reshape(len(x), -1), images[right])
    # row-major flattening of the 28x56 image: features 0..27 are the left digit's row 0,
    # 28..55 the right digit's row 0
    i = 3
    left, right = src["train"]
    assert torch.equal(data.x_train[i, :28], fake.x_train[left[i], :28])
    assert torch.equal(data.x_train[i, 28:56], fake.x_train[right[i], :28])


def test_train_pairs_use_training_digits_only(fake, built):
    data, src = built
    assert float(data.x_train.max()) < 0.5 and float(data.x_test.min()) >= 0.5
    for split, n in (("train", len(fake.y_train)), ("test", len(fake.y_test))):
        for idx in src[split]:
            assert idx.min() >= 0 and idx.max() < n


def test_exact_balance_and_even_use(fake, built):
    data, src = built
    assert torch.bincount(data.y_train, minlength=100).tolist() == [5] * 100
    assert torch.bincount(data.y_test, minlength=100).tolist() == [2] * 100
    assert len(data.y_train) == 500 and len(data.y_test) == 200
    # each position: 50 slots per digit over 30 images -> every image used once or twice
    left, right = src["train"]
    for idx in (left, right):
        uses = np.bincount(idx, minlength=len(fake.y_train))
        assert uses.min() >= 1 and uses.max() <= 2 and uses.sum() == 500
    # the pairs are shuffled, not sorted by class
    assert not torch.equal(data.y_train, torch.sort(data.y_train).values)


def test_deterministic_and_seeded(fake, built):
    data, _ = built
    again = DM.double_mnist(fake, train_per_class=5, test_per_class=2, seed=0)
    assert again.fingerprint == data.fingerprint and data.fingerprint.startswith("double-mnist:")
    for a, b in ((again.x_train, data.x_train), (again.y_train, data.y_train), (again.x_test, data.x_test)):
        assert a.numpy().tobytes() == b.numpy().tobytes()
    other = DM.double_mnist(fake, train_per_class=5, test_per_class=2, seed=1)
    assert other.fingerprint != data.fingerprint and not torch.equal(other.x_train, data.x_train)
    assert DM.double_mnist(fake, train_per_class=6, test_per_class=2).fingerprint != data.fingerprint
    from dataclasses import replace

    assert DM.double_mnist(replace(fake, fingerprint="other"), 5, 2).fingerprint != data.fingerprint
    # make_pairs with equal generators: equal arrays
    a = DM.make_pairs(fake.x_train, fake.y_train, 3, np.random.default_rng(7))
    b = DM.make_pairs(fake.x_train, fake.y_train, 3, np.random.default_rng(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and np.array_equal(a[2], b[2])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "5", None])
def test_bad_pairs_per_class(fake, bad):
    with pytest.raises(DistillError, match="per_class"):
        DM.double_mnist(fake, train_per_class=bad, test_per_class=2)
    with pytest.raises(DistillError, match="per_class"):
        DM.double_mnist(fake, train_per_class=2, test_per_class=bad)
    with pytest.raises(DistillError, match="per_class"):
        DM.make_pairs(fake.x_train, fake.y_train, bad, np.random.default_rng(0))


def test_bad_sources(fake):
    with pytest.raises(DistillError, match="digit"):
        DM.make_pairs(fake.x_train[fake.y_train != 4], fake.y_train[fake.y_train != 4], 2, np.random.default_rng(0))
    with pytest.raises(DistillError, match="28x28"):
        DM.make_pairs(torch.rand(20, 64), torch.arange(10).repeat(2), 2, np.random.default_rng(0))
    with pytest.raises(DistillError, match="seed"):
        DM.double_mnist(fake, 2, 2, seed=-1)


def test_registered_loader(fake, monkeypatch):
    import distill.data.mnist as M
    from distill import data as D
    assert LOADERS["double-mnist"] is DM.load_double_mnist
    monkeypatch.setattr(M, "load_mnist", lambda data_dir=None, log=print: fake)
    data = D.load("double-mnist", log=lambda *a: None)  # the defaults: 600 / 100 pairs per class
    assert data.x_train.shape == (60000, 1568) and data.x_test.shape == (10000, 1568)
    assert data.fingerprint == DM.double_mnist(fake).fingerprint

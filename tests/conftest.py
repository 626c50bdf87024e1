"""Shared fixtures. Most tests run on small *generated* data (``toy``, ``blobs``): fast, and
independent of any download. Only tests about MNIST itself use ``mnist`` / ``small``, which skip
with a message saying what to do when no MNIST source is reachable."""
import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# torch imports its compiler stack (seconds) when the first optimiser is built; pay it once at
# collection rather than inside whichever test happens to train first
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

TOY_SHAPE = (8, 8)
TOY_CLASSES = 10


def make_toy(train_per_class: int = 60, test_per_class: int = 20, noise: float = 0.25, seed: int = 0):
    """A generated image data set: 10 classes of 8x8 images in [0, 1], each class a fixed random
    template plus Gaussian noise (clipped), flattened to 64 features like MNIST's 784.
    Linearly separable at this noise level; same arguments -> same tensors and fingerprint."""
    from distill.data import Dataset

    g = torch.Generator().manual_seed(seed)
    h, w = TOY_SHAPE
    templates = (torch.rand(TOY_CLASSES, h * w, generator=g) > 0.6).float()

    def draw(per_class):
        y = torch.arange(TOY_CLASSES).repeat(per_class)
        x = (templates[y] + noise * torch.randn(len(y), h * w, generator=g)).clamp(0, 1)
        return x, y

    x_train, y_train = draw(train_per_class)
    x_test, y_test = draw(test_per_class)
    fp = f"toy:{train_per_class}/{test_per_class}/{noise}/{seed}"
    return Dataset(name="toy", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   classes=tuple(str(c) for c in range(TOY_CLASSES)), fingerprint=fp, image_shape=TOY_SHAPE)


@pytest.fixture(scope="session")
def toy():
    """600 training and 200 test generated 8x8 images of 10 classes (see :func:`make_toy`)."""
    return make_toy()


@pytest.fixture(scope="session")
def blobs():
    """A factory of separable Gaussian blobs: ``blobs(n, dim, classes, seed) -> (x float32, y int64)``."""

    def make(n: int = 400, dim: int = 10, classes: int = 3, seed: int = 0, spread: float = 4.0):
        g = torch.Generator().manual_seed(seed)
        centres = spread * torch.randn(classes, dim, generator=g)
        y = torch.arange(n) % classes
        x = centres[y] + torch.randn(n, dim, generator=g)
        return x, y

    return make


@pytest.fixture(scope="session")
def mnist():
    """The official MNIST (60,000 + 10,000), or a skip saying how to make it available."""
    from distill.data import load_mnist
    from distill.errors import DistillError

    try:
        return load_mnist(log=lambda *a: None)
    except DistillError as e:
        pytest.skip("real MNIST could not be loaded, so the tests about MNIST itself are skipped. "
                    "To run them, put the four official idx files (train-images-idx3-ubyte, ...) in a folder and "
                    "set DISTILL_DATA_DIR=that/folder, or run `distill teacher` once with network access to fill "
                    f"the cache (~/.cache/distill). The loader said: {str(e).splitlines()[0]}")


@pytest.fixture(scope="session")
def small(mnist):
    """1,000 training and 500 test images of real MNIST, stratified, fixed seed."""
    return mnist.subset(train=1000, test=500, seed=0)

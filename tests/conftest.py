"""Shared fixtures. Most tests run on small *generated* data (``toy``, ``blobs``): fast, and
independent of any download. Only tests about MNIST itself use ``mnist`` / ``small``, which skip
with a message saying what to do when no MNIST source is reachable."""
import json  # noqa: F401 - the CLI helpers' callers read their JSON output
import os
import sys  # noqa: F401

import numpy as np
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


# ---------------------------------------------------------------- helpers shared by test modules

from distill.cli import main  # noqa: E402 - after the thread setting above

def quiet(*_a):
    """A ``log=`` that prints nothing."""


def leave_group_and_exit() -> None:
    """The end of a spawned DDP test worker whose results are written: every process leaves the
    gloo group together, then exits without interpreter finalization. A gloo worker thread still
    holding tensors while Python tears down aborts the child ("terminate called without an active
    exception", seen once in CI after a worker's results were complete); the test reads the files."""
    import torch.distributed as dist

    from distill import distributed

    sys.stdout.flush(), sys.stderr.flush()
    dist.barrier()
    distributed.shutdown()
    os._exit(0)


#: classes of the generated file data sets below
CLASSES = 4


def images(n: int, seed: int = 0, size=(8, 8), noise: float = 0.2):
    """``n`` grey images in [0, 1] of ``CLASSES`` classes (class templates fixed across seeds)."""
    templates = (np.random.default_rng(123).random((CLASSES, *size)) > 0.6).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = np.arange(n) % CLASSES
    x = np.clip(templates[y] + noise * rng.standard_normal((n, *size)), 0, 1).astype(np.float32)
    return x, y


def write_npz(path, n_train=120, n_val=40, n_test=40, labeled=True, **extra):
    (xtr, ytr), (xv, yv), (xte, yte) = images(n_train, 0), images(n_val, 1), images(n_test, 2)
    arrays = dict(x_train=xtr, x_val=xv, y_val=yv, x_test=xte, y_test=yte)
    if labeled:
        arrays["y_train"] = ytr
    arrays.update(extra)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def write_folder(root, splits=(("train", 24), ("val", 8), ("test", 8)), colour=False, suffix=".png", labeled=True):
    from PIL import Image

    for k, (split, n) in enumerate(splits):
        x, y = images(n, k)
        for i in range(n):
            folder = root / split / f"c{y[i]}" if labeled or split != "train" else root / split
            folder.mkdir(parents=True, exist_ok=True)
            a = (x[i] * 255).round().astype(np.uint8)
            img = Image.fromarray(np.stack([a, a[::-1], a.T], -1) if colour else a)
            img.save(folder / f"{i:03d}{suffix}")
    return root


def table(n: int, seed: int, names=("apple", "banana", "cherry")):
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(names)
    centres = np.array([[0, 0, 0], [3, 0, 1], [0, 3, -1]], dtype=float)
    x = centres[y] + rng.standard_normal((n, 3))
    df = pd.DataFrame(x, columns=["f1", "f2", "f3"])
    df["count"] = rng.integers(0, 5, n)  # an integer feature
    df["fruit"] = np.asarray(names)[y]
    return df


def run(capsys, *argv):
    """main(argv) -> (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, *argv) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("distill: error: ") and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- formats round-trip

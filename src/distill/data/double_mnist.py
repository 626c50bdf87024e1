"""Double-MNIST: two verified MNIST digits side by side, 100 classes, built deterministically.

An example is a 28 x 56 image: a 28 x 28 MNIST digit ``a`` on the left and a digit ``b`` on the
right; its class is ``10 a + b`` (named ``"ab"``, "00" .. "99"). Flattened row by row it has 1,568
features in [0, 1] (``image_shape = (28, 56)``, the (H, W) convention of the other image sets).

Construction (:func:`pair_indices`, :func:`make_pairs`):

* training pairs use MNIST's training digits only, test pairs its test digits only, so no test
  digit is ever seen in training;
* balanced: ``per_class`` pairs for each of the 100 classes (defaults: 600 training pairs per
  class, 60,000 in all, and 100 test pairs per class, 10,000 in all);
* a digit value ``d`` fills ``10 x per_class`` left slots (classes ``d0`` .. ``d9``) and as many
  right slots (``0d`` .. ``9d``); each position takes the images of label ``d`` in a seeded
  random order, a fresh permutation when they run out, so within one position every image is
  used ``floor`` or ``ceil`` of (slots / images of ``d``) times (about once with the defaults:
  6,000 slots, 5,421-6,742 images). The same image may appear on the left of one pair and the
  right of another (and, rarely, on both sides of one pair of class ``dd``);
* the pairs are then put in a seeded random order. One NumPy generator (PCG64) per split,
  seeded by ``(seed, 0)`` for training and ``(seed, 1)`` for test.

The data fingerprint is ``double-mnist:`` + the first 16 hex digits of the SHA-256 of the build
parameters, MNIST's fingerprint and the index arrays (which, with MNIST, determine every pixel).
"""
from __future__ import annotations


import numpy as np
import torch

from distill.data.dataset import Dataset
from distill.digest import build_digest
from distill.errors import DistillError

DIGIT = 28
#: the image shape (H, W) of one example
SHAPE = (DIGIT, 2 * DIGIT)
CLASSES = tuple(f"{a}{b}" for a in range(10) for b in range(10))
#: pairs per class in the default build: 60,000 training and 10,000 test pairs
DEFAULT_TRAIN_PER_CLASS, DEFAULT_TEST_PER_CLASS = 600, 100


def _check_per_class(per_class, what: str = "per_class") -> int:
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class <= 0:
        raise DistillError(f"double-mnist: {what} must be a positive whole number of pairs per class, "
                           f"got {per_class!r}")
    return int(per_class)


def pair_indices(labels, per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, left, right)`` for ``100 x per_class`` pairs of the digits with ``labels`` (0..9):
    ``left``/``right`` index the digit images, ``y = 10 labels[left] + labels[right]``, exactly
    ``per_class`` pairs per class, in a random order drawn from ``rng`` (module docstring)."""
    per_class = _check_per_class(per_class)
    labels = np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels).astype(np.int64).ravel()
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DistillError("double-mnist: digit labels must be 0..9")
    by_digit = [np.flatnonzero(labels == d) for d in range(10)]
    missing = [d for d in range(10) if len(by_digit[d]) == 0]
    if missing:
        raise DistillError(f"double-mnist: no image of digit(s) {missing}; every digit 0..9 is needed")
    n = 100 * per_class
    left = np.empty(n, np.int64)
    right = np.empty(n, np.int64)
    y = np.repeat(np.arange(100, dtype=np.int64), per_class)  # pairs of class c at c*per_class ..
    slots = 10 * per_class
    for position, out in ((0, left), (1, right)):
        for d in range(10):
            pool = by_digit[d]
            reps = -(-slots // len(pool))
            order = np.concatenate([pool[rng.permutation(len(pool))] for _ in range(reps)])[:slots]
            for j in range(10):  # the classes with d in this position: d j (left) or j d (right)
                c = 10 * d + j if position == 0 else 10 * j + d
                out[c * per_class:(c + 1) * per_class] = order[j * per_class:(j + 1) * per_class]
    perm = rng.permutation(n)
    return y[perm], left[perm], right[perm]


def make_pairs(images, labels, per_class: int, rng: np.random.Generator):
    """``(x, y, left_idx, right_idx)``: :func:`pair_indices` and the pairs' pixels, ``x`` float32
    ``(100 per_class, 1568)``, each row the 28 x 56 image (``images[left]`` | ``images[right]``)
    flattened row by row. ``images``: ``(m, 784)`` or ``(m, 28, 28)`` floats in [0, 1]."""
    imgs = torch.as_tensor(images)
    if imgs.dim() < 2 or imgs[0].numel() != DIGIT * DIGIT:
        raise DistillError(f"double-mnist needs 28x28 digits, got images of shape {tuple(imgs.shape[1:])}")
    if len(imgs) != len(labels):
        raise DistillError(f"double-mnist: {len(imgs)} images but {len(labels)} labels")
    imgs = imgs.reshape(len(imgs), DIGIT, DIGIT).float()
    y, left, right = pair_indices(labels, per_class, rng)
    x = torch.empty(len(y), DIGIT, 2 * DIGIT, dtype=torch.float32)
    step = 10000  # in chunks: no full-size temporaries beside the result
    for i in range(0, len(y), step):
        li, ri = torch.from_numpy(left[i:i + step]), torch.from_numpy(right[i:i + step])
        x[i:i + step, :, :DIGIT] = imgs[li]
        x[i:i + step, :, DIGIT:] = imgs[ri]
    return x.reshape(len(y), -1), torch.from_numpy(y), left, right



def build_double_mnist(mnist: Dataset, train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
                       test_per_class: int = DEFAULT_TEST_PER_CLASS, seed: int = 0) -> tuple[Dataset, dict]:
    """The double-MNIST :class:`Dataset` from a loaded MNIST (module docstring) and its source
    digits: ``{"train": (left, right), "test": (left, right)}``, indices into ``mnist``'s
    training and test images."""
    train_per_class = _check_per_class(train_per_class, "train_per_class")
    test_per_class = _check_per_class(test_per_class, "test_per_class")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DistillError(f"double-mnist: seed must be a whole number >= 0, got {seed!r}")
    shape = tuple(mnist.image_shape or (DIGIT, DIGIT))
    if shape[-2:] != (DIGIT, DIGIT):
        raise DistillError(f"double-mnist needs 28x28 digits, got images of shape {shape}")
    xtr, ytr, ltr, rtr = make_pairs(mnist.x_train, mnist.y_train, train_per_class,
                                    np.random.default_rng([int(seed), 0]))
    xte, yte, lte, rte = make_pairs(mnist.x_test, mnist.y_test, test_per_class,
                                    np.random.default_rng([int(seed), 1]))
    params = dict(kind="double-mnist/1", mnist=mnist.fingerprint, train_per_class=train_per_class,
                  test_per_class=test_per_class, seed=int(seed))
    fp = "double-mnist:" + build_digest(params, ltr, rtr, lte, rte)
    data = Dataset(name="double-mnist", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, classes=CLASSES,
                   fingerprint=fp, image_shape=SHAPE)
    return data, {"train": (ltr, rtr), "test": (lte, rte)}


def double_mnist(mnist: Dataset, train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
                 test_per_class: int = DEFAULT_TEST_PER_CLASS, seed: int = 0) -> Dataset:
    """:func:`build_double_mnist` without the source indices."""
    return build_double_mnist(mnist, train_per_class, test_per_class, seed)[0]


def load_double_mnist(data_dir=None, log=print, train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
                      test_per_class: int = DEFAULT_TEST_PER_CLASS, seed: int = 0) -> Dataset:
    """Load (and verify) MNIST, then build :func:`double_mnist` from it (in memory; about a
    second and 376 MB of float32 training pixels with the defaults)."""
    from distill.data.mnist import load_mnist

    data = double_mnist(load_mnist(data_dir, log=log), train_per_class, test_per_class, seed)
    log(f"double-mnist: {len(data.y_train):,} training and {len(data.y_test):,} test pairs, 100 classes "
        f"({data.fingerprint})")
    return data

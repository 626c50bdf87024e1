"""MNIST segmentation: canvases of several MNIST digits with per-pixel class masks, generated
deterministically from the verified official MNIST images.

Every canvas is ``size x size`` (64 x 64 by default) and holds ``digits`` = 2..4 handwritten
digits (the count drawn uniformly), each a 28 x 28 MNIST image pasted at a random position (its
top-left corner uniform in ``0..size-28``; of 20 candidate positions the first whose ink, pixels
> 0.1, does not touch the ink already there is taken, else the one touching the least). Where
digits overlap a pixel is the maximum of their intensities and belongs to the digit that is
brightest there (the later one on a tie). Pixel values are in [0, 1].

The mask gives every pixel one of **11 classes**, numbered

* ``0`` = background, where the canvas is <= 0.1;
* ``d + 1`` for digit ``d`` (so class 1 is the digit "0", ..., class 10 the digit "9"), where
  the canvas is > 0.5 (the stroke);
* :data:`IGNORE_INDEX` = 255 in the band ``0.1 < pixel <= 0.5`` at the edges of the strokes:
  these pixels are neither trained on nor scored (anti-aliased edges have no true class).

Training canvases use MNIST's 60,000 *training* digits only and test canvases its 10,000 *test*
digits only, so no test digit is ever seen in training. Within a split the digits are taken in
a seeded random order without replacement (a digit appears in one canvas only, until the split's
digits run out), so a hold-out of training canvases shares no digit with the rest. The canvases
are generated one after the other from one seeded generator per split (NumPy's PCG64), so the
first ``n`` canvases are the same whatever the total count. The data fingerprint is the SHA-256
of the generation parameters, the MNIST files' fingerprint and the generated arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from distill.data.dataset import Dataset
from distill.digest import build_digest
from distill.errors import DistillError

#: the mask value of pixels that are neither trained on nor scored
IGNORE_INDEX = 255
#: the class of background pixels
BACKGROUND = 0
SEG_CLASSES = ("background",) + tuple(str(d) for d in range(10))
#: pixel thresholds on the 0..255 scale: > STROKE is the digit's class, <= EDGE is background
STROKE, EDGE = 127, 25
DIGIT = 28
PLACEMENT_TRIES = 20


@dataclass(frozen=True)
class SegmentationDataset(Dataset):
    """A :class:`Dataset` whose labels are per-pixel masks: images ``x`` are ``(n, 1, H, W)``
    float32, masks ``y`` are ``(n, H, W)`` int64 holding a class in ``0..C-1`` or
    ``ignore_index``. Construction checks both (one-line :class:`DistillError` otherwise)."""

    ignore_index: int = IGNORE_INDEX
    background: int | None = BACKGROUND

    def __post_init__(self):
        for split, x, y in (("training", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            check_masks(x, y, len(self.classes), self.ignore_index, what=f"{self.name} {split}")

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> "SegmentationDataset":
        """The first ``train`` training and ``test`` test canvases (canvases are i.i.d., and the first
        ``n`` are the same whatever the total, so no shuffle is needed; ``seed`` is unused)."""
        for n in (train, test):
            if n is not None and n <= 0:
                raise DistillError(f"a subset needs at least one canvas, got {n}")
        fp = f"{self.fingerprint}:first{train}/{test}" if (train or test) else self.fingerprint
        return replace(self, x_train=self.x_train[:train], y_train=self.y_train[:train],
                       x_test=self.x_test[:test], y_test=self.y_test[:test], fingerprint=fp)

    def validation_split(self, n: int) -> tuple["SegmentationDataset", tuple[torch.Tensor, torch.Tensor]]:
        """The training canvases without their last ``n``, and those ``n`` as ``(x_val, y_val)``
        (for choosing settings; with the generator here they share no digit with the rest)."""
        if not 0 < n < len(self.x_train):
            raise DistillError(f"a validation split of {n} canvases needs more than {n} training canvases "
                               f"(there are {len(self.x_train)})")
        k = len(self.x_train) - n
        rest = replace(self, x_train=self.x_train[:k], y_train=self.y_train[:k],
                       fingerprint=f"{self.fingerprint}:trainval{k}/{n}")
        return rest, (self.x_train[k:], self.y_train[k:])


def check_masks(x, y, num_classes: int, ignore_index: int = IGNORE_INDEX, what: str = "data") -> None:
    """Images ``x`` ``(n, [1,] H, W)`` and masks ``y`` ``(n, H, W)`` pair up, every mask value
    is a class ``0..num_classes-1`` or ``ignore_index``, and some pixel is labelled (not
    ``ignore_index``); otherwise a one-line :class:`DistillError`."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise DistillError(f"{what}: masks must hold integer classes, got dtype {y.dtype}")
    if y.dim() < 2 or len(y) != len(x):
        raise DistillError(f"{what}: {len(y)} masks of shape {tuple(y.shape[1:])} for {len(x)} images; "
                           "give one (H, W) mask per image")
    if tuple(x.shape[-2:]) != tuple(y.shape[-2:]) or y.dim() != 3:
        raise DistillError(f"{what}: masks of shape {tuple(y.shape[1:])} do not match images of shape "
                           f"{tuple(x.shape[1:])}; each mask must be (H, W) = {tuple(x.shape[-2:])}")
    if y.numel():
        labelled = y[y != ignore_index]
        if not labelled.numel():  # nothing to learn or score: a model would train to loss 0
            raise DistillError(f"{what}: no pixel is labelled: every mask value is the ignore index {ignore_index}, "
                               f"which is neither trained on nor scored; give pixels classes 0..{num_classes - 1}")
        if int(labelled.min()) < 0 or int(labelled.max()) >= num_classes:
            bad = int(labelled.max()) if int(labelled.max()) >= num_classes else int(labelled.min())
            raise DistillError(f"{what}: a mask holds class {bad}, outside the {num_classes} classes "
                               f"0..{num_classes - 1} and not the ignore index {ignore_index}")


def _place(canvas: np.ndarray, owner: np.ndarray, img: np.ndarray, cls: int, rng: np.random.Generator) -> None:
    size = canvas.shape[0]
    span = size - DIGIT + 1
    ink = img > EDGE
    best, best_pos = None, None
    for _ in range(PLACEMENT_TRIES):
        r, c = (int(v) for v in rng.integers(0, span, 2))
        touch = int(np.count_nonzero(ink & (canvas[r:r + DIGIT, c:c + DIGIT] > EDGE)))
        if best is None or touch < best:
            best, best_pos = touch, (r, c)
        if touch == 0:
            break
    r, c = best_pos
    region, own = canvas[r:r + DIGIT, c:c + DIGIT], owner[r:r + DIGIT, c:c + DIGIT]
    mine = (img >= region) & (img > 0)
    own[mine] = cls
    np.maximum(region, img, out=region)


def _digit(images, k: int) -> np.ndarray:
    """Digit ``k`` as a 28x28 uint8 array: from uint8 images as they are, from float ones in [0, 1]
    as ``round(255 x)`` (MNIST's own bytes, for images loaded by :func:`distill.data.load_mnist`)."""
    img = images[k]
    if isinstance(img, torch.Tensor):
        img = img.numpy()
    img = np.asarray(img).reshape(DIGIT, DIGIT)
    return img if img.dtype == np.uint8 else (img * 255.0).round().astype(np.uint8)


def make_canvases(images, labels, n: int, *, size: int = 64, digits=(2, 4),
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` canvases ``(n, size, size)`` uint8 and their masks ``(n, size, size)`` uint8 from
    ``images`` (``(m, 28, 28)`` uint8, or ``(m, 784)`` floats in [0, 1]) with digit ``labels``
    (module docstring)."""
    lo, hi = (int(v) for v in digits)
    if size < DIGIT or not 1 <= lo <= hi or n < 1:
        raise DistillError(f"canvases need size >= {DIGIT}, 1 <= min digits <= max digits and n >= 1")
    rng = np.random.default_rng(seed)
    order, used = rng.permutation(len(images)), 0
    xs = np.zeros((n, size, size), np.uint8)
    ys = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        canvas = np.zeros((size, size), np.uint8)
        owner = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(lo, hi + 1))):
            if used == len(order):
                order, used = rng.permutation(len(images)), 0
            k = order[used]
            used += 1
            _place(canvas, owner, _digit(images, k), int(labels[k]) + 1, rng)
        mask = np.full((size, size), IGNORE_INDEX, np.uint8)
        mask[canvas <= EDGE] = BACKGROUND
        stroke = canvas > STROKE
        mask[stroke] = owner[stroke]
        xs[i], ys[i] = canvas, mask
    return xs, ys



def mnist_segmentation(mnist: Dataset, train: int = 4000, test: int = 1000, *, size: int = 64, digits=(2, 4),
                       seed: int = 0) -> SegmentationDataset:
    """The segmentation set built from a loaded MNIST :class:`Dataset` (module docstring): ``train``
    canvases from its training digits, ``test`` canvases from its test digits."""
    shape = mnist.image_shape or (DIGIT, DIGIT)
    if tuple(shape) != (DIGIT, DIGIT):
        raise DistillError(f"MNIST segmentation needs 28x28 digits, got images of shape {tuple(shape)}")

    xtr, ytr = make_canvases(mnist.x_train, mnist.y_train, train, size=size, digits=digits, seed=seed * 2)
    xte, yte = make_canvases(mnist.x_test, mnist.y_test, test, size=size, digits=digits, seed=seed * 2 + 1)
    params = dict(kind="mnist-seg/1", mnist=mnist.fingerprint, train=train, test=test, size=size,
                  digits=list(digits), seed=seed, stroke=STROKE, edge=EDGE)
    fp = "mnist-seg:" + build_digest(params, xtr, ytr, xte, yte)

    def to_x(a):
        return torch.from_numpy(a.astype(np.float32) / 255.0)[:, None]

    return SegmentationDataset(name="mnist-seg", x_train=to_x(xtr), y_train=torch.from_numpy(ytr.astype(np.int64)),
                               x_test=to_x(xte), y_test=torch.from_numpy(yte.astype(np.int64)),
                               classes=SEG_CLASSES, fingerprint=fp, image_shape=(size, size))


#: canvases of ``distill teacher|student --dataset mnist-seg`` (the paper preset's counts)
DEFAULT_TRAIN, DEFAULT_TEST = 4000, 1000


def load_mnist_seg(data_dir=None, log=print, train: int = DEFAULT_TRAIN, test: int = DEFAULT_TEST,
                   size: int = 64, seed: int = 0) -> SegmentationDataset:
    """Load (and verify) MNIST, then build :func:`mnist_segmentation` from it."""
    from distill.data.mnist import load_mnist

    return mnist_segmentation(load_mnist(data_dir, log=log), train, test, size=size, seed=seed)


def load_segmentation_npz(path, name: str | None = None, ignore_index: int = IGNORE_INDEX) -> SegmentationDataset:
    """A segmentation set of your own from an ``.npz`` file holding ``x_train`` ``(n, H, W)`` or
    ``(n, 1, H, W)`` images (``uint8`` ones are divided by 255), ``y_train`` ``(n, H, W)`` integer
    masks, ``x_test`` and ``y_test`` the same, and optionally ``classes`` (names; default
    ``0..max label``). Mask values are classes or ``ignore_index`` (255). Mismatched shapes,
    classes outside the class list, masks with no labelled pixel, labels so sparse that ``0..max
    label`` is implausible without a class list, a damaged archive and arrays that declare more
    than :func:`distill.data.files.max_array_bytes` are one-line :class:`DistillError` s."""
    from pathlib import Path

    from distill.data.files import NpzArchive, _all_finite

    path = Path(path)
    with NpzArchive(path) as archive:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in archive.files]
        if missing:
            raise DistillError(f"{path} lacks {', '.join(missing)} (it needs x_train, y_train, x_test, y_test)")
        z = archive.read(("x_train", "y_train", "x_test", "y_test", "classes"))
    arrays = {}
    for k in ("x_train", "x_test"):
        a = z.pop(k)  # popped: the raw array is freed once its float32 copy exists
        if a.dtype.kind not in "iuf" or a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[1] != 1):
            raise DistillError(f"{path}: {k} must be grey images (n, H, W) or (n, 1, H, W), got {a.shape} {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a)).float()
        t = t.div_(255.0) if a.dtype == np.uint8 else t
        if a.dtype.kind == "f" and not _all_finite(t):
            raise DistillError(f"{path}: {k} contains NaN or infinity")
        arrays[k] = t if a.ndim == 4 else t[:, None]
    del a
    for k in ("y_train", "y_test"):
        a = z.pop(k)
        if a.dtype.kind not in "iu":
            raise DistillError(f"{path}: {k} must hold integer classes, got dtype {a.dtype}")
        arrays[k] = torch.from_numpy(a.astype(np.int64, copy=False))
    present = {k: _labels_present(arrays[k], ignore_index) for k in ("y_train", "y_test")}
    for k, values in present.items():
        if not values and arrays[k].numel():
            raise DistillError(f"{path}: no pixel is labelled in {k}: every mask value is the ignore index "
                               f"{ignore_index}, which is neither trained on nor scored; give pixels their classes")
    if "classes" in z:
        classes = tuple(str(c) for c in z["classes"].tolist())
    else:
        classes = _inferred_classes(path, present["y_train"] | present["y_test"], ignore_index)
    return SegmentationDataset(name=name or path.stem, classes=classes, ignore_index=ignore_index,
                               fingerprint="npz:" + build_digest({"ignore": ignore_index, "classes": list(classes)},
                                                            *(arrays[k].numpy() for k in sorted(arrays))),
                               image_shape=tuple(arrays["x_train"].shape[-2:]), background=None, **arrays)


def _labels_present(y: torch.Tensor, ignore_index: int) -> set[int]:
    """The distinct mask values of ``y`` other than ``ignore_index``."""
    return set(torch.unique(y).tolist()) - {ignore_index}


#: without a class list, labels ``0..max`` are refused when at least this many of them, and more
#: than half, never occur: a stray value (254 beside the ignore value 255) would otherwise make a
#: model of hundreds of classes
SPARSE_MISSING = 8


def _inferred_classes(path, present: set[int], ignore_index: int) -> tuple[str, ...]:
    """The class list ``0..max label`` of masks without one, unless the labels are too sparse for
    it to be what was meant (a one-line error asking for the class list)."""
    top = max(present, default=1)
    if top >= 0:
        missing = top + 1 - len({v for v in present if 0 <= v <= top})
        if missing >= SPARSE_MISSING and 2 * missing > top + 1:
            shown = ", ".join(str(v) for v in sorted(present)[:8]) + (", ..." if len(present) > 8 else "")
            raise DistillError(f"{path}: the masks hold {len(present)} distinct classes ({shown}) and no class list, "
                               f"so the largest, {top}, would make {top + 1} classes of which {missing} never occur; "
                               f"store the class names in the .npz as an array 'classes', or relabel the masks "
                               f"0..{len(present) - 1} ({ignore_index} for pixels to ignore)")
    return tuple(str(c) for c in range(max(top + 1, 2)))


def is_mask_npz(path) -> bool:
    """Whether ``path`` is an ``.npz`` whose ``y_train`` holds masks ``(n, H, W)`` (not class labels),
    read from the array's header alone; False for anything unreadable (its reader then says why)."""
    from pathlib import Path

    from distill.data.files import NpzArchive

    if Path(path).suffix.lower() != ".npz" or not Path(path).is_file():
        return False
    try:
        with NpzArchive(path) as z:
            return "y_train" in z.files and len(z.header("y_train")[0]) >= 3
    except DistillError:
        return False

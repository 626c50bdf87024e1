"""The in-memory data set every training run uses: float tensors, labels, a fingerprint."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from distill.data.fetch import DatasetSpec, fingerprint, locate
from distill.data.idx import MAGIC_IMAGES, MAGIC_LABELS, parse_idx
from distill.data.sources import TensorSource
from distill.errors import DistillError


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors. Images are flattened to ``(n, features)`` float32 in [0, 1];
    ``image_shape`` says how to view them as images; labels are int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    fingerprint: str
    image_shape: tuple[int, ...] | None = None

    def training_source(self, fingerprint: str | None = None, name: str = "train"):
        """The training split as the in-memory source ``fit`` reads (fingerprint: of its tensors)."""
        return TensorSource(self.x_train, self.y_train, fingerprint=fingerprint, image_shape=self.image_shape,
                            name=name)

    def test_source(self):
        """The test split as a source, None when there is none."""
        if self.x_test is None or not len(self.x_test):
            return None
        return TensorSource(self.x_test, self.y_test, image_shape=self.image_shape, name="test")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> "Dataset":
        """A class-stratified random subset of ``train`` training and ``test`` test examples.

        The fingerprint changes with the subset, so checkpoints never confuse the two.
        """
        def pick(x, y, n):
            if n is None or n >= len(y):
                return x, y
            keep = stratified_indices(y, n, seed)
            return x[keep], y[keep]

        xtr, ytr = pick(self.x_train, self.y_train, train)
        xte, yte = pick(self.x_test, self.y_test, test)
        fp = f"{self.fingerprint}:sub{train}/{test}/s{seed}" if (train or test) else self.fingerprint
        return replace(self, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, fingerprint=fp)


def stratified_indices(y: torch.Tensor | None, n: int, seed: int = 0, length: int | None = None) -> torch.Tensor:
    """Sorted indices of a class-stratified random subset of ``n`` of the labels ``y`` (classes
    interleaved by their rank within the class after a seeded shuffle); for unlabeled data
    (``y`` None, ``length`` examples) a seeded random subset."""
    if n <= 0:
        raise DistillError(f"a subset needs at least one example, got {n}")
    size = len(y) if y is not None else int(length)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(size, generator=g)
    if y is None:
        keep = order[:n]
    else:
        # stratify: interleave classes by rank within class
        ys = y[order]
        rank = torch.zeros_like(ys)
        for c in torch.unique(ys):
            m = ys == c
            rank[m] = torch.arange(int(m.sum()))
        keep = order[torch.argsort(rank * (int(y.max()) + 1) + ys, stable=True)[:n]]
    keep, _ = torch.sort(keep)
    return keep


def from_idx(spec: DatasetSpec, classes, names, data_dir=None, log=print) -> Dataset:
    """Locate, verify and parse the four idx files named ``names`` (train images, train labels,
    test images, test labels) of ``spec``."""
    files = locate(spec, data_dir, log=log)
    tr_img, tr_lab, te_img, te_lab = (files[n] for n in names)
    xtr = parse_idx(tr_img, MAGIC_IMAGES, names[0])
    ytr = parse_idx(tr_lab, MAGIC_LABELS, names[1])
    xte = parse_idx(te_img, MAGIC_IMAGES, names[2])
    yte = parse_idx(te_lab, MAGIC_LABELS, names[3])
    for xi, yi, what in ((xtr, ytr, "training"), (xte, yte, "test")):
        if xi.shape[0] != yi.shape[0]:
            raise DistillError(f"{spec.name}: {what} images ({xi.shape[0]}) and labels ({yi.shape[0]}) differ in count")
        if yi.size and int(yi.max()) >= len(classes):
            raise DistillError(f"{spec.name}: {what} labels exceed {len(classes) - 1}")
    shape = tuple(int(s) for s in xtr.shape[1:])

    def to_x(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.reshape(a.shape[0], -1).astype(np.float32) / 255.0)

    return Dataset(
        name=spec.name,
        x_train=to_x(xtr), y_train=torch.from_numpy(ytr.astype(np.int64)),
        x_test=to_x(xte), y_test=torch.from_numpy(yte.astype(np.int64)),
        classes=tuple(classes),
        fingerprint=fingerprint(digests={f.name: f.sha256 for f in spec.files}),
        image_shape=shape,
    )

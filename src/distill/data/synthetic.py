"""A generated many-class problem with planted groups of confusable classes.

Used by the specialists experiment (paper section 5) where the true confusable groups must be
known, so that the clustering of the generalist's predictions can be scored.

Generative model (all draws from one seeded ``torch.Generator``):

* ``num_classes`` classes in ``num_classes / group_size`` groups; class ``c`` is in group
  ``c // group_size`` (:func:`planted_groups`).
* every group ``g`` has a centre ``mu_g ~ N(0, group_spread^2 I)`` in ``dim`` dimensions; far apart,
  so classes of different groups are easy to tell apart;
* every class has ``modes`` sub-centres ``mu_g + delta_{c,j}``, ``delta ~ N(0, class_spread^2 I)``:
  the classes of one group share the centre and differ only by these small offsets, interleaved,
  so they are confusable and separating them needs a non-linear boundary (capacity);
* an example of class ``c`` is ``mu_g + delta_{c,j} + noise * N(0, I)`` with ``j`` uniform.

Classes are balanced: ``train_per_class`` and ``test_per_class`` examples each.
"""
from __future__ import annotations


import torch

from distill.data.dataset import Dataset
from distill.digest import json_digest
from distill.errors import DistillError


def planted_groups(num_classes: int, group_size: int) -> torch.Tensor:
    """Group index of every class: ``c // group_size`` (int64, shape ``(num_classes,)``)."""
    if group_size < 1 or num_classes % group_size:
        raise DistillError(f"num_classes ({num_classes}) must be a multiple of group_size ({group_size})")
    return torch.arange(num_classes) // group_size


def make_synthetic(num_classes: int = 100, group_size: int = 5, dim: int = 32, modes: int = 4,
                   train_per_class: int = 300, test_per_class: int = 100, group_spread: float = 4.0,
                   class_spread: float = 0.6, noise: float = 0.7, seed: int = 0) -> Dataset:
    """A :class:`Dataset` (``image_shape=None``, float32 features, int64 labels) drawn from the
    model in the module docstring. Same arguments -> same tensors and fingerprint."""
    for name, v in (("num_classes", num_classes), ("dim", dim), ("modes", modes),
                    ("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if int(v) < 1:
            raise DistillError(f"{name} must be >= 1, got {v}")
    if num_classes < 2:
        raise DistillError("a classification problem needs at least 2 classes")
    if min(group_spread, class_spread) < 0 or noise <= 0:
        raise DistillError("spreads must be >= 0 and noise > 0")
    groups = planted_groups(num_classes, group_size)
    g = torch.Generator().manual_seed(seed)
    centres = group_spread * torch.randn(int(groups.max()) + 1, dim, generator=g)
    offsets = class_spread * torch.randn(num_classes, modes, dim, generator=g)

    def draw(per_class: int):
        y = torch.arange(num_classes).repeat_interleave(per_class)
        j = torch.randint(0, modes, (len(y),), generator=g)
        x = centres[groups[y]] + offsets[y, j] + noise * torch.randn(len(y), dim, generator=g)
        return x.float(), y

    x_train, y_train = draw(train_per_class)
    x_test, y_test = draw(test_per_class)
    params = dict(num_classes=num_classes, group_size=group_size, dim=dim, modes=modes,
                  train_per_class=train_per_class, test_per_class=test_per_class,
                  group_spread=group_spread, class_spread=class_spread, noise=noise, seed=seed)
    fp = "synthetic:" + json_digest(params)
    classes = tuple(f"g{int(groups[c]):02d}.{c % group_size}" for c in range(num_classes))
    return Dataset(name="synthetic", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   classes=classes, fingerprint=fp, image_shape=None)

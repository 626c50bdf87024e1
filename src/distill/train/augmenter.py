"""Consistent teaching inside :func:`distill.fit`: the per-batch augmentation of
:class:`~distill.data.augment.Augment`, and its store of K teacher-labelled views per example.

Fresh views (``Augment(views=0)``, the default): each batch's parameters are drawn from fit's
seeded generator (so a run is reproducible and resumes exactly), the batch is augmented once, and
the teacher module runs on that same batch (eval, ``no_grad``): the student and the teacher
always see the same input, as function matching asks (Beyer et al. 2022).

Fixed views (``Augment(views=K)``, FKD-style, Shen & Xing 2022): a table of K parameter sets per
example is drawn once from ``view_seed``; each batch picks, per example, one of its K views with
fit's generator. The view of row ``r = i * K + k`` is example ``i`` under parameters
``table[i, k]``. With ``Teacher(module, store=folder)`` the teacher's effective logits on all
``n * K`` views are computed once into a soft-target store (:func:`distill.get_store` over a
:class:`ViewSource`, float16 or top-k) and looked up by row, so epochs replay views without
running the teacher; without a store the teacher runs on the same views on the fly. Both give the
same batches and the same targets (up to the store's dtype; tested). The store's key covers the
teacher, the data, the augmentation and a SHA-256 of the parameter table itself, so stored logits
are never paired with other views (the table is re-drawn from the seed in milliseconds, and a
change in how it is drawn changes the key).
"""
from __future__ import annotations


import torch

from distill import losses
from distill.data.augment import Augment, table_digest
from distill.digest import json_digest
from distill.errors import DistillError
from distill.data.sources import Source, as_features
from distill.data.sources import _collate
from distill.teachers import store as soft_targets


def take_inputs(source, idx: torch.Tensor) -> torch.Tensor:
    """The inputs of examples ``idx`` of an indexable source (in-memory tensors: one gather; a
    map-style Dataset: its items, collated)."""
    if hasattr(source, "take"):
        return source.take(idx)[0]
    dataset = getattr(source, "dataset", None)
    if dataset is None:
        raise ValueError("fixed views and mixup partners need a data source that can fetch examples by index "
                         "(tensors or a map-style Dataset)")

    x, _ = _collate([dataset[int(i)] for i in idx])
    return as_features(x, "inputs")


class ViewSource(Source):
    """The ``n * K`` fixed views of a source as a source of their own: row ``i * K + k`` is example
    ``i`` under ``table[i, k]``; unlabeled, in row order (what a soft-target store is built over)."""

    indexable = True
    labeled = False

    def __init__(self, source, augment: Augment, table: dict):
        self.source, self.augment, self.table, self.k = source, augment, table, augment.views
        self.n = source.n * self.k
        self.image_shape = source.image_shape
        spec = {f: getattr(augment, f) for f in ("shift", "crop_pad", "flip", "mixup", "views", "view_seed")}
        self.fingerprint = "views:" + json_digest(dict(data=source.fingerprint, augment=spec, table=table_digest(table)))

    def params(self, rows: torch.Tensor) -> dict:
        ex, k = rows // self.k, rows % self.k
        return {name: t[ex, k] for name, t in self.table.items()}

    def view(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The views ``rows`` of the examples whose inputs are ``x`` (``x[b]`` is example ``rows[b] // K``)."""
        p = self.params(rows)
        partner = take_inputs(self.source, p["partner"]) if "partner" in p else None
        return self.augment.apply(x, self.image_shape, p, partner)

    def batches(self, batch_size, generator):
        order = torch.randperm(self.n, generator=generator) if generator is not None else torch.arange(self.n)
        for i in range(0, self.n, batch_size):
            rows = order[i:i + batch_size]
            yield self.view(take_inputs(self.source, rows // self.k), rows), None, rows


def mixup_loss(objective, out, teacher_out, labels, partner_labels, lam: float, epoch: int | None = None):
    """The mixed-label loss ``lam * L(z, v, y) + (1 - lam) * L(z, v, y')`` (one ``lam`` per batch)."""
    return (lam * objective(out, teacher_out, labels, epoch=epoch)
            + (1.0 - lam) * objective(out, teacher_out, partner_labels, epoch=epoch))


class Augmenter:
    """What :func:`distill.fit` calls on every batch when ``config.augment`` is set (see the module
    docstring). ``__call__(x, y, idx, generator) -> (x', mixed, rows)``: the augmented batch;
    ``mixed = (y', lam)`` when the objective reads labels under mixup (else None); ``rows`` the
    view rows whose teacher outputs are stored (else None: the teacher runs on ``x'``)."""

    def __init__(self, augment: Augment, source, objective):
        if not isinstance(augment, Augment):
            raise ValueError(f"augment must be a distill.data.augment.Augment, got {type(augment).__name__}")
        if augment.geometric and source.image_shape is None:
            raise ValueError("augmentation (shift, crop, flip, rotate, scale) needs image data: examples of shape (H, W) or "
                             "(C, H, W), or a distill Dataset with an image_shape")
        if augment.geometric and getattr(source, "y", None) is not None and source.y.dim() > 1:
            raise ValueError("shift, crop, flip, rotate and scale move the images but not their label masks; use mixup only, or no "
                             "augmentation, with dense labels")
        self.augment, self.source, self.objective = augment, source, objective
        self.mixed_labels = bool(augment.mixup) and losses.needs(objective, "labels")
        self.views, self.store = None, None
        if augment.views:
            if not source.indexable or source.n is None:
                raise ValueError("fixed views (Augment(views=K)) are kept per example: the data must give example "
                                 "indices (tensors or a map-style Dataset), not a DataLoader or stream")
            if self.mixed_labels:
                raise ValueError("fixed views mix each example with its own lam, which a batch-mean loss cannot "
                                 "weight: with Augment(views=K, mixup=...) use an objective without labels (e.g. "
                                 "a teacher with hard_weight=0), or fresh views (views=0)")
            self.views = ViewSource(source, augment, augment.table(source.n))

    def prepare(self, teacher, progress: bool = True, log=print) -> None:
        """With fixed views and ``Teacher(module, store=folder)``: compute (or reuse) the teacher's
        outputs on every view in a soft-target store under that folder."""
        if self.views is None or teacher is None or teacher.module is None or teacher.store_root is None:
            return
        self.store = soft_targets.get_store(teacher.store_root, teacher, self.views,
                                            selection=f"views:{self.augment.views}", dtype=self.augment.view_dtype,
                                            top_k=self.augment.view_top_k, progress=progress, log=log)

    def __call__(self, x: torch.Tensor, y, idx, generator: torch.Generator):
        if self.views is None:
            p = self.augment.draw(len(x), generator)
            partner = x[p["partner"]] if "partner" in p else None
            out = self.augment.apply(x, self.source.image_shape, p, partner)
            mixed = (y[p["partner"]], float(p["lam"][0])) if self.mixed_labels and y is not None else None
            return out, mixed, None
        rows = idx * self.views.k + torch.randint(self.views.k, (len(x),), generator=generator)
        return self.views.view(x, rows), None, (rows if self.store is not None else None)

    def targets(self, rows: torch.Tensor, device) -> torch.Tensor:
        """The stored teacher outputs (effective logits) of view rows ``rows``."""
        t = self.store[rows]
        if not torch.isfinite(t).all():
            raise DistillError(f"the view store {self.store.path} holds NaN or infinity; it is damaged: delete it "
                               "to rebuild")
        return t.to(device)

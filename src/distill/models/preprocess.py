"""Preprocessing that travels with a model: :class:`Standardize` puts the training split's feature
statistics (and a table's categorical columns and missing values) in front of any classifier, so
the checkpoint, ``evaluate``, ``compare``, the Python predictor and the exported ONNX graph all
take raw feature values."""
from __future__ import annotations

import torch
from torch import nn

from distill.checkpoints import STANDARDIZE_FACTORY



def feature_stats(batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature ``mean`` and ``std`` over the rows of ``batches`` (a tensor ``(n, d)`` or an
    iterable of such batches; float64 sums, one pass) where the feature is not missing (NaN): the
    population std, with 1 where a feature is constant, so that it passes through centred (a
    feature missing everywhere: mean 0, std 1)."""
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    s = sq = count = None
    rows = 0
    for b in batches:
        b = torch.as_tensor(b).double().flatten(1)
        seen = ~torch.isnan(b)
        b = torch.where(seen, b, torch.zeros_like(b))
        s = b.sum(0) if s is None else s + b.sum(0)
        sq = (b * b).sum(0) if sq is None else sq + (b * b).sum(0)
        count = seen.sum(0) if count is None else count + seen.sum(0)
        rows += b.shape[0]
    if not rows:
        raise ValueError("no rows to take feature statistics of")
    n = count.clamp_min(1).double()
    mean = s / n
    std = (sq / n - mean * mean).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-12 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
    return mean.float(), std.float()


class Standardize(nn.Module):
    """``model(encode(x))``: z-scores with the training split's statistics (buffers, saved with the
    weights), then any classifier. ``features``: the number of input features (the buffers' size,
    for rebuilding before the weights load); ``model_factory``: the inner model's factory
    ``(target, kwargs)`` when it has no ``distill_factory`` of its own (a user's model).

    ``categories``: per input feature, 0 for a number, or k > 0 for a categorical column whose
    value is a code in ``0..k-1``. encode(x) = [z_j for the numeric j, where z_j = (x_j - mean_j) /
    std_j, and 0 (the training mean) where x_j is NaN (missing)] followed by [1{x_j = c} for c in
    0..k_j-1, for the categorical j] (a missing or unknown code: all zeros); the inner model takes
    ``numeric + sum(k_j)`` features. Without ``categories``, every feature is numeric."""

    KEY_NAME = "distill.models.Standardize"  # its name in run keys (distill.digest.key_name)

    __jit_unused_properties__ = ["distill_factory"]

    def __init__(self, model: nn.Module, features: int | None = None, mean=None, std=None, model_factory=None,
                 categories=None):
        super().__init__()
        if mean is None:
            if features is None:
                raise ValueError("Standardize needs the statistics (mean, std) or the number of features")
            mean, std = torch.zeros(int(features)), torch.ones(int(features))
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.shape != std.shape or (std.device.type != "meta" and not bool((std > 0).all())):
            raise ValueError("Standardize needs a mean and a positive std of the same size")
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.model_factory = model_factory
        counts = [int(k) for k in (categories or [])]
        if counts and (len(counts) != mean.numel() or min(counts) < 0):
            raise ValueError(f"Standardize: categories gives a count >= 0 for each of the {mean.numel()} features")
        self.categories = counts if any(counts) else []
        # rebuilt from ``categories``, not saved: which columns are numbers, and per one-hot output its
        # column and code
        numeric = [j for j, k in enumerate(counts or [0] * mean.numel()) if k == 0]
        self.register_buffer("numeric", torch.tensor(numeric, dtype=torch.int64), persistent=False)
        self.register_buffer("onehot_column", torch.tensor([j for j, k in enumerate(self.categories) for _ in range(k)],
                                                           dtype=torch.int64), persistent=False)
        self.register_buffer("onehot_code", torch.tensor([c for k in self.categories for c in range(k)],
                                                         dtype=torch.float32), persistent=False)

    @staticmethod
    def encoded_features(features: int, categories=None) -> int:
        """How many features the inner model takes: ``numeric + sum(k_j)``."""
        counts = list(categories or [])
        return features - sum(1 for k in counts if k) + sum(counts)

    @property
    def distill_factory(self) -> tuple[str, dict]:
        inner = self.model_factory or getattr(self.model, "distill_factory", None)
        if inner is None:
            raise ValueError("Standardize wraps a model without a factory; give model_factory=(target, kwargs)")
        target, kwargs = inner if isinstance(inner, (tuple, list)) else (inner["target"], inner.get("kwargs", {}))
        out = dict(model=dict(target=target, kwargs=dict(kwargs)), features=int(self.mean.numel()))
        if self.categories:  # (absent otherwise: the factories, and so the run keys, of numeric tables stay as they were)
            out["categories"] = list(self.categories)
        return STANDARDIZE_FACTORY, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        z = torch.where(torch.isnan(z), torch.zeros_like(z), z)  # a missing value: the training mean
        if not self.categories:
            return self.model(z)
        parts = [z.index_select(1, self.numeric), (x.index_select(1, self.onehot_column) == self.onehot_code).to(z.dtype)]
        return self.model(torch.cat(parts, 1))

    def constrain(self) -> None:  # the inner model's max-norm, when it has one
        fn = getattr(self.model, "constrain", None)
        if fn is not None:
            fn()

"""Preprocessing that travels with a model: :class:`Standardize` puts the training split's feature
statistics in front of any classifier, so the checkpoint, ``evaluate``, ``compare``, the Python
predictor and the exported ONNX graph all take raw feature values."""
from __future__ import annotations

import torch
from torch import nn

from distill.checkpoints import STANDARDIZE_FACTORY



def feature_stats(batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature ``mean`` and ``std`` over the rows of ``batches`` (a tensor ``(n, d)`` or an
    iterable of such batches; float64 sums, one pass): the population std, with 1 where a feature is
    constant, so that it passes through centred."""
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    s = sq = None
    n = 0
    for b in batches:
        b = torch.as_tensor(b).double().flatten(1)
        s = b.sum(0) if s is None else s + b.sum(0)
        sq = (b * b).sum(0) if sq is None else sq + (b * b).sum(0)
        n += b.shape[0]
    if not n:
        raise ValueError("no rows to take feature statistics of")
    mean = s / n
    std = (sq / n - mean * mean).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-12 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
    return mean.float(), std.float()


class Standardize(nn.Module):
    """``model((x - mean) / std)``: z-scores with the training split's statistics (buffers, saved with
    the weights), then any classifier. ``features``: the number of input features (the buffers'
    size, for rebuilding before the weights load); ``model_factory``: the inner model's factory
    ``(target, kwargs)`` when it has no ``distill_factory`` of its own (a user's model)."""

    KEY_NAME = "distill.models.Standardize"  # its name in run keys (distill.digest.key_name)

    __jit_unused_properties__ = ["distill_factory"]

    def __init__(self, model: nn.Module, features: int | None = None, mean=None, std=None, model_factory=None):
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

    @property
    def distill_factory(self) -> tuple[str, dict]:
        inner = self.model_factory or getattr(self.model, "distill_factory", None)
        if inner is None:
            raise ValueError("Standardize wraps a model without a factory; give model_factory=(target, kwargs)")
        target, kwargs = inner if isinstance(inner, (tuple, list)) else (inner["target"], inner.get("kwargs", {}))
        return STANDARDIZE_FACTORY, dict(model=dict(target=target, kwargs=dict(kwargs)), features=int(self.mean.numel()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)

    def constrain(self) -> None:  # the inner model's max-norm, when it has one
        fn = getattr(self.model, "constrain", None)
        if fn is not None:
            fn()

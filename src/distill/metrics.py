"""Evaluation metrics over whole data sets, from logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """The model's logits for every row of ``x``, in eval mode, without autograd. Each chunk runs
    on the model's device; the logits come back on ``x``'s."""
    was_training = model.training
    model.eval()
    p = next(model.parameters(), None)
    dev = p.device if p is not None else x.device
    try:
        return torch.cat([model(x[i:i + batch_size].to(dev)).to(x.device) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """``errors`` (count), ``accuracy``, ``nll`` (mean -log p(y)) and ``n``."""
    pred = logits.argmax(dim=1)
    errors = int((pred != labels).sum())
    n = int(labels.numel())
    return dict(errors=errors, accuracy=1.0 - errors / n if n else float("nan"),
                nll=float(F.cross_entropy(logits, labels)), n=n)


def agreement(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """Fraction of examples on which two models predict the same class."""
    return float((logits_a.argmax(1) == logits_b.argmax(1)).float().mean())


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE = sum_b (|B_b|/n) * |accuracy(B_b) - confidence(B_b)| over equal-width confidence bins."""
    probs = torch.softmax(logits, 1)
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.float().mean() * (correct[m].mean() - conf[m].mean()).abs()
    return float(ece)

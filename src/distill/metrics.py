"""Evaluation metrics over whole data sets, from logits."""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@torch.no_grad()
def predict_logits(model, data, batch_size: int = 2000, *, device=None, progress: bool = False,
                   desc: str = "predict", labels: list | None = None) -> torch.Tensor:
    """The one batched "run a model over inputs" helper: ``model``'s outputs for every example of
    ``data`` (a tensor, or any source :func:`distill.sources.as_source` accepts), in order, in eval
    mode, without autograd, as float32 on the CPU (or on ``data``'s device for a tensor).

    ``model`` is an ``nn.Module`` (each chunk runs on its device, or on ``device``) or any callable
    on a batch (e.g. :meth:`distill.Teacher.forward`). With ``labels`` (a list), the batches'
    labels are appended to it in the same pass."""
    from distill.sources import Source, as_source

    module = model if isinstance(model, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    p = next(module.parameters(), None) if module is not None else None
    dev = torch.device(device) if device is not None else (p.device if p is not None else None)
    if isinstance(data, torch.Tensor):
        home = data.device
        chunks = ((data[i:i + batch_size], None, None) for i in range(0, len(data), batch_size))
        total = len(data)
    else:
        src = data if isinstance(data, Source) else as_source(data, name="inputs")
        home, chunks, total = torch.device("cpu"), src.ordered(batch_size), src.n
    bar = tqdm(total=total, disable=not (progress and sys.stderr.isatty()), desc=desc, unit="ex", leave=False)
    out = []
    try:
        for x, y, _ in chunks:
            out.append(model(x.to(dev) if dev is not None else x).float().to(home))
            if labels is not None:
                labels.append(y)
            bar.update(len(x))
    finally:
        bar.close()
        if module is not None:
            module.train(was_training)
    if not out:
        raise ValueError("no inputs to predict on")
    return torch.cat(out)


def evaluate(model, data, batch_size: int = 2000, device=None) -> dict:
    """``errors``, ``accuracy``, ``nll`` and ``n`` of ``model`` on labelled ``data`` (anything
    :func:`distill.sources.as_source` accepts), in one pass."""
    from distill.sources import Source, as_source

    src = data if isinstance(data, Source) else as_source(data, name="data")
    if not src.labeled:
        raise ValueError("evaluation needs labels; this data has none")
    labels: list = []
    logits = predict_logits(model, src, batch_size, device=device, labels=labels)
    return classification_metrics(logits, torch.cat(labels))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """``errors`` (count), ``accuracy``, ``nll`` (mean -log p(y)) and ``n``."""
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not pair up "
                         "(one row of class scores per label)")
    if len(labels) and int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"labels go up to {int(labels.max())} but the model predicts {logits.shape[1]} classes")
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

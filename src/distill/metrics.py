"""Evaluation metrics over whole data sets, from logits."""
from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from distill.losses.functional import next_token_pairs
from distill.modelio import inputs_to, logits_of, model_forward
from distill.data.sources import Source, as_source


@torch.no_grad()
def predict_logits(model, data, batch_size: int = 2000, *, device=None, progress: bool = False,
                   desc: str = "predict", labels: list | None = None) -> torch.Tensor:
    """The one batched "run a model over inputs" helper: ``model``'s outputs for every example of
    ``data`` (a tensor, or any source :func:`distill.data.sources.as_source` accepts), in order, in eval
    mode, without autograd, as float32 on the CPU (or on ``data``'s device for a tensor).

    ``model`` is an ``nn.Module`` (each chunk runs on its device, or on ``device``) or any callable
    on a batch (e.g. :meth:`distill.Teacher.forward`). With ``labels`` (a list), the batches'
    labels are appended to it in the same pass."""

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
            out.append(logits_of(model_forward(model, inputs_to(x, dev) if dev is not None else x)).float().to(home))
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
    :func:`distill.data.sources.as_source` accepts), in one pass. With per-position labels (masks
    ``(n, H, W)``) the model's logits are ``(n, C, H, W)`` and the result is
    :func:`segmentation_metrics`' (these four counted over labelled pixels, plus IoUs)."""

    src = data if isinstance(data, Source) else as_source(data, name="data")
    if not src.labeled:
        raise ValueError("evaluation needs labels; this data has none")
    if getattr(src, "task", None) == "lm":
        return lm_evaluate(model, src, device=device)
    if getattr(src, "y", None) is not None and src.y.dim() > 1:  # label masks: dense metrics, streamed
        return dense_evaluate(model, src, batch_size, device=device)
    labels: list = []
    logits = predict_logits(model, src, batch_size, device=device, labels=labels)
    labels = torch.cat(labels)
    if labels.dim() > 1:
        return segmentation_metrics(logits, labels)
    return classification_metrics(logits, labels)


@torch.no_grad()
def lm_evaluate(model, data, batch_size: int = 16, device=None, teacher=None) -> dict:
    """Next-token metrics of a language model over every counted position of ``data`` (logits at
    position t scored against token t+1, targets of -100 left out): ``n`` tokens, ``nll`` (mean
    negative log-likelihood, nats), ``perplexity`` = exp(nll), ``accuracy`` and ``errors`` of the
    most likely next token. With ``teacher`` (a callable on a batch's inputs returning logits, e.g.
    :meth:`distill.Teacher.forward`): ``agreement`` (the student's top-1 token equals the
    teacher's) and ``kl`` = mean KL(p_teacher ‖ q_student) at T = 1, over the shared vocabulary."""
    module = model if isinstance(model, nn.Module) else None
    was = module.training if module is not None else False
    if module is not None:
        module.eval()
    p = next(module.parameters(), None) if module is not None else None
    dev = torch.device(device) if device is not None else (p.device if p is not None else torch.device("cpu"))
    nll = torch.zeros((), dtype=torch.float64)
    correct = agree = torch.zeros((), dtype=torch.long)
    kl = torch.zeros((), dtype=torch.float64)
    n = 0
    try:
        for x, y, _ in data.ordered(batch_size):
            x = inputs_to(x, dev)
            s = logits_of(model_forward(model, x)).float()
            t = logits_of(teacher(x)).float() if teacher is not None else None
            s, t, targets, valid = next_token_pairs(s, t, y.to(dev))
            s, targets = s[valid], targets[valid]
            logq = F.log_softmax(s, -1)
            nll += -logq.gather(1, targets[:, None]).sum().double().cpu()
            correct = correct + (s.argmax(-1) == targets).sum().cpu()
            n += int(valid.sum())
            if t is not None:
                t = t[valid]
                v = min(t.shape[-1], s.shape[-1])
                logp, logq_v = F.log_softmax(t[:, :v], -1), F.log_softmax(s[:, :v], -1)
                kl += (logp.exp() * (logp - logq_v)).sum().double().cpu()
                agree = agree + (t[:, :v].argmax(-1) == s[:, :v].argmax(-1)).sum().cpu()
    finally:
        if module is not None:
            module.train(was)
    if n == 0:
        raise ValueError("no target tokens to evaluate on (every position is padding)")
    mean = float(nll) / n
    out = dict(n=n, nll=mean, perplexity=math.exp(min(mean, 700.0)), accuracy=int(correct) / n,
               errors=n - int(correct))
    if teacher is not None:
        out.update(agreement=int(agree) / n, kl=float(kl) / n)
    return out


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


# ---------------------------------------------------------------- dense prediction
#: the label of pixels that are not scored (as in distill.losses.DEFAULT_IGNORE_INDEX)
IGNORE_INDEX = 255


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(C, C)`` int64 counts ``m[true, predicted]`` over the positions of dense ``logits``
    ``(B, C, *S)`` whose label ``(B, *S)`` is not ``ignore_index`` (prediction = argmax over C)."""
    c = logits.shape[1]
    if logits.dim() < 3 or tuple(labels.shape) != (logits.shape[0],) + tuple(logits.shape[2:]):
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not pair up "
                         "(one class score map per label mask)")
    y = labels.reshape(-1).long()
    keep = y != ignore_index
    y, pred = y[keep], logits.argmax(1).reshape(-1)[keep]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
        raise ValueError(f"labels go outside 0..{c - 1} (and are not the ignore index {ignore_index})")
    return torch.bincount(y.cpu() * c + pred.cpu(), minlength=c * c).reshape(c, c)


def iou_from_confusion(m: torch.Tensor, background: int | None = 0) -> dict:
    """Intersection over union per class, ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` from confusion
    counts ``m[true, predicted]`` (labelled pixels only); a class absent from both the truth and
    the predictions has no IoU (NaN) and is left out of the means. ``miou``: the mean over all
    classes, background included; ``miou_fg``: over all classes but ``background`` (None: same as
    ``miou``); ``pixel_accuracy``: ``trace(m) / sum(m)``."""
    m = m.double()
    tp = m.diag()
    union = m.sum(0) + m.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    fg = torch.ones_like(iou, dtype=torch.bool)
    if background is not None:
        fg[background] = False

    def nanmean(t):
        t = t[~torch.isnan(t)]
        return float(t.mean()) if t.numel() else float("nan")

    total = float(m.sum())
    return dict(miou=nanmean(iou), miou_fg=nanmean(iou[fg]),
                pixel_accuracy=float(tp.sum()) / total if total else float("nan"),
                per_class_iou=[None if math.isnan(v) else float(v) for v in iou.tolist()])


def segmentation_metrics(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                         background: int | None = 0) -> dict:
    """Metrics of dense ``logits`` ``(B, C, *S)`` against label masks ``(B, *S)`` over the
    labelled positions (``ignore_index`` excluded everywhere): ``errors`` (misclassified labelled
    pixels), ``accuracy`` (= ``pixel_accuracy``), ``nll`` (mean -log p(y) per labelled pixel),
    ``n`` (labelled pixels), ``ignored`` (pixels left out), and the IoUs of
    :func:`iou_from_confusion` (``miou`` with background, ``miou_fg`` without, ``per_class_iou``)."""
    m = confusion_matrix(logits, labels, ignore_index)
    y = labels.reshape(-1).long()
    keep = y != ignore_index
    nll_sum = float(F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="sum"))
    return _dense_result(m, nll_sum, int(keep.sum()), int((~keep).sum()), background)


def _dense_result(m: torch.Tensor, nll_sum: float, n: int, ignored: int, background) -> dict:
    out = iou_from_confusion(m, background)
    errors = n - int(m.diag().sum())
    return dict(errors=errors, accuracy=out["pixel_accuracy"], nll=nll_sum / n if n else float("nan"), n=n,
                ignored=ignored, **out)


@torch.no_grad()
def dense_evaluate(model, data, batch_size: int = 500, device=None, ignore_index: int = IGNORE_INDEX,
                   background: int | None = 0) -> dict:
    """:func:`segmentation_metrics` of ``model`` over labelled dense ``data`` in one streamed pass
    (confusion counts accumulated per batch; the logits are never all held at once)."""

    src = data if isinstance(data, Source) else as_source(data, name="data")
    module = model if isinstance(model, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    p = next(module.parameters(), None) if module is not None else None
    dev = torch.device(device) if device is not None else (p.device if p is not None else None)
    m, nll_sum, n, ignored = None, 0.0, 0, 0
    try:
        for x, y, _ in src.ordered(batch_size):
            out = logits_of(model_forward(model, inputs_to(x, dev) if dev is not None else x)).float()
            y = y.to(out.device)
            cm = confusion_matrix(out, y, ignore_index)
            m = cm if m is None else m + cm
            keep = y != ignore_index
            n += int(keep.sum())
            ignored += int((~keep).sum())
            nll_sum += float(F.cross_entropy(out, y.long(), ignore_index=ignore_index, reduction="sum"))
    finally:
        if module is not None:
            module.train(was_training)
    if m is None:
        raise ValueError("no inputs to evaluate on")
    return _dense_result(m, nll_sum, n, ignored, background)

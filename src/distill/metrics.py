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

#: equal-width confidence bins of :func:`expected_calibration_error` and :func:`calibration_bins`
ECE_BINS = 15
#: top-k agreement: the teacher's most likely class is among the student's k most likely
TOP_K = 5
#: the keys of :func:`fidelity` (and of :func:`lm_evaluate` with a teacher) that records report
FIDELITY = ("agreement", "top5_agreement", "kl", "ece", "teacher_ece")


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


def evaluate(model, data, batch_size: int = 2000, device=None, teacher_logits: torch.Tensor | None = None) -> dict:
    """``errors``, ``accuracy``, ``nll`` and ``n`` of ``model`` on labelled ``data`` (anything
    :func:`distill.data.sources.as_source` accepts), in one pass. With per-position labels (masks
    ``(n, H, W)``) the model's logits are ``(n, C, H, W)`` and the result is
    :func:`segmentation_metrics`' (these four counted over labelled pixels, plus IoUs).
    ``teacher_logits``: a classifier teacher's logits on the same examples, in order: the result
    then has :func:`fidelity`'s keys too (agreement, top-5 agreement, KL, both ECEs)."""

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
    out = classification_metrics(logits, labels)
    if teacher_logits is not None:
        out.update({k: v for k, v in fidelity(logits, teacher_logits.to(logits.device), labels).items() if k != "n"})
    return out


@torch.no_grad()
def lm_evaluate(model, data, batch_size: int = 16, device=None, teacher=None, bins: int = ECE_BINS) -> dict:
    """Next-token metrics of a language model over every counted position of ``data`` (logits at
    position t scored against token t+1, targets of -100 left out): ``n`` tokens, ``nll`` (mean
    negative log-likelihood, nats), ``perplexity`` = exp(nll), ``accuracy`` and ``errors`` of the
    most likely next token, ``ece`` (the student's :func:`expected_calibration_error` over the
    tokens, ``bins`` equal-width bins, default :data:`ECE_BINS`). With ``teacher`` (a callable on a
    batch's inputs returning logits, e.g. :meth:`distill.Teacher.forward`), :func:`fidelity`'s
    numbers per token: ``agreement`` (the student's top-1 token equals the teacher's),
    ``top5_agreement``, ``kl`` = mean KL(p_teacher ‖ q_student) at T = 1 (these three over the
    shared vocabulary) and ``teacher_ece``; the same keys a classifier's :func:`fidelity` has."""
    module = model if isinstance(model, nn.Module) else None
    was = module.training if module is not None else False
    if module is not None:
        module.eval()
    p = next(module.parameters(), None) if module is not None else None
    dev = torch.device(device) if device is not None else (p.device if p is not None else torch.device("cpu"))
    nll = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.long)
    sums: dict = {}
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
            for k, v in _fidelity_sums(s, t[valid] if t is not None else None, targets, bins, logq=logq).items():
                sums[k] = sums[k] + v if k in sums else v
    finally:
        if module is not None:
            module.train(was)
    if n == 0:
        raise ValueError("no target tokens to evaluate on (every position is padding)")
    mean = float(nll) / n
    out = dict(n=n, nll=mean, perplexity=math.exp(min(mean, 700.0)), accuracy=int(correct) / n,
               errors=n - int(correct))
    out.update(_fidelity_result(sums, n))
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
    """Fraction of examples on which two models predict the same class (top-1 agreement)."""
    return float((logits_a.argmax(1) == logits_b.argmax(1)).float().mean())


def calibration_bins(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """Sums per confidence bin, ``(3, bins)`` float64 on the CPU: the count ``|B_b|``, the correct
    predictions and the summed confidences of the rows whose confidence ``max_c softmax(z)_c``
    falls in ``B_b = (b/bins, (b+1)/bins]`` (prediction = argmax). Sums, so batches add up; the
    reliability diagram is ``correct/count`` against ``confidence/count`` per bin, and
    :func:`expected_calibration_error` their weighted gap."""
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not pair up "
                         "(one row of class scores per label)")
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    return _bins_of(torch.softmax(logits.float(), -1).max(-1), labels, int(bins))


def _bins_of(conf_pred, labels: torch.Tensor, bins: int) -> torch.Tensor:
    conf, pred = conf_pred
    edges = torch.linspace(0, 1, bins + 1, device=conf.device)
    b = torch.bucketize(conf, edges[1:-1])  # edges[b] < conf <= edges[b + 1]
    out = torch.zeros(3, bins, dtype=torch.float64, device=conf.device)
    out[0].index_add_(0, b, torch.ones_like(conf, dtype=torch.float64))
    out[1].index_add_(0, b, (pred == labels.to(pred.device)).double())
    out[2].index_add_(0, b, conf.double())
    return out.cpu()


def _ece_of(sums: torch.Tensor) -> float:
    n = float(sums[0].sum())
    return float((sums[1] - sums[2]).abs().sum()) / n if n else float("nan")


def reliability(sums: torch.Tensor) -> dict:
    """:func:`calibration_bins`' sums as a JSON-able reliability diagram: the bin ``edges``, per bin
    the ``count``, ``accuracy`` and mean ``confidence`` (None for an empty bin), and their ``ece``."""
    bins = sums.shape[1]
    count = [int(c) for c in sums[0].tolist()]
    return dict(edges=[i / bins for i in range(bins + 1)], count=count,
                accuracy=[a / c if c else None for a, c in zip(sums[1].tolist(), count)],
                confidence=[f / c if c else None for f, c in zip(sums[2].tolist(), count)], ece=_ece_of(sums))


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE = sum_b (|B_b|/n) * |accuracy(B_b) - confidence(B_b)| over ``bins`` equal-width confidence
    bins ``B_b = (b/bins, (b+1)/bins]``, confidence = max_c softmax(z)_c, accuracy = the fraction of
    the bin's rows whose argmax is the label (:func:`calibration_bins`)."""
    return _ece_of(calibration_bins(logits, labels, bins))


def fidelity(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
             bins: int = ECE_BINS) -> dict:
    """How closely a student follows its teacher, over ``n`` rows of logits ``(n, C)`` (classes, or
    the valid tokens of a language model), with p = softmax(teacher), q = softmax(student) at T = 1:

    * ``agreement`` = (1/n) sum_i [argmax_c q_ic = argmax_c p_ic]  (top-1 agreement);
    * ``top5_agreement`` = (1/n) sum_i [argmax_c p_ic ∈ top-k_c q_ic], k = min(5, C);
    * ``kl`` = (1/n) sum_i sum_c p_ic (log p_ic - log q_ic)  (mean KL(teacher ‖ student), nats;
      terms with p_ic = 0 count 0);
    * with ``labels`` ``(n,)``: ``ece`` and ``teacher_ece``, the :func:`expected_calibration_error`
      (``bins`` bins) of the student and of the teacher against the labels;
    * ``n``.
    """
    if student_logits.dim() != 2 or tuple(student_logits.shape) != tuple(teacher_logits.shape):
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must both be (rows, classes) of the same shape")
    if labels is not None and tuple(labels.shape) != (student_logits.shape[0],):
        raise ValueError(f"labels {tuple(labels.shape)} must be one per row of the logits "
                         f"({student_logits.shape[0]})")
    n = student_logits.shape[0]
    if n == 0:
        raise ValueError("no rows to measure fidelity on")
    return dict(_fidelity_result(_fidelity_sums(student_logits.float(), teacher_logits.float(), labels, bins), n), n=n)


def _fidelity_sums(s: torch.Tensor, t: torch.Tensor | None, labels: torch.Tensor | None, bins: int, *,
                   logq: torch.Tensor | None = None) -> dict:
    """The sums behind :func:`fidelity` over rows ``s`` (student), ``t`` (teacher, or None): the
    agreements and KL over the shared classes ``[:min(C_s, C_t)]``, the calibration bins of each
    (with ``labels``). ``logq``: ``log_softmax(s)`` when the caller has it."""
    out = {}
    if labels is not None and logq is not None:
        top = logq.max(-1)
        out["bins"] = _bins_of((top.values.exp(), top.indices), labels, int(bins))
    elif labels is not None:
        out["bins"] = calibration_bins(s, labels, bins)
    if t is None:
        return out
    v = min(s.shape[-1], t.shape[-1])
    sv, tv = s[:, :v], t[:, :v]
    logp = F.log_softmax(tv, -1)
    logq_v = logq if logq is not None and v == s.shape[-1] else F.log_softmax(sv, -1)
    pt = logp.exp()
    kl = torch.where(pt > 0, pt * (logp - logq_v), torch.zeros((), device=pt.device)).sum(-1).double().sum()
    top_t = tv.argmax(-1)
    k = min(TOP_K, v)
    out.update(agree=(sv.argmax(-1) == top_t).sum().cpu(), kl=kl.cpu(),
               top5=(sv.topk(k, -1).indices == top_t[:, None]).any(-1).sum().cpu())
    if labels is not None:
        out["teacher_bins"] = calibration_bins(t, labels, bins)
    return out


def _fidelity_result(sums: dict, n: int) -> dict:
    out = {}
    if "agree" in sums:
        out.update(agreement=int(sums["agree"]) / n, top5_agreement=int(sums["top5"]) / n, kl=float(sums["kl"]) / n)
    if "bins" in sums:
        out["ece"] = _ece_of(sums["bins"])
    if "teacher_bins" in sums:
        out["teacher_ece"] = _ece_of(sums["teacher_bins"])
    return out


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


# ---------------------------------------------------------------- generated text

def _ngrams(seq, n: int) -> list[tuple]:
    s = seq.tolist() if isinstance(seq, torch.Tensor) else list(seq)
    return [tuple(s[i:i + n]) for i in range(len(s) - n + 1)]


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return n


def distinct_n(sequences, n: int = 2) -> float:
    """Distinct-n (Li et al. 2016): ``|{distinct n-grams over all sequences}| / (number of n-grams
    over all sequences)``; 0.0 when the sequences hold no n-gram. Sequences are token-id lists or
    1-D tensors."""
    n = _check_n(n)
    grams = [g for s in sequences for g in _ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(sequences, n: int = 4) -> float:
    """seq-rep-n (Welleck et al. 2019): per sequence ``1 - |unique n-grams| / |n-grams|``, averaged
    over the sequences that hold at least one n-gram (0.0 when none does): 0 for text that never
    repeats an n-gram, near 1 for a loop."""
    n = _check_n(n)
    rates = [1 - len(set(g)) / len(g) for g in (_ngrams(s, n) for s in sequences) if g]
    return sum(rates) / len(rates) if rates else 0.0

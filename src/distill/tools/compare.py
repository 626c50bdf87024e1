"""What distillation bought: a teacher beside its students, on one test set.

:func:`compare` measures, for each checkpoint: parameters, checkpoint file size, test accuracy,
its fidelity to the teacher (:func:`distill.metrics.fidelity`: top-1 agreement, the fraction of test
examples on which its predicted class is the teacher's; top-5 agreement, the teacher's class among
its 5 most likely; the mean KL(teacher ‖ student) at T = 1), its expected calibration error (15
bins) and reliability diagram, and latency (median p50 and 95th percentile p95 of the wall time
of one forward pass, over ``repeats`` timed runs after ``warmup`` untimed ones) at batch 1 and batch 256, in PyTorch
(eval mode, ``torch.inference_mode``) and, when an ONNX export exists beside the checkpoint or
can be made (``pip install 'distill[export]'``), in ONNX Runtime, both on ``threads`` threads
(``torch.set_num_threads``; ONNX Runtime ``intra_op_num_threads``, inter-op 1). The inputs are
the test split's first 256 examples (batch 1 cycles through its first 64). Rows are labelled by
the checkpoint's path (its run folder: ``runs/s1/model`` is ``s1``; more of the path where two would
read the same), beside its role (``teacher``, or the name its sidecar records).

:func:`markdown` renders the table, :func:`plot` small charts (matplotlib, imported only there:
parameters and latency on log axes, and the reliability diagram); the result itself is a JSON-able
dict.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distill.errors import DistillError, MissingDependency
from distill.atomic import atomic_write_bytes, atomic_write_json
from distill.checkpoints import load_checkpoint, stem_of
from distill.metrics import ECE_BINS, calibration_bins, classification_metrics, fidelity, predict_logits, reliability
from distill.models.classifiers import count_params
from distill.tools import plots
from distill.tools.export import default_out, export_checkpoint, export_metadata, onnx_available, onnx_session
from distill.train.rundir import run_name

BATCHES = (1, 256)
RUNTIMES = ("pytorch", "onnxruntime")
#: ``onnx=``: time ONNX Runtime too when it can (an ONNX file beside the checkpoint, or one exported now), or not
ONNX_MODES = ("auto", "off")


def _percentiles(times: list[float]) -> dict:
    ms = np.asarray(times) * 1000.0
    return dict(p50=float(np.percentile(ms, 50)), p95=float(np.percentile(ms, 95)), runs=len(times))


def latency(run, batches: list, repeats: int, warmup: int) -> dict:
    """p50/p95 (ms) of ``run(batch)`` over ``repeats`` timed calls, cycling through ``batches``,
    after ``warmup`` untimed ones."""
    for i in range(warmup):
        run(batches[i % len(batches)])
    times = []
    for i in range(repeats):
        b = batches[i % len(batches)]
        t0 = time.perf_counter()
        run(b)
        times.append(time.perf_counter() - t0)
    return _percentiles(times)


def _inputs(data) -> torch.Tensor:
    """The test split's first 256 inputs (repeated when it has fewer)."""
    x, _, _ = next(iter(data.test.ordered(max(BATCHES))))
    if len(x) < max(BATCHES):
        x = x.repeat((max(BATCHES) + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))[:max(BATCHES)]
    return x.contiguous()


def _batches(x: torch.Tensor, b: int) -> list[torch.Tensor]:
    return [x[i:i + 1] for i in range(64)] if b == 1 else [x[:b]]


def _torch_latency(model, x, threads, repeats, warmup) -> dict:
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return {str(b): latency(model, _batches(x, b), repeats, warmup) for b in BATCHES}
    finally:
        torch.set_num_threads(prev)


def _onnx_latency(path, x, threads, repeats, warmup) -> dict:

    sess = onnx_session(path, threads)
    name = sess.get_inputs()[0].name
    out = {}
    for b in BATCHES:
        arrays = [t.numpy() for t in _batches(x, b)]
        out[str(b)] = latency(lambda a: sess.run(None, {name: a}), arrays, repeats, warmup)
    return out


def _onnx_for(path, side, onnx: str, scratch: Path, log):
    """An ONNX file of this checkpoint: the export beside it when its recorded weights digest
    matches, else one made now (``onnx="auto"`` and the export extra installed), else None."""

    if onnx == "off":
        return None, "off"
    if not onnx_available():
        return None, "not installed"
    beside = default_out(path, "onnx")
    if beside.is_file() and export_metadata(beside).get("weights_sha256") == side.get("weights_sha256"):
        return beside, str(beside)
    made = export_checkpoint(path, scratch / f"{len(list(scratch.iterdir()))}.onnx", "onnx", log=log)
    log(f"[compare] exported {path} to ONNX for this comparison (max |ORT - PyTorch| = {made.max_abs_diff:.2e}); "
        f"`distill export {path}` keeps one")
    return made.path, "made for this comparison"


def path_labels(paths) -> list[str]:
    """Short distinct row names for checkpoint paths: the run folder (``runs/s1/model`` -> ``s1``;
    a checkpoint not named ``model`` keeps its own name, ``runs/s1/best`` -> ``best``), with more
    of the path where two would read the same, a stage folder's run key left out (``a/s/model``, ``b/s/model`` -> ``a/s``, ``b/s``),
    and ``(1)``, ``(2)`` where the paths are the same."""
    parts = []
    for p in paths:
        ps = list(stem_of(p).parts)
        ps = ps[:-1] if len(ps) > 1 and ps[-1] == "model" else ps
        parts.append([*ps[:-1], run_name(ps[-1])])  # an experiment's stage: its name without the run key
    depth = [1] * len(parts)
    while True:
        labels = [str(Path(*ps[-d:])) for ps, d in zip(parts, depth)]
        clash = [i for i, lab in enumerate(labels) if depth[i] < len(parts[i]) and any(
            other == lab and parts[j] != parts[i] for j, other in enumerate(labels))]
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    seen: dict = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(f"{lab} ({seen[lab]})" if labels.count(lab) > 1 else lab)
    return out


def compare(teacher, students, data, *, threads: int = 1, repeats: int = 100, warmup: int = 10, onnx: str = "auto",
            log=print, trust_factory: bool = False) -> dict:
    """Measure the checkpoints ``teacher`` and ``students`` (paths) on ``data``'s test split (a
    :class:`distill.data.FileData`); see the module docstring. Factories outside distill are
    imported only with ``trust_factory`` (:func:`distill.checkpoints.load_checkpoint`). Returns a
    JSON-able dict."""

    if onnx not in ONNX_MODES:
        raise ValueError(f"onnx must be one of {ONNX_MODES}, got {onnx!r}")
    if data.test is None or not data.test.labeled:
        raise DistillError(f"{data.name} has no labelled test split to compare on (x_test/y_test, test/ or test.csv)")
    x = _inputs(data)
    rows, teacher_logits = [], None
    paths = [teacher, *students]
    names = path_labels(paths)
    with tempfile.TemporaryDirectory(prefix="distill-compare-") as tmp:
        for i, path in enumerate(paths):
            model, side = load_checkpoint(path, trust_factory=trust_factory)
            labels: list = []
            try:
                logits = predict_logits(model, data.test, labels=labels)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DistillError(f"{path} cannot run on {data.name}'s test inputs ({first})") from None
            y = torch.cat(labels)
            if logits.dim() != 2 or (len(y) and int(y.max()) >= logits.shape[1]):
                raise DistillError(f"{path} returns outputs of shape {tuple(logits.shape[1:])}, which do not fit "
                                   f"{data.name}'s {data.num_classes} classes")
            m = classification_metrics(logits, y)
            if teacher_logits is None:
                teacher_logits = logits
            elif logits.shape != teacher_logits.shape:
                raise DistillError(f"{path} predicts {logits.shape[1]} classes, the teacher {teacher_logits.shape[1]}")
            stem = stem_of(path)
            role = "teacher" if i == 0 else str(side.get("name") or "student")
            onnx_path, onnx_note = _onnx_for(path, side, onnx, Path(tmp), log)
            # fidelity to the teacher (the teacher's own row: None) and calibration, on the whole test split
            f = (dict(agreement=None, top5_agreement=None, kl=None) if i == 0
                 else fidelity(logits, teacher_logits))
            calibrated = reliability(calibration_bins(logits, y, ECE_BINS))
            row = dict(label=names[i], role=role, checkpoint=str(stem), params=count_params(model),
                       checkpoint_bytes=stem.with_suffix(".safetensors").stat().st_size,
                       onnx_bytes=onnx_path.stat().st_size if onnx_path else None, onnx=onnx_note,
                       test_errors=m["errors"], test_n=m["n"], test_accuracy=m["accuracy"],
                       agreement=f["agreement"], top5_agreement=f["top5_agreement"], kl=f["kl"],
                       ece=calibrated["ece"], reliability=calibrated,
                       latency_ms=dict(pytorch=_torch_latency(model, x, threads, repeats, warmup),
                                       onnxruntime=_onnx_latency(onnx_path, x, threads, repeats, warmup)
                                       if onnx_path else None))
            rows.append(row)
    versions = dict(torch=torch.__version__, python=platform.python_version())
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return dict(data=str(data.name), split="test", n=rows[0]["test_n"], threads=int(threads), repeats=int(repeats),
                warmup=int(warmup), batches=list(BATCHES), ece_bins=ECE_BINS, versions=versions,
                machine=dict(system=f"{platform.system()} {platform.machine()}", cpus=os.cpu_count()), models=rows)


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f} %"


def _num(v: float | None, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def share(v: float) -> str:
    """A ratio as a percentage to two significant digits (whole percents from 10 % up), so a small
    share never reads as 0: 0.45 -> "45 %", 0.012 -> "1.2 %", 139 / 1.4e6 -> "0.0099 %"."""
    pct = 100 * v
    if pct == 0 or not np.isfinite(pct):
        return f"{pct:g} %"
    digits = max(0, 1 - int(np.floor(np.log10(abs(pct)))))
    return f"{pct:.{digits}f} %"


def _lat(d: dict | None, b: int) -> str:
    if not d:
        return "–"
    c = d[str(b)]
    return f"{c['p50']:.3g} / {c['p95']:.3g}"


def markdown(result: dict) -> str:
    """The comparison as a Markdown table with a header line stating the conditions."""
    v = result["versions"]
    ort = f", ONNX Runtime {v['onnxruntime']}" if "onnxruntime" in v else ""
    lines = [f"{result['data']}, test split ({result['n']:,} examples). Latency in ms, p50 / p95 of "
             f"{result['repeats']} runs after {result['warmup']} warm-up runs, {result['threads']} thread"
             f"{'s' if result['threads'] != 1 else ''} (PyTorch {v['torch']}{ort}, {result['machine']['system']}, "
             f"{result['machine']['cpus']} CPUs).", "",
             f"Agreement with the teacher: top-1 (same class) and top-5 (the teacher's class among the model's 5 "
             f"most likely); KL(teacher ‖ model) in nats at T = 1; ECE over {result.get('ece_bins', ECE_BINS)} "
             "confidence bins.", "",
             "| model | role | params | checkpoint | ONNX | test accuracy | top-1 agreement | top-5 agreement | "
             "KL(teacher ‖ model) | ECE | PyTorch b=1 | PyTorch b=256 | ONNX Runtime b=1 | ONNX Runtime b=256 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["models"]:
        errors = f"{r['test_errors']} error{'s' if r['test_errors'] != 1 else ''}"
        lines.append(f"| {r['label']} | {r['role']} | {r['params']:,} | {_size(r['checkpoint_bytes'])} | "
                     f"{_size(r['onnx_bytes'])} | {100 * r['test_accuracy']:.2f} % ({errors}) | "
                     f"{_pct(r['agreement'])} | {_pct(r['top5_agreement'])} | {_num(r['kl'])} | {_num(r['ece'])} | "
                     f"{_lat(r['latency_ms']['pytorch'], 1)} | {_lat(r['latency_ms']['pytorch'], 256)} | "
                     f"{_lat(r['latency_ms']['onnxruntime'], 1)} | {_lat(r['latency_ms']['onnxruntime'], 256)} |")
    t = result["models"][0]
    notes = []
    for r in result["models"][1:]:
        speed = []
        for rt, name in (("pytorch", "PyTorch"), ("onnxruntime", "ONNX Runtime")):
            if r["latency_ms"][rt] and t["latency_ms"][rt]:
                s1 = t["latency_ms"][rt]["1"]["p50"] / r["latency_ms"][rt]["1"]["p50"]
                s256 = t["latency_ms"][rt]["256"]["p50"] / r["latency_ms"][rt]["256"]["p50"]
                speed.append(f"{s1:.1f}× / {s256:.1f}× faster at batch 1 / 256 in {name}")
        notes.append(f"- {r['label']}: {share(r['params'] / t['params'])} of the teacher's parameters, "
                     f"{100 * (r['test_accuracy'] - t['test_accuracy']):+.2f} points of test accuracy, "
                     f"agrees with the teacher on {_pct(r['agreement'])} (top-5 {_pct(r['top5_agreement'])}), "
                     f"KL {_num(r['kl'])}, ECE {_num(r['ece'])} (teacher {_num(t['ece'])}), "
                     + ("; ".join(speed) if speed else "no latency ratio") + " (p50).")
    if any(r["latency_ms"]["onnxruntime"] is None for r in result["models"]):
        why = {r["onnx"] for r in result["models"] if r["latency_ms"]["onnxruntime"] is None}
        notes.append("- ONNX Runtime not measured (" + ", ".join(sorted(why)) + "; pip install 'distill[export]')."
                     if "not installed" in why else "- ONNX Runtime not measured (--onnx off).")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _log_bars(ax, xs, values, width, fmt, **kw) -> None:
    """Bars on a log axis whose floor sits below the smallest value (so every bar shows), each
    bar's value written above it; NaN values (not measured) draw nothing."""
    ax.bar(xs, values, width, **kw)
    for x, v in zip(xs, values):
        if np.isfinite(v):
            ax.text(x, v, fmt(v), ha="center", va="bottom", fontsize=7)


def _log_axis(ax, values) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    vals = [v for v in values if np.isfinite(v) and v > 0]
    ax.set_yscale("log")
    if vals:
        ax.set_ylim(min(vals) / 3, max(vals) * 3)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot(result: dict, path) -> Path:
    """Small charts side by side: parameters (log axis), test accuracy, p50 latency at batch 1 and
    256 (log axes), and the reliability diagram (accuracy per confidence bin against the diagonal,
    one line per model)."""
    rows = result["models"]
    names = [r["label"] for r in rows]
    xs = np.arange(len(rows))
    fig, axes = plots.pyplot().subplots(1, 5, figsize=(17, 3.6))
    params = [float(r["params"]) for r in rows]
    _log_bars(axes[0], xs, params, 0.8, lambda v: f"{v:,.0f}", color="tab:gray")
    _log_axis(axes[0], params)
    axes[0].set_title("parameters (log)")
    axes[1].bar(xs, [100 * r["test_accuracy"] for r in rows], color="tab:green")
    lo = min(100 * r["test_accuracy"] for r in rows)
    axes[1].set_ylim(max(0.0, lo - 5), 100)
    axes[1].set_title("test accuracy (%)")
    for ax, b in ((axes[2], 1), (axes[3], 256)):
        shown = [(rt, name) for rt, name in (("pytorch", "PyTorch"), ("onnxruntime", "ONNX Runtime"))
                 if any(r["latency_ms"][rt] for r in rows)]
        width = 0.8 / max(1, len(shown))
        every = []
        for k, (rt, name) in enumerate(shown):
            vals = [r["latency_ms"][rt][str(b)]["p50"] if r["latency_ms"][rt] else float("nan") for r in rows]
            _log_bars(ax, xs + (k - (len(shown) - 1) / 2) * width, vals, width, lambda v: f"{v:.3g}", label=name)
            every += vals
        _log_axis(ax, every)
        ax.set_title(f"p50 latency, batch {b} (ms, log)")
        ax.legend(fontsize=7)
    for ax in axes[:4]:
        ax.set_xticks(xs, names)
        ax.tick_params(axis="x", labelsize=8, rotation=15)
    plots.draw_reliability(axes[4], {r["label"]: r["reliability"] for r in rows if r.get("reliability")})
    fig.suptitle(f"{result['data']}: {result['threads']} thread{'s' if result['threads'] != 1 else ''}", fontsize=9)
    fig.tight_layout()
    return plots.save_figure(fig, path, dpi=100)


def write(result: dict, out) -> dict[str, Path]:
    """``compare.md``, ``compare.json`` and ``compare.png`` in the folder ``out``."""
    import json


    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DistillError(f"--out {out} is a file; give a folder (it will hold compare.md, .json and .png)")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "compare.md", markdown(result).encode())
    atomic_write_json(out / "compare.json", json.loads(json.dumps(result)))
    try:
        png = plot(result, out / "compare.png")
    except MissingDependency:  # no matplotlib: the tables still stand, without the figure
        png = None
    return dict(md=out / "compare.md", json=out / "compare.json", png=png)

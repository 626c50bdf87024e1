"""What distillation bought: a teacher beside its students, on one test set.

:func:`compare` measures, for each checkpoint: parameters, checkpoint file size, test accuracy,
agreement with the teacher (the fraction of test examples on which its predicted class is the
teacher's), and latency (median p50 and 95th percentile p95 of the wall time of one forward pass,
over ``repeats`` timed runs after ``warmup`` untimed ones) at batch 1 and batch 256, in PyTorch
(eval mode, ``torch.inference_mode``) and, when an ONNX export exists beside the checkpoint or
can be made (``pip install 'distill[export]'``), in ONNX Runtime, both on ``threads`` threads
(``torch.set_num_threads``; ONNX Runtime ``intra_op_num_threads``, inter-op 1). The inputs are
the test split's first 256 examples (batch 1 cycles through its first 64).

:func:`markdown` renders the table, :func:`plot` a small bar chart (matplotlib, imported only
there); the result itself is a JSON-able dict.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distill.errors import DistillError
from distill.atomic import atomic_write_bytes, atomic_write_json
from distill.checkpoints import load_checkpoint, stem_of
from distill.metrics import agreement, classification_metrics, predict_logits
from distill.models.classifiers import count_params
from distill.tools.export import default_out, export_checkpoint, export_metadata, onnx_available, onnx_session

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
    rows, teacher_logits, labels_used = [], None, []
    paths = [teacher, *students]
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
            label = "teacher" if i == 0 else str(side.get("name") or "student")
            onnx_path, onnx_note = _onnx_for(path, side, onnx, Path(tmp), log)
            row = dict(label=label, checkpoint=str(stem), params=count_params(model),
                       checkpoint_bytes=stem.with_suffix(".safetensors").stat().st_size,
                       onnx_bytes=onnx_path.stat().st_size if onnx_path else None, onnx=onnx_note,
                       test_errors=m["errors"], test_n=m["n"], test_accuracy=m["accuracy"],
                       agreement=None if i == 0 else agreement(logits, teacher_logits),
                       latency_ms=dict(pytorch=_torch_latency(model, x, threads, repeats, warmup),
                                       onnxruntime=_onnx_latency(onnx_path, x, threads, repeats, warmup)
                                       if onnx_path else None))
            rows.append(row)
            labels_used.append(label)
    for i, row in enumerate(rows):  # the same name twice: number them
        if labels_used.count(row["label"]) > 1:
            row["label"] = f"{row['label']} {labels_used[:i + 1].count(row['label'])}"
    versions = dict(torch=torch.__version__, python=platform.python_version())
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return dict(data=str(data.name), split="test", n=rows[0]["test_n"], threads=int(threads), repeats=int(repeats),
                warmup=int(warmup), batches=list(BATCHES), versions=versions,
                machine=dict(system=f"{platform.system()} {platform.machine()}", cpus=os.cpu_count()), models=rows)


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f} %"


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
             "| model | params | checkpoint | ONNX | test accuracy | agrees with teacher | PyTorch b=1 | "
             "PyTorch b=256 | ONNX Runtime b=1 | ONNX Runtime b=256 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["models"]:
        lines.append(f"| {r['label']} | {r['params']:,} | {_size(r['checkpoint_bytes'])} | {_size(r['onnx_bytes'])} | "
                     f"{100 * r['test_accuracy']:.2f} % ({r['test_errors']} errors) | {_pct(r['agreement'])} | "
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
        notes.append(f"- {r['label']}: {r['params'] / t['params']:.0%} of the teacher's parameters, "
                     f"{100 * (r['test_accuracy'] - t['test_accuracy']):+.2f} points of test accuracy, "
                     + ("; ".join(speed) if speed else "no latency ratio") + " (p50).")
    if any(r["latency_ms"]["onnxruntime"] is None for r in result["models"]):
        why = {r["onnx"] for r in result["models"] if r["latency_ms"]["onnxruntime"] is None}
        notes.append("- ONNX Runtime not measured (" + ", ".join(sorted(why)) + "; pip install 'distill[export]')."
                     if "not installed" in why else "- ONNX Runtime not measured (--onnx off).")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def plot(result: dict, path) -> Path:
    """A small bar chart: parameters, test accuracy, and p50 latency at batch 1 and 256."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["models"]
    names = [r["label"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3))
    axes[0].bar(names, [r["params"] / 1e6 for r in rows], color="tab:gray")
    axes[0].set_title("parameters (millions)")
    axes[1].bar(names, [100 * r["test_accuracy"] for r in rows], color="tab:green")
    lo = min(100 * r["test_accuracy"] for r in rows)
    axes[1].set_ylim(max(0.0, lo - 5), 100)
    axes[1].set_title("test accuracy (%)")
    for ax, b in ((axes[2], 1), (axes[3], 256)):
        width = 0.4
        xs = np.arange(len(rows))
        for k, (rt, name) in enumerate((("pytorch", "PyTorch"), ("onnxruntime", "ONNX Runtime"))):
            vals = [r["latency_ms"][rt][str(b)]["p50"] if r["latency_ms"][rt] else 0.0 for r in rows]
            if any(vals):
                ax.bar(xs + (k - 0.5) * width, vals, width, label=name)
        ax.set_xticks(xs, names)
        ax.set_title(f"p50 latency, batch {b} (ms)")
        ax.legend(fontsize=7)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8, rotation=15)
    fig.suptitle(f"{result['data']}: {result['threads']} thread{'s' if result['threads'] != 1 else ''}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(result: dict, out) -> dict[str, Path]:
    """``compare.md``, ``compare.json`` and ``compare.png`` in the folder ``out``."""
    import json


    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DistillError(f"--out {out} is a file; give a folder (it will hold compare.md, .json and .png)")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "compare.md", markdown(result).encode())
    atomic_write_json(out / "compare.json", json.loads(json.dumps(result)))
    return dict(md=out / "compare.md", json=out / "compare.json", png=plot(result, out / "compare.png"))

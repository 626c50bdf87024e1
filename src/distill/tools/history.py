"""Training curves of finished or running runs: :func:`run_history` reads a run folder (its
``metrics.csv``, else the history in ``model.json`` / ``state.json``), :func:`plot_history` draws
several runs on shared axes (``distill plot history RUN [RUN ...]``)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from distill.errors import DistillError
from distill.train.logs import METRICS_FILE, read_metrics
from distill.train.rundir import run_name
from distill.tools.plots import pyplot, save_figure

#: the config fields a curve's label names, when the run set them
LABEL_SETTINGS = (("lr", "lr {:g}"), ("batch_size", "batch {}"), ("optimizer", "{}"), ("epochs", "{} epochs"))
#: a quantity is drawn on a log axis when its values span more than this factor
LOG_SPAN = 30.0


@dataclass
class RunHistory:
    """One run's curves: ``epochs`` (one dict per epoch: epoch, loss, terms, val/test metrics),
    ``steps`` (the ``log_every`` rows, with ``x`` the fractional epoch), its ``name`` and
    ``settings`` (a short text of its key settings)."""

    name: str
    epochs: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    settings: str = ""


def _folder(path) -> Path:
    """A run folder from what a user may pass: the folder, its ``model`` stem or a file in it."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.parent.is_dir() and (p.name in ("model", "state") or p.suffix in (".json", ".safetensors", ".csv")):
        return p.parent
    raise DistillError(f"{path} is not a run folder (a folder with {METRICS_FILE} or model.json, as `distill "
                       "teacher/student --out` writes)")


def _sidecar(folder: Path) -> dict:
    for name in ("model.json", "state.json"):
        f = folder / name
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except (OSError, ValueError):
                raise DistillError(f"{f} is not a readable JSON sidecar") from None
    return {}


def _settings(side: dict) -> str:
    cfg = side.get("config") or {}
    parts = [fmt.format(cfg[k]) for k, fmt in LABEL_SETTINGS if cfg.get(k) is not None]
    obj = cfg.get("objective") or {}
    if obj.get("temperature") is not None and obj.get("temperature") != 1.0:
        parts.append(f"T {obj['temperature']:g}")
    if side.get("teacher"):
        parts.append("distilled")
    return ", ".join(parts)


def run_history(path) -> RunHistory:
    """The curves of the run folder ``path`` (see the module docstring)."""
    folder = _folder(path)
    side = _sidecar(folder)
    name = folder.name if folder.name not in ("", ".") else str(folder.resolve().name)
    name = run_name(name)
    h = RunHistory(name, settings=_settings(side))
    csv = folder / METRICS_FILE
    if csv.is_file():
        rows = read_metrics(csv)
        h.epochs = [r for r in rows if r.get("kind") == "epoch"]
        h.steps = [dict(r) for r in rows if r.get("kind") == "step"]
    else:
        h.epochs = [dict(r, loss=r.get("train_loss")) for r in side.get("history", [])]
    if not h.epochs and not h.steps:
        raise DistillError(f"{folder} holds no training history yet ({METRICS_FILE} has no rows and there is no "
                           "model.json or state.json)")
    per_epoch = h.epochs[0].get("step") if h.epochs else None
    for r in h.steps:
        r["x"] = r["step"] / per_epoch if per_epoch else r["epoch"] - 0.5
    return h


def _metric(histories: list[RunHistory]) -> str | None:
    """What the second panel shows: errors for classifiers, NLL for language models."""
    keys = {k for h in histories for r in h.epochs for k in r}
    for name in ("errors", "nll"):
        if any(f"{split}_{name}" in keys for split in ("val", "test")):
            return name
    return None


def _spans_decades(values) -> bool:
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return bool(vals) and max(vals) / min(vals) > LOG_SPAN


def plot_history(paths, out="curves.png") -> Path:
    """Loss (and each loss term) per epoch, with the logged steps as thin lines, beside the
    validation (solid) and test (dashed) errors or NLL per epoch, for every run in ``paths`` on
    shared axes; log scale where a panel's values span more than :data:`LOG_SPAN`×. Each run's
    legend entry names it and its key settings."""
    histories = [run_history(p) for p in paths]
    metric = _metric(histories)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(12 if metric else 6.5, 5.5 + 0.18 * len(histories)),
                             squeeze=False)
    loss_ax = axes[0][0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    loss_values, metric_values = [], []
    for i, h in enumerate(histories):
        c = colors[i % len(colors)]
        label = f"{h.name} ({h.settings})" if h.settings else h.name
        if h.steps:
            loss_ax.plot([r["x"] for r in h.steps], [r["loss"] for r in h.steps], color=c, alpha=0.35, lw=0.8)
            loss_values += [r["loss"] for r in h.steps]
        ep = [r["epoch"] for r in h.epochs]
        loss_ax.plot(ep, [r.get("loss") for r in h.epochs], color=c, marker="o", ms=3, label=label)
        loss_values += [r.get("loss") for r in h.epochs]
        for term, style in (("soft", ":"), ("hard", "-.")):
            if any(term in r for r in h.epochs):
                loss_ax.plot(ep, [r.get(term) for r in h.epochs], color=c, ls=style, lw=1, label=f"{h.name}: {term}")
                loss_values += [r.get(term) for r in h.epochs]
        if metric:
            ax = axes[0][1]
            for split, style in (("val", "-"), ("test", "--")):
                ys = [r.get(f"{split}_{metric}") for r in h.epochs]
                if any(y is not None for y in ys):
                    ax.plot(ep, ys, color=c, ls=style, marker="o", ms=3, label=f"{h.name}: {split}")
                    metric_values += ys
    loss_ax.set(xlabel="epoch", ylabel="training loss",
                title="training loss (thin: every logged step)")
    if _spans_decades(loss_values):
        loss_ax.set_yscale("log")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    if metric:
        ax = axes[0][1]
        ax.set(xlabel="epoch", ylabel=f"{metric} (solid: val, dashed: test)", title=f"held-out {metric}")
        if _spans_decades(metric_values):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.suptitle("training curves: " + ", ".join(h.name for h in histories), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out)

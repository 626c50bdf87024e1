"""Figures from logits and result records (PNG, matplotlib's Agg backend: no screen needed)."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from distill.errors import require
from distill.losses.functional import soften

#: ``plot_temperature``'s defaults: a logit vector with one clear winner and a few runners-up, and
#: the temperatures that show it sharp (1), softened (4) and nearly flat (the paper's 20)
TEMPERATURE_LOGITS = (0.5, 8, 1.5, 3, 6, 11, 2.5, 0.01, 5, 0.2)
TEMPERATURES = (1, 4, 20)


@functools.cache
def pyplot():
    """matplotlib's pyplot on the Agg backend, loaded on the first figure: importing it takes about
    a second, which every ``distill`` command would otherwise pay at start-up. Without matplotlib,
    a one-line :class:`~distill.errors.MissingDependency` saying which extra installs it."""
    matplotlib = require("matplotlib", "plots", "drawing figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out, dpi: int = 80) -> Path:
    """Write ``fig`` as PNG to ``out`` (folders created), close it, return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return out


def plot_temperature(logits=TEMPERATURE_LOGITS, temperatures=TEMPERATURES, out="temperature.png") -> Path:
    """Bar charts: the raw logits, then softmax(logits / T) for each T, side by side."""
    z = torch.tensor([list(map(float, logits))])
    panels = [("logits", z[0].tolist())] + [(f"softmax, T = {t:g}", soften(z, t)[0].tolist()) for t in temperatures]
    fig, axes = pyplot().subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0))
    for ax, (title, values) in zip(axes, panels):
        ax.bar(range(len(values)), values, color="#4c72b0" if title == "logits" else "#dd8452")
        ax.set_title(title)
        ax.set_xticks(range(len(values)))
        ax.set_xlabel("class")
        if title != "logits":
            ax.set_ylim(0, 1)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_lines(series: dict, xlabel: str, ylabel: str, title: str, out, logx: bool = False) -> Path:
    """One line per key of ``series`` ({label: [(x, y), ...]}), markers at the points."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for label, pts in series.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if logx:
        ax.set_xscale("log")
        xs = sorted({p[0] for pts in series.values() for p in pts})
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, out)


def plot_bars(values: dict, ylabel: str, title: str, out) -> Path:
    """One bar per key of ``values`` ({label: number}), the value written above it; the y axis
    starts near the smallest value so that small differences show."""
    fig, ax = pyplot().subplots(figsize=(max(5, 1.1 * len(values) + 1), 4))
    names, ys = list(values), [float(v) for v in values.values()]
    ax.bar(range(len(names)), ys, color="#4c72b0")
    for i, y in enumerate(ys):
        ax.text(i, y, f"{y:.3f}", ha="center", va="bottom", fontsize=8)
    lo, hi = min(ys), max(ys)
    ax.set_ylim(max(0.0, lo - 0.25 * (hi - lo + 1e-9) - 0.05), hi + 0.1 * (hi - lo + 1e-9) + 0.05)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, out)


# ---------------------------------------------------------------- dense prediction

def segmentation_colors(num_classes: int = 11, background: int | None = 0):
    """A colour map for label masks: background black, the other classes tab10/tab20 colours,
    index ``num_classes`` (where ignored pixels are drawn) light grey."""
    from matplotlib.colors import ListedColormap

    base = pyplot().get_cmap("tab10" if num_classes <= 11 else "tab20").colors
    colors, k = [], 0
    for c in range(num_classes):
        if c == background:
            colors.append((0.0, 0.0, 0.0))
        else:
            colors.append(base[k % len(base)])
            k += 1
    colors.append((0.82, 0.82, 0.82))
    return ListedColormap(colors)


def plot_segmentation(rows: dict, out, classes=None, ignore_index: int = 255, background: int | None = 0,
                      dpi: int = 80) -> Path:
    """A grid of canvases: one row per entry of ``rows`` (``{title: tensor}``), one column per
    canvas. A float tensor ``(n, [1,] H, W)`` is drawn as a grey image; an integer tensor
    ``(n, H, W)`` as a label mask (``ignore_index`` in light grey). ``classes`` names the mask
    colours in a legend below."""
    from matplotlib.patches import Patch

    names = list(classes) if classes is not None else None
    num_classes = len(names) if names else 1 + max(int(v[v != ignore_index].max()) for v in rows.values()
                                                   if not v.is_floating_point())
    cmap = segmentation_colors(num_classes, background)
    n = min(len(v) for v in rows.values())
    fig, axes = pyplot().subplots(len(rows), n, figsize=(1.25 * n + 0.9, 1.3 * len(rows) + (0.5 if names else 0)),
                             squeeze=False)
    for r, (title, values) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            v = values[c]
            if v.is_floating_point():
                ax.imshow(v.reshape(v.shape[-2:]).numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                m = v.clone()
                m[m == ignore_index] = num_classes
                ax.imshow(m.numpy(), cmap=cmap, vmin=-0.5, vmax=num_classes + 0.5, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
    if names:
        handles = [Patch(color=cmap(i), label=str(nm)) for i, nm in enumerate(names)]
        handles.append(Patch(color=cmap(num_classes), label="ignored"))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 12), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.07 if names else 0, 1, 1))
    return save_figure(fig, out, dpi=dpi)


# ---------------------------------------------------------------- calibration

def draw_reliability(ax, curves: dict, title: str = "reliability diagram") -> None:
    """A reliability diagram on ``ax``: for each ``{label: reliability}`` (the dict of
    :func:`distill.metrics.reliability`), the accuracy of each non-empty confidence bin against its
    mean confidence, one line per model, beside the diagonal of perfect calibration; the legend
    gives each model's ECE."""
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for label, r in curves.items():
        pts = [(c, a) for c, a in zip(r["confidence"], r["accuracy"]) if c is not None]
        ece = r.get("ece")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                label=f"{label} (ECE {ece:.3f})" if ece is not None else str(label))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def plot_reliability(curves: dict, out, title: str = "reliability diagram") -> Path:
    """:func:`draw_reliability` alone in a figure, written to ``out``."""
    fig, ax = pyplot().subplots(figsize=(4.5, 4.5))
    draw_reliability(ax, curves, title)
    fig.tight_layout()
    return save_figure(fig, out)

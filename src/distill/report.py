"""Figures from logits and result records (PNG, matplotlib's Agg backend: no screen needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from distill.losses import soften  # noqa: E402


def save_figure(fig, out, dpi: int = 80) -> Path:
    """Write ``fig`` as PNG to ``out`` (folders created), close it, return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def plot_temperature(logits, temperatures=(1, 4, 20), out="temperature.png") -> Path:
    """Bar charts: the raw logits, then softmax(logits / T) for each T, side by side."""
    z = torch.tensor([list(map(float, logits))])
    panels = [("logits", z[0].tolist())] + [(f"softmax, T = {t:g}", soften(z, t)[0].tolist()) for t in temperatures]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0))
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
    fig, ax = plt.subplots(figsize=(6, 4))
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

"""Plumbing shared by the experiments: keyed stages that skip or resume, result records,
results.json / results.md written after every stage so a crash loses nothing finished."""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.checkpoints import atomic_write_bytes, atomic_write_json
from distill.models import count_params
from distill.training import FitResult, TrainConfig, fit, run_key, seed_everything

DEFAULT_CACHE = Path("runs") / "cache"


@dataclass
class Stage:
    """One model to train: a name for the tables, a builder, its config and its teacher."""

    name: str
    build: callable
    config: TrainConfig
    teacher_targets: torch.Tensor | None = None
    teacher_id: str | None = None
    teacher_kind: str = "logits"
    teacher: torch.nn.Module | None = None
    extra: dict = field(default_factory=dict)


class Runner:
    """Trains stages into ``cache/<name>-<key>`` (key = config + architecture + data + teacher)
    and collects their records into ``out/results.json`` and ``out/results.md``."""

    def __init__(self, out: Path, cache: Path | None = None, progress: bool = True, log=print,
                 title: str = "results", table=None):
        self.out = Path(out)
        self.cache = Path(cache) if cache is not None else self.out / "stages"
        self.progress, self.log, self.title = progress, log, title
        self.records: list[dict] = []
        self.table = table
        self.out.mkdir(parents=True, exist_ok=True)

    def train(self, data, stage: Stage) -> FitResult:
        seed_everything(stage.config.seed)
        model = stage.build()
        key = run_key(stage.config, model, data.fingerprint, stage.teacher_id)
        run_dir = self.cache / f"{stage.name}-{key}"
        self.log(f"[{stage.name}] seed {stage.config.seed} -> {run_dir}")
        t0 = time.perf_counter()
        res = fit(model, data, stage.config, teacher=stage.teacher, teacher_targets=stage.teacher_targets,
                  teacher_kind=stage.teacher_kind, teacher_id=stage.teacher_id, run_dir=run_dir,
                  meta=dict(name=stage.name, **stage.extra), progress=self.progress, log=self.log)
        wall = res.wall_seconds if res.skipped else max(res.wall_seconds, time.perf_counter() - t0)
        rec = dict(model=stage.name, seed=stage.config.seed, test_errors=res.metrics["errors"],
                   test_accuracy=res.metrics["accuracy"], test_nll=res.metrics["nll"],
                   wall_seconds=round(wall, 2), params=count_params(res.model), epochs=stage.config.epochs,
                   temperature=stage.config.temperature if stage.config.loss == "distill" else None,
                   hard_weight=stage.config.hard_weight if stage.config.loss == "distill" else None,
                   checkpoint=str(run_dir / "model"), **stage.extra)
        self.log(f"[{stage.name}] seed {stage.config.seed}: {rec['test_errors']} test errors "
                 f"({100 * rec['test_accuracy']:.2f}%), {rec['wall_seconds']:.0f}s"
                 + (" (cached)" if res.skipped else ""))
        self.add(rec)
        return res

    def add(self, rec: dict) -> None:
        self.records.append(rec)
        self.write()

    def write(self, summary: str = "") -> None:
        atomic_write_json(self.out / "results.json", self.records)
        md = f"# {self.title}\n\n" + (self.table(self.records) if self.table else records_table(self.records))
        if summary:
            md += "\n" + summary + "\n"
        atomic_write_bytes(self.out / "results.md", md.encode())


def records_table(records: list[dict], columns=("model", "seed", "test_errors", "test_accuracy",
                                                  "wall_seconds", "params")) -> str:
    cols = [c for c in columns if any(c in r for r in records)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.1f}"
    return "" if v is None else str(v)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_mean_std(values: list[float], digits: int = 1) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def gap_closed(teacher: float, hard: float, distilled: float) -> float:
    """Fraction of the teacher-student gap that distillation closes: (hard - distilled)/(hard - teacher)."""
    if hard == teacher:
        return float("nan")
    return (hard - distilled) / (hard - teacher)


def load_records(out: Path) -> list[dict]:
    p = Path(out) / "results.json"
    return json.loads(p.read_text()) if p.is_file() else []

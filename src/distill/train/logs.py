"""What a run leaves to look at while and after it trains: ``metrics.csv`` in its run folder
(:class:`MetricsLog`), TensorBoard event files when ``tensorboard`` is installed
(:class:`TensorBoardLog`), and the user's ``callbacks`` (:func:`check_callbacks`).

``metrics.csv`` has one row per ``log_every`` optimiser steps (``kind=step``) and one per epoch
(``kind=epoch``); its columns are :data:`FIRST_COLUMNS`, then the loss terms and the metrics in the
order they first appear. Every row is appended and fsynced on its own, so a crash loses at most
the row being written. A resumed run keeps the rows of the epochs its saved state covers, drops
the rest (and any half-written line) and writes them again, so the file ends with exactly one row
per step and epoch however often the run was killed.

The callback protocol is one method: ``on_epoch_end(record)``, called on process 0 after every
epoch with the epoch's record (the dict that :attr:`distill.FitResult.history` collects: epoch, lr,
train loss and its terms, val/test metrics, seconds). What it returns is ignored; an exception it
raises stops the run like any error (the last saved epoch is kept).
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from distill.atomic import atomic_write_bytes, fault_point
from distill.errors import DistillError

#: the columns every ``metrics.csv`` starts with
FIRST_COLUMNS = ("kind", "epoch", "step", "lr", "loss")
#: its file name in a run folder
METRICS_FILE = "metrics.csv"
#: TensorBoard's subfolder of a run folder
TENSORBOARD_DIR = "tensorboard"


def _cell(v) -> str:
    """A CSV cell: numbers in full precision (``repr``), nothing for None."""
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return str(v)


def read_metrics(path) -> list[dict]:
    """The rows of a ``metrics.csv`` as dicts, numbers as floats (ints for ``epoch`` and ``step``),
    empty cells left out; a last line without its newline (a write cut short) is ignored."""
    text = Path(path).read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row = {}
        for k, v in raw.items():
            if k is None or v in (None, ""):
                continue
            if k == "kind":
                row[k] = v
                continue
            try:
                row[k] = int(v) if k in ("epoch", "step") else float(v)
            except ValueError:
                row[k] = v
        rows.append(row)
    return rows


class MetricsLog:
    """``metrics.csv`` in ``folder`` (module docstring). ``kept_epochs``: the epochs the run's saved
    state covers (0 for a fresh run): their rows stay, every later one is dropped."""

    def __init__(self, folder, kept_epochs: int = 0):
        self.path = Path(folder) / METRICS_FILE
        self.columns: list[str] = list(FIRST_COLUMNS)
        rows = []
        if kept_epochs and self.path.is_file():
            rows = [r for r in read_metrics(self.path) if r.get("epoch", 0) <= kept_epochs]
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), [])
            self.columns += [c for c in header if c not in self.columns]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        """The whole file anew (header and ``rows``), atomically: at the start, and when a row
        brings a column the header lacks."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in self.columns])
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def write(self, row: dict) -> None:
        """Append ``row`` (a new column rewrites the file with it), then fsync."""
        new = [k for k in row if k not in self.columns]
        if new:
            rows = read_metrics(self.path)
            self.columns += new
            self._rewrite(rows)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([_cell(row.get(c)) for c in self.columns])
        try:
            with open(self.path, "a") as f:
                f.write(buf.getvalue())
                f.flush()
                fault_point(f"append {self.path}")
                os.fsync(f.fileno())
        except OSError as e:
            raise DistillError(f"cannot write {self.path} ({e.strerror})") from None
        fault_point(f"fsync {self.path}")


class TensorBoardLog:
    """TensorBoard event files in ``folder/tensorboard`` (``tensorboard --logdir runs/`` then
    shows every run under ``runs/`` side by side). A resumed run purges the events after its saved
    state (``purge_step``), so no step is drawn twice. Scalars only: the loss and its terms per
    step, every numeric field of the epoch record per epoch (tagged ``epoch/<field>``)."""

    def __init__(self, folder, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DistillError("tensorboard=True needs the tensorboard package: pip install 'distill[tensorboard]' "
                               "(or pip install tensorboard)") from None
        self.writer = SummaryWriter(str(Path(folder) / TENSORBOARD_DIR), purge_step=purge_step or None)

    def write(self, row: dict) -> None:
        step = row["step"]
        prefix = "step" if row["kind"] == "step" else "epoch"
        for k, v in row.items():
            if k not in ("kind", "epoch", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def check_callbacks(callbacks) -> list:
    """``callbacks`` as a list, each checked to have the protocol's method (one line otherwise)."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]
    for cb in callbacks:
        if not callable(getattr(cb, "on_epoch_end", None)):
            raise ValueError(f"a callback must have an on_epoch_end(record) method; {type(cb).__name__} has none")
    return list(callbacks)

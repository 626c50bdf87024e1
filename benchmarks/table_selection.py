"""Does choosing a small table's model by cross-validation beat the fixed MLP? Nested
cross-validation through the CLI, the 20 % test split (the one ``distill`` holds out) never read:

    python benchmarks/table_selection.py [--tables wine iris cancer digits wide narrow] [--folds 5] [--margin M]

For each table the training 80 % is cut into ``--folds`` stratified outer folds; each outer fold in
turn is written as ``test.csv`` beside the other folds' ``train.csv``, and ``distill teacher`` runs
twice on it: with default flags (its model chosen by the inner 5-fold cross-validation on
``train.csv``) and pinned to the MLP the defaults used before (``--hidden W W --weight-decay 0``).
Prints the outer-fold errors of both, per table and summed, and how often each candidate was chosen.
Tables: scikit-learn's wine, iris, breast cancer and digits (as 64 columns), and the synthetic
``wide`` (300 rows, 500 features, 10 informative: more features than rows) and ``narrow`` (400
rows, 20 features, 5 informative) of ``own_data_files.py``.
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from own_data_files import SYNTHETIC, synthetic  # (this folder)

from distill.data.dataset import stratified_indices
from distill.train.crossval import stratified_folds
from distill.train.recipes import data_defaults


def table(name: str) -> pd.DataFrame:
    from sklearn import datasets

    if name in SYNTHETIC:
        return synthetic(name)
    loader = dict(wine=datasets.load_wine, iris=datasets.load_iris, cancer=datasets.load_breast_cancer,
                  digits=datasets.load_digits)[name]
    return loader(as_frame=True).frame.rename(columns={"target": "label"})


#: runs the CLI with DATA_RECIPE.cv_margin set to argv[1] (the recipe's value, varied for this measurement)
WITH_MARGIN = ("import dataclasses, sys; import distill.cli.train as t; "
               "t.DATA_RECIPE = dataclasses.replace(t.DATA_RECIPE, cv_margin=float(sys.argv[1])); "
               "from distill.cli import main; sys.exit(main(sys.argv[2:]))")


def teacher(folder: Path, out: Path, held: int, *flags, margin: float | None = None) -> tuple[int, dict]:
    """The test errors of ``distill teacher`` on ``folder`` and its model selection; a run that
    diverges (exit 2) counts all ``held`` test rows as errors."""
    cli = [sys.executable, "-m", "distill"] if margin is None else [sys.executable, "-c", WITH_MARGIN, str(margin)]
    cmd = [*cli, "teacher", "--data", str(folder), "--target", "label", "--out", str(out), "--no-progress", *flags]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode == 2 and "diverged" in r.stderr:
        return held, {"chosen": "(diverged)"}
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    side = json.loads((out / "model.json").read_text())
    return int(side["test"]["errors"]), side.get("model_selection", {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", nargs="+", default=["wine", "iris", "cancer", "digits", "wide", "narrow"])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--margin", type=float, help="DATA_RECIPE.cv_margin for this measurement (default: the recipe's)")
    args = ap.parse_args()
    total = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tables:
            df = table(name)
            y = torch.as_tensor(pd.factorize(df["label"], sort=True)[0])
            test = stratified_indices(y, round(0.2 * len(y)), 0)  # distill's held-out test rows: left out
            keep = np.ones(len(y), dtype=bool)
            keep[test.numpy()] = False
            train = df[keep].reset_index(drop=True)
            outer = stratified_folds(y[torch.from_numpy(keep)], args.folds, seed=1).numpy()
            chose, cv_errors, fixed_errors = collections.Counter(), 0, 0
            width = data_defaults(int((outer != 0).sum()), df.shape[1] - 1, False, 128, 20)["teacher_hidden"][0]
            for f in range(args.folds):
                folder = Path(tmp) / f"{name}-{f}"
                folder.mkdir()
                train[outer != f].to_csv(folder / "train.csv", index=False)
                train[outer == f].to_csv(folder / "test.csv", index=False)
                held = int((outer == f).sum())
                e, sel = teacher(folder, folder / "cv", held, margin=args.margin)
                cv_errors += e
                chose[sel.get("chosen", "(no choice)")] += 1
                fixed_errors += teacher(folder, folder / "fixed", held, "--hidden", str(width), str(width),
                                        "--weight-decay", "0")[0]
            total.update(rows=len(train), cv=cv_errors, fixed=fixed_errors)
            print(f"{name:7s} {len(train):5d} rows: chosen by cross-validation {cv_errors:4d} errors, "
                  f"MLP {width}-{width} {fixed_errors:4d}; chosen: {dict(chose)}", flush=True)
    print(f"all     {total['rows']:5d} rows: chosen by cross-validation {total['cv']:4d} errors, "
          f"the fixed MLP {total['fixed']:4d}")


if __name__ == "__main__":
    main()

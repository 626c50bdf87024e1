"""scikit-learn's LogisticRegression on the splits `distill teacher --data FILE --target label`
trains and tests on (its default 20 % test split: stratified, seed 0), raw and standardised (a
table with text columns or empty cells: mean-imputed and standardised numbers, one-hot texts):

    python benchmarks/own_data_baselines.py own-data/wine.csv own-data/iris.csv own-data/cancer.csv
"""
from __future__ import annotations

import sys
import warnings

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from distill.cli.common import TEST_FRACTION
from distill.data.files import load_files


def main(paths) -> None:
    warnings.filterwarnings("ignore")  # lbfgs convergence notes on the raw features
    for f in paths:
        d = load_files(f, target="label", log=lambda *a: None).holdout(0.0, TEST_FRACTION, 0)
        xtr, ytr, xte, yte = d.train.x.numpy(), d.train.y.numpy(), d.test.x.numpy(), d.test.y.numpy()
        if d.categories or np.isnan(xtr).any():
            text = [j for j, c in enumerate(d.features) if c in d.categories]
            numbers = [j for j in range(len(d.features)) if j not in text]
            prep = ColumnTransformer([("n", make_pipeline(SimpleImputer(), StandardScaler()), numbers),
                                      ("t", OneHotEncoder(handle_unknown="ignore"), text)])
            # a missing text is NaN; one-hot encoding treats it as one more category
            acc = make_pipeline(prep, LogisticRegression(max_iter=1000)).fit(xtr, ytr).score(xte, yte)
            print(f"{f}: {len(yte)} test rows; LogisticRegression imputed, standardised and one-hot {100 * acc:.2f} %")
            continue
        raw = LogisticRegression(max_iter=1000).fit(xtr, ytr).score(xte, yte)
        std = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(xtr, ytr).score(xte, yte)
        print(f"{f}: {len(yte)} test rows; LogisticRegression raw {100 * raw:.2f} %, standardised {100 * std:.2f} %")


if __name__ == "__main__":
    main(sys.argv[1:])

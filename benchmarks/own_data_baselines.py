"""scikit-learn's LogisticRegression on the splits `distill teacher --data FILE --target label`
trains and tests on (its default 20 % test split: stratified, seed 0), raw and standardised:

    python benchmarks/own_data_baselines.py own-data/wine.csv own-data/iris.csv own-data/cancer.csv
"""
from __future__ import annotations

import sys
import warnings

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from distill.cli.common import TEST_FRACTION
from distill.data.files import load_files


def main(paths) -> None:
    warnings.filterwarnings("ignore")  # lbfgs convergence notes on the raw features
    for f in paths:
        d = load_files(f, target="label", log=lambda *a: None).holdout(0.0, TEST_FRACTION, 0)
        xtr, ytr, xte, yte = d.train.x.numpy(), d.train.y.numpy(), d.test.x.numpy(), d.test.y.numpy()
        raw = LogisticRegression(max_iter=1000).fit(xtr, ytr).score(xte, yte)
        std = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(xtr, ytr).score(xte, yte)
        print(f"{f}: {len(yte)} test rows; LogisticRegression raw {100 * raw:.2f} %, standardised {100 * std:.2f} %")


if __name__ == "__main__":
    main(sys.argv[1:])

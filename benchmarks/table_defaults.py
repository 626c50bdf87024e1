"""How the table defaults of `distill teacher --data TABLE` were chosen: 5-fold cross-validation on
the training part of four scikit-learn tables (wine, iris, breast cancer, digits as a 64-column
table), their 20 % test split (the one `distill` holds out: stratified, seed 0) never read.

    python benchmarks/table_defaults.py

Each variant changes one setting of the defaults (:func:`distill.train.recipes.data_defaults`: an
MLP of two hidden layers, standardised inputs, SGD at lr 0.1, dropout 0.2 on the hidden units, the
batch and epochs from the data); a run that diverges counts as all its fold's examples wrong.
Prints the cross-validated errors and NLL per table and summed over the four.
"""
import math, sys, warnings, numpy as np, torch
warnings.filterwarnings("ignore")
from sklearn.datasets import load_wine, load_iris, load_breast_cancer, load_digits
from distill import fit, TrainConfig
from distill.models import MLP, Standardize
from distill.models.preprocess import feature_stats
from distill.data.dataset import stratified_indices
from distill.train.recipes import data_defaults
torch.set_num_threads(1)
VARIANTS = {
    "width 4 x features": dict(width_mul=2),
    "wd 1e-3": dict(weight_decay=1e-3),
    "wd 1e-2": dict(weight_decay=1e-2),
    "dropout 0.5": dict(dropout=0.5),
    "dropout 0": dict(dropout=0.0),
    "lr 0.03": dict(lr=0.03),
    "width 2 x features (chosen)": dict(),
    "lr 0.03 wd 1e-3": dict(lr=0.03, weight_decay=1e-3),
    "adam 1e-3": dict(optimizer="adam", lr=1e-3),
    "adam 1e-3 wd": dict(optimizer="adamw", lr=1e-3, weight_decay=1e-2),
}
def run(x, y, xv, yv, v, seed):
    n, d = x.shape
    dd = data_defaults(n, d, False, 128, 20)
    w = dd["teacher_hidden"][0] * v.get("width_mul", 1)  # data_defaults' width, or twice it
    torch.manual_seed(seed)
    mean, std = feature_stats(x)
    m = Standardize(MLP(d, [w, w], int(y.max()) + 1, 0.0, v.get("dropout", 0.2), 3.5), mean=mean, std=std)
    cfg = TrainConfig(epochs=dd["epochs"], batch_size=dd["batch_size"], lr=v.get("lr", 0.1), seed=seed,
                      weight_decay=v.get("weight_decay", 0.0), optimizer=v.get("optimizer", "sgd"))
    try:
        r = fit(m, (x, y), cfg, test=(xv, yv), progress=False, log=lambda *a: None)
    except Exception as e:
        print("  diverged:", str(e)[:60])
        return len(yv), math.log(int(y.max()) + 1)
    return r.test["errors"], r.test["nll"]
res = {k: [0, 0.0, 0] for k in VARIANTS}
for name, loader in (("wine", load_wine), ("iris", load_iris), ("cancer", load_breast_cancer), ("digits", load_digits)):
    b = loader(); X = torch.tensor(b.data, dtype=torch.float32); Y = torch.tensor(b.target)
    test = stratified_indices(Y, round(0.2 * len(Y)), 0)
    keep = torch.ones(len(Y), dtype=bool); keep[test] = False
    X, Y = X[keep], Y[keep]
    folds = torch.randperm(len(Y), generator=torch.Generator().manual_seed(1)) % 5
    for k, v in VARIANTS.items():
        e = nll = 0.0
        for f in range(5):
            tr, va = folds != f, folds == f
            ee, nn_ = run(X[tr], Y[tr], X[va], Y[va], v, f)
            e += ee; nll += nn_ * int(va.sum())
        res[k][0] += e; res[k][1] += nll; res[k][2] += len(Y)
        print(f"{name:7s} {k:12s} cv errors {int(e):4d}/{len(Y)}  nll {nll/len(Y):.3f}", flush=True)
print("all:")
for k, (e, nll, n) in res.items():
    print(f"  {k:12s} errors {int(e)}/{n} ({100*e/n:.2f}%)  nll {nll/n:.3f}")

"""Writes the data the "defaults beyond MNIST" runs use (docs/results.md), from what scikit-learn
ships and Pillow draws, into a folder:

    python benchmarks/own_data_files.py OUT

OUT/wine.csv, OUT/iris.csv, OUT/cancer.csv and their .parquet twins (the features as scikit-learn
gives them, unscaled, and a `label` column), OUT/digits.csv (its 8x8 images as 64 columns),
OUT/wide.csv and OUT/narrow.csv (:func:`synthetic`), OUT/mixed.csv (:func:`mixed`: text columns
and empty cells), OUT/passengers.csv (:func:`passengers`: Titanic-shaped), and OUT/shapes/<circle|square|triangle>/*.png: 300
32x32 RGB images of one filled shape each, random size, position and colours (seed 0).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


#: scikit-learn's make_classification(rows, features, n_informative=...) tables, random_state 0
SYNTHETIC = {"wide": (300, 500, 10),  # more features than rows
             "narrow": (400, 20, 5)}


def synthetic(name: str):
    """The synthetic table ``name`` of :data:`SYNTHETIC` as a DataFrame: columns f0, f1, ... and label."""
    import pandas as pd
    from sklearn.datasets import make_classification

    rows, cols, informative = SYNTHETIC[name]
    x, y = make_classification(rows, cols, n_informative=informative, random_state=0)
    df = pd.DataFrame(x, columns=[f"f{j}" for j in range(cols)])
    df["label"] = y
    return df


def mixed(n: int = 400, seed: int = 0):
    """A penguin-like table: three species told by an island (a text column, 20 % of rows on a
    random one), a body mass and a bill length (numbers), and a sex (text, uninformative); 5 % of
    the masses and of the sexes are empty."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    islands = np.array(["Biscoe", "Dream", "Torgersen"])
    island = np.where(rng.random(n) < 0.8, islands[y], islands[rng.integers(0, 3, n)])
    df = pd.DataFrame(dict(island=island, mass=3000 + 800 * y + rng.normal(0, 300, n),
                           bill=40 + 3 * (y == 1) + rng.normal(0, 2, n), sex=rng.choice(["male", "female"], n),
                           label=np.array(["Adelie", "Chinstrap", "Gentoo"])[y]))
    df.loc[rng.random(n) < 0.05, "mass"] = np.nan
    df.loc[rng.random(n) < 0.05, "sex"] = np.nan
    return df


def passengers(n: int = 891, seed: int = 1):
    """A Titanic-shaped table: survival from sex, class and age (logistic), an age empty on 20 % of
    rows, a port on 0.3 %, and columns a model should not one-hot: a name and a ticket per row and a
    cabin on 23 % (891 / about 500 / about 110 distinct texts), and a passenger id."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    sex = rng.choice(["male", "female"], n, p=[0.65, 0.35])
    pclass = rng.choice([1, 2, 3], n, p=[0.24, 0.21, 0.55])
    age = np.clip(rng.normal(30, 14, n), 0.5, 80)
    logit = 2.4 * (sex == "female") - 0.9 * (pclass - 2) - 0.03 * (age - 30) - 0.8
    survived = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    age[rng.random(n) < 0.2] = np.nan
    return pd.DataFrame(dict(
        PassengerId=np.arange(1, n + 1), label=survived, Pclass=pclass, Name=[f"Person {i}" for i in range(n)],
        Sex=sex, Age=age, SibSp=rng.integers(0, 4, n), Parch=rng.integers(0, 3, n),
        Ticket=[f"T{t}" for t in rng.integers(0, 681, n)], Fare=np.round(rng.gamma(2, 15, n) * (4 - pclass), 2),
        Cabin=np.where(rng.random(n) < 0.23, [f"C{c}" for c in rng.integers(0, 147, n)], None),
        Embarked=rng.choice(np.array(["S", "C", "Q", None], dtype=object), n, p=[0.72, 0.19, 0.087, 0.003])))


def main(out: Path) -> None:
    import pandas as pd
    from PIL import Image, ImageDraw
    from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine

    out.mkdir(parents=True, exist_ok=True)
    for name, loader in (("wine", load_wine), ("iris", load_iris), ("cancer", load_breast_cancer)):
        d = loader()
        df = pd.DataFrame(d.data, columns=[c.replace(" ", "_") for c in d.feature_names])
        df["label"] = d.target
        df.to_csv(out / f"{name}.csv", index=False)
        df.to_parquet(out / f"{name}.parquet")
    load_digits(as_frame=True).frame.rename(columns={"target": "label"}).to_csv(out / "digits.csv", index=False)
    for name in SYNTHETIC:
        synthetic(name).to_csv(out / f"{name}.csv", index=False)
    mixed().to_csv(out / "mixed.csv", index=False)
    passengers().to_csv(out / "passengers.csv", index=False)
    rng = np.random.default_rng(0)
    names = ("circle", "square", "triangle")
    for i in range(300):
        k = i % 3
        img = Image.new("RGB", (32, 32), tuple(int(v) for v in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(img)
        s = int(rng.integers(8, 16))
        x, y = (int(v) for v in rng.integers(0, 32 - s, 2))
        colour = tuple(int(v) for v in rng.integers(120, 256, 3))
        if k == 0:
            draw.ellipse([x, y, x + s, y + s], fill=colour)
        elif k == 1:
            draw.rectangle([x, y, x + s, y + s], fill=colour)
        else:
            draw.polygon([(x, y + s), (x + s, y + s), (x + s // 2, y)], fill=colour)
        folder = out / "shapes" / names[k]
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:03d}.png")
    print(f"wrote {out}/wine|iris|cancer.csv|.parquet, {out}/digits|wide|narrow|mixed|passengers.csv and {out}/shapes/")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "own-data"))

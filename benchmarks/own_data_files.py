"""Writes the data the "defaults beyond MNIST" runs use (docs/results.md), from what scikit-learn
ships and Pillow draws, into a folder:

    python benchmarks/own_data_files.py OUT

OUT/wine.csv, OUT/iris.csv, OUT/cancer.csv and their .parquet twins (the features as scikit-learn
gives them, unscaled, and a `label` column), and OUT/shapes/<circle|square|triangle>/*.png: 300
32x32 RGB images of one filled shape each, random size, position and colours (seed 0).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(out: Path) -> None:
    import pandas as pd
    from PIL import Image, ImageDraw
    from sklearn.datasets import load_breast_cancer, load_iris, load_wine

    out.mkdir(parents=True, exist_ok=True)
    for name, loader in (("wine", load_wine), ("iris", load_iris), ("cancer", load_breast_cancer)):
        d = loader()
        df = pd.DataFrame(d.data, columns=[c.replace(" ", "_") for c in d.feature_names])
        df["label"] = d.target
        df.to_csv(out / f"{name}.csv", index=False)
        df.to_parquet(out / f"{name}.parquet")
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
    print(f"wrote {out}/wine|iris|cancer.csv|.parquet and {out}/shapes/")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "own-data"))

"""The demo data set: scikit-learn's real handwritten digits (1,797 8x8 images, 10 classes),
written as parquet (PNG bytes), as an image folder, and as held-back unlabeled rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_digits

from distdl.preprocessors.image import png_bytes


def write_digits(out: Path, holdout_fraction: float = 0.1, seed: int = 0) -> dict[str, Path]:
    """Write train.parquet, holdout.parquet and images/<label>/<id>.png under ``out``."""
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # (N, 8, 8), 0..16 -> 0..255
    order = np.random.default_rng(seed).permutation(len(images))
    n_hold = int(len(images) * holdout_fraction)
    parts = {"holdout": order[:n_hold], "train": order[n_hold:]}
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in parts.items():
        table = pa.table({
            "id": pa.array(rows, pa.int64()),
            "image": pa.array([png_bytes(images[i]) for i in rows], pa.binary()),
            "label": pa.array(digits.target[rows], pa.int64()),
        })
        pq.write_table(table, out / f"{name}.parquet")
    for i in parts["train"]:
        folder = out / "images" / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.png").write_bytes(png_bytes(images[i]))
    return {"train": out / "train.parquet", "holdout": out / "holdout.parquet", "images": out / "images"}

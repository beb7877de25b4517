"""Demo data sets, written locally (nothing is downloaded):

* digits: scikit-learn's real handwritten digits (1,797 8x8 images, 10 classes), written as
  parquet (PNG bytes), as an image folder, and as held-back rows;
* text: short synthetic sentences about one of four topics (a learnable text classification).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from sklearn.datasets import load_digits


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


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


# Each sentence draws a few words of its topic, maybe one word of another topic, and fillers.
TOPICS = {
    "sports": "match team goal coach score league player season stadium referee tournament striker victory "
              "defeat championship keeper penalty fans".split(),
    "food": "recipe bake flavor kitchen dinner spicy sauce chef oven bread salad dessert delicious lunch soup "
            "garlic noodles breakfast".split(),
    "tech": "software laptop server code network chip update app battery cloud robot data screen algorithm "
            "startup browser keyboard wireless".split(),
    "weather": "rain storm sunny forecast cloudy wind snow temperature humid thunder fog breeze frost drizzle "
               "heatwave umbrella showers icy".split(),
}
FILLERS = ("the a this that today yesterday really very quite we they people everyone said think about new old "
           "big small good bad after before during week morning night city local again still just our my").split()


def sentence(rng: np.random.Generator, topic: str) -> str:
    words = list(rng.choice(TOPICS[topic], size=rng.integers(2, 5)))
    if rng.random() < 0.5:  # one off-topic word, so a single word never decides
        other = rng.choice([t for t in TOPICS if t != topic])
        words.append(rng.choice(TOPICS[other]))
    words += list(rng.choice(FILLERS, size=rng.integers(4, 10)))
    rng.shuffle(words)
    return " ".join(words).capitalize() + "."


def write_text(out: Path, rows: int = 2000, holdout_fraction: float = 0.1, seed: int = 0) -> dict[str, Path]:
    """Write train.parquet and holdout.parquet (columns id, text, label) under ``out``."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(sorted(TOPICS), size=rows)
    texts = [sentence(rng, topic) for topic in labels]
    n_hold = int(rows * holdout_fraction)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("holdout", slice(0, n_hold)), ("train", slice(n_hold, rows))):
        ids = np.arange(rows)[part]
        table = pa.table({"id": pa.array(ids, pa.int64()), "text": pa.array(texts[part], pa.string()),
                          "label": pa.array(labels[part].tolist(), pa.string())})
        pq.write_table(table, out / f"{name}.parquet")
    return {"train": out / "train.parquet", "holdout": out / "holdout.parquet"}

"""Demo data sets written locally (no downloads), one writer per kind (``distdl demo-data --kind``):

* digits: scikit-learn's real handwritten digits (1,797 8x8 images, 10 classes), written as
  parquet (PNG bytes), as an image folder, and as held-back rows;
* sequences: noisy waveforms of 4 shapes and variable length (rnn classification);
* text: sentences from a small grammar, one per line, and prompts (rnn language model);
* speech: wav clips of synthesized tones and chirps in class folders (rnn on audio features);
* topics: short synthetic sentences about one of four topics (transformer text classification).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.io.wavfile
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


WAVES: dict[str, Callable[[np.ndarray], np.ndarray]] = {  # phase in cycles -> value in [-1, 1]
    "sine": lambda p: np.sin(2 * np.pi * p),
    "square": lambda p: np.sign(np.sin(2 * np.pi * p)),
    "sawtooth": lambda p: 2 * (p % 1) - 1,
    "triangle": lambda p: 2 * np.abs(2 * (p % 1) - 1) - 1,
}


def waveform_rows(rows: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Variable-length (16..64 steps) noisy waveforms of random frequency, phase and amplitude."""
    rng = np.random.default_rng(seed)
    names = sorted(WAVES)
    signals, labels = [], []
    for i in range(rows):
        name, length = names[i % len(names)], int(rng.integers(16, 65))
        phase = rng.uniform(0, 1) + np.arange(length) * rng.uniform(2, 4) / 32  # 2..4 cycles per 32 steps
        signal = rng.uniform(0.5, 1.5) * WAVES[name](phase) + rng.normal(0, 0.15, length)
        signals.append(signal.astype(np.float32))
        labels.append(name)
    return signals, labels


def write_sequences(out: Path, rows: int = 1200, holdout: int = 100, seed: int = 0) -> dict[str, Path]:
    """train.parquet and holdout.parquet with columns id, sequence (list of floats), label."""
    out.mkdir(parents=True, exist_ok=True)
    signals, labels = waveform_rows(rows + holdout, seed)
    for name, part in (("train", slice(0, rows)), ("holdout", slice(rows, rows + holdout))):
        ids = np.arange(rows + holdout)[part]
        table = pa.table({"id": pa.array(ids, pa.int64()), "sequence": pa.array(signals[part], pa.list_(pa.float32())),
                          "label": labels[part]})
        pq.write_table(table, out / f"{name}.parquet")
    return {"train": out / "train.parquet", "holdout": out / "holdout.parquet"}


SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the robot", "a small bird", "our teacher"]
VERBS = ["sees", "likes", "chases", "finds", "paints", "follows", "carries"]
OBJECTS = ["the red ball", "a green apple", "the moon", "a wooden box", "the river", "two blue cups"]
ENDINGS = ["in the garden", "at night", "near the house", "every morning", "with great care", ""]


def sentences(rows: int, seed: int) -> list[str]:
    """Lines like "the robot paints a wooden box at night." from a small grammar."""
    rng = np.random.default_rng(seed)
    parts = [[str(w) for w in rng.choice(words, rows)] for words in (SUBJECTS, VERBS, OBJECTS, ENDINGS)]
    return [" ".join(w for w in words if w) + "." for words in zip(*parts)]


def write_text(out: Path, rows: int = 3000, seed: int = 0) -> dict[str, Path]:
    """train.txt (one sentence per line) and prompts.jsonl (id, text) for generation."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text("".join(f"{line}\n" for line in sentences(rows, seed)))
    prompts = [*SUBJECTS, "the cat sees", "my sister likes the", "a dog chases a"]
    (out / "prompts.jsonl").write_text("".join(json.dumps({"id": i, "text": p}) + "\n" for i, p in enumerate(prompts)))
    return {"train": out / "train.txt", "prompts": out / "prompts.jsonl"}


def chirp(kind: str, seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A clip of one class: a steady tone, a rising or falling chirp, or a warbling tone, plus noise."""
    t = np.arange(int(seconds * rate)) / rate
    low, high = rng.uniform(300, 600), rng.uniform(1200, 2000)
    hz = {"tone": np.full_like(t, low), "up": low + (high - low) * t / seconds,
          "down": high - (high - low) * t / seconds, "warble": low * (1 + 0.3 * np.sin(2 * np.pi * 6 * t))}[kind]
    wave = np.sin(2 * np.pi * np.cumsum(hz) / rate) * rng.uniform(0.3, 0.9)
    return wave + rng.normal(0, 0.05, len(t))


def write_speech(out: Path, per_class: int = 60, holdout: int = 10, rate: int = 8000, seed: int = 0) -> dict[str, Path]:
    """train/<class>/<n>.wav and holdout/<class>/<n>.wav: 16-bit mono clips of 0.3..0.8 s."""
    rng = np.random.default_rng(seed)
    for kind in ("tone", "up", "down", "warble"):
        for n in range(per_class + holdout):
            folder = out / ("train" if n < per_class else "holdout") / kind
            folder.mkdir(parents=True, exist_ok=True)
            clip = chirp(kind, rng.uniform(0.3, 0.8), rate, rng)
            scipy.io.wavfile.write(folder / f"{n:03d}.wav", rate, (np.clip(clip, -1, 1) * 32767).astype(np.int16))
    return {"train": out / "train", "holdout": out / "holdout"}


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


def write_topics(out: Path, rows: int = 2000, holdout_fraction: float = 0.1, seed: int = 0) -> dict[str, Path]:
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


WRITERS: dict[str, Callable[[Path], dict[str, Path]]] = {
    "digits": write_digits, "sequences": write_sequences, "text": write_text, "speech": write_speech,
    "topics": write_topics,
}

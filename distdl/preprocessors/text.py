"""Character-level text (rnn family, language_model): a vocabulary fitted on the driver,
training windows cut from the text stream, and prompts encoded for generation.

Training rows are lines of text (the "text" reader gives one row per line). A batch's
lines are joined with newlines and cut into windows of ``block_size + 1`` characters that
overlap by one, so every next-character pair of the batch is predicted exactly once. The
vocabulary (id -> character) is plain JSON in every checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import ray.data

from distdl.preprocessors.base import BadInputError, JsonState, ragged, require_column, where

UNKNOWN = "\ufffd"  # id 0: a character the training text did not have (e.g. only in the val split)


def lines(batch: dict[str, np.ndarray], column: str) -> list[str]:
    values = batch[column]
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise BadInputError(f"column '{column}' ({where(batch, i)}) holds {type(value).__name__}, not text")
    return list(values)


@dataclass
class CharPreprocessor(JsonState):
    input_column: str
    vocab: list[str]  # id -> character; vocab[0] is UNKNOWN
    block_size: int  # characters a training window predicts
    max_length: int  # longest prompt accepted, in characters
    kind: str = "chars"

    # ---- per batch -------------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw lines -> {"x": ragged int64 windows (<= block_size + 1,), "lengths": (N,)}; a window
        predicts its characters 1..L-1 from those before; only a batch's last is shorter."""
        ids = self.encode("".join(f"{line}\n" for line in lines(batch, self.input_column)))
        return ragged([ids[s:s + self.block_size + 1] for s in range(0, len(ids) - 1, self.block_size)])

    def encode(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.vocab)}
        return np.fromiter((index.get(c, 0) for c in text), dtype=np.int64, count=len(text))

    def text(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids)

    def decode(self, value: object, where: str = "a row") -> np.ndarray:
        """One prompt -> its ids (T,); empty, over-long or unseen characters are BadInputError."""
        if not isinstance(value, str):
            raise BadInputError(f"prompt ({where}) must be text, got {type(value).__name__}")
        if not value:
            raise BadInputError(f"prompt ({where}) is empty; generation needs at least one character")
        if len(value) > self.max_length:
            raise BadInputError(f"prompt ({where}) has {len(value)} characters, more than max_length {self.max_length}")
        unseen = sorted(set(value) - set(self.vocab[1:]))
        if unseen:
            raise BadInputError(f"prompt ({where}) has characters the training text did not: {unseen[:10]}")
        return self.encode(value)

    def features(self, examples: list[np.ndarray]) -> dict[str, np.ndarray]:
        return ragged(examples)

    # ---- persistence -----------------------------------------------------------------
    def describe(self) -> str:
        return f"{len(self.vocab)} characters; training windows of {self.block_size}"


def _characters(batch: dict[str, np.ndarray], column: str) -> dict[str, np.ndarray]:
    return {"char": np.array(sorted(set("".join(lines(batch, column)))), dtype=object)}


def fit(ds: ray.data.Dataset, input_column: str, block_size: int, max_length: int) -> CharPreprocessor:
    """The vocabulary from a full pass over the training text (driver side), plus newline."""
    require_column(ds, input_column, "text")
    found = ds.select_columns([input_column]).map_batches(
        _characters, fn_kwargs={"column": input_column}, batch_format="numpy").unique("char")
    chars = sorted((set(found) | {"\n"}) - {UNKNOWN})
    return CharPreprocessor(input_column, [UNKNOWN, *chars], block_size, max_length)

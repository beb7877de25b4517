"""Sequence preprocessing (rnn family, classification): each row becomes float steps (T, F).

A row is a list of numbers (one value per step), a list of equal-length number lists (a
feature vector per step), or a wav file whose log-mel/MFCC frames are the steps. Rows keep
their own length: the batch carries them as a ragged "x" plus "lengths", and the collate
function pads per batch. Per-feature mean/std and the class list are fitted on the driver
and saved as JSON in every checkpoint.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterator, Literal, Optional

import numpy as np

import ray.data

from distdl.paths import read_bytes
from distdl.preprocessors import audio
from distdl.preprocessors.base import BadInputError, JsonState, fit_classes, ragged, require_column, transform, where
from distdl.specbase import check, knob


@dataclass
class SequencePreprocessSpec:
    """The spec's ``preprocess`` section for the rnn family."""
    input: Literal["sequence", "audio"] = knob("sequence", help="classification rows: lists of numbers, or wav "
                                                                "files (bytes or paths)")
    normalize: bool = knob(True, help="subtract the per-feature mean, divide by the std (fitted on `fit_rows` rows)")
    max_length: int = knob(4096, help="longest row accepted (steps, audio frames, prompt characters)")
    fit_rows: int = knob(1024, help="rows decoded on the driver to fit mean/std")
    block_size: int = knob(128, help="language_model: characters per training window")
    audio: audio.AudioSpec = knob(factory=audio.AudioSpec, help="`input: audio` only: how wav files become frames")

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(self.max_length >= 1, "max_length", f"must be >= 1, got {self.max_length}")
        yield from check(self.fit_rows >= 1, "fit_rows", f"must be >= 1, got {self.fit_rows}")
        yield from check(self.block_size >= 1, "block_size", f"must be >= 1, got {self.block_size}")


@dataclass
class SequencePreprocessor(JsonState):
    input_column: str
    label_column: str
    input_size: int  # values per step; 0 only while fitting
    mean: list[float]  # per feature
    std: list[float]
    classes: list[Any]  # class index -> label value as found in the data
    max_length: int
    audio: Optional[dict] = None  # an AudioSpec as a dict when rows are wav files
    kind: str = "sequence"

    # ---- per batch -------------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw batch -> {"x": ragged float32 (T_i, F), "lengths": int64 (N,), "y": int64 (N,)}."""
        return transform(self, batch)

    def features(self, examples: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Decoded rows (T_i, F) -> normalized model inputs {"x", "lengths"}."""
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return ragged([(e - mean) / std for e in examples])

    def decode(self, value: Any, where: str = "a row") -> np.ndarray:
        """One raw row -> float32 steps (T, F); BadInputError naming the row if it cannot be."""
        try:
            steps = self._wav(value) if self.audio else self._numbers(value)
        except BadInputError as exc:
            raise BadInputError(f"{exc} ({where})") from None
        except (ValueError, TypeError, OSError) as exc:  # numpy/scipy/pyarrow say why in many types
            kind = "wav file" if self.audio else "sequence"
            raise BadInputError(f"cannot decode {kind} in column '{self.input_column}' ({where}): {exc}") from None
        return self._checked(steps, where)

    def _wav(self, value: Any) -> np.ndarray:
        if isinstance(value, str):
            value = read_bytes(value)
        if not isinstance(value, (bytes, bytearray)):
            raise BadInputError(f"expected wav bytes or a file path, got {type(value).__name__}")
        spec = audio.AudioSpec(**self.audio)
        samples = audio.read_wav(bytes(value), spec.sample_rate, spec.max_samples(self.max_length))
        return audio.features(samples, spec)

    def _numbers(self, value: Any) -> np.ndarray:
        if value is None or isinstance(value, (str, bytes)):
            raise BadInputError(f"expected a list of numbers or of number lists, got {type(value).__name__}")
        arr = np.asarray(value)
        if arr.dtype == object:  # a list of per-step vectors (parquet/JSON nesting)
            arr = np.stack([np.asarray(v, dtype=np.float32) for v in arr]) if len(arr) else arr
        arr = arr.astype(np.float32)
        return arr[:, None] if arr.ndim == 1 else arr

    def _checked(self, steps: np.ndarray, where: str) -> np.ndarray:
        if steps.ndim != 2 or len(steps) == 0:
            raise BadInputError(f"sequence ({where}) has shape {steps.shape}; expected (steps >= 1,) or (steps, features)")
        if self.input_size and steps.shape[1] != self.input_size:
            raise BadInputError(f"sequence ({where}) has {steps.shape[1]} values per step; "
                                f"the model was fitted on {self.input_size}")
        if len(steps) > self.max_length:
            raise BadInputError(f"sequence ({where}) has {len(steps)} steps, more than max_length {self.max_length}")
        if not np.isfinite(steps).all():
            raise BadInputError(f"sequence ({where}) holds NaN or infinity")
        return steps

    # ---- persistence -----------------------------------------------------------------
    def describe(self) -> str:
        source = f"{self.audio['features']} frames of wav files" if self.audio else "numeric sequences"
        return (f"{len(self.classes)} classes; {source}, {self.input_size} value(s) per step, "
                f"up to {self.max_length} steps")


def fit(ds: ray.data.Dataset, input_column: str, label_column: str,
        cfg: SequencePreprocessSpec) -> SequencePreprocessor:
    """Fit on the driver: classes from a full pass over the labels; the step width and the
    per-feature mean/std from the first ``fit_rows`` decoded rows."""
    require_column(ds, input_column, "input")
    classes = fit_classes(ds, label_column)
    pre = SequencePreprocessor(input_column, label_column, 0, [], [], classes, cfg.max_length,
                               asdict(cfg.audio) if cfg.input == "audio" else None)
    sample = ds.limit(cfg.fit_rows).take_batch(cfg.fit_rows, batch_format="numpy")
    rows = [pre.decode(v, where(sample, i)) for i, v in enumerate(sample[input_column])]
    widths = sorted({r.shape[1] for r in rows})
    if len(widths) != 1:
        raise BadInputError(f"rows of column '{input_column}' have {widths} values per step; all need the same")
    pre.input_size = widths[0]
    steps = np.concatenate(rows)  # (sum of T, F)
    normalize = cfg.normalize
    pre.mean = steps.mean(axis=0).tolist() if normalize else [0.0] * pre.input_size
    pre.std = [max(s, 1e-6) for s in steps.std(axis=0).tolist()] if normalize else [1.0] * pre.input_size
    return pre

"""Preprocessor: fitted once on the driver, then applied per batch by Ray Data.

Its state (image size, channels, mean/std, class list) is plain JSON saved in every
checkpoint, so training, scoring and serving apply exactly the same transform.
Augmentation is a separate step that only the training pipeline adds.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

import ray.data

from distdl.paths import read_bytes


class BadInputError(ValueError):
    """An input value (image, label) that cannot be turned into a model input."""


@dataclass
class ImagePreprocessor:
    input_column: str
    label_column: str
    size: int
    channels: int
    mean: list[float]
    std: list[float]
    classes: list[Any]  # class index -> label value as found in the data
    kind: str = "image"

    # ---- per batch -------------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw batch -> {"x": float32 (N, C, H, W), "y": int64 (N,) when labels are present}."""
        values = batch[self.input_column]
        out = {"x": self.normalize(np.stack([self.decode(v, _where(batch, i)) for i, v in enumerate(values)]))}
        if self.label_column in batch:
            out["y"] = self.encode_labels(batch[self.label_column], batch)
        return out

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Decoded pixels (N, H, W, C) in [0, 1] -> normalized float32 (N, C, H, W)."""
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(0, 3, 1, 2))

    def encode_labels(self, labels: np.ndarray, batch: dict[str, np.ndarray]) -> np.ndarray:
        index = {_plain(c): i for i, c in enumerate(self.classes)}
        out = np.empty(len(labels), dtype=np.int64)
        for i, label in enumerate(labels):
            key = _plain(label)
            if key not in index:
                raise BadInputError(f"label {key!r} ({_where(batch, i)}) is not one of the {len(self.classes)} "
                                    f"classes seen when fitting: {self.classes[:20]}")
            out[i] = index[key]
        return out

    def decode(self, value: Any, where: str = "a row") -> np.ndarray:
        """One image (encoded bytes, a path/URI, or a pixel array) -> float32 (H, W, C) in [0, 1]."""
        try:
            if isinstance(value, str):
                value = read_bytes(value)
            if isinstance(value, (bytes, bytearray)):
                return self._from_pil(Image.open(io.BytesIO(value)))
            return self._from_array(np.asarray(value))
        except BadInputError:
            raise
        except UnidentifiedImageError:
            raise BadInputError(f"cannot decode image in column '{self.input_column}' ({where}): "
                                "not a readable image file (PNG, JPEG, BMP, GIF, WebP, TIFF)") from None
        except Exception as exc:  # PIL and numpy raise many types; the user needs the row
            raise BadInputError(f"cannot decode image in column '{self.input_column}' ({where}): {exc}") from exc

    def _from_pil(self, img: Image.Image) -> np.ndarray:
        img = img.convert("L" if self.channels == 1 else "RGB")
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return arr.reshape(self.size, self.size, self.channels)

    def _from_array(self, arr: np.ndarray) -> np.ndarray:
        if arr.dtype == object:  # ragged nesting from JSON: stack the inner lists
            arr = np.stack([np.asarray(a) for a in arr])
        if arr.ndim == 1 and arr.size == self.size * self.size * self.channels:
            arr = arr.reshape(self.size, self.size, self.channels)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3):
            raise BadInputError(f"pixel array has shape {arr.shape}; expected (H, W), (H, W, 1|3) "
                                f"or a flat {self.size}x{self.size}x{self.channels}")
        scaled = arr.astype(np.float32) / 255.0 if np.issubdtype(arr.dtype, np.integer) else arr.astype(np.float32)
        if not np.isfinite(scaled).all():
            raise BadInputError("pixel array holds NaN or infinity")
        if arr.shape[2] != self.channels:
            scaled = scaled.mean(axis=2, keepdims=True) if self.channels == 1 else np.repeat(scaled, 3, axis=2)
        if scaled.shape[:2] != (self.size, self.size):
            planes = [Image.fromarray(scaled[:, :, c], mode="F").resize((self.size, self.size), Image.BILINEAR)
                      for c in range(self.channels)]
            scaled = np.stack([np.asarray(p) for p in planes], axis=2)
        return scaled

    # ---- persistence -----------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ImagePreprocessor":
        state = json.loads(text)
        if state.get("kind") != "image":
            raise ValueError(f"unknown preprocessor kind {state.get('kind')!r}")
        return cls(**state)


class Augment:
    """Training-only augmentation on preprocessed batches: random crop (zero pad) and h-flip."""

    def __init__(self, kinds: list[str]):
        self.kinds = kinds

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # A fresh generator per batch: this object is pickled into every task, so a
        # generator stored on it would replay the same "random" crops in every task.
        rng = np.random.default_rng()
        x = batch["x"]  # (N, C, H, W)
        n, _, h, w = x.shape
        if "random_crop" in self.kinds:
            pad = max(1, h // 8)
            padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
            dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
            x = np.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
        if "hflip" in self.kinds:
            flip = rng.random(n) < 0.5
            x = np.where(flip[:, None, None, None], x[..., ::-1], x)
        return {**batch, "x": np.ascontiguousarray(x, dtype=np.float32)}


def fit(ds: ray.data.Dataset, input_column: str, label_column: str, size: int, channels: int,
        mean: list[float] | None, std: list[float] | None, normalize: bool, fit_rows: int) -> ImagePreprocessor:
    """Fit on the driver: the class list from a full pass over the label column only, and
    mean/std from the first ``fit_rows`` decoded images (unless given)."""
    if label_column not in ds.columns():
        raise BadInputError(f"label column '{label_column}' not in the data; columns: {ds.columns()}")
    if input_column not in ds.columns():
        raise BadInputError(f"input column '{input_column}' not in the data; columns: {ds.columns()}")
    classes = sorted(_plain(v) for v in ds.select_columns([label_column]).unique(label_column))
    if len(classes) < 2:
        raise BadInputError(f"found {len(classes)} class(es) in column '{label_column}': {classes}; "
                            "classification needs at least 2 (image folders need one sub-folder per class)")
    pre = ImagePreprocessor(input_column, label_column, size, channels, [0.0] * channels, [1.0] * channels, classes)
    if normalize and (mean is None or std is None):
        sample = ds.limit(fit_rows).take_batch(fit_rows, batch_format="numpy")
        pixels = pre({k: v for k, v in sample.items() if k != label_column})["x"]  # (N, C, H, W)
        mean = mean or pixels.mean(axis=(0, 2, 3)).tolist()
        std = std or [max(s, 1e-6) for s in pixels.std(axis=(0, 2, 3)).tolist()]
    if normalize:
        pre.mean, pre.std = list(mean), list(std)
    return pre


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so labels compare and serialize as JSON."""
    return value.item() if isinstance(value, np.generic) else value


def _where(batch: dict[str, np.ndarray], i: int) -> str:
    if "path" in batch:
        return f"file {batch['path'][i]}"
    return f"row {i} of its batch"


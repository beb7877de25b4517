"""Image classification over HTTP: raw image bytes (octet-stream or multipart) or JSON with
base64 images or pixel arrays in; the top-k classes with probabilities out.

Only cheap checks happen here (content type, base64, counts, pixel limits, read from the
image header); decoding is left to the Predictor in the model replica, exactly as in batch
scoring, so HTTP and ``distdl score`` cannot disagree about what an image means.
"""
from __future__ import annotations

import io
from typing import Any, Union

import numpy as np
from fastapi import Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from distdl import checkpoint
from distdl.preprocessors.image import MAX_PIXELS, PIL_FORMATS
from distdl.serve import bodies, classify
from distdl.serve.schema import Limits, Parsed, Route, problem

# Integers are 0..255 and floats 0..1: the same rule as pixel columns in batch scoring, so
# the JSON number type is kept (StrictInt first) rather than coerced to float.
Number = Union[StrictInt, float]
Pixels = Union[list[Number], list[list[Number]], list[list[list[Number]]]]


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[Union[str, Pixels]] = Field(
        min_length=1, description="each a base64-encoded image file (PNG, JPEG, ...) or a pixel array: "
        "H x W, H x W x C or flat; integers are 0..255, floats 0..1")


def describe(checkpoint_path: str) -> dict:
    pre = checkpoint.load_preprocessor(checkpoint_path)
    return {"image_size": pre.size, "channels": pre.channels, "classes": pre.classes}


async def parse(request: Request, limits: Limits) -> Parsed:
    """The request's images as Predictor inputs: encoded bytes or pixel arrays."""
    rows = await bodies.rows(request, limits, "images", ImageRequest, _from_json)
    for i, row in enumerate(rows):
        _check_pixels(row, i, limits.max_image_pixels)
    return Parsed(rows)


def _from_json(item: str | list, i: int) -> bytes | np.ndarray:
    if isinstance(item, str):
        return bodies.from_base64(item, ["images", i])
    try:
        return np.asarray(item)
    except (ValueError, OverflowError) as exc:  # ragged rows, integers beyond int64
        raise problem(422, f"not a rectangular pixel array: {exc}", ["images", i]) from None


def _check_pixels(row: Any, i: int, max_pixels: int) -> None:
    max_pixels = min(max_pixels, MAX_PIXELS)  # the most the Predictor decodes, whatever the serve section says
    if isinstance(row, np.ndarray):
        pixels = row.size // (row.shape[2] if row.ndim == 3 and row.shape[2] else 1)
    else:
        try:  # the header only: no pixels are decoded here
            with Image.open(io.BytesIO(row), formats=PIL_FORMATS) as img:
                pixels = img.width * img.height
        except Image.DecompressionBombError as exc:
            raise problem(413, str(exc), ["images", i]) from None
        except Exception:  # not an image: the Predictor names the problem, as it does in scoring
            return
    if pixels > max_pixels:
        raise problem(413, f"image of {pixels} pixels; this model takes at most {max_pixels}", ["images", i])


ROUTE = Route(path="classify-image", items="images", summary="Classify images: top-k classes with probabilities",
            params=classify.ClassifyParams, request_body=bodies.request_body(ImageRequest, "images", "image file"),
            response=classify.ClassifyResponse, describe=describe, parse=parse, respond=classify.respond,
            predictor_options=classify.predictor_options)

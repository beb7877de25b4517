"""Image classification over HTTP: raw image bytes (octet-stream or multipart) or JSON with
base64 images or pixel arrays in; the top-k classes with probabilities out.

Only cheap checks happen here (content type, base64, counts, pixel limits, read from the
image header); decoding is left to the Predictor in the model replica, exactly as in batch
scoring, so HTTP and ``distdl score`` cannot disagree about what an image means.
"""
from __future__ import annotations

import base64
import io
from typing import Any, Optional, Union

import numpy as np
from fastapi import Request
from starlette.datastructures import UploadFile
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from distdl import checkpoint
from distdl.serve_schema import Limits, ModelInfo, Task, problem

# Integers are 0..255 and floats 0..1: the same rule as pixel columns in batch scoring, so
# the JSON number type is kept (StrictInt first) rather than coerced to float.
Number = Union[StrictInt, float]
Pixels = Union[list[Number], list[list[Number]], list[list[list[Number]]]]
JSON, OCTETS, MULTIPART = "application/json", "application/octet-stream", "multipart/form-data"


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[Union[str, Pixels]] = Field(
        min_length=1, description="each a base64-encoded image file (PNG, JPEG, ...) or a pixel array: "
        "H x W, H x W x C or flat; integers are 0..255, floats 0..1")


class ClassifyParams(BaseModel):
    top_k: Optional[int] = Field(None, ge=1, description="labels to list per image (default and most: the "
                                 "model's serve.top_k)")


class Scored(BaseModel):
    label: Union[StrictInt, str]
    probability: float


class Classification(Scored):
    top: list[Scored] = Field(description="best first")


class ClassifyImageResponse(BaseModel):
    model: str
    checkpoint_id: str
    predictions: list[Classification] = Field(description="one per image, in request order")


REQUEST_BODY = {"required": True, "content": {
    JSON: {"schema": ImageRequest.model_json_schema()},
    OCTETS: {"schema": {"type": "string", "format": "binary", "description": "one image file"}},
    MULTIPART: {"schema": {"type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                   "description": "one or more image files"}}}},
}}


def describe(checkpoint_path: str) -> dict:
    pre = checkpoint.load_preprocessor(checkpoint_path)
    return {"image_size": pre.size, "channels": pre.channels, "classes": pre.classes}


async def parse(request: Request, limits: Limits) -> list[Any]:
    """The request's images as Predictor inputs: encoded bytes or pixel arrays."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == JSON:
        items = ImageRequest.model_validate_json(await _body(request, limits)).images
        rows = [_from_json(item, i) for i, item in enumerate(items)]
    elif kind == OCTETS:
        rows = [await _body(request, limits)]
    elif kind == MULTIPART:
        rows = await _files(request, limits)
    else:
        raise problem(415, f"unsupported Content-Type {kind or '(none)'!r}: send {JSON}, {OCTETS} or {MULTIPART}")
    if len(rows) > limits.max_items_per_request:
        raise problem(413, f"{len(rows)} images in one request; this model takes at most "
                      f"{limits.max_items_per_request}")
    for i, row in enumerate(rows):
        _check_pixels(row, i, limits.max_image_pixels)
    return rows


def respond(info: ModelInfo, rows: list[dict], params: ClassifyParams) -> ClassifyImageResponse:
    k = min(params.top_k or info.limits.top_k, info.limits.top_k)
    predictions = [Classification(label=r["label"], probability=r["probability"], top=[
        Scored(label=label, probability=p) for label, p in zip(r["top_labels"][:k], r["top_probabilities"][:k])])
        for r in rows]
    return ClassifyImageResponse(model=info.name, checkpoint_id=info.checkpoint_id, predictions=predictions)


async def _body(request: Request, limits: Limits) -> bytes:
    body = await request.body()
    if len(body) > limits.max_body_bytes:
        raise problem(413, f"request body of {len(body)} bytes; this model takes at most {limits.max_body_bytes}")
    if not body:
        raise problem(422, "empty request body", ["body"])
    return body


async def _files(request: Request, limits: Limits) -> list[bytes]:
    form = await request.form()
    try:
        unknown = sorted(set(form) - {"images"})
        if unknown:
            raise problem(422, f"unknown form field(s) {unknown}: send image files as 'images'", ["body", unknown[0]])
        files = form.getlist("images")
        if not files:
            raise problem(422, "no 'images' file field in the form", ["body", "images"])
        rows, size = [], 0
        for i, f in enumerate(files):
            if not isinstance(f, UploadFile):
                raise problem(422, "'images' must be a file upload, not a text field", ["images", i])
            rows.append(await f.read())
            size += len(rows[-1])
        if size > limits.max_body_bytes:
            raise problem(413, f"{size} bytes of images; this model takes at most {limits.max_body_bytes}")
        return rows
    finally:
        await form.close()


def _from_json(item: str | list, i: int) -> bytes | np.ndarray:
    if isinstance(item, str):
        try:
            return base64.b64decode(item, validate=True)
        except ValueError as exc:  # binascii.Error, or characters outside ASCII
            raise problem(422, f"not valid base64: {exc}", ["images", i]) from None
    try:
        return np.asarray(item)
    except (ValueError, OverflowError) as exc:  # ragged rows, integers beyond int64
        raise problem(422, f"not a rectangular pixel array: {exc}", ["images", i]) from None


def _check_pixels(row: bytes | np.ndarray, i: int, max_pixels: int) -> None:
    if isinstance(row, np.ndarray):
        pixels = row.size // (row.shape[2] if row.ndim == 3 and row.shape[2] else 1)
    else:
        try:  # the header only: no pixels are decoded here
            with Image.open(io.BytesIO(row)) as img:
                pixels = img.width * img.height
        except Image.DecompressionBombError as exc:
            raise problem(413, str(exc), ["images", i]) from None
        except Exception:  # not an image: the Predictor names the problem, as it does in scoring
            return
    if pixels > max_pixels:
        raise problem(413, f"image of {pixels} pixels; this model takes at most {max_pixels}", ["images", i])


TASK = Task(path="classify-image", items="images", summary="Classify images: top-k classes with probabilities",
            params=ClassifyParams, request_body=REQUEST_BODY, response=ClassifyImageResponse,
            describe=describe, parse=parse, respond=respond)

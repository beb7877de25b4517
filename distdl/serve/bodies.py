"""Request bodies, shared by the tasks: JSON bodies, and file uploads (images, wav clips).

A task whose inputs are files takes them as raw bytes (``application/octet-stream``: one
file), a multipart form (one or more files in one field), or JSON whose field holds base64
strings (and, for images, pixel arrays); the other tasks take JSON only. Only cheap checks
happen here: content type, base64, sizes and counts; what the values mean is the
Predictor's job in the model replica.
"""
from __future__ import annotations

import base64
from typing import Any, Callable, TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from distdl.serve.schema import Limits, problem

JSON, OCTETS, MULTIPART = "application/json", "application/octet-stream", "multipart/form-data"
Model = TypeVar("Model", bound=BaseModel)


def json_only(model: type[BaseModel]) -> dict:
    """The OpenAPI requestBody of a JSON-only route."""
    return {"required": True, "content": {JSON: {"schema": model.model_json_schema()}}}


async def json_request(request: Request, limits: Limits, model: type[Model]) -> Model:
    """The JSON body validated as ``model`` (pydantic's errors become a 422 in the ingress)."""
    if content_type(request) != JSON:
        raise unsupported(request, [JSON])
    return model.model_validate_json(await body(request, limits))


def request_body(json_model: type[BaseModel], field: str, what: str) -> dict:
    """The OpenAPI requestBody: JSON ``json_model``, one raw file, or a form of ``field`` files."""
    return {"required": True, "content": {
        JSON: {"schema": json_model.model_json_schema()},
        OCTETS: {"schema": {"type": "string", "format": "binary", "description": f"one {what}"}},
        MULTIPART: {"schema": {"type": "object", "required": [field], "properties": {
            field: {"type": "array", "items": {"type": "string", "format": "binary"},
                    "description": f"one or more {what}s"}}}},
    }}


async def rows(request: Request, limits: Limits, field: str, json_model: type[BaseModel],
               from_json: Callable[[Any, int], Any]) -> list[Any]:
    """The request's files as Predictor rows: bytes, or ``from_json(item, index)`` of each
    item in the JSON body's ``field``; 413 over the model's item count."""
    kind = content_type(request)
    if kind == JSON:
        items = getattr(json_model.model_validate_json(await body(request, limits)), field)
        found = [from_json(item, i) for i, item in enumerate(items)]
    elif kind == OCTETS:
        found = [await body(request, limits)]
    elif kind == MULTIPART:
        found = await files(request, limits, field)
    else:
        raise unsupported(request, [JSON, OCTETS, MULTIPART])
    check_count(len(found), field, limits)
    return found


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def unsupported(request: Request, accepted: list[str]) -> HTTPException:
    return problem(415, f"unsupported Content-Type {content_type(request) or '(none)'!r}: send {' or '.join(accepted)}")


def check_count(n: int, field: str, limits: Limits) -> None:
    if n > limits.max_items_per_request:
        raise problem(413, f"{n} {field} in one request; this model takes at most {limits.max_items_per_request}")


async def body(request: Request, limits: Limits) -> bytes:
    """The whole body; 413 over the model's own limit (the ingress caps every body at the largest)."""
    data = await request.body()
    if len(data) > limits.max_body_bytes:
        raise problem(413, f"request body of {len(data)} bytes; this model takes at most {limits.max_body_bytes}")
    if not data:
        raise problem(422, "empty request body", ["body"])
    return data


async def files(request: Request, limits: Limits, field: str) -> list[bytes]:
    form = await request.form()
    try:
        unknown = sorted(set(form) - {field})
        if unknown:
            raise problem(422, f"unknown form field(s) {unknown}: send the files as '{field}'", ["body", unknown[0]])
        uploads = form.getlist(field)
        if not uploads:
            raise problem(422, f"no '{field}' file field in the form", ["body", field])
        found, size = [], 0
        for i, f in enumerate(uploads):
            if not isinstance(f, UploadFile):
                raise problem(422, f"'{field}' must be a file upload, not a text field", [field, i])
            found.append(await f.read())
            size += len(found[-1])
        if size > limits.max_body_bytes:
            raise problem(413, f"{size} bytes of {field}; this model takes at most {limits.max_body_bytes}")
        return found
    finally:
        await form.close()


def from_base64(item: str, loc: list[Any]) -> bytes:
    try:
        return base64.b64decode(item, validate=True)
    except ValueError as exc:  # binascii.Error, or characters outside ASCII
        raise problem(422, f"not valid base64: {exc}", loc) from None

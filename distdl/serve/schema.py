"""The HTTP API's shared pieces: what each served model is, its request limits, and the
``Route`` record that the literal route table (api.ROUTES) holds for each served task.

Errors anywhere in the API are FastAPI's shape, ``{"detail": str | [{"loc", "msg", "type"}]}``,
so a client parses one format whatever went wrong.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, NamedTuple, Optional

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from distdl.spec import ServeSpec


class Limits(BaseModel):
    """Per-model request limits (the checkpoint's ``serve`` section)."""
    max_body_bytes: int
    max_items_per_request: int
    max_image_pixels: int
    max_text_chars: int = Field(description="longest text or prompt, in characters")
    max_new_tokens: int = Field(description="most tokens a language model generates per prompt")
    top_k: int = Field(description="most labels a response may list per item")
    request_timeout_s: float = Field(description="longest a request waits for the model's answer; longer: 504")

    @classmethod
    def of(cls, options: ServeSpec) -> "Limits":
        return cls(**{name: getattr(options, name) for name in cls.model_fields})


class ModelInfo(BaseModel):
    name: str = Field(description="the model's route name")
    family: str = Field(description="model family of the checkpoint: cnn, rnn, transformer or gan")
    task: str = Field(description="what the model does, e.g. 'image_classification' (a route per task)")
    route: str = Field(description="where to POST inputs")
    checkpoint: Optional[str] = Field(description="where the checkpoint is stored (a path or URI); in GET /models "
                                      "only with ?detail=true, else null")
    checkpoint_id: str = Field(description="hash of the weights and preprocessor (as in distdl score manifests)")
    input: dict[str, Any] = Field(description="what the model expects, e.g. image size, channels, classes; "
                                  "the request schema of its route is in /openapi.json")
    limits: Limits


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    models: dict[str, str] = Field(description="model name -> 'ready' or 'loading'")


class Problem(BaseModel):
    """Every 4xx/5xx body."""
    detail: str | list[dict[str, Any]]


MAX_SEED = 2**63 - 1  # seeds (and gan ids) are non-negative 63-bit integers, as in batch generation


def no_options(limits: Limits) -> dict[str, Any]:
    """A task whose Predictor takes no fixed options in the replica."""
    return {}


class NoParams(BaseModel):
    """A route without query parameters (unknown ones are refused)."""
    model_config = ConfigDict(extra="forbid")


class ListParams(NoParams):
    """GET /models's query parameters (unknown ones are refused, as on every route)."""
    detail: bool = Field(False, description="also where each checkpoint is stored")


class Parsed(NamedTuple):
    """One request as the model replica takes it: its rows, and the task options it sets
    (e.g. a language model's temperature); requests with equal options share forward passes."""
    rows: list[Any]
    options: dict[str, Any] = {}


class Route(NamedTuple):
    """How one task is served over HTTP: its route, schemas, and the two conversions
    between HTTP and Predictor rows. Rows cross to the model replica as plain values
    (bytes, arrays, text, ids); decoding them is the Predictor's job, as in batch scoring."""
    path: str  # the route is POST /models/{name}/<path>
    items: str  # what a request's rows are called, e.g. "images": error locations name them
    summary: str
    params: type[BaseModel]  # query parameters
    request_body: dict  # OpenAPI requestBody: the content types accepted and their schemas
    response: type[BaseModel]
    describe: Callable[[str], dict]  # checkpoint path -> ModelInfo.input
    parse: Callable[[Request, Limits], Awaitable[Parsed]]  # HTTP request -> rows, options (or HTTPException)
    respond: Callable[[ModelInfo, list[dict], Any], BaseModel]  # (model, Predictor rows, params) -> response
    # The Predictor's fixed options in every replica, from the model's limits (classification: top_k).
    predictor_options: Callable[[Limits], dict[str, Any]] = no_options


def problem(status: int, msg: str, loc: list[Any] | None = None, kind: str = "bad_input") -> HTTPException:
    """An HTTPException whose detail points at the bad part of the request, like FastAPI's 422s."""
    if loc is None:
        return HTTPException(status, msg)
    return HTTPException(status, [{"loc": loc, "msg": msg, "type": kind}])


ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": Problem, "description": text} for code, text in {
        400: "malformed request (e.g. a broken multipart body)",
        401: "missing or wrong API key (when the server has one)",
        404: "unknown model, or a model of another task",
        413: "body, item count, image pixels or text length over the model's limits",
        415: "unsupported Content-Type",
        422: "input that cannot be turned into a model input; detail names each bad item",
        503: "the model's queue is full, the server holds its most request bodies, or a model replica stopped "
             "or is starting: retry after the Retry-After seconds",
        504: "the model did not answer within its request_timeout_s",
    }.items()
}

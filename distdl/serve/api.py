"""The HTTP ingress: a FastAPI app in a Serve deployment in front of the model deployments.

    GET  /healthz                      liveness: the ingress answers
    GET  /readyz                       every model has a replica with its checkpoint loaded (else 503)
    GET  /models[?detail=true]         names, families, tasks, checkpoint ids, input schemas, limits;
                                       with detail, where each checkpoint is stored
    POST /models/{name}/<task path>    one route per served task in ROUTES, e.g. classify-image, generate-text
    GET  /docs, /openapi.json          the API, generated from the pydantic models

With an API key every route but the two probes needs it: the model list and the schema tell
an unauthenticated caller nothing about what is served.

A new kind of model is a new entry in ROUTES (its path, schemas and HTTP <-> row
conversions, see schema.Route) and in SERVED.
"""
# No `from __future__ import annotations` here: FastAPI reads the route closures' annotations
# at run time, and they name per-task types that only exist inside the closure.
import asyncio
import os
import secrets
from typing import Annotated, Any, Optional

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from distdl.serve import audio, gan, image, metrics, overload, sequence, text
from distdl.serve.schema import ERROR_RESPONSES, Health, ListParams, ModelInfo, ModelList, Readiness, Route, problem

ROUTES: dict[str, Route] = {
    "image_classification": image.ROUTE,
    "sequence_classification": sequence.ROUTE,
    "audio_classification": audio.ROUTE,
    "text_classification": text.CLASSIFY,
    "text_embedding": text.EMBED,
    "text_generation": text.GENERATE,
    "image_generation": gan.ROUTE,
}
# (model.family, its task in distdl.tasks, its input) -> the served task. The input is the
# preprocessor's kind, or "audio" for sequences read from wav files: the rnn family has three.
SERVED: dict[tuple[str, str, str], str] = {
    ("cnn", "classification", "image"): "image_classification",
    ("rnn", "classification", "sequence"): "sequence_classification",
    ("rnn", "classification", "audio"): "audio_classification",
    ("rnn", "language_model", "chars"): "text_generation",
    ("transformer", "classification", "text"): "text_classification",
    ("transformer", "embedding", "text"): "text_embedding",
    ("gan", "image_generation", "image"): "image_generation",
}
READY_TIMEOUT_S = 2.0


class BodyTooLarge(Exception):
    """Raised from the receive channel once a body without Content-Length passes the cap."""


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` with 413 before they fill memory.
    Each model's own (smaller or equal) limit is checked by its task's parser."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(self, handles: dict[str, DeploymentHandle], models: list[dict], api_key_env: Optional[str]):
        self.handles = handles
        self.models = {m["name"]: ModelInfo(**m) for m in models}
        self.api_key = read_api_key(api_key_env)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.models, self.handles, self.api_key)


def read_api_key(env: Optional[str]) -> Optional[str]:
    if env is None:
        return None
    key = os.environ.get(env)
    if not key:  # fail closed: an unset variable must not serve the models without a key
        raise RuntimeError(f"api_key_env is {env!r}, but ${env} is not set (or empty) in the serving process")
    return key


def build_api(models: dict[str, ModelInfo], handles: dict[str, DeploymentHandle], api_key: Optional[str]) -> FastAPI:
    # With a key, FastAPI's own open schema and docs routes are off; _keyed_docs serves them behind the key.
    app = FastAPI(title="distdl", summary="Online predictions from distdl checkpoints",
                  **({"openapi_url": None, "docs_url": None, "redoc_url": None} if api_key else {}))
    largest_body = max(m.limits.max_body_bytes for m in models.values())
    app.add_middleware(overload.BodyBudget, largest=largest_body)  # inside BodyLimit: sizes over the cap are 413s
    app.add_middleware(BodyLimit, max_bytes=largest_body)
    app.add_exception_handler(ValidationError, _invalid_body)
    app.add_exception_handler(BodyTooLarge, _too_large)
    auth = [Depends(_auth(api_key))] if api_key else []
    if api_key:
        _keyed_docs(app, auth)

    async def healthz() -> Health:
        return Health(status="ok")

    async def readyz() -> JSONResponse:
        states = await asyncio.gather(*(_state(h) for h in handles.values()))
        body = Readiness(ready=all(s == "ready" for s in states), models=dict(zip(handles, states)))
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    async def list_models(params: Annotated[ListParams, Query()]) -> ModelList:
        return ModelList(models=[m if params.detail else m.model_copy(update={"checkpoint": None})
                                 for m in models.values()])

    app.add_api_route("/healthz", healthz, methods=["GET"], summary="Liveness")
    app.add_api_route("/readyz", readyz, methods=["GET"], response_model=Readiness, summary="Readiness",
                      responses={503: {"model": Readiness, "description": "a model is still loading"}})
    app.add_api_route("/models", list_models, methods=["GET"], dependencies=auth, summary="Served models",
                      responses={401: ERROR_RESPONSES[401]})
    for name in sorted({m.task for m in models.values()}):  # routes only for the tasks served
        route = ROUTES[name]
        app.add_api_route(f"/models/{{name}}/{route.path}", _task_route(name, route, models, handles),
                          methods=["POST"], response_model=route.response, dependencies=auth, summary=route.summary,
                          openapi_extra={"requestBody": route.request_body}, responses=ERROR_RESPONSES)
    # Outermost, so that it sees every answer: BodyLimit's and BodyBudget's refusals too.
    app.add_middleware(metrics.RequestMetrics, labels=metrics.request_labels((r.path for r in app.routes), models))
    return app


def _keyed_docs(app: FastAPI, auth: list) -> None:
    """/openapi.json and /docs (Swagger UI) as FastAPI serves them, but behind the API key."""
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - Swagger UI")

    for path, endpoint in (("/openapi.json", openapi), ("/docs", docs)):
        app.add_api_route(path, endpoint, methods=["GET"], dependencies=auth, include_in_schema=False)


def _task_route(task_name: str, route: Route, models: dict[str, ModelInfo], handles: dict[str, DeploymentHandle]):
    served = [n for n, info in models.items() if info.task == task_name]
    model_name = Annotated[str, PathParam(description="a served model", json_schema_extra={"enum": served})]

    async def predict(name: model_name, request: Request, params: Annotated[route.params, Query()]) -> Any:
        info = models.get(name)
        if info is None:
            raise problem(404, f"unknown model {name!r}; served: {sorted(models)}")
        if info.task != task_name:
            raise problem(404, f"model {name!r} does {info.task}, not {task_name}: POST {info.route}")
        parsed = await route.parse(request, info.limits)
        outputs = await overload.model_answer(name, handles[name].predict.remote(parsed.rows, parsed.options),
                                              info.limits.request_timeout_s, request.scope)
        bad = [{"loc": [route.items, i], "msg": row["error"], "type": "bad_input"}
               for i, row in enumerate(outputs) if row["error"] is not None]
        if bad:
            raise HTTPException(422, bad)
        return route.respond(info, outputs, params)

    return predict


def _auth(api_key: str):
    bearer = HTTPBearer(auto_error=False, description="the value of the server's --api-key-env variable")

    async def check(credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(bearer)]) -> None:
        given = credentials.credentials if credentials else ""
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


async def _state(handle: DeploymentHandle) -> str:
    try:
        await asyncio.wait_for(handle.ready.remote(), READY_TIMEOUT_S)
        return "ready"
    except (asyncio.TimeoutError, BackPressureError, *overload.UNAVAILABLE):
        return "loading"


async def _invalid_body(request: Request, exc: ValidationError) -> JSONResponse:
    """A request body that does not match its task's schema (pydantic raised inside a parser)."""
    detail = exc.errors(include_url=False, include_context=False, include_input=False)
    return JSONResponse({"detail": detail}, status_code=422)


async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=413)

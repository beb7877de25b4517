"""One model served in one hop: the HTTP API and the model in the same replica.

With two deployments every prediction crosses Serve's proxy -> the ingress -> the model
replica: the second hop serializes the rows and the answer through Ray and costs about as much
CPU per request as a small model's forward pass. When one checkpoint is served there is
nothing for a separate ingress to route, so the model deployment is the ingress itself: the
same FastAPI app (api.build_api: routes, API key, limits, metrics, OpenAPI schema), calling the
model in its own event loop. Several checkpoints keep one ingress in front of one deployment
per model, so that each model still scales on its own (app.application).

Serve's proxy queues only what the replicas cannot take at all; the model's own
``max_ongoing_requests`` and ``max_queued_requests`` hold per replica here (overload.Admission), so a
full queue is the same 503 as with two hops while /healthz and /readyz always get through.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

from fastapi import FastAPI
from ray import serve

from distdl.serve import metrics
from distdl.serve.api import build_api, read_api_key
from distdl.serve.model import ModelServer
from distdl.serve.overload import Admission
from distdl.serve.schema import ModelInfo


class _Call:
    """``.remote(*args)`` of a method in this process, as a DeploymentHandle's method is called:
    an awaitable task the caller may cancel (api.build_api and overload.model_answer use both)."""

    def __init__(self, method: Callable[..., Awaitable[Any]]):
        self.method = method

    def remote(self, *args: Any) -> asyncio.Task:
        return asyncio.ensure_future(self.method(*args))


class InProcessModel:
    """The model of this replica where api.build_api expects a model deployment's handle."""

    def __init__(self, server: ModelIngress, admission: Admission):
        self.server, self.admission = server, admission
        self.predict, self.ready = _Call(self._predict), _Call(server.ready)

    async def _predict(self, values: list[Any], options: dict[str, Any]) -> list[dict]:
        async with self.admission.slot():
            return await self.server.predict(values, options)


@serve.deployment
@serve.ingress()
class ModelIngress(ModelServer.func_or_class):
    """model.ModelServer with api.build_api's HTTP API in front, in the same replica."""

    def __init__(self, info: dict, api_key_env: Optional[str], max_ongoing: int, max_queued: int, *model_args: Any):
        self.info = ModelInfo(**info)
        self.api_key = read_api_key(api_key_env)  # before the model loads: an unset key fails at once
        super().__init__(*model_args)  # loads the model (ModelServer's arguments)
        self.admission = Admission(max_ongoing, max_queued, metrics.waiting_gauge(self.info.name))

    def __serve_build_asgi_app__(self) -> FastAPI:
        model = InProcessModel(self, self.admission)
        return build_api({self.info.name: self.info}, {self.info.name: model}, self.api_key)

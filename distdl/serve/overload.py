"""Shedding load instead of queueing without end: when the server cannot take a request now, it
says so at once, with a status a client can act on.

    503 + Retry-After   the model's queue is full (``serve.max_queued_requests`` requests already
                        wait beyond what its replicas hold), the request bodies the ingress holds
                        would pass INGRESS_BODY_BYTES, or the model has no live replica
    504                 the model did not answer within ``serve.request_timeout_s``; the request
                        is cancelled in the model, so it stops costing a forward pass
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentResponse

from distdl.inference_spec import INGRESS_BODY_BYTES
from distdl.serve.metrics import note_rejection

RETRY_AFTER_S = 1  # a queue slot frees within a forward pass or two
RETRY_AFTER = {"Retry-After": str(RETRY_AFTER_S)}
UNAVAILABLE = (RayActorError, DeploymentUnavailableError)  # includes ActorDiedError


async def model_answer(name: str, response: DeploymentResponse, timeout_s: float, scope: dict) -> Any:
    """What the model deployment answered to one handle call, or the HTTPException that says why
    not (and its reason noted in the request's ASGI ``scope`` for the metrics)."""
    try:
        return await asyncio.wait_for(response, timeout_s)
    except TimeoutError:
        note_rejection(scope, "timeout")
        response.cancel()  # waiting in its queue or computing: the model drops it
        raise HTTPException(504, f"model {name!r} did not answer within {timeout_s:g} s (its serve.request_timeout_s)"
                            ) from None
    except (BackPressureError, QueueFull):  # Serve's router here, or the one-hop replica, found the queue full
        note_rejection(scope, "queue_full")
        raise HTTPException(503, f"model {name!r} is at capacity: its queue of waiting requests is full; retry",
                            headers=RETRY_AFTER) from None
    except UNAVAILABLE:
        note_rejection(scope, "no_replica")
        raise HTTPException(503, f"model {name!r} has no live replica right now; retry", headers=RETRY_AFTER) from None


class QueueFull(Exception):
    """This replica already runs and holds as many model calls as the model's settings allow."""


class Admission:
    """At most ``ongoing`` model calls at once in this replica and ``queued`` more waiting for
    one of them to end; a call beyond that raises QueueFull at once instead of waiting.
    ``report_waiting`` is told the number waiting whenever it changes (a metrics gauge)."""

    def __init__(self, ongoing: int, queued: int, report_waiting: Callable[[int], None]):
        self.room, self.report_waiting = ongoing + queued, report_waiting
        self.running = asyncio.Semaphore(ongoing)
        self.held = self.waiting = 0  # one event loop runs every request: no lock needed

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.held >= self.room:
            raise QueueFull
        self.held += 1
        try:
            await self._acquire()
            try:
                yield
            finally:
                self.running.release()
        finally:
            self.held -= 1

    async def _acquire(self) -> None:
        self._wait(+1)
        try:
            await self.running.acquire()
        finally:
            self._wait(-1)

    def _wait(self, change: int) -> None:
        self.waiting += change
        self.report_waiting(self.waiting)


def body_size(headers: list[tuple[bytes, bytes]], largest: int) -> int:
    """The bytes a request's body will take: its Content-Length, or ``largest`` (the most a body
    may be) for a chunked one, whose length is known only at its end; 0 without a body."""
    fields = dict(headers)
    length = fields.get(b"content-length", b"")
    if length.isdigit():
        return min(int(length), largest)
    return largest if b"transfer-encoding" in fields else 0


class BodyBudget:
    """ASGI middleware: the bodies of the requests in the ingress, all together, stay within
    ``budget`` bytes, whatever the number of requests. Each request holds its body's size from
    arrival to answer (while it waits for its model too); one that does not fit gets 503 at once.
    Requests without a body (the probes, /models) always pass."""

    def __init__(self, app: Any, largest: int, budget: int = INGRESS_BODY_BYTES):
        self.app, self.budget, self.largest = app, budget, largest
        self.held = 0  # one event loop runs every request: no lock needed

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = body_size(scope["headers"], self.largest)
        if size and self.held + size > self.budget:
            note_rejection(scope, "body_budget")
            response = JSONResponse({"detail": f"the server holds its most request bodies now ({self.budget} bytes "
                                               f"in all); retry"}, status_code=503, headers=RETRY_AFTER)
            return await response(scope, receive, send)
        self.held += size
        try:
            await self.app(scope, receive, send)
        finally:
            self.held -= size


def proxy_queue(largest_body: int, most: int) -> int:
    """How many requests Serve's HTTP proxy may hold for a busy ingress (at most ``most``): it
    reads their bodies while they wait, so they are bounded by INGRESS_BODY_BYTES too."""
    return max(1, min(most, INGRESS_BODY_BYTES // largest_body))

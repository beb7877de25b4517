"""Per-model Prometheus metrics of the serving app, through Ray's metrics: each Ray process
reports them to its node's metrics agent, which serves every process's metrics in Prometheus
text format on the node's metrics export port, named ``ray_`` + the name below (a counter
also gets ``_total``).

    distdl_serve_requests{model, route, status}    counter: requests the ingress answered
    distdl_serve_request_seconds{model, route}     histogram: a request's arrival to its answer
    distdl_serve_rejected_requests{model, reason}  counter: requests refused, by why
    distdl_serve_batch_rows{model}                 histogram: rows of each forward pass
    distdl_serve_rows{model}                       counter: rows of all forward passes

Serve's own metrics cover the rest (queue depths, the proxy's own 503s); they label a request
only by its route pattern, /models/{name}/classify-image, so they cannot tell the models apart.
Labels stay bounded whatever clients send: a path that is no route of the app counts as
model "" and route "other", and a model name that is not served matches no route.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Optional

import ray
from ray.serve.metrics import Counter, Gauge, Histogram

REJECTION = "distdl_rejection"  # key in the request's scope["state"]: why distdl refused it
REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
           413: "too_large", 415: "unsupported_media_type", 422: "bad_input"}  # a 4xx's class, by status
LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
ROW_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def export_url() -> Optional[str]:
    """Where this node's Ray metrics agent serves Prometheus text (None: Ray collects no metrics).
    Every node of a cluster serves its own, on a free port unless `ray start --metrics-export-port`
    sets it (KubeRay sets 8080)."""
    here = ray.get_runtime_context().get_node_id()
    node = next((n for n in ray.nodes() if n["NodeID"] == here), {})
    port = node.get("MetricsExportPort", 0)
    return f"http://{node['NodeManagerAddress']}:{port}/metrics" if port > 0 else None


def note_rejection(scope: dict, reason: str) -> None:
    """Says why the request of this ASGI scope is refused (a 503's or 504's cause, which its
    status does not tell), for RequestMetrics to count."""
    scope.setdefault("state", {})[REJECTION] = reason


def rejection(status: int, noted: Optional[str]) -> Optional[str]:
    """Why a request was refused: the reason noted where it was refused, else its 4xx's class;
    None for a request that was not refused (a 2xx, a probe's 503 while loading, a 500)."""
    return noted or REASONS.get(status) or ("client_error" if 400 <= status < 500 else None)


def request_labels(paths: Iterable[str], models: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Each request path the app serves -> its (model, route) labels: a route with {name} once
    for every served model, a fixed route (/healthz, /models, ...) with model ""."""
    models = list(models)
    labels: dict[str, tuple[str, str]] = {}
    for route in paths:
        if "{name}" in route:
            labels.update({route.replace("{name}", model): (model, route) for model in models})
        else:
            labels[route] = ("", route)
    return labels


class RequestMetrics:
    """ASGI middleware, outermost in the ingress: counts every request by model, route and
    status, times it, and counts its rejection by reason. The Ray metrics are created here,
    in the ingress replica, when Starlette builds its middleware at the first request."""

    def __init__(self, app: Any, labels: dict[str, tuple[str, str]]):
        self.app, self.labels = app, labels
        self.requests = Counter("distdl_serve_requests", "HTTP requests answered by the distdl ingress",
                                tag_keys=("model", "route", "status"))
        self.seconds = Histogram("distdl_serve_request_seconds", "seconds from a request's arrival in the ingress "
                                 "to its answer", boundaries=LATENCY_BUCKETS_S, tag_keys=("model", "route"))
        self.rejected = Counter("distdl_serve_rejected_requests", "requests refused, by reason: a 4xx's class, or "
                                "queue_full, no_replica, body_budget (503) and timeout (504)",
                                tag_keys=("model", "reason"))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status: Optional[int] = None  # stays None when the client goes away first: nothing is counted

        async def observed(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except Exception:
            status = status or 500  # unless the answer had begun: Starlette's ServerErrorMiddleware answers 500
            raise
        finally:
            if status is not None:
                self._record(scope, status, time.perf_counter() - start)

    def _record(self, scope: dict, status: int, seconds: float) -> None:
        model, route = self.labels.get(scope["path"], ("", "other"))
        self.requests.inc(tags={"model": model, "route": route, "status": str(status)})
        self.seconds.observe(seconds, tags={"model": model, "route": route})
        reason = rejection(status, scope.get("state", {}).get(REJECTION))
        if reason:
            self.rejected.inc(tags={"model": model, "reason": reason})


class ForwardMetrics:
    """The forward passes of one model's replica (create it there): the rows of each, and of all.
    The count of rows is exact where the histogram's _sum is not: Ray's metrics agent rebuilds
    a histogram from its bucket counts, each value taken as its bucket's midpoint."""

    def __init__(self, model: str):
        self.rows = Counter("distdl_serve_rows", "rows through a model's forward passes", tag_keys=("model",))
        self.batch_rows = Histogram("distdl_serve_batch_rows", "rows in each forward pass of a model replica",
                                    boundaries=ROW_BUCKETS, tag_keys=("model",))
        for metric in (self.rows, self.batch_rows):
            metric.set_default_tags({"model": model})  # Serve adds its own (deployment, replica) to them

    def record(self, rows: int) -> None:
        self.rows.inc(rows)
        self.batch_rows.observe(rows)


def waiting_gauge(model: str) -> Callable[[int], None]:
    """Sets the requests waiting inside a one-hop model replica for one of its
    max_ongoing_requests slots: Serve's own queue gauge sees only what waits for a replica."""
    gauge = Gauge("distdl_serve_waiting_requests", "requests waiting in a one-hop model replica for a free slot",
                  tag_keys=("model",))
    gauge.set_default_tags({"model": model})
    return gauge.set

"""distdl serve: checkpoints -> one Ray Serve application, run here or written as a Serve config.

The application is a FastAPI ingress (api.Ingress) in front of one deployment per checkpoint
(model.ModelServer, autoscaled); one checkpoint alone is served in one hop, its deployment
being the ingress too (one_hop.ModelIngress). ``build_app`` is its application builder, so a Serve
config (``serve deploy``, ``serve run``, a KubeRay RayService) names it as

    import_path: distdl.serve:build_app
    args: {checkpoints: [PATH or NAME=PATH, ...], api_key_env: null | NAME, <serve field>: value, ...}

Each model's settings are the ``serve`` section of the spec.yaml in its checkpoint, with
the ``<serve field>`` args (the CLI's --set) laid over them.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.schema import DeploymentStatus

from distdl import checkpoint, logs, models
from distdl.paths import is_uri
from distdl.serve import metrics, overload
from distdl.serve.api import ROUTES, SERVED, Ingress
from distdl.serve.model import DEPLOYMENT_PREFIX, ModelServer
from distdl.serve.one_hop import ModelIngress
from distdl.serve.schema import Limits, ModelInfo
from distdl.spec import ServeSpec
from distdl.specbase import SpecError, from_dict

APP_NAME = "distdl"
IMPORT_PATH = "distdl.serve:build_app"
NAMED = re.compile(r"^([A-Za-z0-9_-]+)=(.+)$")  # NAME=PATH
# The ingress only parses requests and awaits the models: it reserves no CPU (like Serve's own
# proxy) so it never keeps a model replica from being placed, and it admits many requests at
# once so that batches can fill; back-pressure happens at the model deployments (their queues)
# and, for memory, at the ingress's body budget (overload.BodyBudget).
INGRESS_MAX_ONGOING = 1024
HEALTH_CHECK_PERIOD_S = 2.0  # a dead replica is noticed and replaced within seconds


@dataclass
class Served:
    info: ModelInfo
    options: ServeSpec


def load_models(checkpoints: list[str], overrides: dict[str, Any]) -> list[Served]:
    """Each checkpoint's identity, task and serve settings; raises on anything that cannot serve."""
    served = [_load(entry, overrides) for entry in checkpoints]
    names = [s.info.name for s in served]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two checkpoints are both named {duplicates}: name them with NAME=PATH")
    return served


def split_entry(entry: str) -> tuple[Optional[str], str]:
    """``NAME=PATH`` or ``PATH`` -> (name or None, path)."""
    named = NAMED.match(entry)
    return (named.group(1), named.group(2)) if named else (None, entry)


def _load(entry: str, overrides: dict[str, Any]) -> Served:
    given_name, path = split_entry(entry)
    spec = checkpoint.load_spec(path)  # refuses an incomplete checkpoint
    family, task = served_task(path)
    name = given_name or spec.get("name")
    if not name:
        raise ValueError(f"{path}: its spec.yaml has no name; serve it as NAME={path}")
    problems: list[tuple[str, str]] = []
    options = from_dict(ServeSpec, {**(spec.get("serve") or {}), **overrides}, "serve", problems)
    if problems:
        raise SpecError(problems)
    info = ModelInfo(name=name, family=family, task=task, route=f"/models/{name}/{ROUTES[task].path}",
                     checkpoint=path, checkpoint_id=checkpoint.identity(path), input=ROUTES[task].describe(path),
                     limits=Limits.of(options))
    return Served(info, options)


def served_task(path: str) -> tuple[str, str]:
    """(model family, served task) of a checkpoint: SERVED by family, task and input kind."""
    meta = checkpoint.load_meta(path)
    pre = checkpoint.load_preprocessor(path)
    key = (meta["family"], models.task_name(meta), "audio" if getattr(pre, "audio", None) else pre.kind)
    if key not in SERVED:
        raise ValueError(f"{path}: a {key[0]} {key[1]} model over {key[2]} input cannot be served; servable "
                         f"(family, task, input): {sorted(SERVED)}")
    return key[0], SERVED[key]


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application builder: ``args`` as in a Serve config (see the module doc)."""
    args = dict(args)
    checkpoints = args.pop("checkpoints", None)
    if not isinstance(checkpoints, list) or not checkpoints or not all(isinstance(c, str) for c in checkpoints):
        raise ValueError(f"args.checkpoints must be a non-empty list of checkpoint paths, got {checkpoints!r}")
    api_key_env = args.pop("api_key_env", None)
    return application(load_models(checkpoints, args), api_key_env)


def application(served: list[Served], api_key_env: Optional[str]) -> Application:
    """One model: one deployment that is both the ingress and the model (one_hop). Several: a
    FastAPI ingress in front of one autoscaled deployment per model."""
    if len(served) == 1:
        return _one_hop(served[0], api_key_env)
    handles = {s.info.name: _model_deployment(s) for s in served}
    largest_body = max(s.options.max_body_bytes for s in served)
    ingress = Ingress.options(name="ingress", ray_actor_options={"num_cpus": 0}, **_ingress_options(largest_body))
    return ingress.bind(handles, [s.info.model_dump() for s in served], api_key_env)


def _ingress_options(largest_body: int) -> dict[str, Any]:
    """What Serve's proxy may queue for the deployment that takes HTTP requests (bounded by the
    request bodies it holds meanwhile) and what it answers when that is full."""
    return {"max_ongoing_requests": INGRESS_MAX_ONGOING,
            "max_queued_requests": overload.proxy_queue(largest_body, INGRESS_MAX_ONGOING),
            "backpressure_config": BackpressureConfig(retry_after_s=overload.RETRY_AFTER_S),
            "health_check_period_s": HEALTH_CHECK_PERIOD_S}


def _model_deployment(served: Served) -> Application:
    o = served.options
    deployment = ModelServer.options(
        name=f"{DEPLOYMENT_PREFIX}{served.info.name}", max_ongoing_requests=o.max_ongoing_requests,
        max_queued_requests=o.max_queued_requests, health_check_period_s=HEALTH_CHECK_PERIOD_S,
        **_replicas(o))
    return deployment.bind(*_model_args(served))


def _one_hop(served: Served, api_key_env: Optional[str]) -> Application:
    """The model's deployment (its name, replicas and resources) with the HTTP API in each replica:
    the replica itself bounds its model calls by max_ongoing_requests and max_queued_requests."""
    o = served.options
    deployment = ModelIngress.options(name=f"{DEPLOYMENT_PREFIX}{served.info.name}",
                                      **_ingress_options(o.max_body_bytes), **_replicas(o))
    return deployment.bind(served.info.model_dump(), api_key_env, o.max_ongoing_requests, o.max_queued_requests,
                           *_model_args(served))


def _replicas(o: ServeSpec) -> dict[str, Any]:
    """A model deployment's replica count or autoscaling, and each replica's resources."""
    actor = {"ray_actor_options": {"num_cpus": o.cpus_per_replica, "num_gpus": o.gpus_per_replica}}
    if o.max_replicas == o.min_replicas:
        return {"num_replicas": o.min_replicas, **actor}
    return {**actor, "autoscaling_config": {
        "min_replicas": o.min_replicas, "max_replicas": o.max_replicas,
        "target_ongoing_requests": o.target_ongoing_requests, "upscale_delay_s": o.upscale_delay_s,
        "downscale_delay_s": o.downscale_delay_s, "look_back_period_s": o.look_back_period_s}}


def _model_args(served: Served) -> tuple:
    """model.ModelServer's arguments: checkpoint, predictor options, threads, device, batching, backend."""
    o = served.options
    threads = max(1, round(o.cpus_per_replica)) if o.threads_per_replica == "auto" else o.threads_per_replica
    options = ROUTES[served.info.task].predictor_options(served.info.limits)
    return (served.info.checkpoint, options, threads, "cuda" if o.gpus_per_replica else "cpu", o.max_batch_size,
            o.batch_wait_timeout_s, o.backend)


def export_config(checkpoints: list[str], **options: Any) -> dict:
    """A Serve config (``ray.serve.schema.ServeDeploySchema``) deploying ``checkpoints`` via build_app.

    Local paths become absolute (the app is built in Serve's controller, elsewhere). The
    checkpoints themselves are read only where the config is deployed: on a cluster they may
    exist only there. The serve options are checked now."""
    problems: list[tuple[str, str]] = []
    from_dict(ServeSpec, {k: v for k, v in options.items() if k != "api_key_env"}, "serve", problems)
    if problems:
        raise SpecError(problems)
    args = {"checkpoints": [_absolute(c) for c in checkpoints], "api_key_env": options.get("api_key_env"),
            **{k: v for k, v in options.items() if k != "api_key_env"}}
    return {"applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH, "args": args}]}


def _absolute(entry: str) -> str:
    name, path = split_entry(entry)
    return (f"{name}=" if name else "") + (path if is_uri(path) else str(Path(path).absolute()))


def _deploy(served: list[Served], api_key_env: Optional[str], host: str, port: int) -> None:
    """serve.start + serve.run, failing with the reason: Ray's errors carry a remote traceback."""
    from distdl import runtime

    try:
        serve.start(http_options={"host": host, "port": port})
    except RuntimeError as exc:  # e.g. the port is taken on a cluster's head node
        raise RuntimeError(f"Serve could not start on {host}:{port}: {runtime.cause_in(str(exc))}") from exc
    try:
        serve.run(application(served, api_key_env), name=APP_NAME, route_prefix="/")
    except RuntimeError as exc:
        raise RuntimeError(_why_not_deployed() or runtime.cause_in(str(exc))) from exc


def _why_not_deployed() -> str | None:
    """Why replicas failed to start, from Serve's status: serve.run's own error says only
    "Failed to update the deployments [...]"; the reason (the replica's traceback) is there."""
    from distdl import runtime

    app = serve.status().applications.get(APP_NAME)
    failed = [(name.removeprefix(DEPLOYMENT_PREFIX), d.message)
              for name, d in (app.deployments.items() if app else []) if d.status == DeploymentStatus.DEPLOY_FAILED]
    return "; ".join(f"no replica of {name} could start: {runtime.cause_in(message)}" for name, message in failed) or None


def _refuse_a_taken_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))  # as Serve's proxy binds it (no SO_REUSEADDR)
        except OSError as exc:
            raise ValueError(f"--port {port}: {host}:{port} is not free ({exc.strerror}); choose another --port") from exc


def run(checkpoints: list[str], options: dict[str, Any], api_key_env: Optional[str], host: str, port: int,
        address: Optional[str], log: Optional[Path] = None) -> None:
    """Serve until SIGINT (Ctrl-C) or SIGTERM. On an existing cluster only this app is deleted
    at the end; an embedded local Ray is shut down with Serve. Ray's output (Serve's and its
    replicas' access lines too) goes to ``log`` (None: to the console, as distdl's own does)."""
    from distdl import runtime

    served = load_models(checkpoints, options)  # a bad checkpoint or option fails before Ray starts
    if api_key_env and not os.environ.get(api_key_env):
        raise ValueError(f"--api-key-env {api_key_env}: ${api_key_env} is not set")
    embedded = not (address or os.environ.get("RAY_ADDRESS"))
    if embedded:  # Serve's proxy binds on this machine: a taken port fails now, not after Ray starts
        _refuse_a_taken_port(host, port)
    with logs.capture(log), runtime.session(address):
        _serve_until_stopped(served, api_key_env, host, port, embedded)
    logs.say("stopped")


def _serve_until_stopped(served: list[Served], api_key_env: Optional[str], host: str, port: int,
                         embedded: bool) -> None:
    from distdl import runtime

    for s in served:
        runtime.require_a_node_for({"cpus_per_replica": ("CPU", s.options.cpus_per_replica),
                                    "gpus_per_replica": ("GPU", s.options.gpus_per_replica)},
                                   f"replica of {s.info.name}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        _deploy(served, api_key_env, host, port)
        url = f"http://{host}:{port}"
        logs.say(f"serving at {url}/ (API docs: {url}/docs; Ctrl-C stops):")
        for s in served:
            logs.say(f"  {s.info.name:<16} POST {url}{s.info.route}")
        scrape = metrics.export_url()
        if scrape:
            logs.say(f"metrics for Prometheus (each Ray node serves its own): {scrape}")
        while not stop.wait(1.0):
            pass
    finally:
        logs.say("stopping ...")
        if embedded:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)

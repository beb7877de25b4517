"""Connecting to Ray and making its failures and logs readable."""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Iterator, Optional

import ray
import ray.data

from distdl.logs import say
from distdl.paths import is_uri

TRAIN_POLL_INTERVAL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"

# Whether connect() started the Ray this process uses: an embedded Ray can never gain a node.
_embedded = False


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Join ``address`` (or RAY_ADDRESS) when given; otherwise start an embedded local Ray."""
    global _embedded
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # Ray Train's controller polls its workers every 2 s by default, and a run waits on
        # several polls to start and to end. On one machine a poll is cheap, and a short
        # interval takes seconds off every run (docs/training.md). Ray's processes inherit this
        # environment; a value the user set wins.
        os.environ.setdefault(TRAIN_POLL_INTERVAL, "0.25")
        # Ray Train starts a preemption watcher actor with every worker group, to notice a cloud
        # node being drained. The embedded Ray is this one machine and is never drained: the
        # watcher would be one more process (about 1.5 CPU-s) per run for nothing.
        os.environ.setdefault(PREEMPTION_WATCHER, "0")
        # "local": a new embedded Ray even when a `ray start` cluster runs on this machine
        # (address=None would silently join it). The dashboard serves Ray's state API, which Ray
        # Train 2.60's placement-group cleaner polls: without it every training job logged
        # "Failed to query Ray Train Controller actor state" every second. (Port 8265, or a free one.)
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=True,
                 log_to_driver=True)
        _embedded = True


@contextmanager
def session(address: Optional[str] = None) -> Iterator[None]:
    """connect() for one command. A Ray it started is shut down before the block ends, so that
    what Ray prints while stopping goes where the command's output goes (logs.capture)."""
    global _embedded
    started = not ray.is_initialized()
    connect(address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
            _embedded = False


def is_embedded() -> bool:
    """Whether this process runs the embedded local Ray that connect() started (it can never gain a node)."""
    return _embedded


def warn_if_not_shared(paths: dict[str, Optional[str]]) -> None:
    """On a cluster of several nodes, workers and Ray Data tasks on every node read and write
    these paths (and the driver reads the run back). A local path works only if it is the same
    shared filesystem everywhere (NFS, a shared volume); distdl cannot tell that from a
    node-local folder, so it says so instead of failing later on another node."""
    local = [f"{name}={path}" for name, path in paths.items() if path and not is_uri(path)]
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    if local and nodes > 1:
        say(f"[distdl] warning: this Ray cluster has {nodes} nodes and {', '.join(local)} "
            f"{'is a local path' if len(local) == 1 else 'are local paths'}: every node must see the same "
            "files there (NFS or a shared volume); otherwise use s3:// or gs://", err=True)


def unplaceable(wanted: dict[str, tuple[str, float]], nodes: list[dict[str, float]], what: str) -> str | None:
    """Why no node in ``nodes`` (their resources) can hold one ``what``, or None. ``wanted``
    maps each setting's name to (Ray resource, amount), e.g. {"--gpus": ("GPU", 1.0)}."""
    for setting, (kind, amount) in wanted.items():
        largest = max((node.get(kind, 0.0) for node in nodes), default=0.0)
        if amount > largest:
            return (f"{setting} {amount:g} per {what}, but the largest node of this Ray cluster has "
                    f"{largest:g} {kind}s")
    return None


def require_a_node_for(wanted: dict[str, tuple[str, float]], what: str) -> bool:
    """Ray leaves an actor that no node can hold waiting forever, silently. The embedded Ray can
    never gain such a node: refuse it now. An existing cluster may be autoscaling (a GPU group
    scaled to zero), which Ray 2.60 does not tell a driver: say what is being waited for, and
    return True (waiting)."""
    reason = unplaceable(wanted, [node["Resources"] for node in ray.nodes() if node["Alive"]], what)
    return refuse_or_announce(reason, f"no {what} could start", f"each {what} waits until such a node joins")


def refuse_or_announce(reason: str | None, never: str, waiting: str) -> bool:
    """What Ray would wait for in silence, given as ``reason`` (None: nothing): refused with
    ValueError("REASON: NEVER") on the embedded Ray; announced with WAITING on an existing
    cluster, which may gain the node. Returns whether there is something to wait for."""
    if reason and _embedded:
        raise ValueError(f"{reason}: {never}")
    if reason:
        say(f"[distdl] warning: {reason}; {waiting} (an autoscaler adding one); Ctrl-C stops", err=True)
    return reason is not None


def quiet_data_progress() -> None:
    """Training prints one line per epoch; Ray Data's per-epoch progress bars would bury it."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


DISTDL_ERROR = re.compile(r"^\s*(?:\(\w+ pid=\d+\)\s*)?distdl\.[\w.]+: (.+)$")
# Ray's own wrappers (ray.exceptions.UserCodeException: "UDF failed to process a data block")
# come after the error they wrap: the last error that is not Ray's is the cause.
USER_ERROR = re.compile(r"^\s*(?!ray\.)[\w.]+(?:Error|Exception): (.+)$")
ANY_ERROR = re.compile(r"^\s*[\w.]+(?:Error|Exception): (.+)$")


def root_cause(exc: BaseException) -> str:
    """The message a user needs from a Ray failure. Ray wraps a worker's error in several
    layers of tracebacks and advice; distdl's own error (a bad file, a bad label) wins,
    else the last error line that is not one of Ray's wrappers, else Ray's, else the last line."""
    failures = getattr(exc, "worker_failures", None)
    chain = [next(iter(failures.values()))] if failures else [exc]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    return cause_in("\n".join(str(e) for e in chain)) or type(exc).__name__


def cause_in(report: str) -> str:
    """root_cause() of a failure Ray reports as text (e.g. a Serve deployment's message, which
    holds its replica's traceback)."""
    lines = [line for line in report.splitlines() if line.strip()]
    for pattern in (DISTDL_ERROR, USER_ERROR, ANY_ERROR):
        found = [m.group(1) for m in map(pattern.match, lines) if m]
        if found:
            return found[-1]
    return lines[-1] if lines else ""

"""MLflow tracking of a training run (the spec's ``tracking`` section).

One writer, the training driver: it follows the run's metrics.jsonl (rank 0 rewrites it every
epoch) from a thread. The workers never talk to MLflow, so a slow tracking server never delays
a step, and one that is down costs a single warning: training goes on, and the metrics stay in
metrics.jsonl.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from distdl import checkpoint
from distdl.logs import say
from distdl.paths import is_uri
from distdl.polling import polling
from distdl.specbase import flatten

DEFAULT_DB = "mlflow.db"
ARTIFACTS = "mlartifacts"  # beside a sqlite store: MLflow's own default is ./mlruns in the working directory
POLL_S = 5.0
# MLflow's HTTP client retries 7 times with backoff by default: minutes before a server that is
# down is noticed. distdl gives up after one retry and goes on without tracking.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow's limits per log_batch call.
PARAMS_PER_CALL, METRICS_PER_CALL = 100, 1000
SQLITE = "sqlite:///"


def resolve_uri(storage: str, tracking: Any) -> Optional[str]:
    """The tracking URI for a spec's ``tracking`` section; None when tracking is off or has
    nowhere to go (a URI storage without a tracking URI)."""
    if not tracking.enabled:
        return None
    uri = tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if is_uri(storage):
        return None
    return SQLITE + str(Path(storage, DEFAULT_DB).resolve())


def _artifact_location(uri: str) -> Optional[str]:
    """Where a new experiment keeps artifacts: beside a sqlite store's file; a server decides its own."""
    if not uri.startswith(SQLITE):
        return None
    return (Path(uri[len(SQLITE):]).parent / ARTIFACTS).resolve().as_uri()


def as_params(spec: dict) -> dict[str, str]:
    """A resolved spec as MLflow params: dotted keys, values as text (lists and empty mappings as JSON)."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in flatten(spec).items()}


def numbers(row: dict) -> dict[str, float]:
    """An epoch's scalar metrics as MLflow logs them: the epoch is their step, not a metric."""
    return {k: float(v) for k, v in checkpoint.scalars(row).items() if k != "epoch"}


def _warn(uri: str, exc: BaseException) -> None:
    reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    say(f"[distdl] warning: tracking to {uri} failed ({reason}); training goes on without it, "
        f"the metrics are in metrics.jsonl", err=True)


class Tracker:
    """One MLflow run of a distdl run, new or continued on resume."""

    def __init__(self, client: Any, uri: str, experiment: str, run_id: str, logged_epoch: int):
        self.client, self.uri, self.experiment, self.run_id = client, uri, experiment, run_id
        self.logged_epoch = logged_epoch
        self.broken = False

    @classmethod
    def start(cls, spec: Any, record: dict, done_epochs: int) -> Optional["Tracker"]:
        """The run's tracker (continuing ``record``'s MLflow run when it is on the same store), or
        None when tracking is off or the store cannot be reached (with one warning)."""
        uri = resolve_uri(spec.storage, spec.tracking)
        if uri is None:
            if spec.tracking.enabled:
                say(f"[distdl] note: not tracked: storage {spec.storage} is a URI; set tracking.uri (or "
                    f"$MLFLOW_TRACKING_URI) to an MLflow server")
            return None
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        try:
            return cls._start(spec, record, done_epochs, uri)
        except Exception as exc:  # noqa: BLE001 - MLflow, HTTP and SQL errors alike must not stop training
            _warn(uri, exc)
            return None

    @classmethod
    def _start(cls, spec: Any, record: dict, done_epochs: int, uri: str) -> "Tracker":
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        name = spec.tracking.experiment or spec.name
        found = client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else client.create_experiment(
            name, artifact_location=_artifact_location(uri))
        previous = record.get("tracking") or {}
        if previous.get("uri") == uri and previous.get("experiment") == name and done_epochs:
            client.update_run(previous["run_id"], status="RUNNING")  # a resume: the same MLflow run
            return cls(client, uri, name, previous["run_id"], done_epochs)
        run_id = client.create_run(experiment_id, run_name=spec.name, tags=_tags(record)).info.run_id
        params = [Param(k, v) for k, v in as_params(spec.to_dict()).items()]
        for at in range(0, len(params), PARAMS_PER_CALL):
            client.log_batch(run_id, params=params[at:at + PARAMS_PER_CALL])
        return cls(client, uri, name, run_id, 0)

    def ref(self) -> dict[str, str]:
        """What run.json keeps, so a resume continues this MLflow run."""
        return {"uri": self.uri, "experiment": self.experiment, "run_id": self.run_id}

    def describe(self) -> str:
        return f"{self.uri} (run {self.run_id})"

    def _guarded(self, work: Any, *args: Any) -> None:
        """Run one call to MLflow; the first failure warns and ends tracking for this run."""
        if self.broken:
            return
        try:
            work(*args)
        except Exception as exc:  # noqa: BLE001 - as in start
            self.broken = True
            _warn(self.uri, exc)

    def sync(self, run_dir: str) -> None:
        """Log the epochs metrics.jsonl has that MLflow has not."""
        self._guarded(self._log_epochs, checkpoint.read_metrics(run_dir))

    def _log_epochs(self, rows: list[dict]) -> None:
        from mlflow.entities import Metric

        new = [row for row in rows if row.get("epoch", 0) > self.logged_epoch]
        if not new:
            return
        now_ms = int(time.time() * 1000)
        metrics = [Metric(key, value, now_ms, row["epoch"]) for row in new for key, value in numbers(row).items()]
        for at in range(0, len(metrics), METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=metrics[at:at + METRICS_PER_CALL])
        self.logged_epoch = new[-1]["epoch"]

    @contextmanager
    def following(self, run_dir: str) -> Iterator[None]:
        """Log each epoch as rank 0 writes it, while the block (training) runs."""
        with polling(lambda: self.sync(run_dir), POLL_S, "distdl-tracking"):
            yield

    def finish(self, status: str, artifacts: list[str], outcome: str) -> None:
        """Attach ``artifacts`` (local files), tag the outcome, end the MLflow run with
        ``status`` (FINISHED, FAILED or KILLED)."""
        for path in artifacts:
            self._guarded(self.client.log_artifact, self.run_id, path)
        self._guarded(self.client.set_tag, self.run_id, "distdl.status", outcome)
        self._guarded(self.client.set_terminated, self.run_id, status)


def _tags(record: dict) -> dict[str, str]:
    tags = {"distdl.family": record["family"], "distdl.task": record["task"],
            "distdl.layout": record["layout"]["text"], "distdl.host": record["host"],
            **{f"{name}.version": version for name, version in record["versions"].items()}}
    if record.get("git_commit"):
        tags["mlflow.source.git.commit"] = record["git_commit"]
    return tags

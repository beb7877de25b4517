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
        tags = _tags(record)
        if spec.tracking.parent_run_id:
            tags["mlflow.parentRunId"] = spec.tracking.parent_run_id  # how MLflow's UI nests runs
        previous = (record.get("tracking") or {}) if done_epochs else {}
        tracker = cls.open(uri, spec.tracking.experiment or spec.name, spec.name, tags, as_params(spec.to_dict()),
                           previous)
        if tracker and tracker.run_id == previous.get("run_id"):
            tracker.logged_epoch = done_epochs  # a resume: the epochs already logged
        return tracker

    @classmethod
    def open(cls, uri: str, experiment: str, run_name: str, tags: dict[str, str], params: dict[str, str],
             previous: dict) -> Optional["Tracker"]:
        """``previous``'s MLflow run (a ``ref``) when it is on this store and experiment and not
        deleted, else a new run with ``tags`` and ``params``; None (with one warning) when the
        store cannot be reached."""
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        try:
            return cls._open(uri, experiment, run_name, tags, params, previous)
        except Exception as exc:  # noqa: BLE001 - MLflow, HTTP and SQL errors alike must not stop training
            _warn(uri, exc)
            return None

    @classmethod
    def _open(cls, uri: str, experiment: str, run_name: str, tags: dict[str, str], params: dict[str, str],
              previous: dict) -> "Tracker":
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(
            experiment, artifact_location=_artifact_location(uri))
        if previous.get("uri") == uri and previous.get("experiment") == experiment and _active(client, previous):
            client.update_run(previous["run_id"], status="RUNNING")
            return cls(client, uri, experiment, previous["run_id"], 0)
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        batch = [Param(k, v) for k, v in params.items()]
        for at in range(0, len(batch), PARAMS_PER_CALL):
            client.log_batch(run_id, params=batch[at:at + PARAMS_PER_CALL])
        return cls(client, uri, experiment, run_id, 0)

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

    def log(self, values: dict[str, float], step: int = 0) -> None:
        """Log scalar ``values`` at ``step`` (a sweep's best metric)."""
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        self._guarded(self.client.log_batch, self.run_id, [Metric(k, float(v), now_ms, step) for k, v in values.items()])

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


def _active(client: Any, ref: dict) -> bool:
    """Whether the run ``ref`` names still exists and is not deleted (someone may have removed it in the UI)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(ref["run_id"]).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def _tags(record: dict) -> dict[str, str]:
    tags = {"distdl.family": record["family"], "distdl.task": record["task"],
            "distdl.layout": record["layout"]["text"], "distdl.host": record["host"],
            **{f"{name}.version": version for name, version in record["versions"].items()}}
    if record.get("git_commit"):
        tags["mlflow.source.git.commit"] = record["git_commit"]
    return tags

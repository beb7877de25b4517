"""The job spec's sections for following and steering runs: ``train.early_stop`` and ``tracking``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from distdl.specbase import check, knob


@dataclass
class EarlyStopSpec:
    patience: Optional[int] = knob(None, help="end the run when `checkpoint.best_metric` has not improved for this "
                                              "many epochs (judged every epoch, by `checkpoint.best_mode`); "
                                              "null: train all `train.epochs`")
    min_delta: float = knob(0.0, help="a change counts as an improvement only when it is larger than this")

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(self.patience is None or self.patience >= 1, "patience", f"must be >= 1, got {self.patience}")
        yield from check(self.min_delta >= 0, "min_delta", f"must be >= 0, got {self.min_delta}")
        yield from check(self.patience is not None or self.min_delta == 0, "min_delta",
                         "needs early_stop.patience: without it early stopping is off")


@dataclass
class TrackingSpec:
    enabled: bool = knob(True, help="log the run to MLflow: the resolved spec as params, every epoch's metrics, "
                                    "tags, the spec and the report as artifacts")
    uri: Optional[str] = knob(None, help="MLflow tracking URI, e.g. `http://mlflow:5000`; null: "
                                         "`$MLFLOW_TRACKING_URI`, else `sqlite:///<storage>/mlflow.db` beside the "
                                         "runs (artifacts in `<storage>/mlartifacts`; a URI storage needs a "
                                         "tracking URI)")
    experiment: Optional[str] = knob(None, help="MLflow experiment; null: the spec's `name`")
    parent_run_id: Optional[str] = knob(None, help="an MLflow run this run is nested under (`distdl tune` sets it "
                                                   "to the sweep's run for each trial)")

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(self.uri is None or bool(self.uri.strip()), "uri", "must be a tracking URI or null")
        yield from check(self.experiment is None or bool(self.experiment.strip()), "experiment",
                         "must be a name or null")

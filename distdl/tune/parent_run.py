"""The sweep in MLflow: one parent run, under which every trial's own run is nested.

The parent holds the base spec and the search as params, the plan as a tag, and at the end the
best trial's metric and tune.json. Each trial's run is a normal distdl run (distdl.tracking,
written by the trial's driver) whose spec points at the parent (``tracking.parent_run_id``).
The parent's id is kept in ``<sweep>/sweep.json``, so a resumed sweep continues the same run.
"""
from __future__ import annotations

import json
from typing import Optional

from distdl import run_record
from distdl.paths import join
from distdl.paths import exists, is_uri, read_bytes, write_bytes
from distdl.specbase import to_dict
from distdl.tracking import Tracker, as_params, resolve_uri
from distdl.tune.search import Sweep

SWEEP_RECORD = "sweep.json"


def start(sweep: Sweep, plan_text: str) -> Optional[Tracker]:
    """The sweep's parent run (continued when ``sweep.json`` names one), or None when tracking is
    off or unreachable (the trials are then not tracked either)."""
    spec = sweep.spec
    uri = resolve_uri(spec.storage, spec.tracking)
    if uri is None:
        return None
    record_path = join(spec.run_dir, SWEEP_RECORD)
    previous = json.loads(read_bytes(record_path)).get("tracking") or {} if exists(record_path) else {}
    searched = {**to_dict(sweep.tune), "search": {d.field: d.describe() for d in sweep.dims}}  # --search too
    tags = {"distdl.kind": "sweep", "distdl.family": spec.model_family, "distdl.plan": plan_text,
            **{f"{name}.version": version for name, version in run_record.versions().items()}}
    tracker = Tracker.open(uri, spec.tracking.experiment or spec.name, spec.name, tags,
                           as_params({**spec.to_dict(), "tune": searched}), previous)
    if tracker:
        write_bytes(record_path, (json.dumps({"tracking": tracker.ref()}, indent=2) + "\n").encode())
    return tracker


def trial_tracking(parent: Optional[Tracker]) -> dict:
    """The ``tracking`` section of every trial's spec: nested under ``parent``, or off without one."""
    if parent is None:
        return {"enabled": False}
    return {"enabled": True, "uri": parent.uri, "experiment": parent.experiment, "parent_run_id": parent.run_id}


def finish(parent: Tracker, best: Optional[float], metric: str, table_path: str, failed: bool) -> None:
    """The best trial's metric, tune.json as an artifact, and the run's end."""
    if best is not None:
        parent.log({f"best_{metric}": best})
    local = [table_path] if not is_uri(table_path) and exists(table_path) else []  # MLflow uploads local files
    parent.finish("FAILED" if failed else "FINISHED", local, "failed" if failed else "finished")

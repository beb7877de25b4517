"""What a training attempt leaves for people to follow: run.json, the MLflow run, the report.

train.run opens a Watch once the data and the trainer are ready, trains inside
``watch.following()``, and closes it with ``finished`` or ``failed``. Every step here is on the
driver and none of it can fail the training: a report or a tracking server that fails is one
warning.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager, Optional

from distdl import checkpoint, models, run_record
from distdl.logs import say
from distdl.paths import is_uri
from distdl.tracking import Tracker


class Watch:
    def __init__(self, spec: Any, record: dict, tracker: Optional[Tracker]):
        self.spec, self.record, self.tracker = spec, record, tracker

    @classmethod
    def start(cls, spec: Any, layout: Any, done_epochs: int) -> "Watch":
        task = models.FAMILIES[spec.model_family].task(spec.model)
        record = run_record.start(spec.run_dir, spec.name, spec.model_family, task, layout,
                                  run_record.load(spec.run_dir))
        tracker = Tracker.start(spec, record, done_epochs)
        if tracker:
            record["tracking"] = tracker.ref()
            run_record.save(spec.run_dir, record)
            say(f"[distdl] tracking: {tracker.describe()}")
        return cls(spec, record, tracker)

    def following(self) -> ContextManager:
        return self.tracker.following(self.spec.run_dir) if self.tracker else nullcontext()

    def failed(self, reason: str, wall_s: float) -> None:
        run_record.end(self.spec.run_dir, self.record, wall_s, error=reason)
        if self.tracker:
            self.tracker.sync(self.spec.run_dir)
            self.tracker.finish("FAILED", [], run_record.FAILED)

    def finished(self, wall_s: float, stopped_early: Optional[dict]) -> Optional[str]:
        """Close the run: its report, the tracker's last epochs and artifacts, run.json.
        Returns the report's path (None when it could not be written)."""
        record = run_record.end(self.spec.run_dir, self.record, wall_s, stopped_early=stopped_early)
        report = write_report(self.spec.run_dir)
        if self.tracker:
            self.tracker.sync(self.spec.run_dir)
            self.tracker.finish("FINISHED", [p for p in (report, self._spec_file()) if p], record["status"])
        return report

    def _spec_file(self) -> Optional[str]:
        """The resolved spec, as the best checkpoint holds it (a URI run folder: none to attach)."""
        path = checkpoint.join(checkpoint.best_dir(self.spec.run_dir), checkpoint.SPEC)
        return None if is_uri(path) or not Path(path).is_file() else path


def write_report(run_dir: str) -> Optional[str]:
    """report.html of the run; a failure is a warning, the run's result stands."""
    try:
        from distdl import report

        return report.write(run_dir)
    except Exception as exc:  # noqa: BLE001 - the report must never fail a finished training run
        say(f"[distdl] warning: the report of {run_dir} could not be written: {exc}", err=True)
        return None

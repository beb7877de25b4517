"""What the report reads from a run folder: metrics.jsonl, the best (else newest) checkpoint's
spec and model.json, and run.json when the driver wrote one (older runs have none)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from distdl import checkpoint, models, run_record
from distdl.paths import exists


class NotARunError(ValueError):
    """A folder that holds no distdl run."""


@dataclass
class Run:
    run_dir: str
    history: list[dict]  # metrics.jsonl rows, one per epoch
    checkpoint: str  # best/, else the newest complete epoch checkpoint
    spec: dict  # the checkpoint's resolved spec.yaml
    meta: dict  # the checkpoint's model.json: {"family", "args"}
    record: Optional[dict]  # run.json; None for a run from before it existed

    @property
    def name(self) -> str:
        return self.spec.get("name") or self.run_dir.rstrip("/").rsplit("/", 1)[-1]

    @property
    def family(self) -> str:
        return self.meta["family"]

    @property
    def task(self) -> str:
        return models.task_name(self.meta)

    @property
    def status(self) -> Optional[str]:
        """run.json's status, a driver gone from this host read as failed; None without run.json."""
        return run_record.status(self.record) if self.record else None

    @property
    def best_metric(self) -> str:
        return self.spec["checkpoint"]["best_metric"]

    @property
    def best_mode(self) -> str:
        return self.spec["checkpoint"]["best_mode"]

    def series(self, metric: str) -> list[tuple[float, float]]:
        """(epoch, value) of a scalar metric, over the epochs that logged it."""
        return [(row["epoch"], float(row[metric])) for row in self.history
                if isinstance(row.get(metric), (int, float)) and not isinstance(row.get(metric), bool)]

    def best(self) -> Optional[dict]:
        """The history row with the best value of the best metric (the one best/ holds)."""
        rows = [r for r in self.history if isinstance(r.get(self.best_metric), (int, float))
                and math.isfinite(r[self.best_metric])]
        if not rows:
            return None
        pick = min if self.best_mode == "min" else max
        return pick(rows, key=lambda r: r[self.best_metric])

    def last_with(self, metric: str) -> Optional[dict]:
        """The newest history row that logged ``metric`` (e.g. the confusion matrix)."""
        return next((row for row in reversed(self.history) if row.get(metric) is not None), None)


def _checkpoint_of(run_dir: str) -> Optional[str]:
    best = checkpoint.best_dir(run_dir)
    return best if checkpoint.is_complete(best) else checkpoint.latest(run_dir)


def load(run_dir: str) -> Run:
    """The run in ``run_dir``; NotARunError naming what is missing when it is not a run folder."""
    metrics = checkpoint.join(run_dir, checkpoint.METRICS)
    ckpt = _checkpoint_of(run_dir)
    if not exists(metrics) or ckpt is None:
        missing = [what for what, there in ((checkpoint.METRICS, exists(metrics)),
                                            ("a complete checkpoint", ckpt is not None)) if not there]
        raise NotARunError(f"{run_dir} is not a distdl run folder: expected {checkpoint.METRICS} and "
                           f"{checkpoint.CHECKPOINTS}/epoch_NNNN (or {checkpoint.BEST}/) holding a complete "
                           f"checkpoint, as `distdl train` writes to <storage>/<name>; missing: {', '.join(missing)}")
    return Run(run_dir, checkpoint.read_metrics(run_dir), ckpt, checkpoint.load_spec(ckpt), checkpoint.load_meta(ckpt),
               run_record.load(run_dir))

"""What a sweep leaves: the table sorted by the metric, ``tune.json`` and the best trial's
checkpoint copied to ``<storage>/<name>/best``. Read from the trials' own run folders (their
best checkpoint and metrics.jsonl), the same files ``distdl train`` leaves."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

from distdl import checkpoint
from distdl.paths import filesystem

TABLE = "tune.json"
FINISHED, STOPPED, FAILED = "finished", "stopped early", "failed"


@dataclass
class Row:
    trial: str
    values: dict[str, Any]  # searched field -> the trial's value
    best: Optional[float]  # the metric's best value; None: no checkpoint
    epoch: Optional[int]  # the epoch of ``best``
    epochs: int  # epochs trained
    status: str
    wall_s: float
    run_dir: str
    error: Optional[str] = None


def trial_row(trial: str, values: dict, run_dir: str, epochs: int, error: Optional[str], wall_s: float) -> Row:
    """A trial's row from its run folder; ``epochs``: what every trial is asked to train."""
    done = max((row.get("epoch", 0) for row in checkpoint.read_metrics(run_dir)), default=0)
    best_dir = checkpoint.best_dir(run_dir)
    best = checkpoint.load_train_state(best_dir)[0]["best"] if checkpoint.is_complete(best_dir) else None
    status = FAILED if error else STOPPED if done < epochs else FINISHED
    return Row(trial, values, best and best["value"], best and best["epoch"], done, status, wall_s, run_dir, error)


def ranked(rows: list[Row], mode: str) -> list[Row]:
    """Best first by the metric; trials without a checkpoint last."""
    sign = -1 if mode == "max" else 1
    return sorted(rows, key=lambda r: (r.best is None, sign * (r.best or 0.0), r.trial))


def table(rows: list[Row], metric: str) -> str:
    """The rows as aligned text columns: trial, searched values, metric, epoch, status, wall."""
    fields = list(rows[0].values) if rows else []
    head = ["trial", *fields, metric, "epoch", "status", "wall"]
    body = [[r.trial, *(_show(r.values.get(f)) for f in fields), _show(r.best), _show(r.epoch), r.status,
             f"{r.wall_s:.0f}s"] for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [head, *body])


def _show(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write(sweep_dir: str, rows: list[Row], metric: str, mode: str) -> Optional[str]:
    """tune.json, and the best trial's checkpoint copied to ``<sweep_dir>/best``; returns that
    path (None when no trial left a checkpoint)."""
    best = next((r for r in rows if r.best is not None), None)
    dest = None
    if best:
        dest = checkpoint.best_dir(sweep_dir)
        checkpoint.copy(checkpoint.best_dir(best.run_dir), dest)
    doc = {"metric": metric, "mode": mode, "best": best and {"trial": best.trial, "checkpoint": dest},
           "trials": [asdict(r) for r in rows]}
    fs, inner = filesystem(checkpoint.join(sweep_dir, TABLE))
    with fs.open_output_stream(inner) as f:
        f.write(json.dumps(doc, indent=2).encode())
    return dest

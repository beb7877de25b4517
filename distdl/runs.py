"""The runs in a storage folder and one summary each: what `distdl runs` lists and compares.

A run is a folder ``<storage>/<name>`` holding run.json (run_record), metrics.jsonl or
checkpoints/. Its status and wall time come from run.json; a run folder written before run.json
existed falls back to its newest checkpoint (status) and metrics.jsonl (wall time, approximate:
the epochs' own time, without start-up and data preparation), and so does a running run's wall
time. The spec, configured epochs and best come from the newest complete checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pyarrow.fs

from distdl import checkpoint, run_record
from distdl.paths import filesystem

MARKS = (run_record.RUN_RECORD, checkpoint.METRICS, checkpoint.CHECKPOINTS)  # any of these makes a run folder


class RunsError(ValueError):
    """A storage that does not exist, or a name that is not a run there."""


@dataclass(frozen=True)
class Run:
    name: str  # the folder's name, which is the spec's name
    path: str
    family: str
    status: str  # one of run_record.STATUSES
    epochs_done: int
    epochs: Optional[int]  # train.epochs; None while no checkpoint holds the spec
    best: Optional[dict]  # {"metric", "value", "epoch"} of best/
    wall_s: Optional[float]
    wall_approx: bool  # summed from metrics.jsonl's epoch_s
    started: Optional[str]  # ISO time from run.json
    checkpoint: Optional[str]  # best/, when complete
    spec: dict  # the resolved spec of the newest checkpoint ({} when there is none)
    history: list[dict]  # metrics.jsonl, one row per epoch


# ---- finding -----------------------------------------------------------------------------
def _is_run(fs: pyarrow.fs.FileSystem, inner: str) -> bool:
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.Directory:
        return False
    return any(i.base_name in MARKS for i in fs.get_file_info(pyarrow.fs.FileSelector(inner)))


def is_run(path: str) -> bool:
    return _is_run(*filesystem(path))


def find(storage: str) -> list[str]:
    """Run folders directly under ``storage``, by name."""
    fs, inner = filesystem(storage)
    kind = fs.get_file_info(inner).type
    if kind == pyarrow.fs.FileType.NotFound:
        raise RunsError(f"storage {storage} does not exist")
    if kind != pyarrow.fs.FileType.Directory:
        raise RunsError(f"storage {storage} is not a folder")
    names = sorted(i.base_name for i in fs.get_file_info(pyarrow.fs.FileSelector(inner))
                   if i.type == pyarrow.fs.FileType.Directory and not i.base_name.startswith("."))
    return [checkpoint.join(storage, name) for name in names if _is_run(fs, checkpoint.join(inner, name))]


def resolve(storage: str, run: str) -> str:
    """The folder of ``run``: a run's name in ``storage``, else a run folder's path."""
    try:
        found = find(storage)
    except RunsError as exc:
        found, where = [], str(exc)
    else:
        names = ", ".join(_base_name(p) for p in found)
        where = f"runs there: {names}" if names else f"{storage} holds no runs"
    for path in found:
        if _base_name(path) == run:
            return path
    if is_run(run):
        return run
    raise RunsError(f"no run '{run}' in {storage} (nor a run folder at that path); {where}")


def _base_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


# ---- reading -----------------------------------------------------------------------------
def _status_without_record(state: dict, epochs: Optional[int]) -> str:
    if state.get("stopped_early"):
        return run_record.STOPPED_EARLY
    if epochs is not None and state.get("epoch") == epochs:
        return run_record.FINISHED
    return run_record.FAILED  # a run folder from before run.json cannot be running now


def _epochs_time(rows: list[dict]) -> Optional[float]:
    """The epochs' own time (training and validation, without start-up), summed over metrics.jsonl."""
    times = [row["epoch_s"] for row in rows if isinstance(row.get("epoch_s"), (int, float))]
    return sum(times) if times else None


def load(run_dir: str) -> Run:
    """One run's summary from run.json, its newest checkpoint and metrics.jsonl."""
    record = run_record.load(run_dir) or {}
    best = checkpoint.best_dir(run_dir)
    best = best if checkpoint.is_complete(best) else None
    newest = checkpoint.latest(run_dir) or best
    state = checkpoint.load_train_state(newest)[0] if newest else {}
    spec = checkpoint.load_spec(newest) if newest else {}
    rows = checkpoint.read_metrics(run_dir)
    epochs = spec.get("train", {}).get("epochs")
    status = run_record.status(record) if record else _status_without_record(state, epochs)
    # A running run's record holds only earlier attempts' time; its epochs hold all of them.
    wall_s = record.get("wall_s") if status != run_record.RUNNING else None
    return Run(
        name=_base_name(run_dir), path=run_dir, family=record.get("family") or spec.get("model", {}).get("family") or "-",
        status=status, epochs_done=rows[-1].get("epoch", len(rows)) if rows else state.get("epoch", 0),
        epochs=epochs, best=state.get("best"),
        wall_s=wall_s if wall_s is not None else _epochs_time(rows), wall_approx=wall_s is None,
        started=record.get("started"), checkpoint=best, spec=spec, history=rows)


def listing(storage: str) -> list[Run]:
    """The runs in ``storage`` by start time (runs from before run.json first, by name)."""
    runs = [load(path) for path in find(storage)]
    return sorted(runs, key=lambda r: (r.started or "", r.name))


# ---- text ---------------------------------------------------------------------------------
def number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def duration(seconds: float) -> str:
    """e.g. 4.2s, 42s, 3m05s, 1h02m."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if not minutes:
        return f"{secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def wall(run: Run) -> str:
    """The run's wall time; ~ when summed from the epochs' own time."""
    if run.wall_s is None:
        return "-"
    return f"~{duration(run.wall_s)}" if run.wall_approx else duration(run.wall_s)


def epochs(run: Run) -> str:
    return f"{run.epochs_done}/{number(run.epochs)}"


def best(run: Run) -> str:
    return f"{run.best['metric']}={number(run.best['value'])}" if run.best else "-"


def best_epoch(run: Run) -> str:
    return number((run.best or {}).get("epoch"))


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns aligned on the widest cell, two spaces apart."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows])


def format_listing(runs: list[Run]) -> str:
    header = ["name", "family", "status", "epochs", "best", "best epoch", "wall", "checkpoint"]
    rows = [[r.name, r.family, r.status, epochs(r), best(r), best_epoch(r), wall(r), r.checkpoint or "-"]
            for r in runs]
    return table(header, rows)

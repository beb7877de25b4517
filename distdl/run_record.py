"""``<run_dir>/run.json``: what a run is and how it went, written by the training driver.

    {"name", "family", "task", "status", "started", "ended", "wall_s", "host", "pid",
     "layout": {"text", "num_workers", "use_gpu", ...}, "versions": {"distdl", "ray", "torch", "python"},
     "git_commit", "error", "stopped_early", "tracking": {"uri", "experiment", "run_id"} | null}

``status`` is one of STATUSES. The driver writes "running" when training starts and the outcome
when it ends; a driver killed in between leaves "running", which ``status`` reads as "failed"
when the pid it names is gone from this host. ``distdl runs`` and the report read this file;
a run folder from before it existed has none, and they fall back to the checkpoints.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Optional

from distdl.paths import join
from distdl.paths import exists, read_bytes, write_bytes

RUN_RECORD = "run.json"
RUNNING, FINISHED, STOPPED_EARLY, FAILED = "running", "finished", "stopped early", "failed"
STATUSES = (RUNNING, FINISHED, STOPPED_EARLY, FAILED)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import ray
    import torch

    import distdl

    return {"distdl": distdl.__version__, "ray": ray.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def git_commit(cwd: Optional[str] = None) -> Optional[str]:
    """The commit of the git work tree the command runs in (where the job's code and spec live), if any."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def load(run_dir: str) -> Optional[dict]:
    path = join(run_dir, RUN_RECORD)
    if not exists(path):
        return None
    return json.loads(read_bytes(path))


def save(run_dir: str, record: dict) -> None:
    write_bytes(join(run_dir, RUN_RECORD), (json.dumps(record, indent=2) + "\n").encode())


def start(run_dir: str, name: str, family: str, task: str, layout: Any, previous: Optional[dict]) -> dict:
    """The record of a run that starts (or resumes: its first start and tracking run are kept)."""
    record = {
        "name": name, "family": family, "task": task, "status": RUNNING,
        "started": (previous or {}).get("started") or now(), "ended": None,
        "wall_s": (previous or {}).get("wall_s"),  # earlier attempts' time; end() adds this one's
        "host": socket.gethostname(), "pid": os.getpid(),
        "layout": {"text": layout.describe(), **asdict(layout)},
        "versions": versions(), "git_commit": git_commit(), "error": None, "stopped_early": None,
        "tracking": (previous or {}).get("tracking"),
    }
    save(run_dir, record)
    return record


def end(run_dir: str, record: dict, wall_s: float, stopped_early: Optional[dict] = None,
        error: Optional[str] = None) -> dict:
    """Mark the run finished, stopped early or failed (``error``); ``wall_s`` adds to earlier attempts'."""
    status = FAILED if error else STOPPED_EARLY if stopped_early else FINISHED
    earlier = record.get("wall_s") or 0.0
    record.update(status=status, ended=now(), wall_s=earlier + wall_s, error=error, stopped_early=stopped_early)
    save(run_dir, record)
    return record


def status(record: dict) -> str:
    """The record's status, with a "running" whose driver is gone from this host read as failed."""
    if record.get("status") != RUNNING or record.get("host") != socket.gethostname():
        return record.get("status", RUNNING)
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return FAILED
    except (PermissionError, KeyError, TypeError, ValueError):
        pass
    return RUNNING

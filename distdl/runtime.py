"""Connecting to Ray and making its failures and logs readable."""
from __future__ import annotations

import os
from typing import Optional

import ray
import ray.data


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Join ``address`` (or RAY_ADDRESS) when given; otherwise start an embedded local Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True)


def quiet_data_progress() -> None:
    """Training prints one line per epoch; Ray Data's per-epoch progress bars would bury it."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def root_cause(exc: BaseException) -> str:
    """The message a user needs from a Ray failure: the innermost error's last line."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        exc = next(iter(failures.values()))
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__

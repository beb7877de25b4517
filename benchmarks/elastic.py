"""Elastic training: how fast a group grows when a node joins, and what a node leaving costs.

A real Ray cluster of raylets on this machine (tests/ray_cluster.LocalCluster, token auth): a
head of 3 CPUs, and raylets of 2 CPUs that join and leave. The digits demo with a small CNN,
``scaling.num_workers: {min: 1, max: 2}`` with 2 CPUs a worker (one fits on each raylet),
``resize_check_s: 1``, and the same global batch (64 by default) whatever the group's size. Both runs
start on the head alone (one worker), and a second raylet joins after the first epoch:

  (a) nothing else happens: the group grows to two workers and finishes;
  (b) the same, and the joined raylet is killed (SIGKILL, as a machine dies) once half of the
      epochs are done: the group restarts on the head alone from the newest checkpoint.

Printed: each run's wall time and samples/s; for each join, the seconds from the raylet being
up to the new worker's first step (a step hook on rank 1; until then rank 0 waits in epoch 2,
so a short run cannot end first); the ratio (b)/(a) of wall times, and (b) - (a): the training
time a departure costs (the partial epoch redone, the restart, the epochs after it on one worker).

Run from the repository root, on an otherwise idle machine:

    .venv/bin/python benchmarks/elastic.py            # 8 epochs a run
    .venv/bin/python benchmarks/elastic.py --smoke    # 3 epochs a run

The full run keeps Ray's own node health checks (a dead node is known after ~15 s); --smoke
checks every second, so that the suite's run (tests/test_elastic.py) waits ~3 s instead.
"""
from __future__ import annotations

import argparse
import functools
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

# Ray reads its auth mode when it is imported: this driver joins a cluster with a token of its own.
TOKEN = secrets.token_hex(32)
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)

import pyarrow.parquet as pq  # noqa: E402
from common import parse_args  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's real local cluster

from ray_cluster import LocalCluster  # noqa: E402

from distdl import checkpoint, runtime, train  # noqa: E402
from distdl.demo_data import write_digits  # noqa: E402
from distdl.spec import JobSpec, parse  # noqa: E402

VAL_FRACTION = 0.2
SMOKE = {"epochs": 3}  # a join after epoch 1, a departure after epoch 2


def spec(runs: Path, digits: Path, name: str, epochs: int, batch: int) -> JobSpec:
    return parse({
        "name": name, "storage": str(runs), "data": {"train": str(digits), "val_fraction": VAL_FRACTION},
        "model": {"arch": "smallcnn", "width": 4, "batchnorm": False},
        "preprocess": {"image_size": 8, "channels": 1, "mean": [0.3], "std": [0.3]},
        "train": {"epochs": epochs, "batch_size": batch, "lr": 0.01, "schedule": "constant", "shuffle": False},
        "scaling": {"num_workers": {"min": 1, "max": 2}, "cpus_per_worker": 2, "resize_check_s": 1},
        "failure": {"max_failures": 0}, "tracking": {"enabled": False},
    })


def when_epoch(run_dir: str, epoch: int, action: Callable[[], None]) -> threading.Thread:
    """Call ``action`` once the run's newest complete checkpoint is ``epoch``'s or later."""
    def watch() -> None:
        while not any(path >= checkpoint.epoch_dir(run_dir, epoch) for path in checkpoint.list_checkpoints(run_dir)):
            time.sleep(0.1)
        action()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def first_step_of_rank_1(marker: str, rank: int, epoch: int, step: int) -> None:
    """A step hook (runs in every worker): the time of rank 1's first step, into ``marker``.
    Until then rank 0 waits at its first step of epoch 2: the run cannot end before the join."""
    if rank == 1 and not os.path.exists(marker):
        Path(marker).write_text(str(time.time()))
    while rank == 0 and epoch >= 2 and not os.path.exists(marker):
        time.sleep(0.05)


def run(cluster: LocalCluster, job: JobSpec, leave_after: int = 0) -> tuple[float, float]:
    """(wall seconds, seconds from a raylet joining after epoch 1 to its worker's first step) of
    one run; ``leave_after``: kill that raylet once this epoch is checkpointed."""
    name, marker, joined = job.name, Path(job.storage) / f"{job.name}-first-step", []
    when_epoch(job.run_dir, 1, lambda: (cluster.add_node(name, cpus=2), joined.append(time.time())))
    if leave_after:
        when_epoch(job.run_dir, leave_after, lambda: cluster.kill_node(name))
    started = time.perf_counter()
    train.run(job, step_hook=functools.partial(first_step_of_rank_1, str(marker)))
    wall = time.perf_counter() - started
    return wall, float(marker.read_text()) - joined[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch (default: %(default)s)")
    parser.add_argument("--runs", type=Path, help="keep the two runs (metrics, checkpoints) in this folder, as "
                                                  "RUNS/a and RUNS/b (default: a temporary folder)")
    args = parse_args(parser, SMOKE)
    with tempfile.TemporaryDirectory(prefix="distdl-bench-elastic-") as tmp:
        root = Path(tmp)
        digits = write_digits(root / "digits")["train"]
        rows = round(pq.ParquetFile(digits).metadata.num_rows * (1 - VAL_FRACTION))
        jobs = {name: spec(args.runs or root / "runs", digits, name, args.epochs, args.batch_size) for name in "ab"}
        (root / "logs").mkdir()
        cluster = LocalCluster(root / "logs", head_cpus=3, node_cpus=2, quick_node_death=args.smoke)
        cluster.token = TOKEN
        os.environ[runtime.TRAIN_POLL_INTERVAL] = cluster.env[runtime.TRAIN_POLL_INTERVAL]
        try:
            cluster.start_alone()
            with runtime.session(f"127.0.0.1:{cluster.gcs_port}"):  # a driver on the head's raylet
                # (b) first: its raylet leaves, so (a) starts on the head alone too
                results = {"b": run(cluster, jobs["b"], leave_after=max(2, args.epochs // 2)),
                           "a": run(cluster, jobs["a"])}
        finally:
            cluster.stop()
    for label, what in (("a", "a raylet joins after epoch 1"), ("b", "... and leaves halfway")):
        wall, join_s = results[label]
        print(f"({label}) {what}: {args.epochs} epochs in {wall:.1f}s, {args.epochs * rows / wall:.0f} samples/s; "
              f"the joined worker's first step {join_s:.1f}s after its raylet was up")
    (a, _), (b, _) = results["a"], results["b"]
    print(f"(b)/(a) = {b / a:.2f}  (wall time; the departure cost {b - a:.1f}s)")


if __name__ == "__main__":
    main()

"""Elastic training: how fast a group grows when a node joins, and what a node leaving costs.

A real Ray cluster of raylets on this machine (tests/ray_cluster.LocalCluster, token auth: a
head of 3 CPUs and a node of 2), the digits demo with a small CNN, ``scaling.num_workers:
{min: 1, max: 2}`` with 2 CPUs a worker (one fits on each raylet), ``resize_check_s: 1``, and
the same global batch (64) whatever the group's size:

  (a) the run on both raylets, nothing joins or leaves;
  (b) the same run, its second raylet killed (SIGKILL, as a machine dies) when half of the
      epochs are done: the group restarts on the head alone from the newest checkpoint;
  (c) a run that starts on the head alone; after its first epoch a raylet joins. Printed: the
      seconds from the raylet being up to the new worker's first step (a step hook on rank 1).

Printed: each run's wall time and samples/s, the ratio (b)/(a) of wall times and (b) - (a),
the training time a departure costs (the partial epoch redone, the restart, and the epochs
after it on one worker).

Run from the repository root, on an otherwise idle machine:

    .venv/bin/python benchmarks/elastic.py            # 8 epochs a run
    .venv/bin/python benchmarks/elastic.py --smoke    # 2 epochs a run
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
from common import parse_args

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's real local cluster

from ray_cluster import LocalCluster  # noqa: E402

from distdl import checkpoint, runtime, train  # noqa: E402
from distdl.demo_data import write_digits  # noqa: E402
from distdl.spec import JobSpec, parse  # noqa: E402

VAL_FRACTION = 0.2
SMOKE = {"epochs": 2}


def spec(root: Path, digits: Path, name: str, epochs: int) -> JobSpec:
    return parse({
        "name": name, "storage": str(root / "runs"), "data": {"train": str(digits), "val_fraction": VAL_FRACTION},
        "model": {"arch": "smallcnn", "width": 4, "batchnorm": False},
        "preprocess": {"image_size": 8, "channels": 1, "mean": [0.3], "std": [0.3]},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.01, "schedule": "constant", "shuffle": False},
        "scaling": {"num_workers": {"min": 1, "max": 2}, "cpus_per_worker": 2, "resize_check_s": 1},
        "failure": {"max_failures": 0}, "tracking": {"enabled": False},
    })


def when_epoch(run_dir: str, epoch: int, action) -> threading.Thread:
    """Call ``action`` once the run's metrics.jsonl holds ``epoch`` (the next epoch has begun)."""
    def watch() -> None:
        while not any(row["epoch"] >= epoch for row in checkpoint.read_metrics(run_dir)):
            time.sleep(0.1)
        action()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def first_step_of_rank_1(marker: str, rank: int, epoch: int, step: int) -> None:
    """A step hook (runs in every worker): the time of rank 1's first step, into ``marker``.
    Until then rank 0 takes its steps slowly, so the run cannot end before the join is seen."""
    if os.path.exists(marker):
        return
    if rank == 1:
        Path(marker).write_text(str(time.time()))
    else:
        time.sleep(0.05)


def timed(run_spec: JobSpec, rows: int, label: str, **kwargs) -> float:
    started = time.perf_counter()
    train.run(run_spec, **kwargs)
    wall = time.perf_counter() - started
    print(f"{label}: {run_spec.train.epochs} epochs in {wall:.1f}s, "
          f"{run_spec.train.epochs * rows / wall:.0f} samples/s", flush=True)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    args = parse_args(parser, SMOKE)
    with tempfile.TemporaryDirectory(prefix="distdl-bench-elastic-") as tmp:
        root = Path(tmp)
        digits = write_digits(root / "digits")["train"]
        rows = round(pq.ParquetFile(digits).metadata.num_rows * (1 - VAL_FRACTION))
        (root / "logs").mkdir()
        cluster = LocalCluster(root / "logs", head_cpus=3, node_cpus=2)
        try:
            cluster.start()
            os.environ.update({key: cluster.env[key] for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                                                                 runtime.TRAIN_POLL_INTERVAL)})
            runtime.connect(f"127.0.0.1:{cluster.gcs_port}")  # a driver on the head's raylet
            a = timed(spec(root, digits, "a", args.epochs), rows, "(a) 2 raylets, none leaves")
            b_spec = spec(root, digits, "b", args.epochs)
            when_epoch(b_spec.run_dir, max(1, args.epochs // 2), lambda: cluster.kill_node("node"))
            b = timed(b_spec, rows, "(b) 2 raylets, one killed halfway")
            c_spec, marker = spec(root, digits, "c", args.epochs), root / "first-step"
            joined: list[float] = []
            when_epoch(c_spec.run_dir, 1, lambda: (cluster.add_node("joiner", cpus=2), joined.append(time.time())))
            timed(c_spec, rows, "(c) the head alone, a raylet joins after epoch 1",
                  step_hook=functools.partial(first_step_of_rank_1, str(marker)))
        finally:
            cluster.stop()
        print(f"(c) a raylet joined: its worker's first step {float(marker.read_text()) - joined[0]:.1f}s after "
              "the raylet was up")
        print(f"(b)/(a) = {b / a:.2f}  (wall time; a departure cost {b - a:.1f}s)")


if __name__ == "__main__":
    main()

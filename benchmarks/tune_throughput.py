"""Sweep throughput, side by side: the same short trials through `distdl tune` and one after
another with `distdl train`.

Every trial trains the digits demo (scikit-learn's handwritten digits, 8x8) with a small CNN
for the same epochs; the trials differ only in ``train.lr`` (a log-spaced grid, so both
setups run exactly the same trials):

  (a) ``distdl train`` once per trial, one after another, as a shell loop would run them
      (each command starts its own embedded Ray);
  (b) one ``distdl tune`` over the same values (one Ray; trials at a time as its plan fits).

Both are timed from the command's start to its end, so Ray's start-up counts as a user waits
for it. Printed: trials per hour, training samples per second (trials x epochs x training
rows / wall) and the ratio (b)/(a).

Run from the repository root, on an otherwise idle machine:

    .venv/bin/python benchmarks/tune_throughput.py            # 8 trials of 2 epochs each
    .venv/bin/python benchmarks/tune_throughput.py --smoke    # 1 trial of 1 epoch
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml
from common import parse_args

from distdl.demo_data import write_digits

ROOT = Path(__file__).resolve().parent.parent
VAL_FRACTION = 0.15
SMOKE = {"trials": 1, "epochs": 1}  # one trial each way: both setups run, at the least cost


def write_spec(root: Path, epochs: int) -> tuple[Path, int]:
    """(the job spec, its training rows)."""
    paths = write_digits(root / "digits")
    spec = {"name": "bench", "storage": str(root / "runs"),
            "data": {"train": str(paths["train"]), "val_fraction": VAL_FRACTION},
            "model": {"arch": "smallcnn", "width": 8}, "preprocess": {"image_size": 8, "channels": 1},
            "train": {"epochs": epochs, "batch_size": 64, "optimizer": "adamw", "schedule": "constant"},
            "tracking": {"enabled": False}}
    (root / "bench.yaml").write_text(yaml.safe_dump(spec))
    rows = pq.ParquetFile(paths["train"]).metadata.num_rows
    return root / "bench.yaml", round(rows * (1 - VAL_FRACTION))


def distdl(*args: str) -> float:
    """Seconds one `distdl ...` command takes; its output is kept only when it fails."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each its own embedded Ray
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "distdl", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"distdl {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def show(label: str, trials: int, samples: float, wall_s: float) -> float:
    per_hour = trials * 3600 / wall_s
    print(f"{label}: {trials} trials in {wall_s:.0f}s = {per_hour:.0f} trials/h, {samples / wall_s:.0f} samples/s",
          flush=True)
    return per_hour


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    args = parse_args(parser, SMOKE)
    rates = [f"{lr:.3g}" for lr in np.geomspace(1e-3, 3e-2, args.trials)]
    with tempfile.TemporaryDirectory(prefix="distdl-bench-tune-") as tmp:
        spec, rows = write_spec(Path(tmp), args.epochs)
        samples = args.trials * args.epochs * rows
        sequential = sum(distdl("train", str(spec), "--set", f"name=seq_{i}", "--set", f"train.lr={lr}")
                         for i, lr in enumerate(rates))
        a = show("(a) distdl train, one after another", args.trials, samples, sequential)
        b = show("(b) distdl tune", args.trials, samples,
                 distdl("tune", str(spec), "--search", f"train.lr=grid:{','.join(rates)}", "--trials", "1"))
    print(f"(b)/(a) = {b / a:.2f}  (trials per hour; on 2 cores it should not be below 1.0)")


if __name__ == "__main__":
    main()

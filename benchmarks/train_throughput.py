"""Training throughput, side by side: distdl (Ray Data + Ray Train) against plain PyTorch.

Every setup trains the same model (distdl's ResNet-18 with the small 3x3 stem, 32x32x3
inputs, 10 classes) on the same synthetic data (shuffled every epoch) with the same global
batch (64) and optimizer (AdamW):

  (a) one process, one torch thread per core, batches sliced from in-memory tensors;
  (b) torch.distributed DDP (gloo, localhost) with as many processes as the distdl layout
      it is compared with, cores // processes threads each, every rank training on its
      slice of each global batch;
  (c) ``distdl.train.run`` on an embedded local Ray, reading the data as parquet, once with
      ``scaling.num_workers: auto`` and once with 2 workers.

Only steady-state training is timed: the baselines warm up for a few steps first; for
distdl the first epoch is left out and the per-epoch ``samples_per_s`` that its loop logs
(training pass only, no validation) is averaged. ``ingest_wait_share`` is the share of
distdl's step time spent waiting for the next batch.

Run from the repository root, on an otherwise idle machine (the setups share its cores):

    .venv/bin/python benchmarks/train_throughput.py            # about 6 minutes on 2 cores
    .venv/bin/python benchmarks/train_throughput.py --smoke    # 64 rows; (c) with auto only
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.nn.functional as F
from common import ddp_threads, distdl_steady, parse_args, spawn_ranks
from torch.nn.parallel import DistributedDataParallel

from distdl import runtime
from distdl.layout import Cluster, Layout, resolve
from distdl.loop import make_optimizer
from distdl.models.cnn import CNNConfig, build
from distdl.spec import JobSpec, parse

SIZE, CHANNELS, CLASSES, BATCH = 32, 3, 10, 64
OPTIMIZER = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0}  # distdl's spec keys, shared by all setups
FIT_ROWS = 512  # rows distdl fits mean/std on; the baselines use the same rows
WARMUP_STEPS = 3
ROWS_PER_FILE = 256  # several parquet files, so Ray Data has blocks to spread over workers
SMOKE = {"rows": BATCH, "epochs": 2, "val_rows": BATCH}


# ---- data --------------------------------------------------------------------------------
def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random pixels (rows, H*W*C) uint8 flattened HWC, and labels (rows,) int64."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(rows, SIZE * SIZE * CHANNELS), dtype=np.uint8)
    return images, rng.integers(0, CLASSES, size=rows, dtype=np.int64)


def normalized(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """What distdl's ImagePreprocessor produces: /255, then per-channel mean/std of the first FIT_ROWS."""
    pixels = images.reshape(-1, SIZE, SIZE, CHANNELS).astype(np.float32) / 255.0  # (N, H, W, C)
    fit = pixels[:FIT_ROWS]
    x = (pixels - fit.mean(axis=(0, 1, 2))) / fit.std(axis=(0, 1, 2))
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(labels)  # (N, C, H, W)


def write_parquet(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Column "image" as flat list<uint8> (the preprocessor reshapes it), "label" int64."""
    folder.mkdir(parents=True)
    width = images.shape[1]
    for i, start in enumerate(range(0, len(images), ROWS_PER_FILE)):
        chunk = images[start:start + ROWS_PER_FILE]
        offsets = pa.array(np.arange(0, chunk.size + 1, width, dtype=np.int32))
        column = pa.ListArray.from_arrays(offsets, pa.array(chunk.reshape(-1)))
        pq.write_table(pa.table({"image": column, "label": labels[start:start + ROWS_PER_FILE]}),
                       folder / f"part-{i:04d}.parquet")


# ---- baselines (a) and (b) ---------------------------------------------------------------
def new_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build(CNNConfig(arch="resnet18", in_channels=CHANNELS, num_classes=CLASSES))


def global_batches(rows: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """Shuffled row indices per global batch; every rank draws the same ones (like DistributedSampler)."""
    g = torch.Generator().manual_seed(seed)
    return [b for _ in range(epochs) for b in torch.randperm(rows, generator=g).split(BATCH)]


def run_steps(model, optimizer, x: torch.Tensor, y: torch.Tensor, batches: list[torch.Tensor],
              rank: int, world: int) -> None:
    for idx in batches:
        mine = idx.tensor_split(world)[rank]  # this rank's slice of the global batch
        loss = F.cross_entropy(model(x[mine]), y[mine])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # distdl's loop reads the loss every step; keep the same sync point


def measure(model, x: torch.Tensor, y: torch.Tensor, epochs: int, rank: int = 0, world: int = 1) -> float:
    """Global samples/s over ``epochs`` passes, after WARMUP_STEPS untimed steps."""
    optimizer = make_optimizer(model.parameters(), OPTIMIZER)
    model.train()
    run_steps(model, optimizer, x, y, global_batches(len(x), 1, seed=1)[:WARMUP_STEPS], rank, world)
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    run_steps(model, optimizer, x, y, global_batches(len(x), epochs, seed=2), rank, world)
    if dist.is_initialized():
        dist.barrier()  # the group is done when its slowest rank is
    return len(x) * epochs / (time.perf_counter() - start)


def plain(x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    torch.set_num_threads(os.cpu_count())
    return measure(new_model(), x, y, epochs)


def ddp_rank(rank: int, world: int, x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    return measure(DistributedDataParallel(new_model()), x, y, epochs, rank, world)


def ddp(x: torch.Tensor, y: torch.Tensor, epochs: int, world: int) -> float:
    return spawn_ranks(ddp_rank, world, ddp_threads(world), x, y, epochs)


# ---- distdl (c) --------------------------------------------------------------------------
def distdl_spec(name: str, folder: Path, epochs: int, workers: int | str) -> JobSpec:
    return parse({
        "name": name,
        "storage": str(folder / "runs"),
        "data": {"train": str(folder / "train"), "val": str(folder / "val"), "format": "parquet"},
        "model": {"family": "cnn", "arch": "resnet18"},
        "preprocess": {"image_size": SIZE, "channels": CHANNELS, "fit_rows": FIT_ROWS},
        "train": {"epochs": epochs, "batch_size": BATCH, "schedule": "constant", "shuffle": True, **OPTIMIZER},
        "scaling": {"num_workers": workers},
    })


# ---- report ------------------------------------------------------------------------------
def report(a: float, b: dict[int, float], c: dict[str, tuple[Layout, float, float]]) -> None:
    rows = [("(a) plain PyTorch", f"1 x {os.cpu_count()}", a, "-")]
    rows += [(f"(b) DDP gloo, {w} worker(s)", f"{w} x {ddp_threads(w)}", rate, "-") for w, rate in b.items()]
    rows += [(f"(c) distdl, {key}", f"{layout.num_workers} x {layout.threads_per_worker}", rate, f"{wait:.1%}")
             for key, (layout, rate, wait) in c.items()]
    print(f"\n{'setup':<28}{'workers x threads':>18}{'samples/s':>11}{'ingest wait':>13}")
    for setup, shape, rate, wait in rows:
        print(f"{setup:<28}{shape:>18}{rate:>11.1f}{wait:>13}")
    print()
    for key, (layout, rate, _) in c.items():
        w = layout.num_workers
        print(f"(c, {key}) / (a) = {rate / a:.3f}    (c, {key}) / (b, {w} worker(s)) = {rate / b[w]:.3f}")
    best, auto = max(a, *b.values()), c["auto"][1]
    verdict = "met" if auto >= 0.95 * best else "NOT met"
    print(f"goal: (c, auto) >= 0.95 x best of (a), (b): {auto:.1f} / {best:.1f} = {auto / best:.3f} -> {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1536, help="synthetic training rows (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2,
                        help="distdl epochs, >= 2; the first is warm-up, the baselines time epochs - 1 "
                             "(default: %(default)s)")
    parser.add_argument("--val-rows", type=int, default=256, help="validation rows (default: %(default)s)")
    args = parse_args(parser, SMOKE)
    if args.epochs < 2 or args.rows < BATCH:
        parser.error(f"need --epochs >= 2 and --rows >= {BATCH}")
    images, labels = synthetic(args.rows, seed=0)
    x, y = normalized(images, labels)
    timed = args.epochs - 1
    runtime.connect()
    with tempfile.TemporaryDirectory(prefix="distdl-bench-") as tmp:
        folder = Path(tmp)
        write_parquet(folder / "train", images, labels)
        write_parquet(folder / "val", *synthetic(args.val_rows, seed=1))
        specs = {"auto": distdl_spec("bench_auto", folder, args.epochs, "auto")}
        if not args.smoke:  # the same code path as auto: the smoke spends its time on one
            specs["2 workers"] = distdl_spec("bench_2w", folder, args.epochs, 2)
        layouts = {key: resolve(spec.scaling, Cluster.current()) for key, spec in specs.items()}
        # Baselines first, while Ray is idle, so no distdl process competes for the cores.
        a = plain(x, y, timed)
        b = {w: ddp(x, y, timed, w) for w in sorted({layout.num_workers for layout in layouts.values()})}
        c = {key: (layouts[key], *distdl_steady(spec)) for key, spec in specs.items()}
    report(a, b, c)


if __name__ == "__main__":
    main()

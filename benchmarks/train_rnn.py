"""LSTM language-model training throughput, side by side: distdl against plain PyTorch (DDP).

Every setup trains the same model (distdl's character LSTM, hidden 128, embedding 32) on the
same data (the demo grammar's sentences, cut into windows of 65 characters by distdl's own
CharPreprocessor) with the same global batch (32 windows), optimizer (AdamW), objective
(distdl's LanguageModel task) and workers x threads:

  (a) one plain PyTorch process with workers x threads threads, batches sliced from memory;
  (b) torch.distributed DDP (gloo, localhost), one process per worker, each training on its
      slice of every global batch;
  (c) ``distdl.train.run`` on an embedded local Ray, reading the text file through Ray Data.

The baselines run in fresh processes with OMP_NUM_THREADS set as Ray sets it for its
workers (see ``baseline``). Samples are predicted characters (tokens). Only steady state is
timed: the baselines run a few untimed steps first; for distdl the first epoch is left out and
the per-epoch ``samples_per_s`` its loop logs (training pass only) is averaged.

    .venv/bin/python benchmarks/train_rnn.py                 # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/train_rnn.py --workers 1 --threads 2
    .venv/bin/python benchmarks/train_rnn.py --smoke         # every setup on 200 sentences
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from common import distdl_steady, parse_args, spawn_ranks
from torch.nn.parallel import DistributedDataParallel

from distdl import models, runtime
from distdl.collate import to_tensors
from distdl.demo_data import sentences
from distdl.loop import make_optimizer
from distdl.models.rnn import RNNConfig
from distdl.preprocessors import text
from distdl.spec import JobSpec, parse
from distdl.tasks.language_model import LanguageModel

BLOCK, BATCH, WARMUP_STEPS = 64, 32, 3
MODEL = {"arch": "lstm", "task": "language_model", "hidden_size": 128, "embed_dim": 32}
OPTIMIZER = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0}
SMOKE = {"rows": 200, "val_rows": 50, "epochs": 1}


def windows(lines: list[str]) -> tuple[text.CharPreprocessor, dict[str, torch.Tensor]]:
    """The vocabulary and every training window, {"x": (N, BLOCK + 1), "lengths": (N,)}."""
    pre = text.CharPreprocessor("text", [text.UNKNOWN, *sorted(set("".join(lines)) | {"\n"})], BLOCK, 256)
    return pre, to_tensors(pre({"text": np.array(lines, dtype=object)}))


def timed_steps(model, task, data: dict[str, torch.Tensor], epochs: int, rank: int, world: int) -> float:
    """Global tokens/s over ``epochs`` shuffled passes after WARMUP_STEPS untimed steps; each
    rank takes its slice of every global batch (all ranks draw the same permutation)."""
    optimizer = make_optimizer(model.parameters(), OPTIMIZER)
    g = torch.Generator().manual_seed(0)
    order = [b for _ in range(epochs + 1) for b in torch.randperm(len(data["x"]), generator=g).split(BATCH)]
    tokens, start = 0, None
    for step, idx in enumerate(order[: WARMUP_STEPS + epochs * (len(order) // (epochs + 1))]):
        if step == WARMUP_STEPS:
            if dist.is_initialized():
                dist.barrier()
            tokens, start = 0, time.perf_counter()
        loss, rows = task.loss(model, {k: v[idx.tensor_split(world)[rank]] for k, v in data.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # distdl's loop reads the loss every step; keep the same sync point
        tokens += rows * world  # equal slices: every rank predicts about as many tokens
    if dist.is_initialized():
        dist.barrier()  # the group is done when its slowest rank is
    return tokens / (time.perf_counter() - start)


def new_model(pre: text.CharPreprocessor) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build_model("rnn", models.complete_config("rnn", RNNConfig(**MODEL), pre))


def train_rank(rank: int, world: int, lines: list[str], epochs: int, use_ddp: bool) -> float:
    pre, data = windows(lines)
    model = new_model(pre)
    return timed_steps(DistributedDataParallel(model) if use_ddp else model, LanguageModel(pre), data, epochs,
                       rank, world)


def baseline(world: int, threads: int, lines: list[str], epochs: int, use_ddp: bool) -> float:
    """Tokens/s of ``world`` fresh processes started with OMP_NUM_THREADS=threads, as Ray starts
    its workers: OpenMP sizes its pool at start-up, and lowering torch's thread count later
    leaves the larger pool spinning (for this small LSTM, half the throughput or less)."""
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        return spawn_ranks(train_rank, world, threads, lines, epochs, use_ddp, process_group=use_ddp)
    finally:  # the embedded Ray started later must not inherit it
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = previous


def distdl_spec(folder: Path, epochs: int, workers: int, threads: int) -> JobSpec:
    return parse({
        "name": "bench_lm", "storage": str(folder / "runs"),
        "data": {"train": str(folder / "train.txt"), "val": str(folder / "val.txt"), "format": "text"},
        "model": {"family": "rnn", **MODEL}, "preprocess": {"block_size": BLOCK},
        "train": {"epochs": epochs + 1, "batch_size": BATCH, "schedule": "constant", **OPTIMIZER},
        "scaling": {"num_workers": workers, "threads_per_worker": threads},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000, help="training sentences (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (distdl runs one more first)")
    parser.add_argument("--workers", type=int, default=2, help="DDP processes / distdl workers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--val-rows", type=int, default=200, help="validation sentences (default: %(default)s)")
    args = parse_args(parser, SMOKE)
    lines = sentences(args.rows, seed=0)
    a = baseline(1, args.workers * args.threads, lines, args.epochs, use_ddp=False)
    b = baseline(args.workers, args.threads, lines, args.epochs, use_ddp=True)
    runtime.connect()
    with tempfile.TemporaryDirectory(prefix="distdl-bench-") as tmp:
        folder = Path(tmp)
        (folder / "train.txt").write_text("".join(f"{line}\n" for line in lines))
        (folder / "val.txt").write_text("".join(f"{line}\n" for line in sentences(args.val_rows, seed=1)))
        c, wait = distdl_steady(distdl_spec(folder, args.epochs, args.workers, args.threads))
    shape = f"{args.workers} x {args.threads}"
    print(f"\n{'setup':<24}{'workers x threads':>18}{'tokens/s':>11}{'ingest wait':>13}")
    print(f"{'(a) plain PyTorch':<24}{'1 x ' + str(args.workers * args.threads):>18}{a:>11.0f}{'-':>13}")
    print(f"{'(b) DDP gloo':<24}{shape:>18}{b:>11.0f}{'-':>13}")
    print(f"{'(c) distdl':<24}{shape:>18}{c:>11.0f}{wait:>13.1%}")
    print(f"\n(c) / (a) = {c / a:.3f}    (c) / (b) = {c / b:.3f}")


if __name__ == "__main__":
    main()

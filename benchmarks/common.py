"""What the benchmark scripts share: the --smoke flag, the DDP baselines' process launcher,
and the steady-state reading of a distdl training run."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distdl import checkpoint, train
from distdl.spec import JobSpec


def parse_args(parser: argparse.ArgumentParser, smoke: dict[str, Any]) -> argparse.Namespace:
    """The command line, with ``--smoke``: the options in ``smoke`` take those values (tiny
    sizes), and the script runs every model and setup it has."""
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (one of two setups that share a code path), in seconds: checks that the benchmark runs "
                             "end to end; its numbers mean nothing")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(smoke)
    return args


def ddp_threads(world: int) -> int:
    """Torch threads per process when ``world`` processes share this machine's cores (none oversubscribed)."""
    return max(1, os.cpu_count() // world)


def spawn_ranks(fn: Callable[..., float], world: int, threads: int, *args: Any, process_group: bool = True) -> float:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes with ``threads`` torch threads
    each, joined in one gloo process group (localhost) when ``process_group``; returns rank 0's result."""
    out = mp.get_context("spawn").SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="distdl-rendezvous-") as rendezvous:
        mp.spawn(_rank, args=(world, rendezvous, threads, process_group, fn, args, out), nprocs=world)
    return out.get()


def file_rendezvous(folder: str) -> str:
    """A process group's init_method: a file in ``folder``, never a TCP port. A free port found
    by the parent can be taken by another process before the spawned rank 0 binds it, seconds
    later (EADDRINUSE in a busy suite)."""
    return f"file://{folder}/rendezvous"


def _rank(rank: int, world: int, rendezvous: str, threads: int, process_group: bool, fn: Callable[..., float],
          args: tuple, out) -> None:
    torch.set_num_threads(threads)
    if process_group:
        dist.init_process_group("gloo", init_method=file_rendezvous(rendezvous), rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        if rank == 0:
            out.put(result)
    finally:
        if process_group:
            dist.destroy_process_group()


def distdl_steady(spec: JobSpec) -> tuple[float, float]:
    """Train ``spec`` (``distdl.train.run``); the mean samples/s and ingest wait share of its
    epochs after the first, which pays for start-up."""
    summary = train.run(spec)
    lines = Path(checkpoint.join(summary.run_dir, checkpoint.METRICS)).read_text().splitlines()
    steady = [json.loads(line) for line in lines][1:]
    return (statistics.mean(m["samples_per_s"] for m in steady),
            statistics.mean(m["ingest_wait_share"] for m in steady))

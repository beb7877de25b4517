"""Worker side of training: ``train_loop_per_worker`` runs in every Ray Train worker.

It receives only plain data (the resolved spec as a dict, the preprocessor as JSON, the
layout), resumes from the newest complete checkpoint in storage, streams its shard
with ``iter_torch_batches``, takes DDP steps, evaluates, and reports every epoch.
Rank 0 alone writes checkpoints and metrics.jsonl; every rank calls ``ray.train.report``.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
import torch.distributed as dist

import ray.train
import ray.train.torch

from distdl import checkpoint, models, preprocessors, tasks
from distdl.collate import Collate

StepHook = Callable[[int, int, int], None]  # (rank, epoch, step): called before every step


def say(message: str) -> None:
    """One line to the driver's console. Ray Train's print patch would send a print twice."""
    sys.stdout.write(f"[distdl] {message}\n")
    sys.stdout.flush()


class Prefetched:
    """Starts an epoch's batch stream in a background thread, so Ray Data's per-epoch
    start-up (listing, scheduling read tasks, first blocks) overlaps validation instead
    of stalling the first training step of the next epoch."""

    def __init__(self, batches: Iterable):
        self._iterator = iter(batches)
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._first = self._pool.submit(next, self._iterator, None)

    def __iter__(self) -> Iterator:
        first = self._first.result()
        self._pool.shutdown()
        if first is not None:
            yield first
            yield from self._iterator


def lr_at(epoch: int, train: dict) -> float:
    """Learning rate for a 1-based epoch: linear warm-up, then constant / cosine / step."""
    base, warmup = train["lr"], train["warmup_epochs"]
    if epoch <= warmup:
        return base * epoch / (warmup + 1)
    done = epoch - 1 - warmup  # schedule epochs completed before this one
    if train["schedule"] == "cosine":
        total = max(1, train["epochs"] - warmup)
        return base * 0.5 * (1 + math.cos(math.pi * done / total))
    if train["schedule"] == "step":
        return base * train["gamma"] ** (done // train["step_size"])
    return base


def make_optimizer(params, train: dict) -> torch.optim.Optimizer:
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"])
    cls = torch.optim.AdamW if train["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=train["lr"], weight_decay=train["weight_decay"])


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    """Sum per-worker totals across the group (a no-op on a single worker)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def train_epoch(task, model, optimizer, scaler, batches, device, train: dict, epoch: int, rank: int,
                hook: Optional[StepHook]) -> dict[str, float]:
    """One pass over this worker's shard; returns group-wide loss and timing."""
    model.train()
    loss_sum, seen, wait, start = 0.0, 0, 0.0, time.perf_counter()
    iterator = iter(batches)
    step = 0
    while True:
        t0 = time.perf_counter()
        batch = next(iterator, None)
        wait += time.perf_counter() - t0
        if batch is None:
            break
        if hook:
            hook(rank, epoch, step)
        with _autocast(device, train["precision"]):
            loss, rows = task.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if train["grad_clip"]:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.item() * rows
        seen += rows
        step += 1
    elapsed = time.perf_counter() - start
    total_loss, total_seen, total_wait, total_time = _all_reduce([loss_sum, seen, wait, elapsed], device)
    world = dist.get_world_size() if dist.is_initialized() else 1
    return {
        "train_loss": total_loss / max(total_seen, 1),
        "samples_per_s": total_seen / max(total_time / world, 1e-9),
        "ingest_wait_share": total_wait / max(total_time, 1e-9),
        "train_samples": int(total_seen),
    }


@torch.inference_mode()
def evaluate(task, model, batches, device, precision: str) -> dict[str, float]:
    """The task's validation metrics over every worker's shard (sums are all-reduced)."""
    model.eval()
    totals: dict[str, float] = {}
    for batch in batches:
        with _autocast(device, precision):
            for name, value in task.eval_sums(model, batch).items():
                totals[name] = totals.get(name, 0.0) + value
    names = sorted(totals)  # the same order on every rank
    return task.eval_metrics(dict(zip(names, _all_reduce([totals[n] for n in names], device))))


def _is_better(value: float, best: Optional[float], mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec, train = config["spec"], config["spec"]["train"]
    ckpt_spec, run_dir = spec["checkpoint"], config["run_dir"]
    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    preprocessor = preprocessors.from_json(config["preprocessor"])
    family, model_cfg = spec["model"]["family"], models.config_from_args(spec["model"]["family"], config["model_args"])
    task = tasks.create(models.FAMILIES[family].task(model_cfg), preprocessor)

    torch.manual_seed(train["seed"])  # same initial weights on every rank (DDP also broadcasts)
    model = models.build_model(family, model_cfg)
    state, optimizer_state = {"epoch": 0, "history": [], "best": None}, None
    resume_from = checkpoint.latest(run_dir)
    if resume_from:
        model.load_state_dict(checkpoint.load_weights(resume_from))
        state, optimizer_state = checkpoint.load_train_state(resume_from)
        if rank == 0:
            say(f"resuming from {resume_from} (epoch {state['epoch']} done)")
    else:
        models.init_weights(family, model, model_cfg)  # e.g. a pretrained folder's weights
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model.parameters(), train)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    scaler = torch.amp.GradScaler(device.type, enabled=train["precision"] == "fp16")

    per_worker = train["batch_size"] // world
    shuffle = 4 * per_worker if train["shuffle"] else None
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    collate = Collate()  # pads variable-length columns per batch

    def epoch_batches() -> Prefetched:
        return Prefetched(train_shard.iter_torch_batches(batch_size=per_worker, collate_fn=collate, prefetch_batches=2,
                                                         local_shuffle_buffer_size=shuffle))

    batches = epoch_batches()
    for epoch in range(state["epoch"] + 1, train["epochs"] + 1):
        lr = lr_at(epoch, train)
        for group in optimizer.param_groups:
            group["lr"] = lr
        metrics = {"epoch": epoch, "lr": lr}
        metrics.update(train_epoch(task, model, optimizer, scaler, batches, device, train, epoch, rank,
                                   config.get("step_hook")))
        if epoch < train["epochs"]:
            batches = epoch_batches()  # the next epoch starts streaming while this one validates
        val_batches = val_shard.iter_torch_batches(batch_size=per_worker, collate_fn=collate, prefetch_batches=2)
        metrics.update(evaluate(task, model, val_batches, device, train["precision"]))
        state["history"].append(metrics)
        state["epoch"] = epoch
        if rank == 0:
            _save_epoch(model, optimizer, family, model_cfg, preprocessor, spec, state, ckpt_spec, run_dir)
        ray.train.report(metrics)


def _save_epoch(model, optimizer, family, model_cfg, preprocessor, spec, state, ckpt_spec, run_dir) -> None:
    """Rank 0: metrics.jsonl every epoch; a checkpoint every N epochs (and the last); best/ copy."""
    metrics, epoch = state["history"][-1], state["epoch"]
    checkpoint.write_metrics(run_dir, state["history"])
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch")
    say(f"epoch {epoch}/{spec['train']['epochs']} {shown}")
    if epoch % ckpt_spec["every_n_epochs"] and epoch != spec["train"]["epochs"]:
        return
    value, mode = metrics[ckpt_spec["best_metric"]], ckpt_spec["best_mode"]
    improved = _is_better(value, (state["best"] or {}).get("value"), mode)
    if improved:
        state["best"] = {"metric": ckpt_spec["best_metric"], "value": value, "epoch": epoch}
    raw_model = model.module if hasattr(model, "module") else model  # unwrap DDP
    path = checkpoint.save(checkpoint.epoch_dir(run_dir, epoch), raw_model, family, model_cfg, preprocessor,
                           spec, state, optimizer)
    if improved:
        checkpoint.copy(path, checkpoint.best_dir(run_dir))
    checkpoint.prune(run_dir, ckpt_spec["keep"])

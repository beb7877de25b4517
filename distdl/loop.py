"""Worker side of training: ``train_loop_per_worker`` runs in every Ray Train worker.

It receives only plain data (the resolved spec as a dict, the preprocessor as JSON, the
layout), resumes from the newest complete checkpoint in storage, streams its shard
with ``iter_torch_batches``, takes DDP steps, evaluates, and reports every epoch.
Rank 0 alone writes checkpoints and metrics.jsonl; every rank calls ``ray.train.report``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist

import ray.train
import ray.train.torch

from distdl import checkpoint, early_stop, elastic, models, preprocessors, tasks
from distdl.collate import Collate
from distdl.tasks.base import Optimizers, Task

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


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    """Sum per-worker totals across the group (a no-op on a single worker)."""
    if _world() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _all_reduce_sums(totals: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Group-wide sums of named numbers or arrays (e.g. feature sums), in one all-reduce."""
    names = sorted(totals)  # the same order on every rank
    arrays = [np.asarray(totals[n], dtype=np.float64) for n in names]
    flat = np.asarray(_all_reduce(np.concatenate([a.ravel() for a in arrays]).tolist(), device))
    sums, at = {}, 0
    for name, a in zip(names, arrays):
        part = flat[at:at + a.size].reshape(a.shape)
        sums[name], at = (float(part) if a.ndim == 0 else part), at + a.size
    return sums


@dataclass
class Step:
    """One training step's place and tools, handed to the task's ``train_step``."""
    device: torch.device
    train: dict
    scaler: torch.amp.GradScaler
    epoch: int
    rank: int
    world: int
    index: int = 0  # step within the epoch
    loss_weight: float = 1.0  # elastic.Share's: this rank's part of the global-batch mean

    def autocast(self):
        return _autocast(self.device, self.train["precision"])

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Zero, backward (scaled for fp16), clip to train.grad_clip, and step ``optimizer``."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * self.loss_weight).backward()
        if self.train["grad_clip"]:
            self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.train["grad_clip"])
        self.scaler.step(optimizer)


def _every_rank_has(rows: int, batch: Optional[dict], device: torch.device) -> bool:
    """Whether every rank holds a full batch (``rows`` rows, its share) for the next step."""
    full = batch is not None and len(next(iter(batch.values()))) == rows
    return _all_reduce([float(full)], device)[0] == _world()


def train_epoch(task: Task, model, optimizers: Optimizers, scaler, batches, device, train: dict, epoch: int,
                rank: int, hook: Optional[StepHook], share: Optional[elastic.Share] = None) -> dict[str, float]:
    """One pass over this worker's shard; returns group-wide means of the task's
    ``step_sums`` (train_<name>) and timing. An uneven ``share`` (an elastic group whose size
    does not divide the batch) steps only while every rank has a full batch, so the ranks of
    equal shards, taking different rows per step, still take the same steps (DDP would hang)."""
    model.train()
    names = task.step_sums
    sums, seen, wait, start = dict.fromkeys(names, 0.0), 0, 0.0, time.perf_counter()
    step = Step(device, train, scaler, epoch, rank, _world(), loss_weight=share.loss_weight if share else 1.0)
    iterator = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(iterator, None)
        wait += time.perf_counter() - t0
        if share and not share.even and not _every_rank_has(share.rows, batch, device):
            for _ in iterator:  # the rest of this epoch's shard: too few rows for a full global batch
                pass
            break
        if batch is None:
            break
        if hook:
            hook(rank, epoch, step.index)
        batch_sums, rows = task.train_step(model, optimizers, batch, step)
        scaler.update()
        for name in names:
            sums[name] += batch_sums[name]
        seen += rows
        step.index += 1
    elapsed = time.perf_counter() - start
    *totals, total_seen, total_wait, total_time = _all_reduce([*sums.values(), seen, wait, elapsed], device)
    return {
        **{f"train_{name}": total / max(total_seen, 1) for name, total in zip(names, totals)},
        "samples_per_s": total_seen / max(total_time / step.world, 1e-9),
        "ingest_wait_share": total_wait / max(total_time, 1e-9),
        "train_samples": int(total_seen),
        "train_steps": step.index,  # the same on every rank
        "workers": step.world,
    }


@torch.inference_mode()
def evaluate(task, model, batches, device, precision: str) -> dict[str, float]:
    """The task's validation metrics over every worker's shard (sums are all-reduced)."""
    model.eval()
    totals: dict[str, Any] = {}
    for batch in batches:
        with _autocast(device, precision):
            for name, value in task.eval_sums(model, batch).items():
                totals[name] = totals.get(name, 0.0) + value
    return task.eval_metrics(_all_reduce_sums(totals, device))


def _quiet_report_log() -> None:
    """Ray Train 2.60 logs each ray.train.report at INFO in the worker ("Reporting training result
    N: TrainingReport(metrics={...})", ~500 characters), repeating the epoch line say() prints.
    That module names its logger by its file path."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _is_better(value: float, best: Optional[float], mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec, train = config["spec"], config["spec"]["train"]
    ckpt_spec, run_dir = spec["checkpoint"], config["run_dir"]
    torch.set_num_threads(config["threads"])
    _quiet_report_log()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    share = elastic.share(train["batch_size"], world, rank)
    device = ray.train.torch.get_device()
    if rank == 0:  # which device and collective backend the run really got (nccl on GPUs, gloo on CPUs)
        say(f"{world} worker(s) on {device.type}, precision {train['precision']}, process group "
            f"{dist.get_backend() if dist.is_initialized() else 'none'}")
    preprocessor = preprocessors.from_json(config["preprocessor"])
    family, model_cfg = spec["model"]["family"], models.config_from_args(spec["model"]["family"], config["model_args"])
    task = tasks.create(models.FAMILIES[family].task(model_cfg), preprocessor)
    task.configure(train, config.get("class_weights"))

    torch.manual_seed(train["seed"])  # same initial weights on every rank (DDP also broadcasts)
    model = models.build_model(family, model_cfg)  # what checkpoints hold; `trained` may wrap it
    state, optimizer_states = {"epoch": 0, "history": [], "best": None}, None
    resume_from = checkpoint.latest(run_dir)
    nodes = elastic.node_names() if rank == 0 else []  # checkpointed by rank 0: a resize names what changed
    if resume_from:
        model.load_state_dict(checkpoint.load_weights(resume_from))
        state, optimizer_states = checkpoint.load_train_state(resume_from)
        if rank == 0:
            say(elastic.resized(state.get("world"), world, resume_from, state.get("nodes", ()), nodes)
                or f"resuming from {resume_from} (epoch {state['epoch']} done)")
    else:
        models.init_weights(family, model, model_cfg)  # e.g. a pretrained folder's weights
    trained, optimizers = _prepare(task, model, train)
    for name, saved in (optimizer_states or {}).items():
        optimizers[name].load_state_dict(saved)
    scaler = torch.amp.GradScaler(device.type, enabled=train["precision"] == "fp16")
    state["world"], state["nodes"] = world, nodes  # checkpointed: a group restarted at another size says so

    per_worker = share.rows
    shuffle = 4 * per_worker if train["shuffle"] else None
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    collate = Collate()  # pads variable-length columns per batch

    def epoch_batches() -> Prefetched:
        return Prefetched(train_shard.iter_torch_batches(batch_size=per_worker, collate_fn=collate, prefetch_batches=2,
                                                         local_shuffle_buffer_size=shuffle))

    batches = epoch_batches()
    may_stop = train["early_stop"]["patience"] is not None
    last = state["epoch"] if state.get("stopped_early") else train["epochs"]  # a stopped run stays stopped
    for epoch in range(state["epoch"] + 1, last + 1):
        started = time.perf_counter()
        lr = lr_at(epoch, train)
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        metrics = {"epoch": epoch, "lr": lr}
        metrics.update(train_epoch(task, trained, optimizers, scaler, batches, device, train, epoch, rank,
                                   config.get("step_hook"), share))
        # The next epoch starts streaming while this one validates; with early stopping, whether
        # there is a next epoch is known only after validation, and an abandoned stream would linger.
        if epoch < last and not may_stop:
            batches = epoch_batches()
        val_batches = val_shard.iter_torch_batches(batch_size=per_worker, collate_fn=collate, prefetch_batches=2)
        metrics.update(evaluate(task, trained, val_batches, device, train["precision"]))
        metrics["epoch_s"] = time.perf_counter() - started  # training pass + validation, as a user waits for it
        state["history"].append(metrics)
        state["epoch"] = epoch
        stopped = early_stop.check(state["history"], train["early_stop"], ckpt_spec["best_metric"],
                                   ckpt_spec["best_mode"])
        if stopped:
            state["stopped_early"] = stopped
        if rank == 0:
            task.epoch_end(model, run_dir, epoch)  # e.g. the gan's sample grid
            _save_epoch(model, optimizers, family, model_cfg, preprocessor, spec, state, ckpt_spec, run_dir)
        ray.train.report(checkpoint.scalars(metrics))
        if stopped:
            break
        if epoch < last and may_stop:
            batches = epoch_batches()


def _prepare(task: Task, model, train: dict) -> tuple[Any, Optimizers]:
    """(what the steps run: the model DDP-wrapped and on the device, its named optimizers).
    A task with its own step (gan) wraps its networks apart and names their optimizers."""
    return task.prepare(model, ray.train.torch.prepare_model, lambda params: make_optimizer(params, train))


def _save_epoch(model, optimizers, family, model_cfg, preprocessor, spec, state, ckpt_spec, run_dir) -> None:
    """Rank 0: metrics.jsonl every epoch; a checkpoint every N epochs (and the last, or the one that
    stopped early); best/ copy."""
    metrics, epoch = state["history"][-1], state["epoch"]
    checkpoint.write_metrics(run_dir, state["history"])
    shown = " ".join(f"{k}={v:.4g}" for k, v in checkpoint.scalars(metrics).items() if k != "epoch")
    say(f"epoch {epoch}/{spec['train']['epochs']} {shown}")
    stopped = state.get("stopped_early")
    if stopped:
        say(early_stop.describe(stopped))
    if epoch % ckpt_spec["every_n_epochs"] and epoch != spec["train"]["epochs"] and not stopped:
        return
    value, mode = metrics[ckpt_spec["best_metric"]], ckpt_spec["best_mode"]
    improved = _is_better(value, (state["best"] or {}).get("value"), mode)
    if improved:
        state["best"] = {"metric": ckpt_spec["best_metric"], "value": value, "epoch": epoch}
    path = checkpoint.save(checkpoint.epoch_dir(run_dir, epoch), model, family, model_cfg, preprocessor,
                           spec, state, optimizers)
    if improved:
        checkpoint.copy(path, checkpoint.best_dir(run_dir))
    checkpoint.prune(run_dir, ckpt_spec["keep"])

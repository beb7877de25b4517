"""Driver side of training: spec -> Ray Data pipelines -> TorchTrainer -> summary.

The path of a batch: data.train_val reads raw rows -> the family's preprocessor is fitted on
the driver -> ``map_batches(preprocessor)`` (+ augmentation for training) -> TorchTrainer
splits the stream over workers (one worker reads it whole) -> loop.train_loop_per_worker
pulls ``iter_torch_batches`` -> the task's loss (tasks/) -> DDP step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import ray
import ray.data
import ray.train
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer

from distdl import capacity, checkpoint, class_weights, data, early_stop, elastic, models, node_watch, progress, runtime
from distdl.experiment import Watch
from distdl.layout import Layout, resolve, sized_from_live_nodes
from distdl.logs import say
from distdl.loop import StepHook, train_loop_per_worker
from distdl.paths import filesystem
from distdl.preprocessors.base import label_counts
from distdl.spec import JobSpec


class TrainingError(RuntimeError):
    pass


@dataclass
class Summary:
    epochs: int
    best_metric: str
    best_value: float
    best_epoch: int
    samples_per_s: float
    wall_s: float
    checkpoint: str  # the best checkpoint
    run_dir: str
    resumed_from: Optional[str]
    stopped_early: Optional[dict] = None  # early_stop.check's record when train.early_stop ended the run
    report: Optional[str] = None  # report.html, when it was written
    tracking: Optional[str] = None  # "<uri> (run <id>)" when the run was logged to MLflow

    def describe(self, log: Optional[Path] = None) -> str:
        resumed = f" (resumed from {self.resumed_from})" if self.resumed_from else ""
        stopped = f"{early_stop.describe(self.stopped_early)}\n" if self.stopped_early else ""
        return (f"done: {self.epochs} epochs{resumed}, best {self.best_metric}={self.best_value:.4f} "
                f"at epoch {self.best_epoch}, {self.samples_per_s:.0f} samples/s, wall {self.wall_s:.1f}s\n"
                f"{stopped}"
                f"checkpoint: {self.checkpoint}\nmetrics:    {checkpoint.join(self.run_dir, checkpoint.METRICS)}"
                + (f"\nreport:     {self.report}" if self.report else "")
                + (f"\ntracking:   {self.tracking}" if self.tracking else "")
                + (f"\nlog:        {log}" if log else ""))


def _preprocessor(spec: JobSpec, train_raw: ray.data.Dataset, resume_from: Optional[str]) -> Any:
    """Re-use the checkpoint's preprocessor on resume, so normalization never changes mid-run."""
    if resume_from:
        return checkpoint.load_preprocessor(resume_from)
    return models.FAMILIES[spec.model_family].fit(train_raw, spec.data, spec.preprocess, spec.model)


def build_datasets(spec: JobSpec, pre: Any, train_raw: ray.data.Dataset,
                   val_raw: ray.data.Dataset) -> dict[str, ray.data.Dataset]:
    """Train/val pipelines of model-input batches (lazy, or preprocessed once with
    ``train.cache``); augmentation on train only, every epoch."""
    train_ds, val_ds = (raw.map_batches(pre, batch_format="numpy") for raw in (train_raw, val_raw))
    if spec.train.cache:
        say("[distdl] train.cache: preprocessing the train and val rows once ...")
        train_ds, val_ds = train_ds.materialize(), val_ds.materialize()
    for step in models.FAMILIES[spec.model_family].augmentations(spec.preprocess):
        train_ds = train_ds.map_batches(step, batch_format="numpy")
    if spec.train.shuffle:
        train_ds = train_ds.randomize_block_order(seed=None)
    return {"train": train_ds, "val": val_ds}


def _trainer(spec: JobSpec, layout: Layout, datasets: dict, config: dict,
             callbacks: Sequence[UserCallback] = ()) -> TorchTrainer:
    resources = {"CPU": layout.cpus_per_worker}
    if layout.use_gpu:
        resources["GPU"] = layout.gpus_per_worker
    max_failures, callbacks = spec.failure.max_failures, list(callbacks)
    if layout.max_workers is not None:
        # Ray counts a worker lost with its node against max_failures; elastic.ElasticWatch
        # counts only the other failures, and ends the run itself.
        watch = elastic.ElasticWatch(spec.failure.max_failures, node_watch.dead_nodes(), node_watch.alive_nodes(),
                                     floor=elastic.Floor(layout.num_workers, resources))
        max_failures, callbacks = -1, [*callbacks, watch]
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=layout.ray_num_workers, use_gpu=layout.use_gpu,
                                     resources_per_worker=resources,
                                     elastic_resize_monitor_interval_s=spec.scaling.resize_check_s),
        run_config=RunConfig(
            name=spec.name,
            storage_path=spec.storage,
            failure_config=FailureConfig(max_failures=max_failures),
            # Checkpoints are written by rank 0 into the run folder (checkpoint.py), not
            # handed to Ray: only metrics go through ray.train.report.
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split="all" if layout.splits_data else []),
    )


def require_writable_storage(spec: JobSpec) -> None:
    """Create the run folder now: Ray Train's controller would otherwise fail to, after the
    data work, and die of it with an actor traceback."""
    fs, inner = filesystem(spec.run_dir)
    try:
        fs.create_dir(inner, recursive=True)
    except OSError as exc:
        raise TrainingError(f"storage {spec.storage}: cannot create the run folder {spec.run_dir}: {exc}") from exc


def run(spec: JobSpec, step_hook: Optional[StepHook] = None, callbacks: Sequence[UserCallback] = ()) -> Summary:
    """Train ``spec`` on the connected Ray cluster (see runtime.connect); resumes a run of the same name.
    ``callbacks``: Ray Train callbacks of the run (a Tune trial's TuneReportCallback, distdl.tune)."""
    start = time.perf_counter()
    require_writable_storage(spec)
    # The embedded Ray never gains a node: nothing to wait for.
    cluster = capacity.wait_for(spec.scaling, 0.0 if runtime.is_embedded() else spec.scaling.wait_for_resources_s)
    layout = resolve(spec.scaling, cluster)
    say(f"[distdl] layout: {layout.describe()}")
    note = None if runtime.is_embedded() else sized_from_live_nodes(spec.scaling, cluster)
    if note:
        say(f"[distdl] note: {note}")
    runtime.warn_if_not_shared({"storage": spec.storage, "data.train": spec.data.train, "data.val": spec.data.val})
    resume_from, done = checkpoint.latest(spec.run_dir), 0
    if resume_from:
        state = _train_state(spec, resume_from)
        done = state["epoch"]
        if state.get("stopped_early"):
            say(f"[distdl] run '{spec.name}' {early_stop.describe(state['stopped_early'])}; nothing to do")
            return _summary(spec, start, resume_from)
        say(f"[distdl] found {resume_from}: continuing run '{spec.name}' after epoch {done}")
        if done >= spec.train.epochs:
            say(f"[distdl] run '{spec.name}' already trained all {spec.train.epochs} epochs; nothing to do")
            return _summary(spec, start, resume_from)
    runtime.quiet_data_progress()  # before any dataset exists: each captures the context
    d = spec.data
    train_raw, val_raw = data.train_val(d.train, d.val, d.format, d.val_fraction, spec.train.seed, d.id_column)
    pre = _preprocessor(spec, train_raw, resume_from)
    if spec.checkpoint.best_metric == "val_top5" and len(pre.classes) <= 5:
        raise TrainingError(f"checkpoint.best_metric val_top5 needs more than 5 classes; the data has {len(pre.classes)}")
    say(f"[distdl] preprocessor: {pre.describe()}")
    config = {
        "spec": spec.to_dict(), "run_dir": spec.run_dir, "preprocessor": pre.to_json(),
        "model_args": models.config_args(models.complete_config(spec.model_family, spec.model, pre)),
        "threads": layout.threads_per_worker, "step_hook": step_hook,
        "class_weights": _class_weights(spec, pre, train_raw),
    }
    trainer = _trainer(spec, layout, build_datasets(spec, pre, train_raw, val_raw), config, callbacks)
    watch = Watch.start(spec, layout, done)
    try:
        with progress.following("train", "epoch", spec.train.epochs, done, lambda: _epochs_reported(spec.run_dir)), \
                watch.following():
            trainer.fit()
    except (ray.train.TrainingFailedError, ray.exceptions.RayError) as exc:  # the reason, not Ray's traceback
        watch.failed(runtime.root_cause(exc), time.perf_counter() - start)
        raise TrainingError(f"training failed: {runtime.root_cause(exc)}") from exc
    except KeyboardInterrupt:
        watch.failed("interrupted", time.perf_counter() - start)
        raise
    summary = _summary(spec, start, resume_from)
    summary.report = watch.finished(summary.wall_s, summary.stopped_early)
    summary.tracking = watch.tracker.describe() if watch.tracker else None
    return summary


def _class_weights(spec: JobSpec, pre: Any, train_raw: ray.data.Dataset) -> Optional[list[float]]:
    """train.class_weights as one weight per class of the preprocessor (an auto setting counts
    the training rows' labels: a pass over that column)."""
    setting = spec.train.class_weights
    if setting is None:  # also every task without classes (spec validation allows no other)
        return None
    counts = label_counts(train_raw, spec.data.label_column) if setting == "auto" else None
    try:
        weights = class_weights.resolve(setting, pre.classes, counts)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    if weights:
        say(f"[distdl] class weights: {', '.join(f'{c}={w:.3g}' for c, w in zip(pre.classes, weights))}")
    return weights


def _epochs_reported(run_dir: str) -> int:
    """The last epoch in the run's metrics.jsonl; 0 before the first."""
    return max((row.get("epoch", 0) for row in checkpoint.read_metrics(run_dir)), default=0)


def _train_state(spec: JobSpec, resume_from: str) -> dict:
    """The checkpoint's train state (epoch, history, best); refuses to continue a run that
    trained a different model."""
    saved = checkpoint.load_spec(resume_from)
    if saved["model"] != spec.to_dict()["model"]:
        raise TrainingError(f"run '{spec.name}' in {spec.storage} was trained with model {saved['model']}; "
                            f"this spec asks for {spec.to_dict()['model']}. Use a new name or delete {spec.run_dir}")
    return checkpoint.load_train_state(resume_from)[0]


def _summary(spec: JobSpec, start: float, resumed_from: Optional[str]) -> Summary:
    last = checkpoint.latest(spec.run_dir)
    state, _ = checkpoint.load_train_state(last)
    history, best = state["history"], state["best"]
    rates = [h["samples_per_s"] for h in history]
    return Summary(
        epochs=state["epoch"], best_metric=best["metric"], best_value=best["value"], best_epoch=best["epoch"],
        samples_per_s=sum(rates) / len(rates), wall_s=time.perf_counter() - start,
        checkpoint=checkpoint.best_dir(spec.run_dir), run_dir=spec.run_dir, resumed_from=resumed_from,
        stopped_early=state.get("stopped_early"),
    )

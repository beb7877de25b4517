"""The job spec: one YAML file drives data, preprocessing, model, training and storage.

Loading is strict (unknown keys, wrong types and impossible values fail with the YAML
path of the field) and happens before Ray starts. ``--set a.b=value`` overrides are
applied to the raw mapping first, so they get exactly the same checks.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union

import yaml

from distdl import checkpoint, models, tasks
from distdl.experiment_spec import EarlyStopSpec, TrackingSpec
from distdl.inference_spec import ScoreSpec, ServeSpec
from distdl.paths import absolute, exists, is_uri
from distdl.specbase import Auto, SpecError, check, from_dict, knob, to_dict, unknown_key
from distdl.tune.settings import TuneSpec

DATA_FORMATS = ("parquet", "csv", "jsonl", "image_folder", "text", "audio_folder")
DEFAULT_FAMILY = "cnn"  # model.family when the spec does not name one


@dataclass
class DataSpec:
    train: str = knob(help="file, folder or URI (`s3://`, `gs://`) of the training rows")
    val: Optional[str] = knob(None, help="separate validation rows; null: `val_fraction` of `train` is held out")
    val_fraction: float = knob(0.1, help="share of `train` held out for validation when `val` is null, chosen by "
                                         "a salted hash of each row's key (stable across epochs and re-runs)")
    format: Union[Auto, Literal["parquet", "csv", "jsonl", "image_folder", "text", "audio_folder"]] = knob(
        "auto", help="`image_folder`: one sub-folder per class; `text`: one row per line, column `text`; "
                     "`audio_folder`: wav files in one sub-folder per class, column `audio`; "
                     "auto: from the file extension or the folder's content")
    input_column: Optional[str] = knob(None, help="column the model reads; null: the family's default (`image` "
                                                  "for cnn and gan, `text` for transformer; rnn: `sequence`, "
                                                  "`audio` or `text` by task and input)")
    label_column: str = knob("label", help="column holding each row's class (folders: the sub-folder name)")
    id_column: Optional[str] = knob(None, help="stable row key for the train/val split; null: the file path, "
                                               "else the row's content")

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(0.0 <= self.val_fraction < 1.0, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        yield from check(bool(self.train), "train", "must name a file, folder or URI")
        if self.val is None:
            yield from check(self.val_fraction > 0, "val_fraction", "must be > 0 when data.val is not given")


@dataclass
class TrainSpec:
    epochs: int = knob(10, help="passes over the training rows")
    batch_size: int = knob(64, help="global: rows per optimizer step over all workers, split evenly (an "
                                    "explicit `scaling.num_workers` must divide it; an elastic range splits it "
                                    "unevenly where it must, with the loss weighted to the same mean)")
    optimizer: Literal["sgd", "adam", "adamw"] = knob("adamw", help="the optimizer (a GAN: one per network)")
    lr: float = knob(1e-3, help="peak learning rate")
    momentum: float = knob(0.9, help="sgd only")
    weight_decay: float = knob(0.0, help="the optimizer's weight decay")
    schedule: Literal["constant", "cosine", "step"] = knob("cosine", help="learning-rate schedule, stepped per epoch")
    warmup_epochs: int = knob(0, help="epochs of linear warm-up before the schedule")
    step_size: int = knob(10, help="`step` schedule: multiply the learning rate by `gamma` every `step_size` epochs")
    gamma: float = knob(0.1, help="`step` schedule: the factor")
    grad_clip: Optional[float] = knob(None, help="max global gradient norm; null: no clipping")
    precision: Literal["fp32", "bf16", "fp16"] = knob("fp32", help="`bf16`/`fp16`: autocast (fp16 needs a GPU; "
                                                                   "bf16 also runs on CPU)")
    shuffle: bool = knob(True, help="random block order and a local shuffle buffer of 4 batches")
    cache: bool = knob(False, help="preprocess once and keep the model-input rows in Ray's object store (it spills "
                                   "to disk) for every epoch, instead of decoding or tokenizing each row again; "
                                   "augmentation still runs per epoch. Worth it when preprocessing costs as much "
                                   "as the step")
    seed: int = knob(0, help="seeds the initial weights and the train/val split")
    label_smoothing: float = knob(0.0, help="classification: the training loss's label smoothing (the share "
                                            "of each target spread over all classes); `val_loss` stays plain "
                                            "cross-entropy")
    class_weights: Union[None, Auto, dict] = knob(None, help="classification: weights of the classes in the "
                                                             "training loss; auto: inverse class frequency in "
                                                             "the training rows (a balanced set gets 1s); a "
                                                             "mapping `{label: weight}`: unnamed labels get 1; "
                                                             "null: unweighted. `val_loss` stays unweighted")
    # Not Optional: specbase reports a nested section's bad field by its own path, e.g. train.early_stop.patience.
    early_stop: EarlyStopSpec = knob(factory=EarlyStopSpec, help="end the run early when the best metric stops "
                                                                 "improving; `null`: off")

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        yield from check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        yield from check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        yield from check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        yield from check(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        yield from check(0 <= self.warmup_epochs < self.epochs, "warmup_epochs", f"must be in [0, epochs), got {self.warmup_epochs}")
        yield from check(self.step_size >= 1, "step_size", f"must be >= 1, got {self.step_size}")
        yield from check(0 < self.gamma <= 1, "gamma", f"must be in (0, 1], got {self.gamma}")
        yield from check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", f"must be > 0, got {self.grad_clip}")
        yield from check(0 <= self.label_smoothing < 1, "label_smoothing",
                         f"must be in [0, 1), got {self.label_smoothing}")
        for label, weight in (self.class_weights if isinstance(self.class_weights, dict) else {}).items():
            good = isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0
            yield from check(good, f"class_weights.{label}", f"must be a number > 0, got {weight!r}")


@dataclass
class WorkerRange:
    """``scaling.num_workers: {min: N, max: M}``: an elastic worker group (Ray Train resizes it)."""
    min: int
    max: int


@dataclass
class ScalingSpec:
    num_workers: Union[Auto, int, WorkerRange] = knob(
        "auto", help="Ray Train workers; auto: one per GPU, else one per node; `{min: N, max: M}`: elastic, "
                     "training starts once `min` workers can be placed and grows up to `max` as nodes join, "
                     "shrinks when they leave (the global `train.batch_size` is kept)")
    use_gpu: Union[Auto, bool] = knob("auto", help="train on GPUs; auto: when the cluster has them")
    cpus_per_worker: Union[Auto, float] = knob("auto", help="Ray CPUs reserved per worker (fractions allowed); "
                                                            "auto: the node's CPUs less a share kept for Ray Data")
    gpus_per_worker: float = knob(1.0, help="GPUs per worker when training on GPUs")
    threads_per_worker: Union[Auto, int] = knob("auto", help="torch threads in each worker; auto: its CPUs")
    wait_for_resources_s: float = knob(0.0, help="on an autoscaling cluster: ask the autoscaler for what `use_gpu: "
                                                 "true` and the workers need (or any node with CPUs) and wait up to "
                                                 "this long for it; 0: size from the live nodes at once")
    resize_check_s: float = knob(30.0, help="elastic `num_workers` only: how often a running group checks "
                                            "whether more (or fewer) workers fit; a resize restarts the group "
                                            "from the newest checkpoint")

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, WorkerRange)

    @property
    def min_workers(self) -> Union[Auto, int]:
        """The workers a run needs to start: ``num_workers``, or a range's ``min``."""
        return self.num_workers.min if isinstance(self.num_workers, WorkerRange) else self.num_workers

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(self.wait_for_resources_s >= 0, "wait_for_resources_s",
                         f"must be >= 0, got {self.wait_for_resources_s}")
        yield from check(self.resize_check_s > 0, "resize_check_s", f"must be > 0, got {self.resize_check_s}")
        if isinstance(self.num_workers, WorkerRange):
            low, high = self.num_workers.min, self.num_workers.max
            yield from check(low >= 1, "num_workers.min", f"must be >= 1, got {low}")
            yield from check(high >= low, "num_workers.max", f"must be >= num_workers.min ({low}), got {high}")
        for name in ("num_workers", "threads_per_worker"):
            value = getattr(self, name)
            if not isinstance(value, WorkerRange):
                yield from check(value == "auto" or value >= 1, name, f"must be >= 1 or 'auto', got {value}")
        cpus = self.cpus_per_worker
        yield from check(cpus == "auto" or cpus > 0, "cpus_per_worker", f"must be > 0 or 'auto', got {cpus}")
        yield from check(self.gpus_per_worker > 0, "gpus_per_worker", f"must be > 0, got {self.gpus_per_worker}")


@dataclass
class CheckpointSpec:
    every_n_epochs: int = knob(1, help="checkpoint every n epochs; the last epoch is always checkpointed")
    keep: int = knob(2, help="newest epoch checkpoints kept under `checkpoints/` (the best is kept apart, in `best/`)")
    best_metric: str = knob("auto", help="validation metric that picks `best/`; auto: the task's own "
                                         "(`val_accuracy` for classification)")
    best_mode: Union[Auto, Literal["max", "min"]] = knob("auto", help="auto: min for losses, perplexity and the "
                                                                      "task's minimized metrics, else max")

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(self.every_n_epochs >= 1, "every_n_epochs", f"must be >= 1, got {self.every_n_epochs}")
        yield from check(self.keep >= 1, "keep", f"must be >= 1, got {self.keep}")

    def resolve(self, task: Any) -> Iterator[tuple[str, str]]:
        """Fill the "auto" fields from the model's task; problems if the metric is not one it reports."""
        if self.best_metric == "auto":
            self.best_metric = task.default_best
        yield from check(self.best_metric in task.metrics, "checkpoint.best_metric",
                         f"must be one of {task.metrics} for this model, got {self.best_metric!r}")
        if self.best_mode == "auto":
            lower = ("loss" in self.best_metric or "perplexity" in self.best_metric
                     or self.best_metric in task.minimized)
            self.best_mode = "min" if lower else "max"


@dataclass
class FailureSpec:
    max_failures: int = knob(2, help="worker-group restarts from the newest complete checkpoint before giving "
                                     "up (-1: unlimited); with an elastic `scaling.num_workers` a node lost is "
                                     "a resize, not counted")

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(self.max_failures >= -1, "max_failures", f"must be >= -1 (-1: unlimited), got {self.max_failures}")


@dataclass
class JobSpec:
    name: str = knob(help="run name of letters, digits, `-` and `_`; the run lives in `<storage>/<name>`")
    data: DataSpec = knob(help="the rows to train on")
    model: Any = knob(help="the model: `family` and that family's fields (its config dataclass, models.FAMILIES)")
    preprocess: Any = knob(help="the family's preprocessing (its preprocess dataclass, models.FAMILIES)")
    # Written `model.family` in the spec: parse takes it out of the model section.
    model_family: str = knob(DEFAULT_FAMILY, help="the model family; the `model` and `preprocess` sections take "
                                                  "its fields")
    train: TrainSpec = knob(factory=TrainSpec, help="optimizer, schedule, precision, epochs")
    scaling: ScalingSpec = knob(factory=ScalingSpec, help="workers, CPUs, GPUs and threads")
    checkpoint: CheckpointSpec = knob(factory=CheckpointSpec, help="how often, how many, which is best")
    failure: FailureSpec = knob(factory=FailureSpec, help="restarts after a worker dies")
    serve: ServeSpec = knob(factory=ServeSpec, help="online serving of the trained checkpoint")
    score: ScoreSpec = knob(factory=ScoreSpec, help="batch scoring with the trained checkpoint")
    tracking: TrackingSpec = knob(factory=TrackingSpec, help="where the run is logged for MLflow's UI and API")
    tune: TuneSpec = knob(factory=TuneSpec, help="the hyperparameter search `distdl tune` runs over this spec; "
                                                 "`distdl train` ignores it")
    storage: str = knob("runs", help="local folder or URI for checkpoints and metrics; the run lives in "
                                     "`<storage>/<name>` (runs on several nodes need a shared one)")

    @property
    def run_dir(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    def to_dict(self) -> dict:
        """Plain data, the inverse of ``parse``: what workers and checkpoints receive."""
        keys = ("name", "data", "preprocess", *(k for k in SECTIONS if k != "data"), "storage")
        out = {k: to_dict(getattr(self, k)) for k in keys}
        out["model"] = {"family": self.model_family, **models.config_args(self.model)}
        return out


SECTIONS = {"data": DataSpec, "train": TrainSpec, "scaling": ScalingSpec, "checkpoint": CheckpointSpec,
            "failure": FailureSpec, "serve": ServeSpec, "score": ScoreSpec,
            "tracking": TrackingSpec, "tune": TuneSpec}
TOP_LEVEL = ("name", "storage", "model", "preprocess", *SECTIONS)


def parse(raw: Any) -> JobSpec:
    """Validate a raw mapping into a JobSpec; raises SpecError listing every bad field."""
    problems: list[tuple[str, str]] = []
    if not isinstance(raw, dict):
        raise SpecError([("", f"the spec must be a mapping, got {type(raw).__name__}")])
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append((str(key), unknown_key(str(key), list(TOP_LEVEL))))
    name = raw.get("name")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        problems.append(("name", f"must be a name of letters, digits, '-' and '_', got {name!r}"))
    storage = raw.get("storage", "runs")
    if not isinstance(storage, str) or not storage:
        problems.append(("storage", f"must be a folder or URI, got {storage!r}"))
    sections = {key: from_dict(cls, raw.get(key), key, problems) for key, cls in SECTIONS.items()}
    if "data" not in raw:
        problems.append(("data", "is required"))
    model_raw = dict(raw.get("model") or {}) if isinstance(raw.get("model"), (dict, type(None))) else None
    family, model_cfg, preprocess_cfg = None, None, None
    if model_raw is None:
        problems.append(("model", f"must be a mapping, got {raw.get('model')!r}"))
    else:
        family = model_raw.pop("family", DEFAULT_FAMILY)
        model_cfg = models.parse_config(family, model_raw, "model", problems)
    if family in models.FAMILIES:
        preprocess_cfg = from_dict(models.FAMILIES[family].preprocess, raw.get("preprocess"), "preprocess", problems)
    spec = None
    if not problems:
        spec = JobSpec(name=name, storage=storage, model_family=family, model=model_cfg,
                       preprocess=preprocess_cfg, **sections)
        problems.extend(_cross_checks(spec))
    if problems:
        raise SpecError(problems)
    return spec


def _cross_checks(spec: JobSpec) -> Iterator[tuple[str, str]]:
    """Rules that involve more than one section."""
    scaling, train = spec.scaling, spec.train
    if isinstance(scaling.num_workers, int):
        yield from check(train.batch_size % scaling.num_workers == 0, "train.batch_size",
                         f"must be divisible by scaling.num_workers ({scaling.num_workers}), got {train.batch_size}")
    elif scaling.elastic:  # any size in the range splits it, unevenly where it must: each rank needs a row
        yield from check(train.batch_size >= scaling.num_workers.max, "train.batch_size",
                         f"must be >= scaling.num_workers.max ({scaling.num_workers.max}), got {train.batch_size}")
    yield from check(not (train.precision == "fp16" and scaling.use_gpu is False), "train.precision",
                     "fp16 needs a GPU (scaling.use_gpu); use bf16 on CPU")
    family = models.FAMILIES[spec.model_family]
    if spec.data.input_column is None:
        by_config = family.input_column_for
        spec.data.input_column = by_config(spec.model, spec.preprocess) if by_config else family.input_column
    fmt = spec.data.format
    yield from check(fmt == "auto" or fmt in family.formats, "data.format",
                     f"model family '{spec.model_family}' reads {family.formats}, not {fmt!r}")
    task = family.task(spec.model)
    yield from check(task == "classification" or not train.label_smoothing, "train.label_smoothing",
                     f"applies to classification only, not to the '{task}' task (a gan sets model.label_smoothing)")
    yield from check(task == "classification" or train.class_weights is None, "train.class_weights",
                     f"applies to classification only, not to the '{task}' task")
    if not tasks.TASKS[task].metrics:  # e.g. embeddings: no loss, nothing to train
        yield "model", f"the '{task}' task needs no training: turn the model into a checkpoint with `distdl import`"
        return
    yield from spec.checkpoint.resolve(tasks.TASKS[task])


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a copy of ``raw``."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SpecError([(item, "override must look like section.field=value")])
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError([(".".join(parts[: i + 1]), f"is not a mapping, cannot set {key}")])
            node = child
        node[parts[-1]] = yaml.safe_load(text)
    return raw


def path_fields(raw: dict) -> dict[str, str]:
    """The spec's local-or-URI locations as written, by YAML path (``storage`` defaults to 'runs')."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    found = {"storage": raw.get("storage", "runs"), "data.train": data.get("train"), "data.val": data.get("val")}
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    family = models.FAMILIES.get(model.get("family", DEFAULT_FAMILY))
    found.update({f"model.{name}": model.get(name) for name in (family.paths if family else ())})
    return {key: path for key, path in found.items() if isinstance(path, str)}


def resolve_paths(raw: dict, base: Path) -> dict:
    """Make local data/storage/model-file paths absolute: Ray workers run in another working directory."""
    raw = copy.deepcopy(raw)
    for key, path in path_fields(raw).items():
        if not is_uri(path):
            section, _, name = key.rpartition(".")
            (raw[section] if section else raw)[name] = absolute(path, base)
    return raw


def path_problems(spec: JobSpec) -> list[tuple[str, str]]:
    """Model fields naming files (models.FAMILIES paths) that name nothing usable; checked before
    Ray starts, as a missing data path is."""
    found = []
    for name, kind in models.FAMILIES[spec.model_family].paths.items():
        value = getattr(spec.model, name)
        if not exists(value):
            found.append((f"model.{name}", f"not found: {value}"))
        elif kind == "checkpoint" and not checkpoint.is_complete(value):
            found.append((f"model.{name}", f"{value} is not a complete distdl checkpoint (no "
                                           f"{checkpoint.MARKER} marker: has its training finished?)"))
    return found


def load(path: str | os.PathLike, overrides: list[str] = ()) -> JobSpec:
    """Read, override, resolve relative paths against the working directory, and validate."""
    return parse(resolve_paths(read_raw(path, overrides), Path.cwd()))


def read_raw(path: str | os.PathLike, overrides: list[str] = ()) -> dict:
    """The spec file's mapping with ``--set`` overrides applied; paths as written, nothing validated."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError([("", f"cannot read spec {path}: {exc.strerror}")]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError([("", f"{path} is not valid YAML: {exc}")]) from None
    if not isinstance(raw, dict):
        raise SpecError([("", f"{path} must hold a mapping of sections, got {type(raw).__name__}")])
    return apply_overrides(raw, list(overrides))


def dump(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.to_dict(), sort_keys=False)



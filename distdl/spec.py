"""The job spec: one YAML file drives data, preprocessing, model, training and storage.

Loading is strict (unknown keys, wrong types and impossible values fail with the YAML
path of the field) and happens before Ray starts. ``--set a.b=value`` overrides are
applied to the raw mapping first, so they get exactly the same checks.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union

import yaml

from distdl import checkpoint, models, tasks
from distdl.paths import exists, is_uri
from distdl.specbase import SpecError, check, from_dict, to_dict, unknown_key

Auto = Literal["auto"]
DATA_FORMATS = ("parquet", "csv", "jsonl", "image_folder", "text", "audio_folder")


@dataclass
class DataSpec:
    train: str  # file, folder or URI (s3://, gs://) of the training data
    val: Optional[str] = None  # separate validation data; if null, val_fraction of train is held out
    val_fraction: float = 0.1
    format: Union[Auto, Literal["parquet", "csv", "jsonl", "image_folder", "text", "audio_folder"]] = "auto"
    input_column: Optional[str] = None  # null: the family's default ("image" for cnn, "sequence"/"audio"/"text" for rnn)
    label_column: str = "label"
    id_column: Optional[str] = None  # stable row key for the train/val split (default: row content)

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(0.0 <= self.val_fraction < 1.0, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        yield from check(bool(self.train), "train", "must name a file, folder or URI")
        if self.val is None:
            yield from check(self.val_fraction > 0, "val_fraction", "must be > 0 when data.val is not given")


@dataclass
class TrainSpec:
    epochs: int = 10
    batch_size: int = 64  # global: split evenly over the workers
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "step"] = "cosine"  # per epoch
    warmup_epochs: int = 0  # linear warm-up before the schedule
    step_size: int = 10  # "step": multiply lr by gamma every step_size epochs
    gamma: float = 0.1
    grad_clip: Optional[float] = None  # max global gradient norm
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16: autocast
    shuffle: bool = True  # random block order + local shuffle buffer
    # Preprocess once and keep the model-input rows in Ray's object store (spilling to disk) for
    # every epoch, instead of decoding/tokenizing each row again each epoch. Augmentation still
    # runs per epoch, after the cache.
    cache: bool = False
    seed: int = 0

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


@dataclass
class ScalingSpec:
    num_workers: Union[Auto, int] = "auto"  # auto: one per GPU, else one per node
    use_gpu: Union[Auto, bool] = "auto"  # auto: use GPUs when the cluster has them
    cpus_per_worker: Union[Auto, float] = "auto"  # Ray CPUs reserved per worker
    gpus_per_worker: float = 1.0
    threads_per_worker: Union[Auto, int] = "auto"  # torch threads in each worker

    def problems(self) -> Iterator[tuple[str, str]]:
        for name in ("num_workers", "threads_per_worker"):
            value = getattr(self, name)
            yield from check(value == "auto" or value >= 1, name, f"must be >= 1 or 'auto', got {value}")
        cpus = self.cpus_per_worker
        yield from check(cpus == "auto" or cpus > 0, "cpus_per_worker", f"must be > 0 or 'auto', got {cpus}")
        yield from check(self.gpus_per_worker > 0, "gpus_per_worker", f"must be > 0, got {self.gpus_per_worker}")


@dataclass
class CheckpointSpec:
    every_n_epochs: int = 1
    keep: int = 2  # newest checkpoints kept under checkpoints/ (the best is kept apart, in best/)
    best_metric: str = "auto"  # auto: the task's own (val_accuracy for classification)
    best_mode: Union[Auto, Literal["max", "min"]] = "auto"  # auto: min for *loss* / *perplexity* / the task's minimized, else max

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
                     or self.best_metric in getattr(task, "minimized", ()))
            self.best_mode = "min" if lower else "max"


@dataclass
class FailureSpec:
    max_failures: int = 2  # worker-group restarts from the last checkpoint before giving up

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(self.max_failures >= -1, "max_failures", f"must be >= -1 (-1: unlimited), got {self.max_failures}")


@dataclass
class ServeSpec:
    """Online serving (distdl serve): read from the checkpoint's spec.yaml; CLI --set overrides."""
    min_replicas: int = 1
    max_replicas: int = 1  # above min_replicas: autoscaling on
    target_ongoing_requests: float = 8.0  # per replica: the autoscaler adds replicas above this
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    look_back_period_s: float = 30.0  # the autoscaler averages ongoing requests over this window (> 10 s)
    max_batch_size: int = 16  # rows gathered from concurrent requests into one forward pass
    # Longest wait for more rows once one arrives at an idle replica. Under load batches fill
    # without it: rows that arrive during a forward pass go together into the next one.
    batch_wait_timeout_s: float = 0.0
    max_ongoing_requests: int = 32  # per replica; caps what a batch can gather
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    threads_per_replica: Union[Auto, int] = "auto"  # torch threads; auto: the replica's CPUs
    top_k: int = 5  # most labels a response may list
    max_body_bytes: int = 8 * 2**20  # larger requests: 413
    max_items_per_request: int = 64  # images (rows) in one request; more: 413
    max_image_pixels: int = 2**24  # width x height of one image; more: 413
    max_text_chars: int = 20000  # characters in one text or prompt; more: 413
    max_new_tokens: int = 200  # language models: most (and default) tokens generated per prompt

    def problems(self) -> Iterator[tuple[str, str]]:
        for name in ("min_replicas", "max_batch_size", "max_ongoing_requests", "top_k", "max_body_bytes",
                     "max_items_per_request", "max_image_pixels", "max_text_chars", "max_new_tokens"):
            yield from check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        yield from check(self.max_replicas >= self.min_replicas, "max_replicas",
                         f"must be >= min_replicas ({self.min_replicas}), got {self.max_replicas}")
        yield from check(self.max_ongoing_requests >= self.max_batch_size, "max_ongoing_requests",
                         f"must be >= max_batch_size ({self.max_batch_size}), or batches can never fill; "
                         f"got {self.max_ongoing_requests}")
        # Serve pushes autoscaling metrics every 10 s; a shorter window is deprecated there.
        yield from check(self.look_back_period_s > 10, "look_back_period_s",
                         f"must be > 10 (Serve's metrics push interval), got {self.look_back_period_s}")
        for name in ("target_ongoing_requests", "cpus_per_replica"):
            yield from check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        for name in ("upscale_delay_s", "downscale_delay_s", "batch_wait_timeout_s", "gpus_per_replica"):
            yield from check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        threads = self.threads_per_replica
        yield from check(threads == "auto" or threads >= 1, "threads_per_replica", f"must be >= 1 or 'auto', got {threads}")


@dataclass
class ScoreSpec:
    """Batch scoring (distdl score): read from the checkpoint's spec.yaml; the command's flags override."""
    batch_size: int = 256  # rows per forward pass
    min_actors: int = 1
    max_actors: Union[Auto, int] = "auto"  # auto: one per GPU, else every CPU but one (left for reading)
    cpus_per_actor: float = 1.0  # fractions allowed
    gpus_per_actor: float = 0.0  # above 0: the model runs on cuda; fractions share a GPU
    rows_per_file: Union[Auto, int] = "auto"  # rows per output parquet part; auto: one part per scored block

    def problems(self) -> Iterator[tuple[str, str]]:
        for name in ("batch_size", "min_actors"):
            yield from check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        yield from check(self.max_actors == "auto" or self.max_actors >= self.min_actors, "max_actors",
                         f"must be >= min_actors ({self.min_actors}) or 'auto', got {self.max_actors}")
        yield from check(self.cpus_per_actor > 0, "cpus_per_actor", f"must be > 0, got {self.cpus_per_actor}")
        yield from check(self.gpus_per_actor >= 0, "gpus_per_actor", f"must be >= 0, got {self.gpus_per_actor}")
        yield from check(self.rows_per_file == "auto" or self.rows_per_file >= 1, "rows_per_file",
                         f"must be >= 1 or 'auto', got {self.rows_per_file}")


@dataclass
class JobSpec:
    name: str
    data: DataSpec
    model_family: str
    model: Any  # the family's config dataclass (models.FAMILIES)
    preprocess: Any  # the family's preprocess dataclass (models.FAMILIES)
    train: TrainSpec = field(default_factory=TrainSpec)
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    failure: FailureSpec = field(default_factory=FailureSpec)
    serve: ServeSpec = field(default_factory=ServeSpec)
    score: ScoreSpec = field(default_factory=ScoreSpec)
    storage: str = "runs"  # local folder or URI; the run lives in <storage>/<name>

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
            "failure": FailureSpec, "serve": ServeSpec, "score": ScoreSpec}
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
        family = model_raw.pop("family", "cnn")
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
    family = models.FAMILIES.get(model.get("family", "cnn"))
    found.update({f"model.{name}": model.get(name) for name in (family.paths if family else ())})
    return {key: path for key, path in found.items() if isinstance(path, str)}


def resolve_paths(raw: dict, base: Path) -> dict:
    """Make local data/storage/model-file paths absolute: Ray workers run in another working directory."""
    raw = copy.deepcopy(raw)
    for key, path in path_fields(raw).items():
        if not is_uri(path):
            section, _, name = key.rpartition(".")
            (raw[section] if section else raw)[name] = str((base / path).resolve())
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



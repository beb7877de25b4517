"""Model families: a literal table from ``model.family`` to everything the spine needs of it.

The path is the same for every family: the spec's ``model`` and ``preprocess`` sections are
parsed into the family's dataclasses, ``fit`` fits its preprocessor on the driver, ``complete``
fills config fields taken from the data, ``build`` makes the nn.Module, ``init_weights`` loads
a fresh run's starting weights (optional; e.g. a pretrained folder), ``task`` names
the objective/metrics/prediction columns in ``distdl.tasks``, and ``for_inference`` (optional)
gives the Predictor a faster form of the trained model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, Mapping, NamedTuple, Optional

from torch import nn

from distdl.models import cnn, gan, rnn, transformer
from distdl.preprocessors import image, sequence, tokenized
from distdl.specbase import from_dict, join


class Family(NamedTuple):
    config: type  # the spec's model section
    preprocess: type  # the spec's preprocess section
    input_column: str  # default for data.input_column
    formats: tuple[str, ...]  # data formats it can read (spec.DATA_FORMATS)
    build: Callable[[Any], nn.Module]
    complete: Callable[[Any, Any], Any]  # (config, fitted preprocessor) -> config
    fit: Callable[[Any, Any, Any, Any], Any]  # (raw train dataset, DataSpec, preprocess cfg, model cfg) -> preprocessor
    augmentations: Callable[[Any], list]  # preprocess cfg -> training-only map_batches steps
    task: Callable[[Any], str]  # model cfg -> a name in distdl.tasks.TASKS
    # (model cfg, preprocess cfg) -> the default data.input_column, where it depends on them
    input_column_for: Optional[Callable[[Any, Any], str]] = None
    # (model, config) -> None: starting weights for a fresh run (e.g. a local pretrained folder);
    # never called on resume or when a checkpoint is loaded. None: the seeded random init.
    init_weights: Optional[Callable[[nn.Module, Any], None]] = None
    # model in eval mode -> the same function in a faster form for inference only (scoring,
    # serving); never trained or saved. None: the model as it is.
    for_inference: Optional[Callable[[nn.Module], nn.Module]] = None
    # model in eval mode -> the same function in a form ONNX export can trace (distdl.onnx_export);
    # ValueError with the reason for a model that has none. None: the model as it is.
    for_export: Optional[Callable[[nn.Module], nn.Module]] = None
    # Config fields naming a file/folder, or a complete distdl checkpoint: made absolute like data
    # paths and checked before Ray starts (spec.path_problems). Read-only.
    paths: Mapping[str, Literal["file", "checkpoint"]] = {}


FAMILIES: dict[str, Family] = {
    "cnn": Family(config=cnn.CNNConfig, preprocess=image.ImagePreprocessSpec, input_column="image",
                  formats=("parquet", "csv", "jsonl", "image_folder"), build=cnn.build, complete=cnn.complete,
                  fit=cnn.fit_preprocessor, augmentations=cnn.augmentations, task=cnn.task,
                  for_inference=cnn.for_inference),
    "rnn": Family(config=rnn.RNNConfig, preprocess=sequence.SequencePreprocessSpec, input_column="sequence",
                  formats=("parquet", "csv", "jsonl", "text", "audio_folder"), build=rnn.build, complete=rnn.complete,
                  fit=rnn.fit_preprocessor, augmentations=rnn.augmentations, task=rnn.task,
                  input_column_for=rnn.input_column, for_export=rnn.for_export),
    "transformer": Family(config=transformer.TransformerConfig, preprocess=tokenized.TextPreprocessSpec, input_column="text",
                          formats=("parquet", "csv", "jsonl"), build=transformer.build, complete=transformer.complete,
                          fit=transformer.fit_preprocessor, augmentations=transformer.augmentations,
                          task=transformer.task, init_weights=transformer.load_pretrained),
    "gan": Family(config=gan.GANConfig, preprocess=gan.GANPreprocessSpec, input_column="image",
                  formats=("parquet", "csv", "jsonl", "image_folder"), build=gan.build, complete=gan.complete,
                  fit=gan.fit_preprocessor, augmentations=gan.augmentations, task=gan.task,
                  paths={"classifier": "checkpoint"}),
}


def parse_config(family: str, raw: dict, path: str, problems: list[tuple[str, str]]) -> Any:
    """The family's config dataclass from the spec's ``model`` keys (minus ``family``)."""
    if family not in FAMILIES:
        problems.append((join(path, "family"), f"unknown model family {family!r}; choose from {sorted(FAMILIES)}"))
        return None
    return from_dict(FAMILIES[family].config, raw, path, problems)


def config_from_args(family: str, args: dict) -> Any:
    """Rebuild a config from a checkpoint's model.json (already validated when it was written)."""
    problems: list[tuple[str, str]] = []
    cfg = parse_config(family, args, "model", problems)
    if problems:
        raise ValueError(f"checkpoint model.json does not match this distdl version: {problems}")
    return cfg


def task_name(meta: dict) -> str:
    """The task (distdl.tasks.TASKS) of a checkpoint's model.json ({"family", "args"})."""
    return FAMILIES[meta["family"]].task(config_from_args(meta["family"], meta["args"]))


def build_model(family: str, cfg: Any) -> nn.Module:
    return FAMILIES[family].build(cfg)


def init_weights(family: str, model: nn.Module, cfg: Any) -> None:
    """A fresh run's starting weights: the family's own (e.g. pretrained), else leave the random init."""
    hook = FAMILIES[family].init_weights
    if hook is not None:
        hook(model, cfg)


def complete_config(family: str, cfg: Any, preprocessor: Any) -> Any:
    return FAMILIES[family].complete(cfg, preprocessor)


def config_args(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)

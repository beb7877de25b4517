"""Model families: a literal table from ``model.family`` to its config dataclass and builder."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

from torch import nn

from distdl.models import cnn
from distdl.specbase import from_dict, join


class Family(NamedTuple):
    config: type
    build: Callable[[Any], nn.Module]
    complete: Callable[[Any, Any], Any]  # (config, fitted preprocessor) -> config


FAMILIES: dict[str, Family] = {
    "cnn": Family(cnn.CNNConfig, cnn.build, cnn.complete),
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


def build_model(family: str, cfg: Any) -> nn.Module:
    return FAMILIES[family].build(cfg)


def complete_config(family: str, cfg: Any, preprocessor: Any) -> Any:
    return FAMILIES[family].complete(cfg, preprocessor)


def config_args(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)

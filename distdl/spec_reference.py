"""The job-spec reference: Markdown tables generated from the spec dataclasses' field help.

Each field's help lives beside the field (``specbase.knob``); the docs include these tables at
build time (``docs/hooks/spec_tables.py`` replaces ``<!-- spec: KEY -->``), so the docs list
exactly the fields, types and defaults that spec parsing accepts.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Iterator, Literal, NamedTuple, Union

from distdl import models, spec


class Row(NamedTuple):
    field: str  # YAML path, e.g. "train.lr" or "preprocess.audio.n_mels"
    type: str
    default: str  # as YAML writes it; "required" when the field has none
    help: str


def yaml_value(value: Any) -> str:
    """How a default reads in a YAML file: null, true, 0.001, [], auto."""
    return value if isinstance(value, str) else json.dumps(value)


def _alternatives(tp: Any) -> list[str]:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return [f"`{yaml_value(v)}`" for v in typing.get_args(tp)]
    if origin in (Union, types.UnionType):
        return [alt for option in typing.get_args(tp) for alt in _alternatives(option)]
    if origin is list:
        return [f"list of {_join(_alternatives(typing.get_args(tp)[0]))}"]
    if tp is type(None):
        return ["`null`"]
    if dataclasses.is_dataclass(tp):  # a field that may also be a small section, e.g. `{min: 1, max: 4}`
        return [f"`{{{', '.join(f.name for f in dataclasses.fields(tp))}}}`"]
    return [{str: "string", dict: "mapping"}.get(tp, getattr(tp, "__name__", str(tp)))]


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def type_text(tp: Any) -> str:
    """A field's type in words: "`sgd`, `adam` or `adamw`", "`auto` or int", "string or `null`"."""
    return _join(_alternatives(tp))


def default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return yaml_value(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return yaml_value(f.default_factory())
    return "required"


def _row(path: str, tp: Any, f: dataclasses.Field) -> Row:
    return Row(path, type_text(tp), default_text(f), f.metadata.get("help", ""))


def rows(cls: type, prefix: str) -> Iterator[Row]:
    """One row per field of spec dataclass ``cls`` under YAML path ``prefix``; a nested section
    (``preprocess.audio``) contributes its own fields."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        path, tp = f"{prefix}.{f.name}", hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from rows(tp, path)
        else:
            yield _row(path, tp, f)


def _job_rows() -> Iterator[Row]:
    """The top-level keys that are not sections; ``model.family`` is written inside ``model``."""
    fields = {f.name: f for f in dataclasses.fields(spec.JobSpec)}
    yield _row("name", str, fields["name"])
    yield _row("model.family", Literal[tuple(models.FAMILIES)], fields["model_family"])
    yield _row("storage", str, fields["storage"])


def tables() -> dict[str, list[Row]]:
    """Every table by marker key: job, each section, and model.FAMILY / preprocess.FAMILY."""
    out = {"job": list(_job_rows())}
    out.update({key: list(rows(cls, key)) for key, cls in spec.SECTIONS.items()})
    for name, family in models.FAMILIES.items():
        out[f"model.{name}"] = list(rows(family.config, "model"))
        out[f"preprocess.{name}"] = list(rows(family.preprocess, "preprocess"))
    return out


def _cell(text: str) -> str:
    return text.replace("|", r"\|")


def markdown(table: list[Row]) -> str:
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for r in table:
        default = r.default if r.default == "required" else f"`{r.default}`"
        lines.append(f"| `{r.field}` | {_cell(r.type)} | {default} | {_cell(r.help)} |")
    return "\n".join(lines) + "\n"

"""Strict conversion of plain dicts (parsed YAML) into typed dataclasses.

Every error carries the YAML path of the bad field (``train.lr``), and an unknown key
gets the closest valid key as a suggestion, so a typo fails before any Ray work starts.
The job spec (spec.py) and each model family's config (models/) are built with it.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Iterator, Literal, TypeVar, Union

T = TypeVar("T")
Auto = Literal["auto"]  # a field that distdl fills in from the cluster or the task


class SpecError(ValueError):
    """One or more invalid fields; ``problems`` holds (yaml path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]], what: str = "job spec"):
        self.problems = problems
        lines = [f"  {path or '<root>'}: {msg}" for path, msg in problems]
        super().__init__(f"invalid {what}:\n" + "\n".join(lines))


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def unknown_key(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"unknown key; did you mean '{close[0]}'?" if close else f"unknown key; valid keys: {', '.join(valid)}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def convert(value: Any, tp: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """Return ``value`` as type ``tp`` or record a problem at ``path`` (and return None)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        problems.append((path, f"must be {_type_name(tp)}, got {value!r}"))
        return None
    if origin in (Union, types.UnionType):
        sections = [option for option in typing.get_args(tp) if dataclasses.is_dataclass(option)]
        if isinstance(value, dict) and len(sections) == 1:  # a mapping can only mean the section: name its bad keys
            return from_dict(sections[0], value, path, problems)
        for option in typing.get_args(tp):  # first option that converts cleanly wins
            trial: list[tuple[str, str]] = []
            converted = convert(value, option, path, trial)
            if not trial:
                return converted
        problems.append((path, f"must be {_type_name(tp)}, got {value!r}"))
        return None
    if origin is list:
        if not isinstance(value, list):
            problems.append((path, f"must be a list, got {value!r}"))
            return None
        item_type = typing.get_args(tp)[0]
        return [convert(v, item_type, join(path, i), problems) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path, problems)
    if tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    problems.append((path, f"must be {_type_name(tp)}, got {value!r}"))
    return None


def from_dict(cls: type[T], raw: Any, path: str, problems: list[tuple[str, str]]) -> T | None:
    """Build dataclass ``cls`` from ``raw``; unknown keys and bad values go to ``problems``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append((path, f"must be a mapping, got {raw!r}"))
        return None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            problems.append((join(path, str(key)), unknown_key(str(key), list(fields))))
    kwargs = {}
    for name, field in fields.items():
        if name in raw:
            before = len(problems)
            kwargs[name] = convert(raw[name], hints[name], join(path, name), problems)
            if len(problems) > before:
                kwargs.pop(name)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.append((join(path, name), "is required"))
    try:
        obj = cls(**kwargs)
    except TypeError:  # a required field was missing: already recorded
        return None
    for field_name, msg in obj.problems() if hasattr(obj, "problems") else ():
        problems.append((join(path, field_name), msg))
    return obj


def knob(default: Any = dataclasses.MISSING, *, help: str, factory: Any = dataclasses.MISSING) -> Any:
    """A spec field with its help text (``factory`` for mutable defaults); the docs' spec
    reference is generated from the help (distdl.spec_reference), so it lives beside the field."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help})


def field_help(cls: type) -> dict[str, str]:
    """Each field a spec may set, by name, with its help text ('' where it has none)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.init}


def to_dict(obj: Any) -> Any:
    """Plain-data view of a (nested) dataclass: the form that travels to Ray workers."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def check(condition: bool, field: str, message: str) -> Iterator[tuple[str, str]]:
    """Yield one problem when ``condition`` is false; reads well inside ``problems()``."""
    if not condition:
        yield field, message


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys, e.g. {"train": {"lr": 0.01}} -> {"train.lr": 0.01}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat

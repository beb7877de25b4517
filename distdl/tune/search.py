"""The search space: ``--search FIELD=KIND:ARGS`` strings and the spec's ``tune:`` section.

Everything here is checked before Ray starts. A searched field is checked the way a spec is:
each value a trial could get (every choice, both bounds of a range) is written into the spec
and the spec is parsed, so an unknown field or a value of the wrong type fails with the same
message ``distdl train`` would give, labelled with the flag or YAML path that asked for it.
"""
from __future__ import annotations

import copy
import importlib.util
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distdl import spec as specmod
from distdl.specbase import SpecError, check, from_dict
from distdl.tune.settings import TuneSpec

KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
SEARCHABLE = ("train", "model", "preprocess")  # scaling is the sweep's plan; name and storage name the sweep
FIXED = {"train.epochs": "every trial trains the same epochs (the schedulers count them)",
         "model.family": "the family decides which fields the model section has"}
EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")  # 1e-4, which YAML 1.1 reads as text
PACKAGED = ("optuna", "hyperopt")  # algorithms that need the package of their name


@dataclass(frozen=True)
class Dimension:
    """One searched field: ``values`` for choice/grid, ``(low, high)`` for the ranges (randint: inclusive)."""
    field: str
    kind: str
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0

    def probes(self) -> list:
        """The values a trial could get that the spec must accept: every listed value, both bounds."""
        return list(self.values) if self.kind in ("choice", "grid") else [self.low, self.high]

    def describe(self) -> str:
        """The ``KIND:ARGS`` text that gives this dimension: "choice:16,32", "loguniform:0.0001:0.1"."""
        if self.kind in ("choice", "grid"):
            return f"{self.kind}:{','.join(str(v) for v in self.values)}"
        return f"{self.kind}:{self.low:g}:{self.high:g}"


@dataclass
class Sweep:
    raw: dict  # the base spec's mapping (paths resolved, no tune section): each trial starts from it
    spec: specmod.JobSpec  # the base spec, parsed
    tune: TuneSpec
    dims: list[Dimension] = field(default_factory=list)

    def trial_count(self) -> int:
        """Trials the sweep runs: each sample runs every combination of the grid fields."""
        return self.tune.trials * math.prod(len(d.values) for d in self.dims if d.kind == "grid")


def parse_search(text: str, label: str = "--search") -> Dimension:
    """``FIELD=KIND:ARGS`` -> Dimension; SpecError labelled ``LABEL FIELD`` otherwise."""
    name, sep, body = text.partition("=")
    if not sep or not name:
        raise SpecError([(f"{label} {text}", "must look like FIELD=KIND:ARGS, e.g. train.lr=loguniform:1e-4:1e-1")],
                        "search")
    return parse_distribution(name.strip(), body, f"{label} {name.strip()}")


def parse_distribution(name: str, body: str, where: str) -> Dimension:
    kind, _, args = str(body).partition(":")
    problem = _field_problem(name) or _kind_problem(kind, args)
    if problem:
        raise SpecError([(where, problem)], "search")
    if kind in ("choice", "grid"):
        return Dimension(name, kind, values=tuple(_value(v) for v in args.split(",")))
    low, high = _bounds(kind, args, where)
    return Dimension(name, kind, low=low, high=high)


def _value(text: str) -> Any:
    """A listed value as YAML reads it, except that 1e-4 is a number (YAML 1.1 wants 1.0e-4)."""
    value = yaml.safe_load(text)
    return float(value) if isinstance(value, str) and EXPONENT.match(value.strip()) else value


def _field_problem(name: str) -> str | None:
    section = name.split(".")[0]
    if name in FIXED:
        return f"cannot be searched: {FIXED[name]}"
    if section not in SEARCHABLE or "." not in name:
        return (f"cannot be searched: only fields of {', '.join(s + '.*' for s in SEARCHABLE)} can "
                "(the sweep plans scaling; name and storage name the sweep)")
    return None


def _kind_problem(kind: str, args: str) -> str | None:
    if kind not in KINDS:
        return f"unknown distribution {kind!r}; one of {', '.join(KINDS)} (e.g. choice:16,32,64)"
    if kind in ("choice", "grid") and (not args or any(not v.strip() for v in args.split(","))):
        return f"{kind} needs values separated by commas, e.g. {kind}:16,32,64; got {args!r}"
    if kind not in ("choice", "grid") and len(args.split(":")) != 2:
        return f"{kind} needs two bounds, e.g. {kind}:LOW:HIGH; got {args!r}"
    return None


def _bounds(kind: str, args: str, where: str) -> tuple[float, float]:
    number = int if kind == "randint" else float
    try:
        low, high = (number(v) for v in args.split(":"))
    except ValueError:
        raise SpecError([(where, f"{kind} bounds must be {number.__name__}s, got {args!r}")], "search") from None
    problems = [*check(low < high, where, f"{kind} needs LOW < HIGH, got {low:g} and {high:g}"),
                *check(kind != "loguniform" or low > 0, where, f"loguniform needs bounds > 0, got {low:g}")]
    if problems:
        raise SpecError(problems, "search")
    return low, high


def set_field(raw: dict, dotted: str, value: Any) -> dict:
    """A copy of ``raw`` with ``dotted`` set to ``value`` (a Python value, not YAML text)."""
    raw = copy.deepcopy(raw)
    node, parts = raw, dotted.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            return raw  # a section that is not a mapping: parsing the spec reports it
        node = node[part]
    node[parts[-1]] = value
    return raw


def check_dimensions(raw: dict, dims: list[Dimension], labels: dict[str, str]) -> None:
    """Parse the spec with every probe value of every dimension; SpecError naming ``labels[field]``."""
    problems: list[tuple[str, str]] = []
    for dim in dims:
        for value in dim.probes():
            try:
                specmod.parse(set_field(raw, dim.field, value))
            except SpecError as exc:
                # parse's messages name the bad value ("must be > 0, got -1.0")
                problems.extend((labels[dim.field], msg if path == dim.field else f"{path}: {msg}")
                                for path, msg in exc.problems)
                break
    if problems:
        raise SpecError(problems, "search")


def load(path: str, overrides: list[str], searches: list[str], flags: dict[str, Any]) -> Sweep:
    """The sweep of spec file ``path`` with its ``--set`` overrides (see from_raw)."""
    return from_raw(specmod.resolve_paths(specmod.read_raw(path, overrides), Path.cwd()), searches, flags)


def from_raw(raw: dict, searches: list[str], flags: dict[str, Any]) -> Sweep:
    """The sweep of a spec mapping: its ``tune:`` section, with the command line's ``searches``
    and ``flags`` (tune field -> value; None: not given) on top."""
    raw = dict(raw)
    section = raw.pop("tune", None) or {}
    if isinstance(section, dict):
        section = {**section, **{name: value for name, value in flags.items() if value is not None}}
    problems: list[tuple[str, str]] = []
    tune = from_dict(TuneSpec, section, "tune", problems)
    if problems:
        raise SpecError([(_flag_label(where, flags), msg) for where, msg in problems], "search")
    base = specmod.parse(raw)
    given = {name: (f"tune.search.{name}", body) for name, body in tune.search.items()}
    for text in searches:
        dim = parse_search(text)  # a string without FIELD= gets its own message
        given[dim.field] = (f"--search {dim.field}", text.partition("=")[2])
    if not given:
        raise SpecError([("--search", "nothing to search: give --search FIELD=KIND:ARGS or a tune.search section")],
                        "search")
    dims = [parse_distribution(name, body, where) for name, (where, body) in given.items()]
    check_dimensions(raw, dims, {name: where for name, (where, _) in given.items()})
    _check_settings(tune, dims, base, flags)
    return Sweep(raw=raw, spec=base, tune=tune, dims=dims)


def _check_settings(tune: TuneSpec, dims: list[Dimension], base: specmod.JobSpec, flags: dict[str, Any]) -> None:
    """Rules between the tune settings, the search and the spec, labelled with the flag that set them."""
    def where(name: str) -> str:
        return _flag_label(f"tune.{name}", flags)

    package = tune.algorithm if tune.algorithm in PACKAGED else None
    problems = [
        *check(package is None or importlib.util.find_spec(package) is not None, where("algorithm"),
               f"{tune.algorithm} needs the {package} package (pip install {package})"),
        *check(tune.algorithm == "random" or all(d.kind != "grid" for d in dims), where("algorithm"),
               f"grid needs the random algorithm, not {tune.algorithm}"),
        *check(tune.scheduler == "fifo" or tune.grace_period <= base.train.epochs, where("grace_period"),
               f"must be <= train.epochs ({base.train.epochs}), got {tune.grace_period}"),
    ]
    if problems:
        raise SpecError(problems, "search")


def _flag_label(where: str, flags: dict[str, Any]) -> str:
    """``tune.max_concurrent`` -> ``--max-concurrent`` when the command line set it."""
    name = where.removeprefix("tune.")
    return f"--{name.replace('_', '-')}" if flags.get(name) is not None else where


def trial_raw(base: dict, values: dict[str, Any], scaling: dict, sweep_dir: str, trial: str,
              tracking: dict) -> dict:
    """One trial's spec mapping: the base with its searched ``values``, the planned ``scaling``, its own
    run folder ``<sweep_dir>/trials/<trial>`` and its ``tracking`` section (nested under the
    sweep's MLflow run, or off: distdl.tune.parent_run)."""
    raw = base
    for name, value in values.items():
        raw = set_field(raw, name, value)
    return {**raw, "name": trial, "storage": f"{sweep_dir}/trials",
            "scaling": {**(raw.get("scaling") or {}), **scaling},
            "tracking": {**(raw.get("tracking") or {}), **tracking}}

"""Two runs side by side: the spec fields that differ, their metrics, their learning curves overlaid."""
from __future__ import annotations

import json
from typing import Any, Optional

from distdl.checkpoint import scalars
from distdl.specbase import flatten
from distdl.runs import Run, best, best_epoch, epochs, number, table, wall

MISSING = object()  # a spec field one run has and the other lacks (an older spec)


def spec_diff(a: dict, b: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, a's value, b's value) for every field that differs; MISSING where a spec lacks it.
    The name is left out: it differs always and heads the columns."""
    flat_a, flat_b = flatten(a), flatten(b)
    keys = [*flat_a, *(k for k in flat_b if k not in flat_a)]
    return [(k, flat_a.get(k, MISSING), flat_b.get(k, MISSING)) for k in keys
            if k != "name" and flat_a.get(k, MISSING) != flat_b.get(k, MISSING)]


def spec_value(value: Any) -> str:
    """As YAML would write a scalar (0.001, true, null); '-' for a field the spec lacks."""
    if value is MISSING:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def labels(a: Run, b: Run) -> tuple[str, str]:
    """Column headings: the names, or the paths when both runs have the same name."""
    return (a.name, b.name) if a.name != b.name else (a.path, b.path)


def spec_rows(a: Run, b: Run) -> list[list[str]]:
    return [[key, spec_value(va), spec_value(vb)] for key, va, vb in spec_diff(a.spec, b.spec)]


def spec_note(a: Run, b: Run) -> Optional[str]:
    """What stands instead of the spec table: a run whose spec no checkpoint holds yet, or no difference."""
    unknown = [r.name for r in (a, b) if not r.spec]
    if unknown:
        return f"unknown for {' and '.join(unknown)}: no checkpoint yet"
    return None if spec_rows(a, b) else "no field differs"


def metric_rows(a: Run, b: Run) -> list[list[str]]:
    """Status, epochs, best and wall time, then the final epoch's numbers ('-' where a run lacks one)."""
    rows = [["status", a.status, b.status], ["epochs", epochs(a), epochs(b)], ["best", best(a), best(b)],
            ["best epoch", best_epoch(a), best_epoch(b)],
            ["wall", wall(a), wall(b)]]
    last_a, last_b = (scalars(r.history[-1]) if r.history else {} for r in (a, b))
    rows.append(["final epoch", number(last_a.pop("epoch", None)), number(last_b.pop("epoch", None))])
    keys = [*last_a, *(k for k in last_b if k not in last_a)]
    return rows + [[k, number(last_a.get(k)), number(last_b.get(k))] for k in keys]


def format_comparison(a: Run, b: Run) -> str:
    """The text `distdl runs --compare` prints: spec differences, then metrics."""
    la, lb = labels(a, b)
    note = spec_note(a, b)
    spec_text = f"spec: {note}" if note else table(["spec field", la, lb], spec_rows(a, b))
    return f"{spec_text}\n\n{table(['metric', la, lb], metric_rows(a, b))}"


def curves(run: Run) -> dict[str, list[tuple[float, float]]]:
    """(epoch, value) per scalar metric, in the order metrics.jsonl first logs them."""
    found: dict[str, list[tuple[float, float]]] = {}
    for row in run.history:
        values = scalars(row)
        epoch = values.pop("epoch", None)
        if epoch is None:
            continue
        for key, value in values.items():
            found.setdefault(key, []).append((epoch, value))
    return found


def html(a: Run, b: Run) -> str:
    """compare.html: both tables and one chart per metric both runs logged, the runs overlaid."""
    from distdl.report import page, plots, sections  # matplotlib: only when a page is written

    la, lb = labels(a, b)
    note = spec_note(a, b)
    curves_a, curves_b = curves(a), curves(b)
    charts = [plots.line_chart({la: curves_a[m], lb: curves_b[m]}, m, m) for m in curves_a if m in curves_b]
    return page.render(f"{la} vs {lb}", [
        ("Spec fields that differ",
         sections.note(note) if note else sections.table(["field", la, lb], spec_rows(a, b), text_columns=3)),
        ("Metrics", sections.table(["", la, lb], metric_rows(a, b), text_columns=1)),
        ("Learning curves", "\n".join(charts) if charts else sections.note("no metric logged by both runs")),
    ])

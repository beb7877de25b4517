"""The sections every run's report has: a summary, learning curves, the layout, the spec.
Each function returns (heading, inner HTML) for page.render."""
from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Optional

import yaml

from distdl.report.plots import line_chart

if TYPE_CHECKING:  # run.py reads checkpoints (torch); the tables here also serve pages without runs
    from distdl.report.run import Run

Section = tuple[str, str]


def table(header: Optional[list[str]], rows: list[list[Any]], css_id: Optional[str] = None,
          text_columns: int = 1) -> str:
    """An escaped HTML table (no header row when ``header`` is None); the first ``text_columns``
    columns are left-aligned."""
    def cell(tag: str, i: int, value: Any) -> str:
        css = ' class="text"' if i < text_columns else ""
        return f"<{tag}{css}>{html.escape(fmt(value))}</{tag}>"

    head = "<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    ident = f' id="{css_id}"' if css_id else ""
    return f"<table{ident}>{head}<tbody>{body}</tbody></table>"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def summary(run: Run) -> Section:
    best = run.best()
    rows = [
        ["family / task", f"{run.family} / {run.task}"],
        ["epochs run", run.history[-1].get("epoch") if run.history else 0],
        [f"best {run.best_metric} ({run.best_mode})",
         f"{fmt(best[run.best_metric])} at epoch {best['epoch']}" if best else "not logged"],
        ["checkpoint", run.checkpoint],
    ]
    record = run.record
    if record is None:
        rows.append(["status", "unknown: no run.json (the run predates it)"])
    else:
        tracking = record.get("tracking") or {}
        rows += [
            ["status", run.status],
            ["started / ended", f"{fmt(record.get('started'))} / {fmt(record.get('ended'))}"],
            ["wall time (s)", record.get("wall_s")],
            ["stopped early", record.get("stopped_early")],
            ["error", record.get("error")],
            ["versions", ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items()) or None],
            ["git commit", record.get("git_commit")],
            ["tracking", " ".join(f"{k} {v}" for k, v in tracking.items()) or None],
        ]
    return "Summary", table(None, [r for r in rows if r[1] is not None], text_columns=2)


def learning_curves(run: Run) -> Section:
    """Losses, the best metric, lr, throughput and ingest wait per epoch."""
    losses = {name: run.series(name) for name in ("train_loss", "val_loss", "train_d_loss", "train_g_loss")}
    charts = [
        line_chart({k: v for k, v in losses.items() if v}, "loss", "loss"),
        line_chart({run.best_metric: run.series(run.best_metric)},
                   f"{run.best_metric} (best metric, {run.best_mode})", run.best_metric),
        line_chart({"lr": run.series("lr")}, "learning rate", "lr"),
        line_chart({"samples/s": run.series("samples_per_s")}, "training throughput", "samples/s"),
        line_chart({"ingest wait": run.series("ingest_wait_share")}, "share of step time waiting for data",
                   "share"),
    ]
    return "Learning curves", "\n".join(charts)


def layout(run: Run) -> Section:
    if run.record and run.record.get("layout"):
        lay = run.record["layout"]
        details = table(["setting", "value"], [[k, v] for k, v in lay.items() if k != "text"], text_columns=1)
        return "Layout", f"<p>{html.escape(str(lay.get('text', '')))}</p>\n{details}"
    return "Layout", note("unknown: this run has no run.json (it predates it); the spec's scaling section "
                          "below says what was asked for")


def spec(run: Run) -> Section:
    text = yaml.safe_dump(run.spec, sort_keys=False)
    return "Spec", f"<p>{html.escape(run.checkpoint)}/spec.yaml</p>\n<pre>{html.escape(text)}</pre>"

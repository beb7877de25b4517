"""``<run_dir>/report.html``: one self-contained page (inline CSS and PNGs, no script, no
external URL) about a training run, built from what the run folder holds.

    run.py            what is read: metrics.jsonl, the best checkpoint's spec, run.json
    sections.py       summary, learning curves, layout, spec (every run)
    task_sections.py  a task's own: confusion matrix, sample grids, generated text
    examples.py       a classifier's worst mistakes on validation rows (needs a connected Ray)
    plots.py, page.py matplotlib figures as <img>; the HTML document

This file imports the rest only when a report is written, so that `distdl.report.page` and
`.plots` (which other pages use) come without torch and Ray.
"""
from __future__ import annotations

REPORT = "report.html"


def write(run_dir: str) -> str:
    """Write ``<run_dir>/report.html`` and return its path. run.NotARunError (a ValueError) when
    ``run_dir`` holds no run; the examples section runs only when Ray is connected."""
    from distdl.paths import join
    from distdl.paths import write_bytes
    from distdl.report import examples, page, sections
    from distdl.report.run import load
    from distdl.report.task_sections import SECTIONS

    run = load(run_dir)
    own = [make(run) for make in SECTIONS.get(run.task, ())]
    if run.task == "classification":
        own.append(examples.worst_misclassified(run))
    parts = [sections.summary(run), sections.learning_curves(run), *own, sections.layout(run), sections.spec(run)]
    path = join(run_dir, REPORT)
    write_bytes(path, page.render(f"distdl run {run.name}", parts).encode())
    return path

"""A classifier's worst mistakes: the validation rows it gets wrong with the most confidence.

The rows come from the same split training used (data.train_val with the spec's settings),
at most MAX_ROWS of them, and are scored by the run's checkpoint through the one Predictor.
Reading them needs a connected Ray; without one the section says so.
"""
from __future__ import annotations

import html
from typing import Any

import numpy as np
import ray

from distdl import data
from distdl.paths import read_bytes
from distdl.predict import Predictor
from distdl.preprocessors import audio
from distdl.preprocessors.base import plain
from distdl.report import plots
from distdl.report.run import Run
from distdl.report.sections import Section, fmt, note

MAX_ROWS = 300  # validation rows read and scored
SHOWN = 12  # mistakes shown
MAX_TEXT = 400  # characters of a text row shown

HEADING = "Worst misclassified validation rows"


def val_rows(run: Run, limit: int) -> dict[str, np.ndarray]:
    """Up to ``limit`` raw validation rows as columns of Python objects (the Predictor's input)."""
    d, seed = run.spec["data"], run.spec["train"]["seed"]
    _, val = data.train_val(d["train"], d["val"], d["format"], d["val_fraction"], seed, d["id_column"])
    rows = val.take(limit)
    columns: dict[str, np.ndarray] = {}
    for name in (rows[0] if rows else {}):
        columns[name] = np.empty(len(rows), dtype=object)  # filled one by one: arrays stay cells
        for i, row in enumerate(rows):
            columns[name][i] = row[name]
    return columns


def show_input(pre: Any, value: Any, alt: str) -> str:
    """One row's input as the family sees it: a thumbnail, a line plot, a spectrogram or the text."""
    if pre.kind == "image":
        return plots.thumbnail(pre.decode(value), alt)
    if pre.kind == "sequence" and pre.audio:
        wav = read_bytes(value) if isinstance(value, str) else bytes(value)
        rate = audio.AudioSpec(**pre.audio).sample_rate
        return plots.spectrogram(audio.read_wav(wav, rate), rate, alt)
    if pre.kind == "sequence":
        return plots.sequence_plot(pre.decode(value), alt)
    text = str(value)
    return html.escape(text[:MAX_TEXT] + ("…" if len(text) > MAX_TEXT else ""))


def worst_misclassified(run: Run) -> Section:
    if not ray.is_initialized():
        return HEADING, note("skipped: reading the validation rows needs Ray (`distdl report RUN_DIR` "
                             "connects to one; report.write alone does not)")
    try:
        batch = val_rows(run, MAX_ROWS)
    except (OSError, ValueError) as exc:  # the data moved or is gone since training: the rest of the report stands
        return HEADING, note(f"could not read the validation rows of {run.spec['data']['train']}: {exc}")
    if not batch:
        return HEADING, note("no validation rows")
    predictor = Predictor(run.checkpoint)
    pre, out = predictor.pre, predictor(batch)
    truth = [plain(v) for v in batch[pre.label_column]]
    wrong = [i for i in range(len(truth)) if not out["error"][i] and str(out["label"][i]) != str(truth[i])]
    wrong.sort(key=lambda i: -out["probability"][i])
    rows = []
    for i in wrong[:SHOWN]:
        alt = f"true {truth[i]}, predicted {out['label'][i]}"
        rows.append(f'<tr><td class="text">{show_input(pre, batch[pre.input_column][i], alt)}</td>'
                    f"<td>{html.escape(str(truth[i]))}</td><td>{html.escape(str(out['label'][i]))}</td>"
                    f"<td>{fmt(float(out['probability'][i]))}</td></tr>")
    scored = sum(1 for e in out["error"] if not e)
    intro = (f"<p>{len(wrong)} of {scored} validation rows (at most the first {MAX_ROWS}) scored by "
             f"{html.escape(run.checkpoint)} are misclassified; the {len(rows)} with the highest probability "
             "on the wrong label:</p>")
    if not rows:
        return HEADING, intro
    head = '<tr><th class="text">input</th><th>true</th><th>predicted</th><th>probability</th></tr>'
    return HEADING, f'{intro}\n<table class="examples"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'

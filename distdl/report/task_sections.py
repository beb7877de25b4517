"""The sections a task adds: a classifier's confusion matrix and per-class table, a GAN's sample
grids and quality curves, a language model's samples per epoch."""
from __future__ import annotations

import html
import json
import re

import numpy as np
import pyarrow.fs

from distdl import checkpoint
from distdl.paths import filesystem, read_bytes
from distdl.report.plots import heatmap, img, line_chart
from distdl.report.run import Run
from distdl.report.sections import Section, note, table
from distdl.tasks.base import SAMPLES

CONFUSION_ID = "confusion-matrix"  # the counts table's id: screen readers and the browser test read it
MAX_EPOCHS_SHOWN = 12  # sample grids / texts of more epochs are thinned evenly (first and last kept)


def class_labels(run: Run) -> list[str]:
    return [str(c) for c in checkpoint.load_preprocessor(run.checkpoint).classes]


def confusion(run: Run) -> Section:
    """The newest logged confusion matrix: a heatmap, and the counts as a table."""
    row = run.last_with("val_confusion")
    if row is None:
        return "Confusion matrix", note("not logged: the run's metrics predate it, or it has more classes "
                                        "than the report details")
    matrix, labels = np.asarray(row["val_confusion"], dtype=np.int64), class_labels(run)
    title = f"validation confusion matrix, epoch {row['epoch']} ({int(matrix.sum())} rows)"
    picture = heatmap(matrix, labels, title, xlabel="predicted", ylabel="true")
    counts = [[f"true {label}", *(int(v) for v in counts)] for label, counts in zip(labels, matrix)]
    grid = table(["", *(f"predicted {label}" for label in labels)], counts, css_id=CONFUSION_ID)
    return "Confusion matrix", f"{picture}\n<p>Rows: true class; columns: predicted class.</p>\n{grid}"


def per_class(run: Run) -> Section:
    row = run.last_with("val_per_class")
    if row is None:
        return "Per class", note("not logged: the run's metrics predate it")
    rows = [[label, s["precision"], s["recall"], s["f1"], s["support"]] for label, s in row["val_per_class"].items()]
    charts = line_chart({name: run.series(name) for name in ("val_accuracy", "val_macro_f1", "val_top5")
                         if run.series(name)}, "validation accuracy and macro F1", "score")
    return "Per class", (f"<p>Epoch {row['epoch']}.</p>\n" + table(["class", "precision", "recall", "f1", "support"], rows)
                         + "\n" + charts)


def sample_files(run: Run, suffix: str) -> list[tuple[int, str]]:
    """(epoch, path) of ``<run>/samples/epoch_NNNN<suffix>``, oldest first, thinned to MAX_EPOCHS_SHOWN."""
    fs, inner = filesystem(checkpoint.join(run.run_dir, SAMPLES))
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.Directory:
        return []
    pattern = re.compile(rf"epoch_(\d+){re.escape(suffix)}$")
    found = sorted((int(m.group(1)), checkpoint.join(run.run_dir, SAMPLES, info.base_name))
                   for info in fs.get_file_info(pyarrow.fs.FileSelector(inner))
                   if (m := pattern.match(info.base_name)))
    if len(found) <= MAX_EPOCHS_SHOWN:
        return found
    keep = np.unique(np.linspace(0, len(found) - 1, MAX_EPOCHS_SHOWN).round().astype(int))
    return [found[i] for i in keep]


def gan_samples(run: Run) -> Section:
    grids = sample_files(run, ".png")
    if not grids:
        return "Samples", note(f"no sample grids in {run.run_dir}/{SAMPLES}/")
    figures = "".join(f"<figure>{img(read_bytes(path), f'samples after epoch {epoch}', 'grid')}"
                      f"<figcaption>epoch {epoch}</figcaption></figure>" for epoch, path in grids)
    return "Samples", (f"<p>The same 64 latents every epoch (ids 0..63, seed 0 of "
                       f"<code>distdl score --generate</code>).</p>\n<div class=\"grid\">{figures}</div>")


def gan_quality(run: Run) -> Section:
    charts = [line_chart({"val_fid": run.series("val_fid")}, "Fréchet distance to validation images (lower is better)",
                         "FID"),
              line_chart({name: run.series(name) for name in ("val_confident", "val_coverage")},
                         "judge's view of the samples", "share")]
    return "Sample quality", "\n".join(charts)


def lm_samples(run: Run) -> Section:
    files = sample_files(run, ".json")
    if not files:
        return "Samples", note(f"no samples in {run.run_dir}/{SAMPLES}/ (runs before they were written have none)")
    records = [(epoch, json.loads(read_bytes(path))) for epoch, path in files]
    rows = "".join(f'<tr><td>{epoch}</td><td class="text">'
                   + "".join(f"<pre>{html.escape(text)}</pre>" for text in record["samples"])
                   + "</td></tr>" for epoch, record in records)
    return "Samples", (f"<p>Each epoch continues the prompt "
                       f"{html.escape(repr(records[0][1]['prompt']))} with the same seeds (temperature "
                       f"{records[0][1]['temperature']}).</p>\n"
                       f'<table><thead><tr><th>epoch</th><th class="text">samples</th></tr></thead>'
                       f"<tbody>{rows}</tbody></table>")

SECTIONS = {
    "classification": (confusion, per_class),
    "image_generation": (gan_quality, gan_samples),
    "language_model": (lm_samples,),
}

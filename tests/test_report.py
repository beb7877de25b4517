"""The run report: run folders built here with real (untrained) checkpoints; the worst-mistakes
section reads validation rows with the session's Ray."""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from distdl import checkpoint, models, run_record
from distdl import spec as specmod
from distdl.cli import main
from distdl.demo_data import write_speech
from distdl.preprocessors import audio
from distdl.preprocessors.image import ImagePreprocessor
from distdl.preprocessors.sequence import SequencePreprocessor
from distdl.preprocessors.text import UNKNOWN, CharPreprocessor
from distdl.report import examples, page, plots, task_sections, write
from distdl.report.task_sections import CONFUSION_ID
from distdl.tasks.generation import ImageGeneration
from distdl.tasks.language_model import SAMPLE_SEEDS, SAMPLE_TOKENS, LanguageModel

CLASSES = [0, 1, 2, 3]
CONFUSION = [[3, 1, 0, 0], [0, 4, 0, 0], [1, 0, 2, 1], [0, 0, 0, 4]]  # 16 validation rows


def save_run(run_dir: Path, family: str, model_args: dict, pre, raw_spec: dict, history: list[dict]):
    """A run folder as training leaves it: best/ (a real checkpoint) and metrics.jsonl; returns the model."""
    cfg = models.config_from_args(family, model_args)
    model = models.build_model(family, cfg)
    spec = specmod.parse({"name": run_dir.name, "storage": str(run_dir.parent), **raw_spec}).to_dict()
    checkpoint.save(checkpoint.best_dir(str(run_dir)), model, family, cfg, pre, spec, {"epoch": len(history)})
    checkpoint.write_metrics(str(run_dir), history)
    return model


def tiny_images(root: Path) -> dict[str, str]:
    """16 training and 16 validation 8x8 images (flat uint8 arrays) of 4 classes."""
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("train", "val"):
        images = rng.integers(0, 255, size=(16, 64)).astype(np.uint8)
        pq.write_table(pa.table({"image": list(images), "label": np.arange(16) % 4}), root / f"{name}.parquet")
        paths[name] = str(root / f"{name}.parquet")
    return paths


def cnn_run(tmp_path: Path, history: list[dict]) -> Path:
    paths = tiny_images(tmp_path)
    run_dir = tmp_path / "runs" / "tiny_cnn"
    save_run(run_dir, "cnn", {"arch": "smallcnn", "in_channels": 1, "num_classes": 4, "width": 4},
             ImagePreprocessor("image", "label", 8, 1, [0.5], [0.25], CLASSES),
             {"data": {"train": paths["train"], "val": paths["val"]}, "model": {"family": "cnn", "arch": "smallcnn"},
              "preprocess": {"image_size": 8, "channels": 1}}, history)
    return run_dir


def classifier_history(epochs: int = 3, detail: bool = True) -> list[dict]:
    rows = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "lr": 0.01 / epoch, "train_loss": 1.5 / epoch, "samples_per_s": 900.0 + epoch,
               "ingest_wait_share": 0.1, "train_samples": 16, "val_loss": 1.4 / epoch,
               "val_accuracy": 0.5 + 0.1 * epoch, "val_macro_f1": 0.4 + 0.1 * epoch, "epoch_s": 0.5}
        if detail:
            row["val_confusion"] = CONFUSION
            row["val_per_class"] = {str(c): {"precision": 0.8, "recall": 0.75, "f1": 0.77, "support": 4}
                                    for c in CLASSES}
        rows.append(row)
    return rows


def external_refs(html: str) -> list[str]:
    return [ref for ref in re.findall(r'(?:src|href)="([^"]*)"', html) if not ref.startswith(("data:", "#"))]


def confusion_cells(html: str) -> list[int]:
    table = re.search(rf'<table id="{CONFUSION_ID}">(.*?)</table>', html, re.S).group(1)
    return [int(v) for v in re.findall(r"<td>(\d+)</td>", table)]


def test_classifier_report_is_self_contained_and_counts_the_validation_rows(tmp_path):
    run_dir = cnn_run(tmp_path, classifier_history())
    path = write(str(run_dir))
    html = Path(path).read_text()
    assert path == f"{run_dir}/report.html"
    assert external_refs(html) == [] and "<script" not in html
    assert sum(confusion_cells(html)) == 16
    for section in ("Learning curves", "Confusion matrix", "Per class", "Layout", "Spec"):
        assert f"<h2>{section}</h2>" in html
    assert "best val_accuracy (max)" in html and "0.8 at epoch 3" in html
    assert "unknown: this run has no run.json" in html  # an older run: layout unknown
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(pngs) >= 7  # 5 learning curves, the heatmap, the accuracy/F1 chart
    assert all(Image.open(io.BytesIO(base64.b64decode(p))).format == "PNG" for p in pngs)


@pytest.mark.e2e
def test_without_a_connected_ray_the_examples_section_says_it_was_skipped(tmp_path):
    run_dir = cnn_run(tmp_path, classifier_history())
    # A process of its own: in the suite the session's Ray may already be connected in this one.
    subprocess.run([sys.executable, "-c", "import sys; from distdl.report import write; write(sys.argv[1])",
                    str(run_dir)], check=True, timeout=300)
    assert "skipped: reading the validation rows needs Ray" in (run_dir / "report.html").read_text()


def test_run_json_gives_status_and_layout(tmp_path):
    run_dir = cnn_run(tmp_path, classifier_history(detail=False))
    run_record.save(str(run_dir), {"status": run_record.STOPPED_EARLY, "layout": {"text": "1 worker x 2 CPUs",
                                   "num_workers": 1}, "versions": {"ray": "2.60"}, "git_commit": "abc123",
                                   "stopped_early": {"epoch": 3}, "tracking": None})
    html = Path(write(str(run_dir))).read_text()
    assert "1 worker x 2 CPUs" in html and "stopped early" in html and "abc123" in html
    assert "Confusion matrix</h2>\n<p class=\"note\">not logged" in html  # metrics from before it was logged


def test_not_a_run_folder_says_what_it_expected(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path} is not a distdl run folder: expected metrics.jsonl and checkpoints/" in err
    checkpoint.write_metrics(str(tmp_path), [{"epoch": 1}])
    assert main(["report", str(tmp_path)]) == 1
    assert "missing: a complete checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_language_model_samples_each_epoch_and_the_report_shows_them(tmp_path):
    pre = CharPreprocessor("text", [UNKNOWN, "\n", " ", "a", "b", "<"], 16, 64)
    history = [{"epoch": e, "lr": 0.01, "train_loss": 2.0 / e, "val_loss": 1.9 / e, "val_perplexity": 6.0 / e}
               for e in (1, 2)]
    run_dir = tmp_path / "lm"
    model = save_run(run_dir, "rnn", {"task": "language_model", "hidden_size": 8, "embed_dim": 4, "vocab_size": 6}, pre,
                     {"data": {"train": str(tmp_path / "t.txt")}, "model": {"family": "rnn", "task": "language_model"}},
                     history)
    task = LanguageModel(pre)
    for epoch in (1, 2):
        task.epoch_end(model, str(run_dir), epoch)
    first = json.loads((run_dir / "samples" / "epoch_0001.json").read_text())
    second = json.loads((run_dir / "samples" / "epoch_0002.json").read_text())
    assert first["samples"] == second["samples"]  # same weights, same seeds
    assert len(first["samples"]) == len(SAMPLE_SEEDS) and {len(s) for s in first["samples"]} == {SAMPLE_TOKENS}
    html = Path(write(str(run_dir))).read_text()
    assert "<h2>Samples</h2>" in html and "val_perplexity (best metric, min)" in html
    for text in first["samples"]:
        assert f"<pre>{text.replace('<', '&lt;')}</pre>" in html  # escaped: "<" is in the vocabulary


def test_gan_report_shows_each_epochs_grid_and_the_quality_curve(tmp_path, monkeypatch):
    pre = ImagePreprocessor("image", "", 16, 1, [0.5], [0.5], [])
    history = [{"epoch": e, "lr": 0.0002, "train_d_loss": 1.0, "train_g_loss": 2.0 / e, "val_fid": 9.0 / e,
                "val_confident": 0.2 * e, "val_coverage": 0.3 * e} for e in (1, 2, 3)]
    run_dir = tmp_path / "gan"
    model = save_run(run_dir, "gan", {"classifier": str(tmp_path / "judge"), "latent_dim": 8, "width": 4,
                                      "image_size": 16, "channels": 1}, pre,
                     {"data": {"train": str(tmp_path / "x.parquet")},
                      "model": {"family": "gan", "classifier": str(tmp_path / "judge")}}, history)
    for epoch in (1, 2, 3):
        ImageGeneration(pre).epoch_end(model, str(run_dir), epoch)
    html = Path(write(str(run_dir))).read_text()
    assert [f"epoch {e}</figcaption>" in html for e in (1, 2, 3)] == [True] * 3
    assert "Fréchet distance" in html and "val_fid (best metric, min)" in html
    assert "Worst misclassified" not in html and "Confusion matrix" not in html
    monkeypatch.setattr(task_sections, "MAX_EPOCHS_SHOWN", 2)  # a long run: grids thinned, first and last kept
    html = Path(write(str(run_dir))).read_text()
    assert [f"epoch {e}</figcaption>" in html for e in (1, 2, 3)] == [True, False, True]


def test_line_chart_and_page_are_plain_inline_html():
    chart = plots.line_chart({"a": [(1, 1.0), (2, float("nan")), (3, 0.5)], "empty": []}, "t <1>", "y")
    assert chart.startswith('<img class="plot" alt="t &lt;1&gt;" src="data:image/png;base64,')
    doc = page.render("run <x>", [("A & B", "<p>inner</p>")])
    assert doc.startswith("<!DOCTYPE html>") and "<title>run &lt;x&gt;</title>" in doc
    assert "<h2>A &amp; B</h2>\n<p>inner</p>" in doc and external_refs(doc) == []
    assert "http" not in doc


def test_each_family_input_is_shown_as_it_reads(tmp_path):
    image = ImagePreprocessor("image", "label", 8, 1, [0.0], [1.0], CLASSES)
    assert 'class="thumb"' in examples.show_input(image, np.arange(64, dtype=np.uint8), "a digit")
    waves = SequencePreprocessor("sequence", "label", 1, [0.0], [1.0], ["a"], 100)
    assert 'class="small"' in examples.show_input(waves, np.sin(np.arange(50.0)), "a wave")
    wav = sorted(Path(write_speech(tmp_path, per_class=1, holdout=0)["train"]).rglob("*.wav"))[0]
    speech = SequencePreprocessor("audio", "label", 40, [0.0] * 40, [1.0] * 40, ["a"], 1000,
                                  asdict(audio.AudioSpec(sample_rate=8000)))
    assert 'alt="a chirp"' in examples.show_input(speech, wav.read_bytes(), "a chirp")
    assert examples.show_input(SimpleNamespace(kind="text"), "<b>x</b>", "t") == "&lt;b&gt;x&lt;/b&gt;"


def test_worst_misclassified_rows_are_wrong_and_most_confident_first(ray_session, tmp_path):
    run_dir = cnn_run(tmp_path, classifier_history())
    html = Path(write(str(run_dir))).read_text()
    section = html[html.index("<h2>Worst misclassified validation rows</h2>"):]
    section = section[:section.index("</section>")]
    found = re.search(r"(\d+) of 16 validation rows", section)
    assert found, section[:500]
    rows = re.findall(r'<tr><td class="text"><img class="thumb"[^>]*></td><td>(\d+)</td><td>(\d+)</td>'
                      r"<td>([\d.]+)</td></tr>", section)
    assert len(rows) == min(int(found.group(1)), examples.SHOWN) > 0  # an untrained model errs
    assert all(true != predicted for true, predicted, _ in rows)
    probabilities = [float(p) for _, _, p in rows]
    assert probabilities == sorted(probabilities, reverse=True)


def test_report_command_and_a_run_whose_data_is_gone(ray_session, tmp_path, capsys):
    run_dir = cnn_run(tmp_path, classifier_history())
    assert main(["report", str(run_dir), "-v"]) == 0
    assert f"report: {run_dir}/report.html" in capsys.readouterr().out
    (tmp_path / "val.parquet").unlink()
    html = Path(write(str(run_dir))).read_text()
    assert "could not read the validation rows" in html and sum(confusion_cells(html)) == 16


@pytest.mark.parametrize("missing", ["metrics", "checkpoint"])
def test_a_half_run_folder_is_not_a_run(tmp_path, missing):
    run_dir = cnn_run(tmp_path, classifier_history(epochs=1))
    if missing == "metrics":
        (run_dir / "metrics.jsonl").unlink()
    else:
        (run_dir / "best" / checkpoint.MARKER).unlink()
    with pytest.raises(ValueError, match="is not a distdl run folder"):
        write(str(run_dir))

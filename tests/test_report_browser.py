"""The report of a real (tiny) training run, opened in headless Chromium (Debian's package,
which `make` installs): it loads without console messages, its screenshot is not blank, and
the confusion matrix in the rendered DOM counts every validation row."""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from distdl import report, train
from distdl import spec as specmod
from distdl.report.task_sections import CONFUSION_ID

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make` installs Debian's)")
VAL_ROWS = 24


def chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--window-size=1200,3000", *args, url],
                          capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to the console. Chromium logs every console message (console.error,
    an uncaught exception, a resource it refused) as INFO:CONSOLE without its level; the report
    runs no script of its own, so any message at all means something went wrong."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class TableCells(HTMLParser):
    """The integer <td> cells of the table with the given id."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.inside, self.in_td, self.cells = table_id, False, False, []

    def handle_starttag(self, tag, attrs):
        self.inside |= tag == "table" and dict(attrs).get("id") == self.table_id
        self.in_td = self.inside and tag == "td"

    def handle_endtag(self, tag):
        self.inside &= tag != "table"
        self.in_td &= tag != "td"

    def handle_data(self, data):
        if self.in_td and data.strip().isdigit():
            self.cells.append(int(data))


@pytest.fixture(scope="module")
def trained_report(ray_session, tmp_path_factory) -> Path:
    """report.html of a 2-epoch cnn run on 8x8 images of 4 classes (a bright quadrant each)."""
    root = tmp_path_factory.mktemp("report_run")
    rng = np.random.default_rng(0)
    for name, n in (("train", 64), ("val", VAL_ROWS)):
        labels = np.arange(n) % 4
        images = rng.integers(0, 60, size=(n, 8, 8))
        for i, label in enumerate(labels):
            r, c = divmod(label, 2)
            images[i, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 180
        pq.write_table(pa.table({"image": [im.astype(np.uint8).ravel() for im in images],
                                 "label": [f"q{q}" for q in labels]}), root / f"{name}.parquet")
    spec = specmod.parse({
        "name": "browser", "storage": str(root / "runs"),
        "data": {"train": str(root / "train.parquet"), "val": str(root / "val.parquet")},
        "model": {"arch": "smallcnn", "width": 4}, "preprocess": {"image_size": 8, "channels": 1},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1}, "failure": {"max_failures": 0},
        "tracking": {"enabled": False},
    })
    train.run(spec)
    return Path(report.write(spec.run_dir))


def test_console_detector_catches_a_script_error(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>console.error('boom'); missing();</script></body></html>")
    messages = console_messages(chromium(page.as_uri(), "--dump-dom").stderr)
    assert any("boom" in m for m in messages) and any("Uncaught ReferenceError" in m for m in messages)


def test_report_loads_cleanly_and_is_not_blank(trained_report, tmp_path):
    shot = tmp_path / "report.png"
    done = chromium(trained_report.as_uri(), f"--screenshot={shot}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_messages(done.stderr) == []
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (3000, 1200)
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    inked = (pixels.min(axis=2) < 200).mean()  # share of pixels clearly darker than the white page
    assert colours > 200 and inked > 0.02, (colours, inked)


def test_confusion_matrix_in_the_dom_counts_every_validation_row(trained_report):
    done = chromium(trained_report.as_uri(), "--dump-dom")
    assert console_messages(done.stderr) == []
    cells = TableCells(CONFUSION_ID)
    cells.feed(done.stdout)
    assert len(cells.cells) == 4 * 4 and sum(cells.cells) == VAL_ROWS
    dom = done.stdout
    assert re.search(r"\d+ of 24 validation rows", dom)  # the worst-mistakes section ran with Ray
    assert "<h2>Learning curves</h2>" in dom and "<h2>Spec</h2>" in dom

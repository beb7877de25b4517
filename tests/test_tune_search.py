"""The sweep's search space, settings and resource plan: every bad input fails before Ray starts."""
from __future__ import annotations

import importlib.util

import pytest
import yaml

from distdl.cli import main
from distdl.layout import Cluster, LayoutError
from distdl.spec import ScalingSpec
from distdl.specbase import SpecError
from distdl.tune import plan, search

RAW = {"name": "sweep", "storage": "/tmp/distdl-sweeps", "data": {"train": "/data/train.parquet"},
       "model": {"arch": "smallcnn", "width": 8}, "preprocess": {"image_size": 8, "channels": 1},
       "train": {"epochs": 3, "batch_size": 32}}


def problems(searches: list[str], flags: dict | None = None, raw: dict = RAW) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        search.from_raw(raw, searches, flags or {})
    return caught.value.problems


def test_every_distribution_parses():
    sweep = search.from_raw(RAW, ["train.lr=loguniform:1e-4:1e-1", "model.width=choice:16,32,64",
                                  "train.weight_decay=choice:0,1e-4",
                                  "train.optimizer=grid:sgd,adamw", "train.momentum=uniform:0.5:0.9",
                                  "train.warmup_epochs=randint:0:2"], {"trials": 4})
    dims = {d.field: d for d in sweep.dims}
    assert dims["model.width"].values == (16, 32, 64)  # YAML values: ints stay ints
    assert dims["train.weight_decay"].values == (0, 1e-4)  # 1e-4 is a number, as on the command line
    assert dims["train.optimizer"].kind == "grid" and dims["train.optimizer"].values == ("sgd", "adamw")
    assert (dims["train.lr"].low, dims["train.lr"].high) == (1e-4, 1e-1)
    assert (dims["train.warmup_epochs"].low, dims["train.warmup_epochs"].high) == (0, 2)
    assert sweep.tune.trials == 4 and sweep.tune.max_concurrent == "auto"


def test_spec_section_and_flags_combine():
    raw = {**RAW, "tune": {"search": {"train.lr": "uniform:0.01:0.1"}, "trials": 3, "scheduler": "asha"}}
    sweep = search.from_raw(raw, ["model.width=choice:4,8"], {"trials": 5, "scheduler": None})
    assert sorted(d.field for d in sweep.dims) == ["model.width", "train.lr"]
    assert (sweep.tune.trials, sweep.tune.scheduler) == (5, "asha")  # a flag wins; an absent flag keeps the spec's
    assert "tune" not in sweep.raw  # each trial's spec is a plain job spec


@pytest.mark.parametrize("text, where, message", [
    ("model.widht=choice:8,16", "--search model.widht", "did you mean 'width'"),
    ("name=choice:a,b", "--search name", "cannot be searched"),
    ("storage=choice:/a,/b", "--search storage", "cannot be searched"),
    ("scaling.num_workers=choice:1,2", "--search scaling.num_workers", "cannot be searched"),
    ("train.epochs=randint:1:4", "--search train.epochs", "cannot be searched"),
    ("train.lr=loguniform:0:0.1", "--search train.lr", "loguniform needs bounds > 0"),
    ("train.lr=loguniform:-1:0.1", "--search train.lr", "loguniform needs bounds > 0"),
    ("train.lr=normal:0:1", "--search train.lr", "unknown distribution 'normal'"),
    ("train.lr=uniform:0.1", "--search train.lr", "needs two bounds"),
    ("train.lr=uniform:0.2:0.1", "--search train.lr", "needs LOW < HIGH"),
    ("train.lr=uniform:a:b", "--search train.lr", "bounds must be floats"),
    ("model.width=randint:4.5:8", "--search model.width", "bounds must be ints"),
    ("model.width=choice:", "--search model.width", "needs values separated by commas"),
    ("model.width=choice:8,,16", "--search model.width", "needs values separated by commas"),
    ("model.width=choice:8,wide", "--search model.width", "must be int, got 'wide'"),
    ("train.lr=uniform:-1:0.1", "--search train.lr", "must be > 0, got -1.0"),
    ("train.lr", "--search train.lr", "must look like FIELD=KIND:ARGS"),
])
def test_bad_search_names_the_flag_and_the_problem(text, where, message):
    (found,) = problems([text])
    assert found[0] == where and message in found[1], found


def test_bad_spec_search_names_its_yaml_path():
    raw = {**RAW, "tune": {"search": {"train.lr": "loguniform:0:1"}}}
    assert problems([], raw=raw) == [("tune.search.train.lr", "loguniform needs bounds > 0, got 0")]


@pytest.mark.parametrize("flags, where, message", [
    ({"max_concurrent": 0}, "--max-concurrent", "must be >= 1"),
    ({"trials": 0}, "--trials", "must be >= 1"),
    ({"grace_period": 0}, "--grace-period", "must be >= 1"),
    ({"scheduler": "asha", "grace_period": 4}, "--grace-period", "must be <= train.epochs (3)"),
    ({"algorithm": "hyperopt"}, "--algorithm", "needs the hyperopt package"),
])
def test_bad_settings_name_the_flag(flags, where, message):
    if "algorithm" in flags and importlib.util.find_spec("hyperopt"):
        pytest.skip("hyperopt is installed here")
    (found,) = problems(["train.lr=uniform:0.01:0.1"], flags)
    assert found[0] == where and message in found[1], found


def test_bad_spec_settings_name_their_yaml_path():
    raw = {**RAW, "tune": {"max_concurrent": 0, "schedular": "asha"}}
    found = dict(problems(["train.lr=uniform:0.01:0.1"], raw=raw))
    assert "must be >= 1" in found["tune.max_concurrent"] and "did you mean 'scheduler'" in found["tune.schedular"]


def test_nothing_to_search_is_refused():
    assert problems([])[0][0] == "--search"


def test_dimensions_describe_themselves_as_search_text():
    assert [search.parse_search(text).describe() for text in
            ("model.width=choice:16,32", "train.optimizer=grid:sgd,adamw", "train.lr=loguniform:1e-4:0.1",
             "train.epochs_x=randint:1:4")] == \
        ["choice:16,32", "grid:sgd,adamw", "loguniform:0.0001:0.1", "randint:1:4"]


def test_trial_spec_gets_values_plan_and_own_folder():
    raw = search.trial_raw(RAW, {"train.lr": 0.02, "model.width": 16}, {"num_workers": 1, "cpus_per_worker": 1.0},
                           "/runs/sweep", "trial_00002", {"enabled": True, "parent_run_id": "abc"})
    assert (raw["name"], raw["storage"]) == ("trial_00002", "/runs/sweep/trials")
    assert raw["train"]["lr"] == 0.02 and raw["model"]["width"] == 16 and raw["train"]["epochs"] == 3
    assert raw["scaling"] == {"num_workers": 1, "cpus_per_worker": 1.0}
    assert raw["tracking"] == {"enabled": True, "parent_run_id": "abc"}
    assert RAW["train"].get("lr") is None  # the base is never changed


def test_cli_refuses_bad_input_naming_the_flag(tmp_path, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(RAW))
    assert main(["tune", str(spec), "--search", "storage=choice:/a,/b"]) == 2
    assert "--search storage: cannot be searched" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tune", str(spec), "--search", "train.lr=uniform:0.1:0.2", "--max-concurrent", "0"])
    assert "--max-concurrent: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("cluster, expected", [
    (Cluster(1, 4, 0, 4, 0), "2 trials at a time x 1 worker x 1 CPU, 1 thread each; 2 CPU left for Ray Data"),
    (Cluster(1, 2, 0, 2, 0), "1 trial at a time x 1 worker x 1 CPU, 2 threads each; 1 CPU left for Ray Data"),
    (Cluster(1, 16, 0, 16, 0), "8 trials at a time x 1 worker x 1 CPU, 1 thread each; 8 CPU left for Ray Data"),
    (Cluster(1, 16, 2, 16, 2), "2 trials at a time x 1 worker x 6 CPU + 1 GPU, 6 threads each; "
                               "4 CPU left for Ray Data"),
])
def test_plan_fits_trials_to_the_cluster(cluster, expected):
    assert plan.fit(ScalingSpec(), cluster, trials=8, max_concurrent="auto").describe() == expected


def test_plan_keeps_to_the_trial_count_and_refuses_what_cannot_fit():
    assert plan.fit(ScalingSpec(), Cluster(1, 16, 0, 16, 0), trials=3, max_concurrent="auto").concurrent == 3
    with pytest.raises(LayoutError, match="--max-concurrent 3"):
        plan.fit(ScalingSpec(), Cluster(1, 16, 2, 16, 2), trials=8, max_concurrent=3)  # 3 trials, 2 GPUs
    with pytest.raises(LayoutError, match="--max-concurrent 4"):
        plan.fit(ScalingSpec(cpus_per_worker=1), Cluster(1, 4, 0, 4, 0), trials=8, max_concurrent=4)


def test_trial_count_runs_every_grid_combination_per_sample():
    sweep = search.from_raw(RAW, ["train.optimizer=grid:sgd,adamw", "model.width=grid:4,8,16",
                                  "train.lr=uniform:0.01:0.1"], {"trials": 2})
    assert sweep.trial_count() == 12


def test_optuna_draws_every_value_inside_the_searched_space():
    from distdl.tune import run  # Ray Tune's searchers; no Ray cluster is started

    sweep = search.from_raw(RAW, ["train.lr=loguniform:1e-4:1e-1", "model.width=choice:16,32"],
                            {"algorithm": "optuna"})
    searcher = run.search_algorithm(sweep.tune.algorithm)
    assert type(searcher).__name__ == "OptunaSearch"
    assert searcher.set_search_properties("val_accuracy", "max", run.space(sweep.dims))
    drawn = [searcher.suggest(f"trial_{i}") for i in range(6)]
    assert all(1e-4 <= d["train.lr"] <= 1e-1 and d["model.width"] in (16, 32) for d in drawn)
    assert len({d["train.lr"] for d in drawn}) == 6

"""`distdl runs`: listing the run folders of a storage and comparing two, from real run folders on disk."""
from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Optional

import pytest
import torch

from distdl import checkpoint, cli, compare, models, run_record, runs
from distdl.models.cnn import CNNConfig
from distdl.preprocessors.image import ImagePreprocessor
from distdl.spec import parse

PRE = ImagePreprocessor("image", "label", 16, 1, [0.3], [0.3], list(range(10)))
SHARED_CURVES = ("lr", "train_loss", "samples_per_s", "val_loss", "val_accuracy", "epoch_s")


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def make_run(storage: Path, name: str, *, lr: float = 0.01, epochs: int = 3, done: int = 3,
             record: Optional[dict] = None, stopped: bool = False, extra: Optional[dict] = None) -> Path:
    """A run folder as training leaves it: metrics.jsonl, the newest epoch checkpoint, best/ and
    (``record``: its status, started, wall_s, pid) run.json."""
    run_dir = storage / name
    spec = parse({"name": name, "data": {"train": "x.parquet"}, "train": {"epochs": epochs, "lr": lr}}).to_dict()
    history = [{"epoch": e, "lr": lr, "train_loss": 1.0 / e, "samples_per_s": 100.0 * e, "val_loss": 1.2 / e,
                "val_accuracy": 0.5 + 0.1 * e, "val_confusion": [[3, 1], [0, 4]], "val_per_class": {"a": {"f1": 1.0}},
                "epoch_s": 2.0, **(extra or {})} for e in range(1, done + 1)]
    checkpoint.write_metrics(str(run_dir), history)
    state = {"epoch": done, "history": history, "best": {"metric": "val_accuracy", "value": 0.5 + 0.1 * done,
                                                          "epoch": done}}
    if stopped:
        state["stopped_early"] = {"epoch": done, "metric": "val_accuracy", "epochs": 1}
    cfg = CNNConfig(arch="smallcnn", in_channels=1, num_classes=10)
    path = checkpoint.save(checkpoint.epoch_dir(str(run_dir), done), models.build_model("cnn", cfg), "cnn", cfg,
                           PRE, spec, state)
    checkpoint.copy(path, checkpoint.best_dir(str(run_dir)))
    if record is not None:
        run_record.save(str(run_dir), {"name": name, "family": "cnn", "task": "classification",
                                       "host": socket.gethostname(), "ended": None, **record})
    return run_dir


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("storage")
    torch.manual_seed(0)
    make_run(root, "lr_high", record={"status": "finished", "started": "2026-01-02T10:00:00+00:00", "wall_s": 125.0})
    make_run(root, "lr_low", lr=0.001, epochs=4, done=4, extra={"val_macro_f1": 0.7},
             record={"status": "finished", "started": "2026-01-02T09:00:00+00:00", "wall_s": 3725.0})
    make_run(root, "killed", done=1, record={"status": "running", "started": "2026-01-03T00:00:00+00:00",
                                             "wall_s": None, "pid": dead_pid()})
    make_run(root, "live", done=1, record={"status": "running", "started": "2026-01-04T00:00:00+00:00",
                                           "wall_s": 50.0, "pid": os.getpid()})  # 50 s: an earlier attempt
    make_run(root, "old_done", lr=0.1)  # from before run.json: status from the checkpoint
    make_run(root, "old_stopped", done=2, stopped=True)
    make_run(root, "old_cut", done=2)
    (root / "notes").mkdir()  # a folder that is no run
    (root / "notes" / "todo.txt").write_text("x")
    (root / ".cache").mkdir()
    return root


def test_listing_reads_run_json_and_falls_back_to_checkpoints_for_older_runs(storage):
    listed = runs.listing(str(storage))
    found = {r.name: r for r in listed}
    assert [r.name for r in listed] == [
        "old_cut", "old_done", "old_stopped", "lr_low", "lr_high", "killed", "live"]  # no start time first
    assert {name: r.status for name, r in found.items()} == {
        "lr_high": "finished", "lr_low": "finished", "killed": "failed", "live": "running",
        "old_done": "finished", "old_stopped": "stopped early", "old_cut": "failed"}
    assert (found["lr_low"].epochs_done, found["lr_low"].epochs) == (4, 4)
    assert found["old_done"].wall_s == 6.0 and found["old_done"].wall_approx  # 3 epochs of 2 s
    assert runs.wall(found["live"]) == "~2.0s"  # its epochs so far, not only the earlier attempt's time
    assert runs.wall(found["lr_high"]) == "2m05s"
    assert found["lr_high"].checkpoint == f"{storage}/lr_high/best"


def test_the_listing_table_aligns_one_line_per_run(storage):
    lines = runs.format_listing(runs.listing(str(storage))).splitlines()
    assert lines[0].split() == ["name", "family", "status", "epochs", "best", "best", "epoch", "wall", "checkpoint"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert re.search(r"^lr_low +cnn +finished +4/4 +val_accuracy=0\.9 +4 +1h02m +\S+/lr_low/best$", rows["lr_low"])
    assert re.search(r"finished +3/3 +val_accuracy=0\.8 +3 +2m05s ", rows["lr_high"])
    assert re.search(r"stopped early +2/3 +val_accuracy=0\.7 +2 +~4\.0s ", rows["old_stopped"])
    assert len({line.index("checkpoint" if i == 0 else str(storage)) for i, line in enumerate(lines)}) == 1


def test_compare_shows_the_differing_spec_fields_and_the_metrics_side_by_side(storage):
    a, b = runs.load(str(storage / "lr_high")), runs.load(str(storage / "lr_low"))
    text = compare.format_comparison(a, b)
    spec, metrics = text.split("\n\n")
    assert re.search(r"^spec field +lr_high +lr_low$", spec, re.M)
    assert re.search(r"^train\.lr +0\.01 +0\.001$", spec, re.M)
    assert re.search(r"^train\.epochs +3 +4$", spec, re.M)
    assert len(spec.splitlines()) == 3  # the name differs too, but heads the columns
    for pattern in (r"status +finished +finished", r"epochs +3/3 +4/4", r"best +val_accuracy=0\.8 +val_accuracy=0\.9",
                    r"best epoch +3 +4", r"wall +2m05s +1h02m", r"final epoch +3 +4",
                    r"train_loss +0\.3333 +0\.25", r"val_macro_f1 +- +0\.7"):
        assert re.search(f"^{pattern}$", metrics, re.M), pattern
    assert "val_confusion" not in text and "val_per_class" not in text


def test_a_run_before_its_first_checkpoint_is_listed_and_compared(storage, tmp_path):
    run_dir = str(tmp_path / "starting")
    run_record.save(run_dir, {"name": "starting", "family": "cnn", "status": "running", "host": socket.gethostname(),
                              "pid": os.getpid(), "started": "2026-01-05T00:00:00+00:00", "wall_s": None})
    checkpoint.write_metrics(run_dir, [{"epoch": 1, "train_loss": 0.9, "val_accuracy": 0.6, "epoch_s": 3.0}])
    [starting] = runs.listing(str(tmp_path))
    assert (starting.status, runs.epochs(starting), runs.best(starting), runs.wall(starting),
            starting.checkpoint) == ("running", "1/-", "-", "~3.0s", None)
    text = compare.format_comparison(runs.load(str(storage / "lr_high")), starting)
    assert text.startswith("spec: unknown for starting: no checkpoint yet\n")
    assert re.search(r"^val_accuracy +0\.8 +0\.6$", text, re.M)


def test_spec_fields_one_spec_lacks_show_a_dash():
    diff = compare.spec_diff({"name": "a", "train": {"lr": 0.1, "early_stop": {"patience": None}}},
                             {"name": "b", "train": {"lr": 0.1}, "extra": [1, 2]})
    assert [(k, compare.spec_value(x), compare.spec_value(y)) for k, x, y in diff] == [
        ("train.early_stop.patience", "null", "-"), ("extra", "-", "[1, 2]")]


def test_cli_lists_runs_and_compares_two_into_an_html_page(storage, tmp_path, capsys):
    assert cli.main(["runs", str(storage)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 8
    out = tmp_path / "pages" / "compare.html"
    assert cli.main(["runs", str(storage), "--compare", "lr_high", str(storage / "lr_low"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train.lr" in printed and f"learning curves: {out}" in printed
    page = out.read_text()
    assert page.count("<img") == len(SHARED_CURVES)  # val_macro_f1: only one run has it
    for metric in SHARED_CURVES:
        assert f'alt="{metric}"' in page
    assert "<td class=\"text\">train.lr</td>" in page


def test_compare_writes_compare_html_here_by_default(storage, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["runs", str(storage), "--compare", "old_done", "old_cut"]) == 0
    assert (tmp_path / "compare.html").exists()


def test_same_named_runs_of_two_storages_are_told_apart_by_path(storage, tmp_path, capsys):
    other = make_run(tmp_path, "lr_high", lr=0.5)
    assert cli.main(["runs", str(storage), "--compare", "lr_high", str(other), "--output", str(tmp_path / "c.html")]) == 0
    assert re.search(rf"^spec field +{storage}/lr_high +{other}$", capsys.readouterr().out, re.M)


def test_bad_storage_or_run_names_say_what_is_there(storage, tmp_path, capsys):
    assert cli.main(["runs", str(tmp_path / "nowhere")]) == 1
    assert f"error: storage {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["runs", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out.strip() == f"no runs in {tmp_path / 'empty'}"
    assert cli.main(["runs", str(storage / "lr_high")]) == 0
    assert "it is itself a run folder" in capsys.readouterr().out
    assert cli.main(["runs", str(storage), "--output", str(tmp_path / "c.html")]) == 1
    assert "--output names the page --compare writes" in capsys.readouterr().err
    assert cli.main(["runs", str(storage), "--compare", "lr_high", "lr_hihg"]) == 1
    err = capsys.readouterr().err
    assert f"no run 'lr_hihg' in {storage}" in err
    assert "runs there: killed, live, lr_high, lr_low, old_cut, old_done, old_stopped" in err

"""Checkpoints: safetensors + JSON, marker written last, exact round trip, never unpickled."""
from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path

import pyarrow.fs
import pytest
import torch

from distdl import checkpoint, models
from distdl.models.cnn import CNNConfig
from distdl.preprocessors.image import ImagePreprocessor
from distdl.spec import parse

PRE = ImagePreprocessor("image", "label", 16, 1, [0.3], [0.3], list(range(10)))


def saved(tmp_path, arch="smallcnn", epoch=1, optimizers=None):
    torch.manual_seed(0)
    cfg = CNNConfig(arch=arch, in_channels=1, num_classes=10)
    model = models.build_model("cnn", cfg)
    spec = parse({"name": "t", "data": {"train": "x.parquet"}}).to_dict()
    path = checkpoint.save(checkpoint.epoch_dir(str(tmp_path), epoch), model, "cnn", cfg, PRE, spec,
                           {"epoch": epoch, "history": [], "best": None}, optimizers)
    return model.eval(), path


@pytest.mark.parametrize("arch", ["smallcnn", "resnet18"])
def test_loading_gives_identical_predictions(tmp_path, arch):
    model, path = saved(tmp_path, arch)
    loaded, pre, meta = checkpoint.load_model(path)
    x = torch.randn(4, 1, 16, 16)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert pre == PRE and meta["family"] == "cnn" and meta["args"]["arch"] == arch


def test_loading_never_unpickles(tmp_path, monkeypatch):
    _, path = saved(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    for target, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(target, name, refuse)
    checkpoint.load_model(path)
    checkpoint.load_train_state(path)


def test_optimizer_state_round_trips(tmp_path):
    model = models.build_model("cnn", CNNConfig(in_channels=1, num_classes=10))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(2, 1, 16, 16)).sum().backward()
    opt.step()
    _, path = saved(tmp_path, optimizers={"model": opt})
    _, restored = checkpoint.load_train_state(path)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.5)
    fresh.load_state_dict(restored["model"])
    assert fresh.param_groups[0]["lr"] == 0.01
    for param in model.parameters():
        before, after = opt.state[param], fresh.state[param]
        assert torch.equal(before["exp_avg"], after["exp_avg"]) and torch.equal(before["step"], after["step"])


def test_a_folder_without_the_marker_is_not_a_checkpoint(tmp_path):
    _, first = saved(tmp_path, epoch=1)
    _, second = saved(tmp_path, epoch=2)
    (tmp_path / "checkpoints/epoch_0002" / checkpoint.MARKER).unlink()  # as if killed mid-write
    assert checkpoint.latest(str(tmp_path)) == first
    with pytest.raises(FileNotFoundError, match="not a complete distdl checkpoint"):
        checkpoint.load_model(second)


def test_a_truncated_weights_file_is_named_in_the_error(tmp_path):
    _, path = saved(tmp_path)
    weights = Path(path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])  # a copy cut short
    with pytest.raises(checkpoint.CheckpointError,
                       match=f"^{re.escape(str(weights))} is not a readable safetensors file \\(truncated or corrupt\\?\\): "):
        checkpoint.load_model(path)


def test_prune_keeps_the_newest(tmp_path):
    for epoch in (1, 2, 3):
        saved(tmp_path, epoch=epoch)
    checkpoint.prune(str(tmp_path), keep=2)
    assert [p.rsplit("/", 1)[1] for p in checkpoint.list_checkpoints(str(tmp_path))] == ["epoch_0002", "epoch_0003"]


def test_copy_makes_a_complete_best_folder(tmp_path):
    model, path = saved(tmp_path)
    checkpoint.copy(path, checkpoint.best_dir(str(tmp_path)))
    loaded, _, _ = checkpoint.load_model(checkpoint.best_dir(str(tmp_path)))
    x = torch.randn(2, 1, 16, 16)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


def test_a_run_folder_given_as_a_checkpoint_points_at_its_best(tmp_path):
    _, path = saved(tmp_path)
    checkpoint.copy(path, checkpoint.best_dir(str(tmp_path)))
    with pytest.raises(FileNotFoundError, match=re.escape(f"no COMPLETE marker); did you mean {tmp_path}/best?")):
        checkpoint.load_model(str(tmp_path))


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_replacing_best_never_leaves_it_half_written(tmp_path, monkeypatch, as_uri):
    """While the new best is copied (each file copy is a moment a restarting replica could load),
    best/ still holds the old complete checkpoint; then it holds the new one, with nothing left over."""
    _, first = saved(tmp_path, epoch=1)
    _, second = saved(tmp_path, arch="resnet18", epoch=2)
    best = checkpoint.best_dir(f"file://{tmp_path}" if as_uri else str(tmp_path))
    checkpoint.copy(first, best)
    old_weights = checkpoint.load_weights(first)
    real_copy_files, copies = pyarrow.fs.copy_files, []

    def copy_files_while_reading_best(*args, **kwargs):
        assert checkpoint.is_complete(best)
        assert checkpoint.load_weights(best).keys() == old_weights.keys()
        copies.append(args[0])
        return real_copy_files(*args, **kwargs)

    monkeypatch.setattr(pyarrow.fs, "copy_files", copy_files_while_reading_best)
    checkpoint.copy(second, best)
    monkeypatch.undo()
    assert len(copies) >= 3  # the weights, the JSON files, the marker
    assert checkpoint.load_meta(best)["args"]["arch"] == "resnet18"
    link = tmp_path / checkpoint.BEST
    assert link.is_symlink() and not Path(os.readlink(link)).is_absolute()  # the run folder can move
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([checkpoint.BEST, checkpoint.CHECKPOINTS,
                                                                 os.readlink(link)])


def test_a_plain_best_folder_and_the_leftovers_of_a_crashed_copy_are_replaced(tmp_path):
    _, path = saved(tmp_path)
    best = tmp_path / checkpoint.BEST
    shutil.copytree(path, best)  # as an older distdl wrote it
    shutil.copytree(path, tmp_path / ".best-0123456789ab")  # killed before its swap
    (tmp_path / ".best-0123456789ab.link").symlink_to(".best-0123456789ab")
    checkpoint.copy(path, str(best))
    assert best.is_symlink() and checkpoint.is_complete(str(best))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([checkpoint.BEST, checkpoint.CHECKPOINTS,
                                                                 os.readlink(best)])

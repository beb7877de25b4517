"""Checkpoints: safetensors + JSON, marker written last, exact round trip, never unpickled."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

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

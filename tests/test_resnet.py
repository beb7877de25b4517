"""distdl's ResNets are torchvision's (same names, shapes, initialization and function), so
checkpoints trained before or after the switch load the same, without torchvision's import."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision import models as tv_models

from distdl.models.resnet import ResNet


def torchvision_resnet(arch: str, in_channels: int, classes: int, stem: str, dropout: float) -> nn.Module:
    """The CNN family's ResNet as it was built from torchvision before distdl had its own."""
    model = getattr(tv_models, arch)(weights=None, num_classes=classes)
    if stem == "small":
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    if dropout:
        model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return model


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_with_the_same_seed_the_weights_are_torchvisions_exactly(arch):
    torch.manual_seed(0)
    ours = ResNet(arch, 3, 7).state_dict()
    torch.manual_seed(0)
    theirs = getattr(tv_models, arch)(weights=None, num_classes=7).state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("arch,in_channels,stem,dropout", [("resnet18", 3, "small", 0.0), ("resnet18", 1, "small", 0.2),
                                                           ("resnet50", 1, "imagenet", 0.0), ("resnet34", 3, "small", 0.1)])
def test_a_torchvision_checkpoint_loads_and_gives_the_same_outputs(arch, in_channels, stem, dropout):
    theirs = torchvision_resnet(arch, in_channels, 5, stem, dropout).eval()
    with torch.no_grad():  # running statistics away from 0/1, so the batch norms are checked too
        for m in theirs.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    ours = ResNet(arch, in_channels, 5, stem, dropout).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, in_channels, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(ours(x), theirs(x), rtol=0, atol=1e-5)


def test_building_a_resnet_imports_neither_torchvision_nor_torch_dynamo():
    code = ("import sys; from distdl.models import cnn; "
            "cnn.build(cnn.CNNConfig(arch='resnet18', in_channels=3, num_classes=10)); "
            "print(sorted({'torchvision', 'torch._dynamo'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"

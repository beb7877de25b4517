"""ResNet-18/34/50 with torchvision's module names, so their state dicts are interchangeable.

Why not torchvision's own: importing any of torchvision imports torch._dynamo (through
torchvision.ops), 1.7 s of CPU in every process that builds a ResNet (each scoring actor,
serving replica and training worker) before it can do anything else. On an H200 machine a
scoring actor's start-up was ~11 s of a 100k-row run that a plain loop finishes in 6 s.
tests/test_resnet.py checks the names, shapes, initialization and outputs against torchvision.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs around a shortcut (ResNet-18/34)."""
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, planes, 3, stride), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 down, 3x3 (strided, as torchvision's "ResNet v1.5"), 1x1 up 4x, around a shortcut (ResNet-50)."""
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, planes, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = _conv(planes, planes * self.expansion, 1), nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class ResNet(nn.Module):
    """``stem="imagenet"``: 7x7 stride-2 conv and a max-pool (large images); ``"small"``: a 3x3
    stride-1 conv and no pool (CIFAR-style, images <= 64 px)."""

    def __init__(self, arch: str, in_channels: int, num_classes: int,
                 stem: Literal["small", "imagenet"] = "imagenet", dropout: float = 0.0):
        super().__init__()
        block, depths = ARCHS[arch]
        self.conv1 = _conv(in_channels, 64, 7, 2) if stem == "imagenet" else _conv(in_channels, 64, 3)
        self.bn1, self.relu = nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        cin = 64
        for i, (planes, depth) in enumerate(zip([64, 128, 256, 512], depths)):
            stride, cout = (1 if i == 0 else 2), planes * block.expansion
            downsample = None
            if stride != 1 or cin != cout:
                downsample = nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
            blocks = [block(cin, planes, stride, downsample)]
            cin = cout
            blocks += [block(cin, planes, 1, None) for _ in range(depth - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        head = nn.Linear(cin, num_classes)
        self.fc = nn.Sequential(nn.Dropout(dropout), head) if dropout else head
        for m in self.modules():  # torchvision's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

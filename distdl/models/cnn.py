"""CNN family: image classification with a small convnet or ResNets (torchvision's, without its import; no pretrained downloads)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Literal, Optional

import torch
from torch import nn

from distdl.models.resnet import ResNet
from distdl.preprocessors import image
from distdl.specbase import check, knob


@dataclass
class CNNConfig:
    arch: Literal["smallcnn", "resnet18", "resnet34", "resnet50"] = knob(
        "smallcnn", help="`smallcnn`: two conv stages and a pooled head; `resnet*`: torchvision's architectures "
                         "and weight names, built without torchvision (no pretrained download)")
    in_channels: Optional[int] = knob(None, help="image channels; null: from the fitted preprocessor")
    num_classes: Optional[int] = knob(None, help="classes; null: from the fitted preprocessor")
    width: int = knob(32, help="smallcnn: channels of the first conv; doubled per stage")
    dropout: float = knob(0.0, help="dropout before the classifier")
    batchnorm: bool = knob(True, help="smallcnn: batch norm after each conv; off gives exact DDP/single-process "
                                      "parity")
    stem: Literal["small", "imagenet"] = knob(
        "small", help="ResNets: `small` is a 3x3 stride-1 stem without max-pool (CIFAR-style, images up to 64 px); "
                      "`imagenet` is torchvision's 7x7 stride-2 stem and max-pool, for large images")

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(self.width >= 1, "width", f"must be >= 1, got {self.width}")
        yield from check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        for name in ("in_channels", "num_classes"):
            value = getattr(self, name)
            yield from check(value is None or value >= 1, name, f"must be >= 1, got {value}")


def _conv_block(cin: int, cout: int, batchnorm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    layers += [nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Two conv stages and a global-average-pooled head; works for any image size >= 4."""

    def __init__(self, cfg: CNNConfig):
        super().__init__()
        w, bn = cfg.width, cfg.batchnorm
        self.features = nn.Sequential(
            _conv_block(cfg.in_channels, w, bn), _conv_block(w, w, bn), nn.MaxPool2d(2),
            _conv_block(w, 2 * w, bn), _conv_block(2 * w, 2 * w, bn), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(2 * w, cfg.num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W) -> logits (B, classes)
        return self.head(self.features(x))


def build(cfg: CNNConfig) -> nn.Module:
    if cfg.in_channels is None or cfg.num_classes is None:
        raise ValueError("CNNConfig needs in_channels and num_classes resolved before build()")
    if cfg.arch == "smallcnn":
        return SmallCNN(cfg)
    return ResNet(cfg.arch, cfg.in_channels, cfg.num_classes, cfg.stem, cfg.dropout)


def for_inference(model: nn.Module) -> nn.Module:
    """The same function (eval mode), faster: each batch norm folded into the conv before it
    (its running statistics are constants at inference) and the weights in channels-last
    layout, which oneDNN's CPU convolutions prefer. The outputs are equal up to float rounding."""
    from torch.fx.experimental.optimization import fuse  # torch.fx traces the module to find conv -> bn

    return fuse(model).to(memory_format=torch.channels_last)


def complete(cfg: CNNConfig, preprocessor) -> CNNConfig:
    """Fill the fields left to the data (channels, classes) from the fitted preprocessor."""
    return replace(
        cfg,
        in_channels=cfg.in_channels or preprocessor.channels,
        num_classes=cfg.num_classes or len(preprocessor.classes),
    )


def fit_preprocessor(ds, data, pre_cfg: image.ImagePreprocessSpec, cfg: CNNConfig) -> image.ImagePreprocessor:
    return image.fit(ds, data.input_column, data.label_column, pre_cfg)


def augmentations(pre_cfg: image.ImagePreprocessSpec) -> list:
    """Training-only ``map_batches`` steps after the preprocessor."""
    return [image.Augment(pre_cfg.augment)] if pre_cfg.augment else []


def task(cfg: CNNConfig) -> str:
    return "classification"

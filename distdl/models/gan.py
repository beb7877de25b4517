"""GAN family: an unconditional DCGAN (Radford et al. 2015) generating images like the training set.

The generator maps a latent vector to an image in [-1, 1] (tanh); the discriminator maps an
image to one real/fake logit. Both live in one ``GAN`` module, so a checkpoint's
model.safetensors holds them under the prefixes ``generator.`` and ``discriminator.``.
Images are scaled to [-1, 1] by the image preprocessor with a fixed mean = std = 0.5 (not
fitted: the data range must match tanh's); generated images go back to pixels with the same
numbers, which the checkpoint's preprocessor.json carries.

The training step (alternating D/G updates) is in ``gan_step``; the quality metric, sample
grids and generation are the task's (``distdl.tasks.gan``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Literal, Optional, Sequence

import numpy as np
import torch
from torch import nn

from distdl.preprocessors import image
from distdl.specbase import check, knob

# First feature-map size of the generator (and last of the discriminator) per image size;
# every other stage doubles it: 4 -> 8 -> 16 -> 32 -> 64, or 7 -> 14 -> 28 (MNIST-style).
START = {16: 4, 28: 7, 32: 4, 64: 4}


@dataclass
class GANConfig:
    classifier: str = knob(help="a cnn checkpoint trained on the same kind of images: it judges the samples each "
                                "epoch; resolved like data paths and checked before Ray starts")
    latent_dim: int = knob(64, help="size of the generator's input")
    width: int = knob(32, help="channels next to the image in both networks; doubled per stage inward")
    batchnorm: bool = knob(True, help="batch norm in both networks; off gives exact DDP/single-process parity")
    label_smoothing: float = knob(0.1, help="one-sided: the discriminator's target for real images is 1 - this")
    beta1: float = knob(0.5, help="Adam/AdamW's first beta for both networks (DCGAN: 0.5 is steadier than 0.9)")
    confidence: float = knob(0.5, help="a sample counts as confident when the classifier's top probability is at "
                                       "least this")
    image_size: Optional[int] = knob(None, help="null: from the fitted preprocessor (`preprocess.image_size`)")
    channels: Optional[int] = knob(None, help="null: from the fitted preprocessor (`preprocess.channels`)")

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(bool(self.classifier), "classifier", "must name a cnn checkpoint folder")
        yield from check(self.latent_dim >= 1, "latent_dim", f"must be >= 1, got {self.latent_dim}")
        yield from check(self.width >= 1, "width", f"must be >= 1, got {self.width}")
        yield from check(0 <= self.label_smoothing < 0.5, "label_smoothing",
                         f"must be in [0, 0.5), got {self.label_smoothing}")
        yield from check(0 <= self.beta1 < 1, "beta1", f"must be in [0, 1), got {self.beta1}")
        yield from check(0 < self.confidence < 1, "confidence", f"must be in (0, 1), got {self.confidence}")
        yield from check(self.image_size is None or self.image_size in START, "image_size",
                         f"must be one of {sorted(START)}, got {self.image_size}")
        yield from check(self.channels in (None, 1, 3), "channels", f"must be 1 or 3, got {self.channels}")


@dataclass
class GANPreprocessSpec:
    """The spec's ``preprocess`` section for the gan family."""
    image_size: Literal[16, 28, 32, 64] = knob(32, help="images are resized to image_size x image_size")
    channels: Literal[1, 3] = knob(3, help="1 (grayscale) or 3 (RGB)")
    augment: list[Literal["hflip"]] = knob(factory=list, help="training only: random horizontal flips")


def _stages(size: int) -> int:
    """Stride-2 stages between the START map and the image: 16 -> 2, 28 -> 2, 32 -> 3, 64 -> 4."""
    return int(np.log2(size // START[size]))


class Generator(nn.Module):
    """z (B, latent) -> image (B, C, S, S) in [-1, 1]: a transposed conv to the START map,
    then stride-2 transposed convs halving the channels and doubling the size."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        n = _stages(cfg.image_size)
        width = [cfg.width * 2 ** i for i in reversed(range(n))]  # e.g. [128, 64, 32]
        bn = cfg.batchnorm
        layers = _block(nn.ConvTranspose2d(cfg.latent_dim, width[0], START[cfg.image_size], 1, 0, bias=not bn),
                        width[0], bn, nn.ReLU(True))
        for cin, cout in zip(width, width[1:]):
            layers += _block(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=not bn), cout, bn, nn.ReLU(True))
        layers += [nn.ConvTranspose2d(width[-1], cfg.channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])  # (B, latent, 1, 1) -> (B, C, S, S)


class Discriminator(nn.Module):
    """image (B, C, S, S) -> real/fake logit (B,): the generator mirrored, LeakyReLU, no batch
    norm on the first layer (DCGAN)."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        n = _stages(cfg.image_size)
        width = [cfg.width * 2 ** i for i in range(n)]  # e.g. [32, 64, 128]
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, width[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(width, width[1:]):
            conv = nn.Conv2d(cin, cout, 4, 2, 1, bias=not cfg.batchnorm)  # batch norm brings its own bias
            layers += _block(conv, cout, cfg.batchnorm, nn.LeakyReLU(0.2, True))
        layers.append(nn.Conv2d(width[-1], 1, START[cfg.image_size], 1, 0))  # (B, 1, 1, 1)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()  # (B,)


def _block(conv: nn.Module, channels: int, batchnorm: bool, act: nn.Module) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), act] if batchnorm else [conv, act]


class GAN(nn.Module):
    """Both networks in one module (one checkpoint); calling it generates: ``model(z=...)``."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)
        self.apply(_dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, latent) -> (B, C, S, S)
        return self.generator(z)


def _dcgan_init(m: nn.Module) -> None:
    """DCGAN's initialization: conv weights N(0, 0.02), batch-norm scales N(1, 0.02)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def latents(seeds: Sequence[Sequence[int]], dim: int) -> torch.Tensor:
    """One standard-normal latent per tuple of non-negative ints -> (N, dim) float32. The same
    tuple gives the same latent in any batch, worker or machine, so samples are reproducible
    row by row (generation: (seed, id); training: (seed, epoch, step, row))."""
    rows = [np.random.default_rng(list(s)).standard_normal(dim, dtype=np.float32) for s in seeds]
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, dim)


def build(cfg: GANConfig) -> GAN:
    if cfg.image_size is None or cfg.channels is None:
        raise ValueError("GANConfig needs image_size and channels resolved before build()")
    return GAN(cfg)


def complete(cfg: GANConfig, preprocessor) -> GANConfig:
    """Image size and channels from the fitted preprocessor; a model section that says otherwise is an error."""
    size, channels = cfg.image_size or preprocessor.size, cfg.channels or preprocessor.channels
    if (size, channels) != (preprocessor.size, preprocessor.channels):
        raise ValueError(f"model.image_size/channels ({size}, {channels}) differ from the preprocessor's "
                         f"({preprocessor.size}, {preprocessor.channels}); leave them null")
    return replace(cfg, image_size=size, channels=channels)


def fit_preprocessor(ds, data, pre_cfg: GANPreprocessSpec, cfg: GANConfig) -> image.ImagePreprocessor:
    """Unlabelled images scaled to [-1, 1]: mean = std = 0.5 per channel, nothing to fit."""
    half = [0.5] * pre_cfg.channels
    spec = image.ImagePreprocessSpec(image_size=pre_cfg.image_size, channels=pre_cfg.channels, mean=half, std=half)
    return image.fit(ds, data.input_column, None, spec)


def augmentations(pre_cfg: GANPreprocessSpec) -> list:
    return [image.Augment(pre_cfg.augment)] if pre_cfg.augment else []


def task(cfg: GANConfig) -> str:
    return "image_generation"

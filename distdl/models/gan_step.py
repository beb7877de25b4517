"""The GAN's own training step (the one family whose step is not "loss, backward, step").

Each step first updates the discriminator on real images (target 1 - label_smoothing) and
generated ones (target 0), then the generator through the updated discriminator
(non-saturating loss: target 1). Under DDP each network has its own wrapper, because the two
updates backpropagate through different graphs with different optimizers; each wrapper
averages its network's gradients over the workers as for any DDP model.

The loop (distdl.loop) keeps everything else: the epoch, lr schedule, evaluation,
checkpoints (both networks in one model.safetensors, both optimizers by name), reports.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from distdl.models.gan import GAN, latents


class Training(nn.Module):
    """What the steps and evaluation run: each network DDP-wrapped apart (or as it is on one
    worker). In evaluation the wrapper gives every worker rank 0's batch-norm statistics, so
    the reported quality is that of the generator rank 0 saves."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, cfg: Any):
        super().__init__()
        self.generator, self.discriminator, self.cfg = generator, discriminator, cfg


def prepare(model: GAN, wrap: Callable[[nn.Module], nn.Module], make_optimizer: Callable
            ) -> tuple[Training, dict[str, torch.optim.Optimizer]]:
    """Wrap (DDP + device) each network apart; one optimizer each, with DCGAN's beta1."""
    trained = Training(wrap(model.generator), wrap(model.discriminator), model.cfg)
    optimizers = {
        name: make_optimizer([{"params": getattr(model, name).parameters(), "betas": (model.cfg.beta1, 0.999)}])
        for name in ("generator", "discriminator")
    }
    return trained, optimizers


def _step_latents(rows: int, step: Any, dim: int) -> torch.Tensor:
    """This worker's latents (rows, dim) for a step: rows of the step's *global* batch, each
    seeded by (seed, epoch, step, global row), so 2 workers x 16 rows draw exactly the latents
    of 1 worker x 32 rows (and a re-run of the epoch draws the same ones)."""
    first = step.rank * (step.train["batch_size"] // step.world)
    return latents([(step.train["seed"], step.epoch, step.index, first + i) for i in range(rows)], dim)


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def train_step(trained: Training, optimizers: dict, batch: dict[str, torch.Tensor], step: Any
               ) -> tuple[dict[str, float], int]:
    """One D update then one G update; returns ({"d_loss", "g_loss"} summed over rows, rows)."""
    real = batch["x"]  # (B, C, H, W) in [-1, 1]
    rows, cfg = len(real), trained.cfg
    z = _step_latents(rows, step, cfg.latent_dim).to(real.device)  # (B, latent)
    with step.autocast():
        fake = trained.generator(z)  # (B, C, H, W): one forward, used by both updates
        d_real, d_fake = trained.discriminator(real).float(), trained.discriminator(fake.detach()).float()  # (B,)
    d_loss = _bce(d_real, 1 - cfg.label_smoothing) + _bce(d_fake, 0.0)
    step.backward(d_loss, optimizers["discriminator"])
    with step.autocast():
        d_fake = trained.discriminator(fake).float()  # through the updated discriminator
    g_loss = _bce(d_fake, 1.0)
    step.backward(g_loss, optimizers["generator"])
    return {"d_loss": d_loss.item() * rows, "g_loss": g_loss.item() * rows}, rows

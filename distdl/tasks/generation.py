"""Image generation (gan family): its own D/G step, a classifier-judged quality, sample grids, generation.

Training: ``prepare`` and ``train_step`` (models/gan_step.py) replace the loop's usual
loss/backward/step. Evaluation: every validation image gets one generated sample from a
fixed latent (seeded by a hash of the image), and the classifier in ``model.classifier``
compares the two sets (tasks/gan_quality.py): the samples change only when the generator
does, whatever the batching or the number of workers. Each epoch rank 0 also writes a grid
of the samples of ids 0..63 with seed 0 to ``<run>/samples/epoch_NNNN.png``.

Generation (Predictor, ``distdl score --generate N``): a row's id (a non-negative integer)
and the ``seed`` option give its latent, so the same id and seed give the same image on any
actor, batch size or machine; the output column ``image`` holds PNG bytes.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from distdl.paths import join
from distdl.models import gan_step
from distdl.models.gan import latents
from distdl.paths import write_bytes
from distdl.preprocessors.base import BadInputError, plain
from distdl.preprocessors.image import png_bytes
from distdl.tasks import gan_quality
from distdl.tasks.base import SAMPLES, Task

EVAL_SEED = 2 ** 32 - 1  # first entropy word of the evaluation latents (generation seeds are the user's)
GRID = 64  # samples in each epoch's grid: ids 0..63 of `distdl score --generate` with seed 0


class Ids:
    """The Predictor's inputs for generation: one non-negative integer id per row."""
    input_column = "id"

    def decode(self, value: Any, where: str = "a row") -> int:
        v = plain(value)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2 ** 63:
            raise BadInputError(f"id {v!r} ({where}) must be a non-negative integer: it seeds the row's latent")
        return v

    def features(self, ids: list[int]) -> dict[str, np.ndarray]:
        return {"id": np.asarray(ids, dtype=np.int64)}


class ImageGeneration(Task):
    metrics = ("val_fid", "val_confident", "val_coverage", "train_d_loss", "train_g_loss")
    default_best = "val_fid"
    minimized = ("val_fid",)  # besides losses: lower is better
    output_types = {"image": pa.binary()}  # PNG
    step_sums = ("d_loss", "g_loss")  # what train_step sums; reported as train_d_loss, train_g_loss
    inputs = Ids()  # generation reads ids, not the training rows

    def __init__(self, preprocessor: Any):
        self.mean = np.asarray(preprocessor.mean, dtype=np.float32)
        self.std = np.asarray(preprocessor.std, dtype=np.float32)
        self.judge: gan_quality.Judge | None = None  # loaded by prepare, on the training device

    def pixels(self, images: torch.Tensor) -> np.ndarray:
        """Model-scale images (N, C, H, W) -> pixels (N, H, W, C) in [0, 1]: the preprocessor's scaling undone."""
        x = images.float().cpu().numpy().transpose(0, 2, 3, 1)
        return np.clip(x * self.std + self.mean, 0.0, 1.0)

    # ---- training (distdl.loop) ----------------------------------------------------------
    def prepare(self, model, wrap, make_optimizer) -> tuple[gan_step.Training, dict]:
        trained, optimizers = gan_step.prepare(model, wrap, make_optimizer)
        self.judge = gan_quality.Judge(model.cfg.classifier, next(model.parameters()).device)
        return trained, optimizers

    def train_step(self, trained, optimizers, batch, step) -> tuple[dict[str, float], int]:
        return gan_step.train_step(trained, optimizers, batch, step)

    def eval_sums(self, trained: gan_step.Training, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        real = batch["x"]  # (B, C, H, W)
        keys = [(EVAL_SEED, _row_hash(row)) for row in real.cpu().numpy()]
        fake = trained.generator(latents(keys, trained.cfg.latent_dim).to(real.device))
        return gan_quality.sums(self.judge, self.pixels(real), self.pixels(fake), trained.cfg.confidence)

    def eval_metrics(self, sums: dict[str, Any]) -> dict[str, float]:
        return gan_quality.metrics(sums)

    @torch.inference_mode()
    def epoch_end(self, model, run_dir: str, epoch: int) -> None:
        """Rank 0: the grid of this epoch's samples from the same fixed latents every epoch."""
        z = latents([(0, i) for i in range(GRID)], model.cfg.latent_dim).to(next(model.parameters()).device)
        grid = gan_quality.grid(_uint8(self.pixels(model.eval()(z=z))))
        write_bytes(join(run_dir, SAMPLES, f"epoch_{epoch:04d}.png"), png_bytes(grid))

    # ---- generation (distdl.predict) -----------------------------------------------------
    def predict(self, model, features: dict[str, torch.Tensor], seed: int = 0) -> dict[str, list]:
        """PNG bytes per row, from the latent of (seed, id)."""
        ids = features["id"]
        z = latents([(seed, i) for i in ids.tolist()], model.cfg.latent_dim).to(ids.device)
        return {"image": [png_bytes(img) for img in _uint8(self.pixels(model(z=z)))]}


def _uint8(pixels: np.ndarray) -> np.ndarray:
    return (pixels * 255.0 + 0.5).astype(np.uint8)


def _row_hash(row: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")

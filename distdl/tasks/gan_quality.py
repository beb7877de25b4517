"""How good are a GAN's samples? Numbers a user can trust more than the adversarial losses.

A classifier checkpoint of the cnn family, trained on labelled images of the same kind
(``model.classifier``), looks at generated and real images through its own preprocessor:

    confident   share of samples whose top class probability >= model.confidence (do they
                look like *some* class?)
    coverage    entropy of the predicted-class histogram / log(classes): 1 = every class
                equally often, 0 = one class only (mode collapse)
    fid         Fréchet distance between the Gaussians fitted to the classifier's features
                (the input of its last linear layer) of generated and of real validation
                images, as FID does with Inception features: 0 = same mean and covariance
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from distdl import checkpoint, models


class Judge:
    """A frozen image classifier: pixels (N, H, W, C) in [0, 1] -> (features (N, F), probabilities (N, K))."""

    def __init__(self, path: str, device: torch.device):
        model, self.pre, meta = checkpoint.load_model(path)
        task = models.task_name(meta)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if task != "classification" or getattr(self.pre, "kind", None) != "image" or not linears:
            raise ValueError(f"model.classifier: {path} is a {meta['family']} checkpoint ({task}); the quality "
                             "metric needs an image classifier of the cnn family")
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = device
        self.classes = len(self.pre.classes)
        self._features: list[torch.Tensor] = []
        # The classifier's features are what enters its last linear layer (ResNet: after pooling).
        linears[-1].register_forward_hook(lambda module, args, out: self._features.append(args[0]))

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The classifier's own decode: channel conversion and resizing exactly as when it scores images.
        x = self.pre.features([self.pre.decode(p) for p in pixels])["x"]  # (N, C', H', W')
        self._features.clear()
        logits = self.model(torch.from_numpy(x).to(self.device)).float()
        features = self._features.pop().flatten(1).double().cpu().numpy()  # (N, F)
        return features, torch.softmax(logits, dim=1).cpu().numpy()


def sums(judge: Judge, real: np.ndarray, fake: np.ndarray, confidence: float) -> dict[str, Any]:
    """Additive statistics of a batch of real and generated pixels (N, H, W, C); see ``metrics``."""
    real_f, _ = judge(real)
    fake_f, probs = judge(fake)
    return {
        "real": float(len(real)), "real_sum": real_f.sum(0), "real_outer": real_f.T @ real_f,
        "fake": float(len(fake)), "fake_sum": fake_f.sum(0), "fake_outer": fake_f.T @ fake_f,
        "confident": float((probs.max(1) >= confidence).sum()),
        "classes": np.bincount(probs.argmax(1), minlength=judge.classes).astype(np.float64),
    }


def metrics(s: dict[str, Any]) -> dict[str, float]:
    """val_fid, val_confident and val_coverage from group-wide ``sums``."""
    share = s["classes"] / max(s["classes"].sum(), 1.0)
    nonzero = share[share > 0]
    return {
        "val_fid": frechet(*_gaussian(s["real_sum"], s["real_outer"], s["real"]),
                           *_gaussian(s["fake_sum"], s["fake_outer"], s["fake"])),
        "val_confident": s["confident"] / max(s["fake"], 1.0),
        "val_coverage": float(abs((nonzero * np.log(nonzero)).sum()) / np.log(len(share))),
    }


def _gaussian(total: np.ndarray, outer: np.ndarray, n: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean (F,), covariance (F, F)) from the sum and the sum of outer products of n vectors."""
    mean = total / n
    return mean, (outer - n * np.outer(mean, mean)) / max(n - 1, 1.0)


def frechet(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)); the trace of the matrix root is
    the sum of root eigenvalues of the symmetric cov1^(1/2) cov2 cov1^(1/2)."""
    values, vectors = np.linalg.eigh(cov1)
    root1 = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    cross = np.sqrt(np.linalg.eigvalsh(root1 @ cov2 @ root1).clip(min=0)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def grid(images: np.ndarray, min_side: int = 32) -> np.ndarray:
    """uint8 images (N, H, W, C) tiled in a square grid with 2-pixel white gaps -> (H', W', C);
    small images are scaled up (nearest) to at least ``min_side`` so the grid is readable."""
    n, h, w, c = images.shape
    scale = -(-min_side // h)
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    canvas = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        top, left = 2 + (i // cols) * (h + 2), 2 + (i % cols) * (w + 2)
        canvas[top:top + h, left:left + w] = img
    return canvas

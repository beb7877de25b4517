"""Predictor: the single inference code path for batch scoring, serving and tests.

It loads a checkpoint once (safetensors + JSON, never unpickled) and maps a raw batch to
prediction columns. Rows that cannot be decoded get an ``error`` message and null
predictions instead of failing the batch: one bad image must not kill a million-row job.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from distdl import checkpoint
from distdl.preprocess import BadInputError

OUTPUT_COLUMNS = ("label", "probability", "top_labels", "top_probabilities", "error")


class Predictor:
    """Callable class for ``ds.map_batches(Predictor, fn_constructor_kwargs=...)``.

    ``passthrough`` columns (e.g. the row id) are copied from input to output unchanged;
    ``where_column`` names the column used to say which row an error belongs to.
    """

    def __init__(self, checkpoint_path: str, top_k: int = 5, threads: int | None = None,
                 passthrough: Sequence[str] = (), where_column: str | None = None, device: str = "cpu"):
        if threads:
            # One actor per reserved CPU share: more threads than that oversubscribe the cores.
            torch.set_num_threads(threads)
        model, self.pre, _ = checkpoint.load_model(checkpoint_path)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.classes = np.array(self.pre.classes, dtype=object)  # keeps ints as Python ints
        self.top_k = min(top_k, len(self.pre.classes))
        self.passthrough = list(passthrough)
        self.where_column = where_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = batch[self.pre.input_column]
        decoded: list[np.ndarray | None] = []
        errors = np.full(len(values), None, dtype=object)
        for i, value in enumerate(values):
            try:
                decoded.append(self.pre.decode(value, self._where(batch, i)))
            except BadInputError as exc:
                decoded.append(None)
                errors[i] = str(exc)
        good = np.flatnonzero([d is not None for d in decoded])
        out = {name: batch[name] for name in self.passthrough}
        return {**out, **self._predict(decoded, good, len(values)), "error": errors}

    def _predict(self, decoded: list[np.ndarray | None], good: np.ndarray, n: int) -> dict[str, np.ndarray]:
        """Prediction columns for all ``n`` rows; rows outside ``good`` stay null."""
        label = np.full(n, None, dtype=object)
        probability = np.full(n, None, dtype=object)
        top_labels = np.full(n, None, dtype=object)
        top_probs = np.full(n, None, dtype=object)
        if len(good):
            x = self.pre.normalize(np.stack([decoded[i] for i in good]))  # (G, C, H, W)
            with torch.inference_mode():
                logits = self.model(torch.from_numpy(x).to(self.device))
                probs = torch.softmax(logits.float(), dim=1)  # (G, classes)
                top_p, top_i = probs.topk(self.top_k, dim=1)  # (G, k), best first
            top_p, top_i = top_p.cpu().numpy(), top_i.cpu().numpy()
            for row, p, i in zip(good, top_p, top_i):
                label[row], probability[row] = self.classes[i[0]], float(p[0])
                top_labels[row], top_probs[row] = self.classes[i].tolist(), p.tolist()
        return {"label": label, "probability": probability, "top_labels": top_labels,
                "top_probabilities": top_probs}

    def _where(self, batch: dict[str, np.ndarray], i: int) -> str:
        if self.where_column and self.where_column in batch:
            return f"{self.where_column} {batch[self.where_column][i]}"
        return f"row {i} of its batch"

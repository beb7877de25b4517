"""Classification (image, sequence, text): cross-entropy on class logits; accuracy and top-5."""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch
import torch.nn.functional as F

from distdl.tasks.base import Task


class Classification(Task):
    metrics = ("val_accuracy", "val_loss", "val_top5", "train_loss")
    default_best = "val_accuracy"
    targets = ("y",)

    def __init__(self, preprocessor: Any):
        self.classes = list(preprocessor.classes)
        self.top5 = len(self.classes) > 5  # top-5 of 5 or fewer classes is always 1
        label = pa.array(self.classes).type
        self.output_types = {"label": label, "probability": pa.float64(),
                             "top_labels": pa.list_(label), "top_probabilities": pa.list_(pa.float64())}

    def logits(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**{k: v for k, v in batch.items() if k not in self.targets}).float()  # (B, classes)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return F.cross_entropy(self.logits(model, batch), batch["y"]), len(batch["y"])

    def eval_sums(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        logits, y = self.logits(model, batch), batch["y"]
        sums = {"loss": F.cross_entropy(logits, y, reduction="sum").item(),
                "correct": (logits.argmax(1) == y).sum().item(), "rows": float(len(y))}
        if self.top5:
            sums["top5"] = (logits.topk(5, dim=1).indices == y[:, None]).any(1).sum().item()
        return sums

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        rows = max(sums["rows"], 1.0)
        out = {"val_loss": sums["loss"] / rows, "val_accuracy": sums["correct"] / rows}
        if self.top5:
            out["val_top5"] = sums["top5"] / rows
        return out

    def predict(self, model: torch.nn.Module, features: dict[str, torch.Tensor], top_k: int = 5) -> dict[str, list]:
        """Best label, its probability, and the top-k labels/probabilities (best first) per row."""
        probs = torch.softmax(model(**features).float(), dim=1)  # (G, classes)
        top_p, top_i = probs.topk(min(top_k, len(self.classes)), dim=1)  # (G, k)
        top_p, top_i = top_p.cpu().numpy(), top_i.cpu().numpy()
        labels = [[self.classes[j] for j in row] for row in top_i]
        return {"label": [row[0] for row in labels], "probability": [float(p[0]) for p in top_p],
                "top_labels": labels, "top_probabilities": [p.tolist() for p in top_p]}

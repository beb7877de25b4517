"""Classification (image, sequence, text): cross-entropy on class logits (label smoothing in
training); accuracy, top-5, macro F1, and each class's precision, recall and F1 from the
validation confusion matrix."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from distdl.tasks.base import Task


class Classification(Task):
    metrics = ("val_accuracy", "val_loss", "val_top5", "val_macro_f1", "train_loss")
    default_best = "val_accuracy"
    targets = ("y",)

    def __init__(self, preprocessor: Any):
        self.classes = list(preprocessor.classes)
        self.top5 = len(self.classes) > 5  # top-5 of 5 or fewer classes is always 1
        self.label_smoothing, self.class_weights = 0.0, None
        label = pa.array(self.classes).type
        self.output_types = {"label": label, "probability": pa.float64(),
                             "top_labels": pa.list_(label), "top_probabilities": pa.list_(pa.float64())}

    def configure(self, train: dict, class_weights: Optional[list[float]] = None) -> None:
        self.label_smoothing = train["label_smoothing"]
        self.class_weights = None if class_weights is None else torch.tensor(class_weights)

    def logits(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**{k: v for k, v in batch.items() if k not in self.targets}).float()  # (B, classes)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = self.logits(model, batch)
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits, batch["y"], weight=weight, label_smoothing=self.label_smoothing), len(batch["y"])

    def eval_sums(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        logits, y = self.logits(model, batch), batch["y"]
        predicted, n = logits.argmax(1), len(self.classes)
        sums = {"loss": F.cross_entropy(logits, y, reduction="sum").item(),
                "correct": (predicted == y).sum().item(), "rows": float(len(y)),
                # (classes, classes): rows by [true class, predicted class]
                "confusion": torch.bincount(y * n + predicted, minlength=n * n).reshape(n, n).cpu().numpy()}
        if self.top5:
            sums["top5"] = (logits.topk(5, dim=1).indices == y[:, None]).any(1).sum().item()
        return sums

    def eval_metrics(self, sums: dict[str, Any]) -> dict[str, Any]:
        rows = max(sums["rows"], 1.0)
        confusion = np.asarray(sums["confusion"]).round().astype(np.int64)
        scores = per_class(confusion)
        out = {"val_loss": sums["loss"] / rows, "val_accuracy": sums["correct"] / rows,
               "val_macro_f1": macro_f1(confusion, scores["f1"])}
        if self.top5:
            out["val_top5"] = sums["top5"] / rows
        if len(self.classes) <= MAX_DETAIL_CLASSES:
            out["val_confusion"] = confusion.tolist()
            rows_of = zip(self.classes, scores["precision"], scores["recall"], scores["f1"], scores["support"])
            out["val_per_class"] = {str(label): {"precision": float(p), "recall": float(r), "f1": float(f),
                                                 "support": int(n)} for label, p, r, f, n in rows_of}
        return out

    def predict(self, model: torch.nn.Module, features: dict[str, torch.Tensor], top_k: int = 5) -> dict[str, list]:
        """Best label, its probability, and the top-k labels/probabilities (best first) per row."""
        probs = torch.softmax(model(**features).float(), dim=1)  # (G, classes)
        top_p, top_i = probs.topk(min(top_k, len(self.classes)), dim=1)  # (G, k)
        top_p, top_i = top_p.cpu().numpy(), top_i.cpu().numpy()
        labels = [[self.classes[j] for j in row] for row in top_i]
        return {"label": [row[0] for row in labels], "probability": [float(p[0]) for p in top_p],
                "top_labels": labels, "top_probabilities": [p.tolist() for p in top_p]}


# The confusion matrix and per-class table go into every metrics.jsonl line and checkpointed
# history: beyond this many classes (classes² numbers an epoch) only val_macro_f1 is kept.
MAX_DETAIL_CLASSES = 100


def per_class(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """{"precision", "recall", "f1", "support"}: one value per class from confusion[true, predicted]
    counts; 0 where undefined (a class never predicted has precision 0, one never seen recall 0)."""
    true_pos = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(0), confusion.sum(1)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)

    precision, recall = ratio(true_pos, predicted), ratio(true_pos, support)
    return {"precision": precision, "recall": recall,
            "f1": ratio(2 * precision * recall, precision + recall), "support": support}


def macro_f1(confusion: np.ndarray, f1: np.ndarray) -> float:
    """Mean F1 over the classes that occur as a label or a prediction (as scikit-learn's default):
    a class absent from the validation rows and never predicted does not count."""
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    return float(f1[present].mean()) if present.any() else 0.0

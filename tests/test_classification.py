"""Classification's per-class validation metrics and label smoothing, on hand-made batches."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distdl import checkpoint, class_weights, loop
from distdl.tasks.classification import Classification


class PredictsX(nn.Module):
    """Logits that pick class ``x`` for each row: the test decides every prediction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, 3)
        return F.one_hot(x, 3).float()


def test_confusion_matrix_and_per_class_scores_over_two_batches():
    # true 0: predicted 0, 0, 1; true 1: 1, 1; true 2: 0, 0, 1 -- class "c" is never predicted
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    predicted = torch.tensor([0, 0, 1, 1, 1, 0, 0, 1])
    batches = [{"x": predicted[:5], "y": y[:5]}, {"x": predicted[5:], "y": y[5:]}]
    task = Classification(SimpleNamespace(classes=["a", "b", "c"]))
    result = loop.evaluate(task, PredictsX(), batches, torch.device("cpu"), "fp32")
    assert result["val_confusion"] == [[2, 1, 0], [0, 2, 0], [2, 1, 0]]
    table = result["val_per_class"]
    assert table["a"] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert table["b"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2})
    assert table["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert result["val_macro_f1"] == pytest.approx((4 / 7 + 2 / 3 + 0) / 3)
    assert result["val_accuracy"] == 0.5
    assert set(checkpoint.scalars(result)) == {"val_loss", "val_accuracy", "val_macro_f1"}


def test_a_class_neither_seen_nor_predicted_does_not_count_in_macro_f1():
    y = torch.tensor([0, 1, 1])
    task = Classification(SimpleNamespace(classes=[0, 1, 2]))
    result = task.eval_metrics(task.eval_sums(PredictsX(), {"x": y, "y": y}))
    assert result["val_macro_f1"] == 1.0
    assert result["val_per_class"]["2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


class Linear(nn.Module):
    """Models take their batch columns as keyword arguments: forward(x=...)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 4) -> (B, 3)
        return self.layer(x)


@pytest.mark.parametrize("smoothing, weights", [(0.2, None), (0.0, [1.0, 4.0, 0.5])])
def test_label_smoothing_and_class_weights_change_the_training_loss_not_val_loss(smoothing, weights):
    torch.manual_seed(0)
    model = Linear()
    batch = {"x": torch.randn(8, 4), "y": torch.arange(8) % 3}
    plain, changed = (Classification(SimpleNamespace(classes=[0, 1, 2])) for _ in range(2))
    plain.configure({"label_smoothing": 0.0})
    changed.configure({"label_smoothing": smoothing}, weights)
    with torch.no_grad():
        weight = torch.tensor(weights) if weights else None
        expected = F.cross_entropy(model(batch["x"]), batch["y"], weight=weight, label_smoothing=smoothing).item()
        assert changed.loss(model, batch)[0].item() == pytest.approx(expected)
        assert plain.loss(model, batch)[0].item() != pytest.approx(expected)
    assert plain.eval_sums(model, batch)["loss"] == changed.eval_sums(model, batch)["loss"]


def test_per_class_detail_is_left_out_for_many_classes():
    task = Classification(SimpleNamespace(classes=list(range(101))))
    sums = {"loss": 1.0, "correct": 1.0, "rows": 1.0, "top5": 1.0, "confusion": np.zeros((101, 101))}
    result = task.eval_metrics(sums)
    assert "val_confusion" not in result and "val_per_class" not in result and result["val_macro_f1"] == 0.0


def test_class_weights_resolve_to_one_weight_per_class():
    classes = ["cat", "dog", 7]
    assert class_weights.resolve(None, classes) is None
    assert class_weights.resolve("auto", classes, {"cat": 10, "dog": 30, 7: 20}) == pytest.approx([2.0, 2 / 3, 1.0])
    assert class_weights.resolve({"dog": 3, "7": 0.5}, classes) == [1.0, 3.0, 0.5]  # YAML may key 7 as "7"
    with pytest.raises(ValueError, match=r"train.class_weights: 'cow' is not one of the 3 classes"):
        class_weights.resolve({"cow": 2.0}, classes)

"""The worker's pieces without Ray: schedule, one epoch of steps, evaluation, prefetch."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from distdl import loop
from distdl.spec import TrainSpec, to_dict
from distdl.tasks.classification import Classification


def classification(classes: int) -> Classification:
    return Classification(SimpleNamespace(classes=list(range(classes))))


def train_cfg(**overrides) -> dict:
    return to_dict(TrainSpec(**{"epochs": 10, "lr": 1.0, **overrides}))


def test_schedules_per_epoch():
    assert [loop.lr_at(e, train_cfg(schedule="constant")) for e in (1, 10)] == [1.0, 1.0]
    cosine = [loop.lr_at(e, train_cfg(schedule="cosine")) for e in range(1, 11)]
    assert cosine[0] == 1.0 and all(a > b for a, b in zip(cosine, cosine[1:])) and cosine[-1] > 0
    step = [loop.lr_at(e, train_cfg(schedule="step", step_size=3, gamma=0.5)) for e in (1, 3, 4, 7)]
    assert step == [1.0, 1.0, 0.5, 0.25]
    warm = [loop.lr_at(e, train_cfg(schedule="constant", warmup_epochs=3)) for e in (1, 2, 3, 4)]
    assert warm == [0.25, 0.5, 0.75, 1.0]


class MLP(nn.Module):
    """Models take their batch columns as keyword arguments: forward(x=...)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 4, 4) -> (B, 4)
        return self.layers(x)


@pytest.mark.parametrize("precision, grad_clip", [("fp32", None), ("bf16", None), ("fp32", 0.5)])
def test_an_epoch_of_steps_overfits_a_fixed_batch(precision, grad_clip):
    torch.manual_seed(0)
    model = MLP()
    cfg = train_cfg(lr=0.05, precision=precision, grad_clip=grad_clip)
    batch = {"x": torch.randn(16, 1, 4, 4), "y": torch.arange(16) % 4}
    optimizer = loop.make_optimizer(model.parameters(), cfg)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    calls = []
    task = classification(4)
    first = loop.train_epoch(task, model, {"model": optimizer}, scaler, [batch] * 5, torch.device("cpu"), cfg, 1, 0,
                             hook=lambda *args: calls.append(args))
    for epoch in range(2, 6):
        last = loop.train_epoch(task, model, {"model": optimizer}, scaler, [batch] * 5, torch.device("cpu"), cfg, epoch, 0, None)
    assert last["train_loss"] < first["train_loss"] / 2
    assert first["train_samples"] == 80 and calls == [(0, 1, s) for s in range(5)]
    assert 0 <= first["ingest_wait_share"] < 1


class RanksTrueClassFirstOrThird(nn.Module):
    """The true class ranks 1st for even rows, 3rd for odd rows."""

    def forward(self, x):
        y, rows = x[:, 0].long(), torch.arange(len(x))
        odd = (y % 2).bool()
        logits = torch.zeros(len(y), 10)
        logits[rows, y] = torch.where(odd, 3.0, 10.0)
        logits[rows[odd], (y[odd] + 1) % 10] = 5.0
        logits[rows[odd], (y[odd] + 2) % 10] = 4.0
        return logits


def test_evaluate_counts_accuracy_and_top5():
    y = torch.arange(10)
    batches = [{"x": y[:5, None].float(), "y": y[:5]}, {"x": y[5:, None].float(), "y": y[5:]}]
    result = loop.evaluate(classification(10), RanksTrueClassFirstOrThird(), batches, torch.device("cpu"), "fp32")
    assert result["val_accuracy"] == 0.5
    assert result["val_top5"] == 1.0


def test_prefetched_yields_every_batch_once_and_handles_empty_streams():
    assert list(loop.Prefetched(range(5))) == [0, 1, 2, 3, 4]
    assert list(loop.Prefetched([])) == []

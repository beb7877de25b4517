"""The worker's pieces without Ray: schedule, one epoch of steps, evaluation, prefetch."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from distdl import elastic, loop
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


@pytest.mark.parametrize("batch, world", [(64, 1), (64, 2), (64, 3), (7, 7), (10, 4)])
def test_the_ranks_shares_add_up_to_the_global_batch_whatever_the_world_size(batch, world):
    shares = [elastic.share(batch, world, rank) for rank in range(world)]
    assert sum(s.rows for s in shares) == batch
    assert max(s.rows for s in shares) - min(s.rows for s in shares) <= 1
    assert all(s.even == (batch % world == 0) for s in shares)
    assert elastic.share(64, 3, 0).rows == 22 and elastic.share(64, 3, 2).rows == 21


def test_a_batch_too_small_to_give_every_worker_a_row_is_refused():
    with pytest.raises(ValueError, match="cannot give each of 5 workers a row"):
        elastic.share(4, 5, 0)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_weighted_rank_losses_averaged_as_ddp_does_give_the_global_batch_gradient(world):
    """DDP averages the ranks' gradients; with uneven shares each rank's mean loss is weighted so
    the average is exactly the gradient of the mean loss over the 64 rows, at any world size."""
    torch.manual_seed(0)
    model, x, y = MLP(), torch.randn(64, 1, 4, 4), torch.arange(64) % 4

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return torch.autograd.grad(loss, list(model.parameters()))

    whole = grads(nn.functional.cross_entropy(model(x), y))
    at, per_rank = 0, []
    for rank in range(world):
        part = elastic.share(64, world, rank)
        rows = slice(at, at + part.rows)
        at += part.rows
        per_rank.append(grads(nn.functional.cross_entropy(model(x[rows]), y[rows]) * part.loss_weight))
    averaged = [sum(g) / world for g in zip(*per_rank)]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(averaged, whole))


def test_an_uneven_share_steps_only_on_full_batches_and_drains_the_rest():
    """Ranks of an uneven group take different rows per step from equal shards: each steps only
    while every rank has a full batch (here one rank: 5, 5, then 3 rows left over)."""
    torch.manual_seed(0)
    model, cfg = MLP(), train_cfg(lr=0.05)
    batches = [{"x": torch.randn(n, 1, 4, 4), "y": torch.arange(n) % 4} for n in (5, 5, 3)]
    drained = []

    def stream():
        for batch in batches:
            yield batch
            drained.append(len(batch["y"]))

    share = elastic.Share(rows=5, loss_weight=1.0, even=False)
    calls = []
    out = loop.train_epoch(classification(4), model, {"model": loop.make_optimizer(model.parameters(), cfg)},
                           torch.amp.GradScaler("cpu", enabled=False), stream(), torch.device("cpu"), cfg, 1, 0,
                           hook=lambda *args: calls.append(args), share=share)
    assert out["train_samples"] == 10 and len(calls) == 2
    assert drained == [5, 5, 3]  # the stream was read to its end: the next epoch starts a fresh one


def test_a_group_restarted_at_another_size_says_so():
    assert elastic.resized(2, 3, "runs/x/checkpoints/epoch_0004") == "workers 2 → 3, resuming from epoch_0004"
    assert elastic.resized(3, 3, "runs/x/checkpoints/epoch_0004") is None
    assert elastic.resized(None, 3, "runs/x/checkpoints/epoch_0004") is None  # a checkpoint older than elastic runs
    head, second, third = "4a97290a at 10.0.0.1", "493e032e at 10.0.0.2", "0c1d2e3f at 10.0.0.3"
    assert (elastic.resized(1, 2, "runs/x/checkpoints/epoch_0001", [head], [head, second])
            == "workers 1 → 2 (node 493e032e at 10.0.0.2 joined), resuming from epoch_0001")
    assert (elastic.resized(2, 2 - 1, "epoch_0002", [head, second], [head, third])  # one came, one went
            == "workers 2 → 1 (node 0c1d2e3f at 10.0.0.3 joined, node 493e032e at 10.0.0.2 left), resuming from "
               "epoch_0002")

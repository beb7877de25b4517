"""The reference for the DDP parity tests: the worker loop's steps taken in this process, on one
batch holding every training row, without Ray or a process group."""
from __future__ import annotations

import torch

from distdl import loop, models, spec as specmod
from distdl.tasks.classification import Classification


def replay(spec: specmod.JobSpec, pre, meta: dict, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parameters after ``spec.train.epochs`` steps on ``batch`` from the run's initial
    weights (the same seed): what N workers with DDP-averaged gradients must also end with
    when the global batch is every row. Checks that the steps moved the weights at all."""
    torch.manual_seed(spec.train.seed)
    model = models.build_model(meta["family"], models.config_from_args(meta["family"], meta["args"]))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = spec.to_dict()["train"]
    optimizer = loop.make_optimizer(model.parameters(), cfg)
    for epoch in range(1, spec.train.epochs + 1):
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        loop.train_epoch(Classification(pre), model, {"model": optimizer}, scaler, [batch], torch.device("cpu"), cfg,
                         epoch, 0, None)
    assert any(not torch.equal(initial[k], v) for k, v in model.state_dict().items()), "the steps changed nothing"
    return model.state_dict()


def assert_same_parameters(trained: torch.nn.Module, replayed: dict[str, torch.Tensor]) -> None:
    for name, value in replayed.items():
        torch.testing.assert_close(trained.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)

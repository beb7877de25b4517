"""The task interface: what the worker loop (loop.py), the Predictor (predict.py) and spec
validation ask of a task. Each task in distdl.tasks.TASKS subclasses ``Task``.

A task is constructed from the fitted preprocessor. Batches are dicts of tensors from
``collate.Collate``; the keys in ``targets`` are labels, every other key is passed to
``model(**inputs)``.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Optional, Protocol

import numpy as np
import pyarrow as pa
import torch

Optimizers = dict[str, torch.optim.Optimizer]
SAMPLES = "samples"  # a run folder's per-epoch samples from epoch_end (a gan's grids, a language model's texts)


class Inputs(Protocol):
    """What the Predictor decodes instead of the preprocessor (a gan's row ids)."""
    input_column: str

    def decode(self, value: Any, where: str = "a row") -> Any: ...

    def features(self, values: list[Any]) -> dict[str, np.ndarray]: ...


class Task(abc.ABC):
    # Metric names reported each epoch; empty for a task that needs no training (spec
    # validation refuses to train it).
    metrics: tuple[str, ...] = ()
    default_best: Optional[str] = None  # the default checkpoint.best_metric
    minimized: tuple[str, ...] = ()  # metrics besides *loss* / *perplexity* where lower is better
    targets: tuple[str, ...] = ()  # batch keys that are labels, not model inputs
    # {column: Arrow type} of the prediction columns added in scoring and serving: a batch of
    # failed rows holds only nulls, yet every scoring output part must have the same schema.
    output_types: dict[str, pa.DataType] = {}
    step_sums: tuple[str, ...] = ("loss",)  # what train_step sums; reported as train_<name> means
    inputs: Optional[Inputs] = None  # None: the preprocessor decodes the rows

    def __init__(self, preprocessor: Any):
        """Take what the task needs from the fitted preprocessor (class names, a vocabulary)."""

    @abc.abstractmethod
    def predict(self, model: torch.nn.Module, features: dict[str, torch.Tensor], **options: Any) -> dict[str, list]:
        """{column: one value per row} for the decoded, good rows. The keyword arguments after
        ``features`` are the options a user may set (the CLI and the HTTP API check them)."""

    # ---- training (distdl.loop) ----------------------------------------------------------
    def configure(self, train: dict, class_weights: Optional[list[float]] = None) -> None:
        """Take the ``train`` spec section's options the task uses (classification: label_smoothing),
        and train.class_weights resolved on the driver to one weight per class."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(scalar loss, rows): one training step's objective, for the usual ``train_step``."""
        raise NotImplementedError(f"{type(self).__name__} has no loss")

    def eval_sums(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """{name: sum over the batch, a number or an array}; the loop all-reduces them."""
        raise NotImplementedError(f"{type(self).__name__} is not evaluated")

    def eval_metrics(self, sums: dict[str, Any]) -> dict[str, Any]:
        """{metric: value} from the group-wide sums of ``eval_sums``: the names in ``metrics`` are
        numbers; other keys may hold plain-JSON detail (per-class tables) for metrics.jsonl."""
        raise NotImplementedError(f"{type(self).__name__} is not evaluated")

    def prepare(self, model: torch.nn.Module, wrap: Callable[[torch.nn.Module], torch.nn.Module],
                make_optimizer: Callable[[Any], torch.optim.Optimizer]) -> tuple[Any, Optimizers]:
        """(what the steps run, its named optimizers). ``wrap`` DDP-wraps and places a module;
        ``make_optimizer(params)`` is the spec's optimizer. The loop checkpoints ``model`` itself."""
        trained = wrap(model)
        return trained, {"model": make_optimizer(trained.parameters())}

    def train_step(self, trained: Any, optimizers: Optimizers, batch: dict[str, torch.Tensor],
                   step: Any) -> tuple[dict[str, float], int]:
        """({name in step_sums: sum over rows}, rows). The usual step: the loss, one backward,
        one optimizer. ``step`` is loop.Step (autocast, backward with scaling and clipping)."""
        with step.autocast():
            loss, rows = self.loss(trained, batch)
        step.backward(loss, optimizers["model"])
        return {"loss": loss.item() * rows}, rows

    def epoch_end(self, model: torch.nn.Module, run_dir: str, epoch: int) -> None:
        """Rank 0, after each epoch: files of the task's own in the run folder (a gan's sample grid)."""

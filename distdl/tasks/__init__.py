"""Tasks: what a model is trained to do, how it is evaluated, and what its predictions look like.

A family (models/) picks its task from its config. A task is constructed from the fitted
preprocessor and provides, for the worker loop (loop.py) and the Predictor (predict.py):

    metrics, default_best          metric names it reports; the default for checkpoint.best_metric
    output_columns                 the prediction columns it adds in scoring and serving
    loss(model, batch)             -> (scalar loss, rows): one training step's objective
    eval_sums(model, batch)        -> {name: sum over the batch}; the loop all-reduces them
    eval_metrics(sums)             -> {metric: value} from the group-wide sums
    predict(model, features, **o)  -> {column: list per row} for the decoded, good rows

A task that needs no training (embedding) has no metrics and provides only ``predict``;
spec validation refuses to train it.

Batches are dicts of tensors from ``collate.Collate``; the keys in ``targets`` are labels,
every other key is passed to ``model(**inputs)``.
"""
from __future__ import annotations

from typing import Any

from distdl.tasks.classification import Classification
from distdl.tasks.embedding import Embedding
from distdl.tasks.language_model import LanguageModel

TASKS: dict[str, type] = {
    "classification": Classification,
    "embedding": Embedding,
    "language_model": LanguageModel,
}


def create(name: str, preprocessor: Any) -> Any:
    return TASKS[name](preprocessor)

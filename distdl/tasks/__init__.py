"""Tasks: what a model is trained to do, how it is evaluated, and what its predictions look like.

A family (models/) picks its task from its config. A task is constructed from the fitted
preprocessor and provides, for the worker loop (loop.py) and the Predictor (predict.py):

    metrics, default_best          metric names it reports; the default for checkpoint.best_metric
    output_types                   {column: Arrow type} of the prediction columns it adds in
                                   scoring and serving (a batch of failed rows holds only nulls,
                                   yet every scoring output part must have the same schema)
    loss(model, batch)             -> (scalar loss, rows): one training step's objective
                                   (not needed by a task with its own train_step)
    eval_sums(model, batch)        -> {name: sum over the batch, a number or an array};
                                   the loop all-reduces them
    eval_metrics(sums)             -> {metric: value} from the group-wide sums
    predict(model, features, **o)  -> {column: list per row} for the decoded, good rows

A task that needs no training (embedding) has no metrics and provides only ``predict``;
spec validation refuses to train it.

Batches are dicts of tensors from ``collate.Collate``; the keys in ``targets`` are labels,
every other key is passed to ``model(**inputs)``.

Optional, for a task that needs more than "loss, backward, step" (image_generation):

    prepare(model, wrap, make_optimizer) -> (trained, {name: optimizer})
                                   wrap(module) DDP-wraps and places one module; make_optimizer(params)
                                   is the spec's optimizer; the loop steps and evaluates ``trained``
                                   and checkpoints ``model`` and the named optimizers
    train_step(trained, optimizers, batch, step: loop.Step) -> ({name: sum over rows}, rows)
    step_sums                      the names train_step returns; reported as train_<name> means
    epoch_end(model, run_dir, epoch)  rank 0, every epoch: files in the run folder (a sample grid)
    minimized                      metrics besides *loss*/*perplexity* where lower is better
    inputs                         what the Predictor decodes instead of the preprocessor
                                   (input_column, decode, features): generation reads row ids
"""
from __future__ import annotations

from typing import Any

from distdl.tasks.classification import Classification
from distdl.tasks.embedding import Embedding
from distdl.tasks.generation import ImageGeneration
from distdl.tasks.language_model import LanguageModel

TASKS: dict[str, type] = {
    "classification": Classification,
    "embedding": Embedding,
    "image_generation": ImageGeneration,
    "language_model": LanguageModel,
}


def create(name: str, preprocessor: Any) -> Any:
    return TASKS[name](preprocessor)

"""Tasks: what a model is trained to do, how it is evaluated, and what its predictions look like.

A family (models/) picks its task from its config; the task's interface (loss, evaluation
sums, predictions, and the hooks a task with its own step overrides) is ``base.Task``.
"""
from __future__ import annotations

from typing import Any

from distdl.tasks.base import Task
from distdl.tasks.classification import Classification
from distdl.tasks.embedding import Embedding
from distdl.tasks.generation import ImageGeneration
from distdl.tasks.language_model import LanguageModel

TASKS: dict[str, type[Task]] = {
    "classification": Classification,
    "embedding": Embedding,
    "image_generation": ImageGeneration,
    "language_model": LanguageModel,
}


def create(name: str, preprocessor: Any) -> Task:
    return TASKS[name](preprocessor)

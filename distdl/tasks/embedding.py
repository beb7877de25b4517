"""Sentence embeddings: a model that needs no training; its prediction is one vector per row.

It reports no metrics and has no loss, so a job spec cannot train it (spec.py refuses a task
without metrics); ``distdl import`` turns a local model folder into its checkpoint instead.
"""
from __future__ import annotations


import pyarrow as pa
import torch

from distdl.tasks.base import Task


class Embedding(Task):
    output_types = {"embedding": pa.list_(pa.float64())}  # no metrics: nothing to train

    def predict(self, model: torch.nn.Module, features: dict[str, torch.Tensor]) -> dict[str, list]:
        """One float vector (list of H floats) per row."""
        vectors = model(**features).float()  # (G, H)
        return {"embedding": vectors.cpu().numpy().tolist()}

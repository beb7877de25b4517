"""The model deployment: one checkpoint's Predictor in each replica, with @serve.batch
gathering the rows of concurrent requests into one forward pass.

The Predictor is the same class batch scoring runs, so a row means the same thing online
and offline; a bad row comes back with its ``error`` set, never as an exception that would
fail the other requests in its batch.
"""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from distdl.predict import Predictor

INDEX = "index"  # each row's position in its request: Predictor errors name it


@serve.deployment
class ModelServer:
    def __init__(self, checkpoint_path: str, top_k: int, threads: int, device: str,
                 max_batch_size: int, batch_wait_timeout_s: float):
        self.predictor = Predictor(checkpoint_path, top_k=top_k, threads=threads, device=device, where_column=INDEX)
        self.input_column = self.predictor.pre.input_column
        # @serve.batch takes its sizes at class definition; each deployment sets its own here.
        self._predict_rows.set_max_batch_size(max_batch_size)
        self._predict_rows.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def predict(self, values: list[Any]) -> list[dict]:
        """One request's inputs -> one Predictor output row each (``error`` set for bad ones)."""
        return list(await asyncio.gather(*(self._predict_rows((v, i)) for i, v in enumerate(values))))

    async def ready(self) -> bool:
        """Answers once the constructor has loaded the model: the readiness probe."""
        return True

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _predict_rows(self, rows: list[tuple[Any, int]]) -> list[dict]:
        values = np.empty(len(rows), dtype=object)  # one cell per row: bytes, or an array of any shape
        for j, (value, _) in enumerate(rows):
            values[j] = value
        batch = {self.input_column: values, INDEX: np.array([i for _, i in rows])}
        # The forward pass blocks; in a thread it leaves the replica's event loop free to take
        # the next requests (the next batch fills meanwhile) and to answer health checks.
        out = await asyncio.to_thread(self.predictor, batch)
        return [{name: column[j] for name, column in out.items()} for j in range(len(rows))]

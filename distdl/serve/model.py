"""The model deployment: one checkpoint's Predictor in each replica, with @serve.batch
gathering the rows of concurrent requests into one forward pass.

The Predictor is the same class batch scoring runs, so a row means the same thing online
and offline; a bad row comes back with its ``error`` set, never as an exception that would
fail the other requests in its batch. A request may set task options (a language model's
temperature, a gan's seed): a batch runs one forward pass per distinct set of options.
"""
from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import numpy as np
from ray import serve

from distdl.predict import Predictor
from distdl.serve import metrics

INDEX = "index"  # each row's position in its request: Predictor errors name it
DEPLOYMENT_PREFIX = "model-"  # each model's deployment is named model-NAME


class Row(NamedTuple):
    value: Any  # what the Predictor decodes: bytes, an array, a text, an id
    index: int
    options: tuple[tuple[str, Any], ...]  # the request's task options, sorted: rows with equal ones batch together


@serve.deployment
class ModelServer:
    def __init__(self, checkpoint_path: str, options: dict[str, Any], threads: int, device: str,
                 max_batch_size: int, batch_wait_timeout_s: float, backend: str = "torch"):
        # backend "onnx": each replica exports the model as it starts (seconds; distdl.onnx_export)
        self.predictor = Predictor(checkpoint_path, threads=threads, device=device, where_column=INDEX,
                                   backend=backend, **options)
        self.input_column = self.predictor.inputs.input_column
        # @serve.batch takes its sizes at class definition; each deployment sets its own here.
        self._predict_rows.set_max_batch_size(max_batch_size)
        self._predict_rows.set_batch_wait_timeout_s(batch_wait_timeout_s)
        # Ray 2.60's @serve.batch forms the next batch as soon as the previous one starts, then
        # holds it until the forward pass is free. Under load that batch is only what arrived in
        # batch_wait_timeout_s: ResNet-18 at 32 concurrent clients ran batches of ONE row. So rows
        # wait here while a forward pass runs and enter the batch queue together when it ends.
        self._forward_idle = asyncio.Event()
        self._forward_idle.set()
        self.forward_metrics = metrics.ForwardMetrics(  # the model's name, as its metrics' label
            serve.get_replica_context().deployment.removeprefix(DEPLOYMENT_PREFIX))

    async def predict(self, values: list[Any], options: dict[str, Any]) -> list[dict]:
        """One request's inputs -> one Predictor output row each (``error`` set for bad ones)."""
        key = tuple(sorted(options.items()))
        await self._forward_idle.wait()
        return list(await asyncio.gather(*(self._predict_rows(Row(v, i, key)) for i, v in enumerate(values))))

    async def ready(self) -> bool:
        """Answers once the constructor has loaded the model: the readiness probe."""
        return True

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _predict_rows(self, rows: list[Row]) -> list[dict]:
        groups: dict[tuple, list[int]] = {}
        for j, row in enumerate(rows):
            groups.setdefault(row.options, []).append(j)
        out: list[dict] = [{}] * len(rows)
        self._forward_idle.clear()
        try:
            for options, members in groups.items():
                self.forward_metrics.record(len(members))
                # The forward pass blocks; in a thread it leaves the replica's event loop free to
                # take the next requests (they gather at the gate meanwhile) and answer health checks.
                answers = await asyncio.to_thread(self._forward, [rows[j] for j in members], dict(options))
                for j, answer in zip(members, answers):
                    out[j] = answer
        finally:
            self._forward_idle.set()
        return out

    def _forward(self, rows: list[Row], options: dict[str, Any]) -> list[dict]:
        values = np.empty(len(rows), dtype=object)  # one cell per row: bytes, or an array of any shape
        for j, row in enumerate(rows):
            values[j] = row.value
        batch = {self.input_column: values, INDEX: np.array([row.index for row in rows])}
        columns = self.predictor(batch, **options)
        return [{name: column[j] for name, column in columns.items()} for j in range(len(rows))]

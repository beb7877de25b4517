"""Predictor: the single inference code path for batch scoring, serving and tests.

It loads a checkpoint once (safetensors + JSON, never unpickled) and maps a raw batch to
prediction columns: the checkpoint's preprocessor decodes each row, its task (tasks/) turns
the model's output into columns. Rows that cannot be decoded, or whose forward pass fails
(any exception, a MemoryError too), get an ``error`` message and null predictions instead of
failing the batch: one bad row must not kill a million-row job, or a served batch of requests.
The model runs in its family's inference form (``Family.for_inference``), and variable-length
rows run in length-sorted sub-batches, so a batch of short texts does not pay for its longest.
"""
from __future__ import annotations

import inspect
import os
import socket
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from distdl import checkpoint, models, tasks
from distdl.collate import to_tensors
from distdl.preprocessors import BadInputError
from distdl.preprocessors.base import features_at_once

# On CPU, variable-length rows (tokens, audio frames) run in sub-batches of this many rows
# sorted by length, each padded only to its own longest row: less padding, and matmuls still
# large enough. On a GPU one large batch keeps the device busier: not split.
SORTED_RUN_ROWS = 64


def _task_of(checkpoint_path: str) -> tuple[Any, Any, str]:
    """(task, preprocessor, task name) of the checkpoint from its JSON files, without loading the model."""
    pre, name = checkpoint.load_preprocessor(checkpoint_path), models.task_name(checkpoint.load_meta(checkpoint_path))
    return tasks.create(name, pre), pre, name


def output_types(checkpoint_path: str) -> dict[str, pa.DataType]:
    """The Arrow type of each column a Predictor of this checkpoint adds (the scoring driver
    fixes its output schema with it)."""
    return {**_task_of(checkpoint_path)[0].output_types, "error": pa.string()}


def refuse_unknown_options(task: Any, task_name: str, options: dict[str, Any]) -> None:
    """Options are the keyword arguments of the task's ``predict`` after (model, features)."""
    accepted = list(inspect.signature(task.predict).parameters)[2:]
    if set(options) - set(accepted):
        raise ValueError(f"option(s) {sorted(set(options) - set(accepted))} do not apply to a "
                         f"{task_name} model; it takes {accepted}")


def check_options(checkpoint_path: str, options: dict[str, Any]) -> None:
    """What each Predictor of this checkpoint would refuse, checked on the driver before Ray starts."""
    task, _, name = _task_of(checkpoint_path)
    refuse_unknown_options(task, name, options)


def _row_inputs(task: Any, pre: Any) -> Any:
    """What each row's input is: data for the preprocessor, or the task's own (a gan's row ids)."""
    return task.inputs or pre


def input_column(checkpoint_path: str) -> str:
    """The column a Predictor of this checkpoint reads each row from (the scoring driver
    checks the input has it before any actor starts)."""
    task, pre, _ = _task_of(checkpoint_path)
    return _row_inputs(task, pre).input_column


def failed(what: str, where: str, exc: BaseException) -> str:
    """A row's error message for an exception that is not a BadInputError (a MemoryError's own text is empty)."""
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{what} ({where}): {reason}"


class DeviceError(RuntimeError):
    """A GPU was asked for where torch cannot use one."""


def usable_device(name: str) -> torch.device:
    """``name`` as a torch device, checked before the model moves there. Ray hands out a node's
    GPUs by count (what its raylet advertises), so a node whose torch cannot reach them (a
    CPU-only torch build, no NVIDIA driver) would otherwise fail deep inside the first .to()."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "it is a CPU-only build" if torch.version.cuda is None else "it finds no usable NVIDIA driver or GPU"
        raise DeviceError(f"a GPU was asked for (--gpus, gpus_per_replica) but torch {torch.__version__} on "
                          f"{socket.gethostname()} cannot use one: {why} "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return device


class Predictor:
    """Callable class for ``ds.map_batches(Predictor, fn_constructor_kwargs=...)``.

    ``passthrough`` columns (e.g. the row id) are copied from input to output unchanged;
    ``where_column`` names the column used to say which row an error belongs to;
    ``backend`` "onnx": the model runs in onnxruntime (distdl.onnx_backend), from ``onnx_model``
    (the bytes onnx_export.build gives; exported here when None);
    other keyword ``options`` go to the task's ``predict`` (e.g. ``top_k`` for classification);
    a call may override them.
    """

    def __init__(self, checkpoint_path: str, threads: int | None = None, passthrough: Sequence[str] = (),
                 where_column: str | None = None, device: str = "cpu", backend: str = "torch",
                 onnx_model: bytes | None = None, **options: Any):
        if threads:
            # One actor per reserved CPU share: more threads than that oversubscribe the cores.
            torch.set_num_threads(threads)
        self.device = usable_device(device)  # before the model loads: a bad node fails fast
        meta = checkpoint.load_meta(checkpoint_path)  # first: it says when the folder is no complete checkpoint
        self.pre = checkpoint.load_preprocessor(checkpoint_path)
        self.family, self.task_name = meta["family"], models.task_name(meta)
        self.task = tasks.create(self.task_name, self.pre)
        refuse_unknown_options(self.task, self.task_name, options)
        self.inputs = _row_inputs(self.task, self.pre)
        self.model = self._load(checkpoint_path, backend, onnx_model, meta, threads)
        self.options = options
        self.passthrough = list(passthrough)
        self.where_column = where_column

    def _load(self, checkpoint_path: str, backend: str, onnx_model: bytes | None, meta: dict,
              threads: int | None) -> Any:
        """The model the task calls: the torch module in its inference form, or an onnxruntime session."""
        if backend == "onnx":
            from distdl.onnx_backend import OnnxModel
            from distdl.onnx_export import build

            return OnnxModel(onnx_model or build(checkpoint_path)[0], meta, threads, self.device)
        if backend != "torch":
            raise ValueError(f"backend: one of torch, onnx; got {backend!r}")
        model = checkpoint.load_module(checkpoint_path, meta)  # meta and preprocessor are read already
        faster = models.FAMILIES[self.family].for_inference
        return (faster(model) if faster else model).to(self.device)

    @property
    def output_columns(self) -> tuple[str, ...]:
        return (*self.task.output_types, "error")

    def __call__(self, batch: dict[str, np.ndarray], **options: Any) -> dict[str, np.ndarray]:
        """Prediction columns for ``batch``; ``options`` override the constructor's for this call
        (serving: a request's own temperature or seed)."""
        refuse_unknown_options(self.task, self.task_name, options)
        values = batch[self.inputs.input_column]
        errors = np.full(len(values), None, dtype=object)
        features, good = features_at_once(self.inputs, values), list(range(len(values)))
        if features is None:
            features, good = self._decode_each(batch, values, errors)
        out = {name: batch[name] for name in self.passthrough}
        predicted = self._predict(batch, features, good, errors, {**self.options, **options})
        return {**out, **predicted, "error": errors}

    def _decode_each(self, batch: dict[str, np.ndarray], values: np.ndarray,
                     errors: np.ndarray) -> tuple[dict[str, np.ndarray] | None, list[int]]:
        """(features of the rows that decode, their indices); each other row's reason goes in ``errors``."""
        decoded: list[Any] = []
        for i, value in enumerate(values):
            try:
                decoded.append(self.inputs.decode(value, self._where(batch, i)))
            except Exception as exc:  # a BadInputError says why; anything else is still this row's alone
                decoded.append(None)
                errors[i] = str(exc) if isinstance(exc, BadInputError) else failed("cannot decode",
                                                                                    self._where(batch, i), exc)
        good = [i for i, d in enumerate(decoded) if d is not None]
        return (self.inputs.features([decoded[i] for i in good]) if good else None), good

    def _predict(self, batch: dict[str, np.ndarray], features: dict[str, np.ndarray] | None, good: list[int],
                 errors: np.ndarray, options: dict[str, Any]) -> dict[str, np.ndarray]:
        """Prediction columns for every row of ``batch`` from the ``features`` of rows ``good``;
        the other rows stay null, and a row whose forward pass fails gets its reason in ``errors``."""
        columns = {name: np.full(len(errors), None, dtype=object) for name in self.task.output_types}
        for run in self._runs(features) if good else []:
            for rows, predicted in self._passes(features, run, options):
                if isinstance(predicted, Exception):
                    errors[good[rows[0]]] = failed("prediction failed", self._where(batch, good[rows[0]]), predicted)
                    continue
                for name, values in predicted.items():
                    for example, value in zip(rows, values):
                        columns[name][good[example]] = value
        return columns

    def _passes(self, features: dict[str, np.ndarray], rows: np.ndarray,
                options: dict[str, Any]) -> Iterator[tuple[np.ndarray, dict[str, list] | Exception]]:
        """(examples, their predictions) of one forward pass over ``rows``. If it fails, each row
        is passed alone (a MemoryError of the whole run usually fits one row at a time), and a
        row that fails by itself comes with its exception: only that row gets an error."""
        whole = len(rows) == len(next(iter(features.values())))
        run = features if whole else {k: v[rows] for k, v in features.items()}
        try:
            with torch.inference_mode():
                predicted = self.task.predict(self.model, {k: v.to(self.device) for k, v in to_tensors(run).items()},
                                              **options)
        except Exception as exc:
            if len(rows) == 1:
                yield rows, exc
            else:
                for i in range(len(rows)):
                    yield from self._passes(features, rows[i:i + 1], options)
            return
        yield rows, predicted

    def _runs(self, features: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The examples of each forward pass (indices into ``features``): all at once, or for
        variable-length rows on CPU, runs of SORTED_RUN_ROWS sorted by length."""
        n = len(next(iter(features.values())))
        ragged = next((v for v in features.values() if v.dtype == object), None)
        if ragged is None or self.device.type != "cpu" or n <= SORTED_RUN_ROWS:
            return [np.arange(n)]
        order = np.argsort([len(v) for v in ragged], kind="stable")
        return [order[i:i + SORTED_RUN_ROWS] for i in range(0, n, SORTED_RUN_ROWS)]

    def _where(self, batch: dict[str, np.ndarray], i: int) -> str:
        if self.where_column and self.where_column in batch:
            return f"{self.where_column} {batch[self.where_column][i]}"
        return f"row {i} of its batch"

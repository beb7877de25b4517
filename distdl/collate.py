"""Numpy batches from Ray Data -> tensors, padding variable-length columns to the batch's longest."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

# Ray Data hands workers and actors read-only numpy views of its object store. The tensors made
# from them are model inputs, never written in place, so they share that memory instead of
# copying it; torch warns about every such array (once per process). Set here, at import, not
# per call: collate runs on Ray's prefetch threads and warnings.catch_warnings() is not thread-safe.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


def pad(values: np.ndarray, fill: float = 0) -> np.ndarray:
    """A ragged column (object array of arrays with equal trailing dims) -> (N, T_max, ...)."""
    arrays = [np.asarray(v) for v in values]
    longest = max((len(a) for a in arrays), default=0)
    out = np.full((len(arrays), longest, *arrays[0].shape[1:]), fill, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Dense columns as they are; ragged ones padded with 0 (their true lengths travel in
    a separate column the preprocessor writes, e.g. "lengths")."""
    return {k: torch.from_numpy(pad(v) if v.dtype == object else np.ascontiguousarray(v)) for k, v in batch.items()}


class Collate(NumpyBatchCollateFn):
    """``iter_torch_batches(collate_fn=Collate())``: Ray moves the returned tensors to the device."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return to_tensors(batch)

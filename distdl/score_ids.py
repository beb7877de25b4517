"""Row ids of a scoring run: every input row has its own id, and the output holds each once.

A resumed run drops the rows whose id is committed, and a part is named by its ids: two
rows sharing an id (or ids that read alike as text, ``1`` and ``"1"``, ``None`` and
``"None"``: the output and the resume compare ids by their text) would lose one of them.
So such an input is refused before anything is scored, naming the column and a row.

The driver holds one 8-byte hash per input row (80 MB for 10 M rows), never the rows: Ray Data
tasks read the id column and hash it. The same hashes check the committed output at the end.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import ray.data

from distdl.data import value_bytes

KEY, NULL = "_distdl_id_key", "_distdl_id_null"
EXAMPLES = 3  # ids named in a message


class IdError(ValueError):
    """The input's ids cannot tell its rows apart."""


class OutputMismatch(RuntimeError):
    """The committed output does not hold each input row exactly once."""


def id_key(value: object) -> int:
    """The 64-bit hash of an id's text (value_bytes): what the output and a resume compare."""
    return int.from_bytes(hashlib.blake2b(value_bytes(value), digest_size=8).digest(), "little")


def _keyed(batch: pa.Table, column: str, keep_ids: bool) -> pa.Table:
    ids = batch[column]
    keys = pa.array([id_key(v) for v in ids.to_pylist()], pa.uint64())
    return pa.table({**({column: ids} if keep_ids else {}), KEY: keys, NULL: pc.is_null(ids)})


@dataclass
class InputIds:
    """Every input row's id hash, sorted; rows: the input's row count."""
    keys: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.keys)


def check_input(ds: ray.data.Dataset, column: str, flag: str) -> InputIds:
    """Every row's id hash, after refusing a null, a duplicate or two ids with the same text.
    ``flag`` names where the column came from (``--id-column``, or the default ``id``)."""
    keys, position = [], 0
    with _in_order(ds):
        for batch in _keyed_batches(ds, column, keep_ids=False):
            nulls = np.flatnonzero(batch[NULL].to_numpy(zero_copy_only=False))
            if len(nulls):
                raise IdError(f"{flag} '{column}': row {position + nulls[0]} (counting from 0) has no id (null); "
                              "give every row an id, or pass --content-ids to score by content hashes")
            keys.append(batch[KEY].to_numpy())
            position += batch.num_rows
    keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    order = np.argsort(keys, kind="stable")
    repeated = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if len(repeated):
        _refuse_repeats(ds, column, flag, set(keys[order][repeated].tolist()))
    return InputIds(keys[order])


@contextmanager
def _in_order(ds: ray.data.Dataset) -> Iterator[None]:
    """Read ``ds`` in the input's row order (to name a row by its number) inside the ``with``.
    The order is set on the dataset's context, which the scoring pipeline built on ``ds``
    shares, so only while the ids are read."""
    options = ds.context.execution_options
    previous, options.preserve_order = options.preserve_order, True
    try:
        yield
    finally:
        options.preserve_order = previous


def _keyed_batches(ds: ray.data.Dataset, column: str, keep_ids: bool) -> Iterator[pa.Table]:
    keyed = ds.select_columns([column]).map_batches(_keyed, fn_kwargs={"column": column, "keep_ids": keep_ids},
                                                     batch_format="pyarrow")
    return keyed.iter_batches(batch_format="pyarrow", batch_size=None)


def _rows_with(ds: ray.data.Dataset, column: str, keys: set[int]) -> list[tuple[int, object]]:
    """(row number, id) of the input rows whose id hash is in ``keys``."""
    found, position, wanted = [], 0, np.array(sorted(keys), dtype=np.uint64)
    with _in_order(ds):
        for batch in _keyed_batches(ds, column, keep_ids=True):
            for at in np.flatnonzero(np.isin(batch[KEY].to_numpy(), wanted)):
                found.append((position + int(at), batch[column][int(at)].as_py()))
            position += batch.num_rows
    return found


def _refuse_repeats(ds: ray.data.Dataset, column: str, flag: str, keys: set[int]) -> None:
    """Name the first two rows whose ids share a text; none: the hashes alone collided."""
    first: dict[bytes, tuple[int, object]] = {}
    for row, value in _rows_with(ds, column, keys):
        text = value_bytes(value)
        if text not in first:
            first[text] = (row, value)
            continue
        row0, value0 = first[text]
        same = type(value0) is type(value) and value0 == value
        what = f"id {value!r} is in rows {row0} and {row} (counting from 0)" if same else (
            f"ids {value0!r} (row {row0}) and {value!r} (row {row}, counting from 0) are the same as text "
            f"({text.decode(errors='replace')!r})")
        raise IdError(f"{flag} '{column}': {what}; ids must be unique, or pass --content-ids to score by "
                      "content hashes")


def check_output(expected: InputIds, ds: ray.data.Dataset, column: str, output_ids: pa.ChunkedArray) -> None:
    """Raise OutputMismatch naming the difference unless ``output_ids`` (the committed output's
    id column) holds each id of ``expected`` exactly once and nothing else. ``ds``: the input,
    read again only to name a missing row."""
    keys = np.concatenate([np.zeros(0, np.uint64),
                           *(np.array([id_key(v) for v in chunk.to_pylist()], np.uint64) for chunk in output_ids.chunks)])
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    twice = order[1:][ordered[1:] == ordered[:-1]]
    extra = np.flatnonzero(~np.isin(keys, expected.keys))
    missing = np.setdiff1d(expected.keys, keys, assume_unique=True)
    problems = []
    if len(missing):
        named = [value for _, value in _rows_with(ds, column, set(missing[:EXAMPLES].tolist()))]
        problems.append(f"{len(missing)} input row(s) missing (e.g. {column} {_examples(named)})")
    if len(twice):
        problems.append(f"{len(twice)} row(s) more than once (e.g. {column} {_examples([output_ids[int(i)].as_py() for i in twice])})")
    if len(extra):
        problems.append(f"{len(extra)} row(s) not in the input (e.g. {column} "
                        f"{_examples([output_ids[int(i)].as_py() for i in extra])})")
    if problems:
        raise OutputMismatch(f"the output does not hold each input row exactly once: {'; '.join(problems)} "
                             f"({expected.rows} rows in, {len(output_ids)} out)")


def check_output_rows(rows_in: int, rows_out: int) -> None:
    """Content ids repeat where rows do, so only the counts can be compared."""
    if rows_in != rows_out:
        raise OutputMismatch(f"the output does not hold each input row exactly once: {rows_in} rows in, "
                             f"{rows_out} out")


def _examples(values: list) -> str:
    return ", ".join(repr(v) for v in values[:EXAMPLES])

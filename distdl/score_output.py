"""The scoring output folder: parquet parts committed atomically, one per written block.

A write task commits its block as one part (score_commit: a temporary file, fsync, rename),
so a part is either absent or complete. The part's name is a hash of the row ids it holds (and
of the write task's index where ids come from content; see PartSink): a write retried after
a crash (or a block recomputed after an actor died) replaces the same file instead of adding
a second copy of its rows. A re-run reads the ids already committed and scores only the
rest, so a killed job resumes without scoring a row twice.

    <output>/part-<hash>.parquet   committed rows: the id column, predictions, error
    <output>/.tmp-<id>-...         a write cut short; deleted when the next run starts
    <output>/_distdl_score.json    manifest: checkpoint and input identity, id column, complete flag
    <output>/_distdl_score.lock    the running distdl score's host and pid (score_lock)
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset
import pyarrow.fs
import pyarrow.parquet as pq

from ray.data._internal.execution.interfaces import TaskContext
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink

from distdl.data import value_bytes
from distdl.paths import filesystem, join
from distdl.score_commit import TMP_PREFIX, commit
from distdl.score_lock import LOCK

MANIFEST = "_distdl_score.json"
PART_PREFIX = "part-"


def part_name(ids: Iterable, task: int | None = None) -> str:
    """The part holding rows ``ids`` (and written by write task ``task``, for content ids).
    Each id's bytes go in after their length: ids joined by a separator could contain it
    (["a\\nb"] and ["a", "b"] joined by newlines are one string)."""
    digest = hashlib.blake2b(digest_size=12)
    for value in ids:
        key = value_bytes(value)
        digest.update(len(key).to_bytes(8, "little") + key)
    if task is not None:
        digest.update(f"task {task}".encode())
    return f"{PART_PREFIX}{digest.hexdigest()}.parquet"


class PartSink(Datasink):
    """``ds.write_datasink(PartSink(...))``: one atomically committed parquet part per write task.

    ``types`` fixes the Arrow type of the prediction columns in every part: a block whose rows
    all failed holds only nulls there, and a part typed ``null`` next to one typed ``int64``
    makes the folder unreadable as one table (pyarrow takes the first file's schema)."""

    def __init__(self, output_path: str, id_column: str, types: dict[str, pa.DataType],
                 rows_per_file: int | None = None, ids_from_content: bool = False):
        self.output_path = output_path
        self.id_column = id_column
        # Ids hashed from the rows' content repeat where rows do: two copies of one input file
        # give blocks with the same ids, whose parts must not replace each other. The write
        # task's index tells them apart and stays the same when Ray retries that task.
        self.ids_from_content = ids_from_content
        self.types = types
        self.rows_per_file = rows_per_file
        self.rows_written = 0  # set on the driver when the write completes

    @property
    def min_rows_per_write(self) -> int | None:
        return self.rows_per_file

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> int:
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        if not tables:
            return 0
        table = pa.concat_tables(tables, promote_options="permissive")
        table = table.cast(pa.schema([pa.field(f.name, self.types.get(f.name, f.type)) for f in table.schema]))
        name = part_name(table[self.id_column].to_pylist(), ctx.task_idx if self.ids_from_content else None)
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        commit(self.output_path, name, buffer.getvalue().to_pybytes())  # readers see all of the part or none
        return table.num_rows

    def on_write_complete(self, write_result: Any) -> None:
        self.rows_written = sum(write_result.write_returns)


def _parts(output_path: str) -> tuple[pyarrow.fs.FileSystem, list[str]]:
    fs, inner = filesystem(output_path)
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.Directory:
        return fs, []
    infos = fs.get_file_info(pyarrow.fs.FileSelector(inner))
    return fs, sorted(i.path for i in infos if i.base_name.startswith(PART_PREFIX) and i.base_name.endswith(".parquet"))


class CommittedRows:
    """``CommittedRows(output)()``: the rows in the output's committed parts so far (its progress),
    reading each part's footer once (a part rewritten by a retry keeps its name and rows)."""

    def __init__(self, output_path: str):
        self.output_path = output_path
        self.rows: dict[str, int] = {}

    def __call__(self) -> int:
        fs, files = _parts(self.output_path)
        for path in files:
            if path not in self.rows:
                with fs.open_input_file(path) as f:
                    self.rows[path] = pq.ParquetFile(f).metadata.num_rows
        return sum(self.rows.values())


def _column(output_path: str, column: str) -> pa.ChunkedArray | None:
    fs, files = _parts(output_path)
    if not files:
        return None
    return pyarrow.dataset.dataset(files, format="parquet", filesystem=fs).to_table(columns=[column])[column]


class IdSet:
    """Which ids are already committed, as one sorted array of byte keys.

    A resumed run hands it to every scoring actor. As a Python set the ids would cost each
    process about ten times the memory and a slow unpickle; this array unpickles without a
    copy (shared by a node's actors through Ray's object store), and lookups are by binary search."""

    def __init__(self, ids: Iterable):
        self.keys = np.sort(_keys(ids))

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, ids: Iterable) -> np.ndarray:
        keys = _keys(ids)
        if not len(self.keys):
            return np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[at] == keys


def _keys(ids: Iterable) -> np.ndarray:
    """Each id's bytes (as for row ids), whatever its type, and a last byte 0xff: numpy's
    fixed-width bytes drop trailing NULs, and a last byte that is never NUL keeps b"a" and
    b"a\\0" apart. An id longer than every committed one is never cut to their width:
    searchsorted compares it at its own, and the equality that follows fails."""
    return np.array([value_bytes(v) + b"\xff" for v in ids], dtype=np.bytes_)


def committed_id_column(output_path: str, id_column: str) -> pa.ChunkedArray:
    """The id column of every committed part (empty when none is)."""
    ids = _column(output_path, id_column)
    return pa.chunked_array([], pa.null()) if ids is None else ids


def committed_ids(output_path: str, id_column: str) -> IdSet:
    return IdSet(committed_id_column(output_path, id_column).to_pylist())


def counts(output_path: str, examples: int = 3) -> tuple[int, int, list[str]]:
    """(rows, rows with an error, the first ``examples`` errors) over the committed parts."""
    errors = _column(output_path, "error")
    if errors is None:
        return 0, 0, []
    first = pc.drop_null(errors)[:examples].to_pylist()  # each names its row
    return len(errors), pc.count(errors).as_py(), first  # count() skips nulls: the rows with an error


def clear(output_path: str) -> None:
    """Delete everything in the output folder but the lock this run holds (--overwrite)."""
    fs, inner = filesystem(output_path)
    for info in fs.get_file_info(pyarrow.fs.FileSelector(inner)):
        if info.base_name == LOCK:
            continue
        if info.type == pyarrow.fs.FileType.Directory:
            fs.delete_dir(info.path)
        else:
            fs.delete_file(info.path)


def remove_partial(output_path: str) -> None:
    """Delete temporary files of writes cut short by a killed run."""
    fs, inner = filesystem(output_path)
    for info in fs.get_file_info(pyarrow.fs.FileSelector(inner)):
        if info.base_name.startswith(TMP_PREFIX):
            fs.delete_file(info.path)


def read_manifest(output_path: str) -> dict | None:
    fs, inner = filesystem(output_path)
    path = join(inner, MANIFEST)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def write_manifest(output_path: str, manifest: dict) -> None:
    commit(output_path, MANIFEST, json.dumps(manifest, indent=2).encode())

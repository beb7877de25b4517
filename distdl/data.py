"""Readers and the train/val split, all lazy Ray Data datasets built on the driver.

Nothing here materializes the data in the driver: readers stream from local paths or
URIs (s3://, gs://) and the validation split is a deterministic hash of each row's key,
so the same row always lands on the same side, on every epoch and every re-run.
"""
from __future__ import annotations

import hashlib
import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow
import pyarrow.fs
import pyarrow.parquet

import ray.data

from distdl.paths import filesystem

IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"]
# class-per-folder formats: the column that holds each file's bytes, and the files read
FOLDER_FORMATS = {"image_folder": ("image", IMAGE_EXTENSIONS), "audio_folder": ("audio", ["wav"])}
MAX_BLOCKS = 2000  # blocks per scoring job; more costs more in scheduling than it saves on a kill
FILES_PER_BLOCK = 256  # class-per-folder inputs: one file is one row
EXTENSION_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "text"}
SET_FORMAT = "set data.format (training) or --format (distdl score)"


class DataError(ValueError):
    """Data that cannot be read: names the path and what was expected."""


@dataclass(frozen=True)
class BlockTarget:
    """How a scoring job wants its input cut into blocks (a block is one actor task and one
    committed output part): at least one per file and ``at_least`` in all, and where the row
    count is known before reading (parquet footers; folders: one row per file) no more than
    ``max_rows`` rows each. CSV, JSON lines and text files keep Ray's size-based blocks:
    their rows are unknown until read, and Ray already cuts a large file into many."""
    at_least: int
    max_rows: int


def infer_format(path: str) -> str:
    """Format from the extension, or for a folder from what it holds."""
    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pyarrow.fs.FileType.NotFound:
        raise DataError(f"data path not found: {path}")
    if info.type == pyarrow.fs.FileType.File:
        ext = posixpath.splitext(inner)[1].lower()
        if ext not in EXTENSION_FORMATS:
            raise DataError(f"cannot infer the format of {path} from '{ext}'; {SET_FORMAT}")
        return EXTENSION_FORMATS[ext]
    entries = fs.get_file_info(pyarrow.fs.FileSelector(inner, recursive=False))
    folders = [e for e in entries if e.type == pyarrow.fs.FileType.Directory]
    if folders:  # class folders: wav files in the first one make it audio, else images
        inside = fs.get_file_info(pyarrow.fs.FileSelector(folders[0].path, recursive=False))
        return "audio_folder" if any(e.base_name.lower().endswith(".wav") for e in inside) else "image_folder"
    exts = {posixpath.splitext(e.path)[1].lower() for e in entries if not e.base_name.startswith((".", "_"))}
    found = sorted({EXTENSION_FORMATS[e] for e in exts if e in EXTENSION_FORMATS})
    if len(found) != 1:
        if not exts:
            raise DataError(f"data folder {path} holds no data files")
        raise DataError(f"cannot infer the format of folder {path} (extensions {sorted(exts)}); {SET_FORMAT}")
    return found[0]


def _files(path: str, extensions: tuple[str, ...]) -> list[tuple[pyarrow.fs.FileSystem, str]]:
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type == pyarrow.fs.FileType.File:
        return [(fs, inner)]
    infos = fs.get_file_info(pyarrow.fs.FileSelector(inner, recursive=True))
    return [(fs, i.path) for i in infos if i.type == pyarrow.fs.FileType.File and i.path.lower().endswith(extensions)]


def _check_parquet(fs: pyarrow.fs.FileSystem, path: str) -> int:
    try:
        with fs.open_input_file(path) as f:
            return pyarrow.parquet.ParquetFile(f).metadata.num_rows  # reads the footer only
    except (OSError, pyarrow.ArrowException) as exc:
        raise DataError(f"cannot read parquet file {path}: {exc}") from None


def check_readable(path: str, fmt: str) -> list[int] | None:
    """Open every parquet footer up front (Ray's read error would not name the bad file);
    the rows of each file, or None for other formats."""
    if fmt != "parquet":
        return None
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda f: _check_parquet(*f), _files(path, (".parquet",))))


def read(path: str, fmt: str = "auto", blocks: BlockTarget | None = None) -> ray.data.Dataset:
    """A lazy dataset of raw rows; image (audio) folders give columns image (audio) bytes, label, path.
    ``blocks``: cut the input as BlockTarget says instead of Ray's size-based choice."""
    fmt = infer_format(path) if fmt == "auto" else fmt
    parquet_rows = check_readable(path, fmt)
    count = _block_count(path, fmt, blocks, parquet_rows) if blocks else None
    if fmt == "parquet":
        return _read_parquet(path, count)
    if fmt == "csv":
        return ray.data.read_csv(path, override_num_blocks=count)
    if fmt == "jsonl":
        return ray.data.read_json(path, lines=True, override_num_blocks=count)
    if fmt == "text":
        return ray.data.read_text(path, override_num_blocks=count)
    if fmt in FOLDER_FORMATS:
        column, extensions = FOLDER_FORMATS[fmt]
        files = ray.data.read_binary_files(path, include_paths=True, file_extensions=extensions,
                                           override_num_blocks=count)
        return files.map_batches(_label_from_folder, fn_kwargs={"column": column}, batch_format="numpy")
    raise DataError(f"unknown data format {fmt!r}")


def _read_parquet(path: str, blocks: int | None) -> ray.data.Dataset:
    """Ray's V1 parquet reader, which reads the footers once, on the driver, here.

    Ray 2.60's default V2 reader re-lists the files and starts a footer-reading actor (a new
    process) on every execution, i.e. every epoch of train and of val. It also packs small
    files into one read task whatever ``override_num_blocks`` says (12 files -> 1 block)."""
    # V1 logs two estimates at INFO on every read ("Estimated parquet encoding ratio", "reader
    # batch size"): noise in every train and score output. Its warnings still show.
    logging.getLogger("ray.data._internal.datasource.parquet_datasource").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    previous, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        return ray.data.read_parquet(path, override_num_blocks=blocks)
    finally:
        ctx.use_datasource_v2 = previous


def _block_count(path: str, fmt: str, target: BlockTarget, parquet_rows: list[int] | None) -> int | None:
    """Blocks for ``target`` (see BlockTarget); None: Ray decides, for one file of unknown rows."""
    if fmt in FOLDER_FORMATS:  # a file is a row, and a whole image or clip
        rows, files = len(_files(path, tuple(FOLDER_FORMATS[fmt][1]))), 1
        max_rows = min(target.max_rows, FILES_PER_BLOCK)
    elif parquet_rows is not None:
        rows, files, max_rows = sum(parquet_rows), len(parquet_rows), target.max_rows
    else:
        files = len(_files(path, tuple(ext for ext, f in EXTENSION_FORMATS.items() if f == fmt)))
        return min(MAX_BLOCKS, files) if files > 1 else None
    return max(1, min(MAX_BLOCKS, rows, max(files, target.at_least, -(-rows // max_rows))))


def _label_from_folder(batch: dict[str, np.ndarray], column: str) -> dict[str, np.ndarray]:
    paths = batch["path"]
    labels = np.array([posixpath.basename(posixpath.dirname(p)) for p in paths], dtype=object)
    return {column: batch["bytes"], "label": labels, "path": paths}


def split(ds: ray.data.Dataset, val_fraction: float, seed: int, key_column: str | None) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(train, val) by a salted hash of each row's key: its id column, file path, or content."""
    kwargs = {"val_fraction": val_fraction, "seed": seed, "key_column": key_column}
    train = ds.map_batches(_keep_side, fn_kwargs={**kwargs, "want_val": False}, batch_format="numpy")
    val = ds.map_batches(_keep_side, fn_kwargs={**kwargs, "want_val": True}, batch_format="numpy")
    return train, val


def _keep_side(batch: dict[str, np.ndarray], val_fraction: float, seed: int, key_column: str | None,
               want_val: bool) -> dict[str, np.ndarray]:
    columns = [key_column] if key_column else (["path"] if "path" in batch else sorted(batch))
    n = len(next(iter(batch.values())))
    is_val = np.array([_unit_hash(seed, [batch[c][i] for c in columns]) < val_fraction for i in range(n)], dtype=bool)
    mask = is_val if want_val else ~is_val
    return {k: v[mask] for k, v in batch.items()}


def value_bytes(value: object) -> bytes:
    """Bytes that identify a cell's value, the same whichever reader produced it."""
    if isinstance(value, np.ndarray):
        return value.tobytes()
    if isinstance(value, bytes):
        return value
    return str(value.item() if isinstance(value, np.generic) else value).encode()


def _unit_hash(seed: int, values: list) -> float:
    h = hashlib.blake2b(str(seed).encode(), digest_size=8)
    for v in values:
        h.update(value_bytes(v))
    return int.from_bytes(h.digest(), "little") / 2**64


def train_val(train_path: str, val_path: str | None, fmt: str, val_fraction: float, seed: int,
              id_column: str | None) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    train = read(train_path, fmt)
    if val_path:
        return train, read(val_path, fmt)
    return split(train, val_fraction, seed, id_column)

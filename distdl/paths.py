"""Local paths and URIs (s3://, gs://, ...) through one pyarrow filesystem interface."""
from __future__ import annotations

from pathlib import Path

import pyarrow.fs


def is_uri(path: str) -> bool:
    return "://" in path


def filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path inside it); local paths are made absolute."""
    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).absolute())


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read()

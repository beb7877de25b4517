"""Local paths and URIs (s3://, gs://, ...) through one pyarrow filesystem interface."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs


def is_uri(path: str) -> bool:
    return "://" in path


def absolute(path: str, base: Path | None = None) -> str:
    """``path`` made absolute against ``base`` (default: the working directory) without following
    symbolic links: a run's ``best`` is a link swapped each time training improves it
    (checkpoint.copy), and resolving it would pin one version, deleted when the next replaces it."""
    return os.path.normpath(os.path.join(base or Path.cwd(), path))


def join(*parts: str) -> str:
    """Path parts joined with "/", for local paths and URIs (s3://...) alike."""
    return "/".join(p.rstrip("/") for p in parts)


def filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path inside it); local paths are made absolute."""
    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).absolute())


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file, creating its folder."""
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write(data)

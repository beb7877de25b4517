"""Crash-safe commits of the scoring output's files: the whole new file or the old one, never part.

Every file of an output folder (a parquet part, the manifest) is written under a hidden
temporary name, flushed to disk (fsync), and renamed over its final name; on local disk the
folder is fsynced too, so the rename itself survives a power cut. A process killed at any
point leaves the old file (and perhaps a ``.tmp-`` file, which the next run deletes) or the
new one. Object stores (s3://, gs://) have no fsync; there a file is uploaded under the
temporary name and moved, and each object appears whole or not at all.

This module imports no Ray, so a test can kill a process between its steps cheaply.
"""
from __future__ import annotations

import os
import uuid

import pyarrow.fs

from distdl.paths import filesystem, join

TMP_PREFIX = ".tmp-"


def commit(folder: str, name: str, content: bytes) -> None:
    """Make ``<folder>/<name>`` hold ``content``, atomically (see the module's docstring)."""
    fs, inner = filesystem(folder)
    tmp = join(inner, f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}")
    if not isinstance(fs, pyarrow.fs.LocalFileSystem):
        with fs.open_output_stream(tmp) as f:
            f.write(content)
        fs.move(tmp, join(inner, name))
        return
    with open(tmp, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, join(inner, name))
    descriptor = os.open(inner, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # and the rename is
    finally:
        os.close(descriptor)

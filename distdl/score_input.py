"""What a scoring output was scored from: the input's files (name, size, modification time).

The manifest records this beside the checkpoint's identity. A re-run compares the input as it
is now with the record: the same files mean the same rows; the same files and new ones mean
the input grew, and only the new rows are scored; anything else (a file changed, removed or
replaced) means the output no longer describes the input, and is refused unless --overwrite.
"""
from __future__ import annotations

import posixpath
from enum import Enum

import pyarrow.fs

from distdl.data import EXTENSION_FORMATS, FOLDER_FORMATS
from distdl.paths import filesystem


class Change(Enum):
    SAME = "same"
    GROWN = "grown"
    CHANGED = "changed"


def describe(path: str, fmt: str) -> dict:
    """{"path", "files": [[name under path, size, mtime_ns], ...]} of the files of format ``fmt``."""
    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pyarrow.fs.FileType.File:
        infos, root = [info], posixpath.dirname(inner)
    else:
        extensions = tuple(FOLDER_FORMATS[fmt][1] if fmt in FOLDER_FORMATS else
                           [ext for ext, f in EXTENSION_FORMATS.items() if f == fmt])
        infos = [i for i in fs.get_file_info(pyarrow.fs.FileSelector(inner, recursive=True))
                 if i.type == pyarrow.fs.FileType.File and i.path.lower().endswith(extensions)]
        root = inner
    files = sorted([posixpath.relpath(i.path, root), i.size, i.mtime_ns] for i in infos)
    return {"path": path, "files": files}


def generated(count: int) -> dict:
    """The input of ``distdl score --generate N``: ids 0..N-1."""
    return {"generated": count}


def compare(old: dict | None, new: dict) -> tuple[Change, str]:
    """How the input ``new`` differs from the recorded ``old``, and in words where it changed."""
    if old is None or old.keys() != new.keys():
        return Change.CHANGED, "the output records no input of this kind"
    if "generated" in new:
        if new["generated"] == old["generated"]:
            return Change.SAME, ""
        grown = new["generated"] > old["generated"]
        return (Change.GROWN, "") if grown else (Change.CHANGED, f"--generate {old['generated']} -> {new['generated']}")
    before = {name: (size, mtime) for name, size, mtime in old["files"]}
    now = {name: (size, mtime) for name, size, mtime in new["files"]}
    for name, (size, mtime) in before.items():
        if name not in now:
            return Change.CHANGED, f"file {name} is gone"
        if now[name] != (size, mtime):
            return Change.CHANGED, (f"file {name} changed (size {size} -> {now[name][0]}, "
                                    f"modified {mtime} -> {now[name][1]} ns)")
    return (Change.GROWN, "") if len(now) > len(before) else (Change.SAME, "")

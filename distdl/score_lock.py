"""One `distdl score` at a time per output folder: ``with held(output): ...``.

Two runs into one output would each score the rows the other has not committed yet, and
each would rewrite the manifest under the other. The lock is ``<output>/_distdl_score.lock``,
holding the owner's host, pid and start time, so a refusal can say who holds it.

Local disk (and file:// URIs): the owner holds ``flock`` on the file. The kernel drops it
when the process dies however it dies, so a lock file whose lock nobody holds is stale: the
next run takes it over and says so. Object stores (s3://, gs://) have no locks; there the file
alone is the lock, best-effort: a lock of a dead process on this host is taken over, a lock
from another host is refused until someone deletes it, and two runs starting in the same
instant may both proceed.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager, suppress
from typing import Iterator

import pyarrow.fs

from distdl.logs import say
from distdl.paths import filesystem
from distdl.paths import join

LOCK = "_distdl_score.lock"


class OutputLocked(ValueError):
    """Another live `distdl score` is writing the output."""


@contextmanager
def held(output_path: str) -> Iterator[None]:
    """Hold the output's lock for the ``with`` body (creating the output folder)."""
    fs, inner = filesystem(output_path)
    fs.create_dir(inner, recursive=True)
    path = join(inner, LOCK)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        descriptor = _lock_local(path)
        try:
            yield
        finally:
            with suppress(FileNotFoundError):  # deleted by hand meanwhile
                os.unlink(path)  # while still locked: a run that opened this file retries on the new one
            os.close(descriptor)
        return
    lock_best_effort(fs, path)
    try:
        yield
    finally:
        fs.delete_file(path)


def _owner() -> bytes:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()


def _describe(content: bytes) -> str:
    try:
        owner = json.loads(content)
        return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}"
    except (ValueError, KeyError, TypeError):
        return "an owner it does not name"


def _refusal(path: str, content: bytes) -> OutputLocked:
    return OutputLocked(f"another distdl score is writing this output ({_describe(content)}; lock file {path}); "
                        "wait for it to finish, or give another --output")


def _lock_local(path: str) -> int:
    """The descriptor of ``path``, flock-ed by this process and holding this process as owner."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            content = os.pread(descriptor, 4096, 0)
            os.close(descriptor)
            raise _refusal(path, content) from None
        try:
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)  # the owner released and unlinked it between our open and flock: again
    stale = os.pread(descriptor, 4096, 0)
    if stale:
        say(f"[distdl] taking over the lock of a distdl score that is gone ({_describe(stale)}): {path}")
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, _owner(), 0)
    return descriptor


def lock_best_effort(fs: pyarrow.fs.FileSystem, path: str) -> None:
    """Take the lock file ``path`` on a store without flock (see the module docstring)."""
    if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
        with fs.open_input_stream(path) as f:
            content = f.read()
        if not _dead_here(content):
            raise OutputLocked(f"{_refusal(path, content)} (if that run is gone, delete the lock file)")
        say(f"[distdl] taking over the lock of a distdl score that is gone ({_describe(content)}): {path}")
    with fs.open_output_stream(path) as f:
        f.write(_owner())


def _dead_here(content: bytes) -> bool:
    """Whether the lock's owner was a process on this host that no longer runs."""
    try:
        owner = json.loads(content)
        if owner["host"] != socket.gethostname():
            return False
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, PermissionError):  # unreadable, or alive as another user
        return False
    return False

"""Where a command's output goes: distdl's own lines to the console, everything else to a log file.

Ray writes from many places: its Python loggers, the driver's thread that prints worker
output ("(RayTrainWorker pid=...) ..."), C++ code writing to file descriptor 2 (e.g. the core
worker's "has constructor arguments in the object store" for every Ray Data actor pool: Ray
Data itself passes object refs to its actors), and the child processes it starts. Only moving
the process's descriptors 1 and 2 onto the log file catches all of them, so ``capture`` does
that; distdl's own lines go through ``say`` to the console saved before the move, and to the
log, which so holds the whole story.
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, TextIO

from tqdm import tqdm

from distdl.paths import is_uri

OWN = "[distdl] "  # how distdl's lines start, also those its Ray workers print (rank 0's epochs)
HANDLER = "distdl_own_lines"  # our handler's name among Ray's worker-output handlers
COLOUR = "RAY_COLOR_PREFIX"


@dataclass
class _Capture:
    out: TextIO  # the console: where descriptors 1 and 2 pointed before capture()
    err: TextIO
    log: TextIO


_capture: Optional[_Capture] = None  # set while capture() runs


def capturing() -> bool:
    return _capture is not None


def console(err: bool = False) -> TextIO:
    """The stream distdl's own output goes to: the terminal (or pipe) the command was started with."""
    if _capture is None:
        return sys.stderr if err else sys.stdout
    return _capture.err if err else _capture.out


def say(message: str, err: bool = False) -> None:
    """One of distdl's own lines: on the console (stderr for warnings), and in the log while capturing."""
    _to_console(message, err)
    if _capture is not None:
        _capture.log.write(message + "\n")
        _capture.log.flush()


def _to_console(message: str, err: bool) -> None:
    stream = console(err)
    bar_stream = console(err=True)
    if bar_stream.isatty():  # a progress bar drawn there is cleared for the line, then drawn again below it
        with tqdm.external_write_mode(file=bar_stream):
            stream.write(message + "\n")
            stream.flush()
    else:
        stream.write(message + "\n")
        stream.flush()


def log_file(folder: Optional[str], command: str) -> Path:
    """A new log for ``command`` in the local ``folder`` (made here); for a URI, None, or a folder
    that cannot be made, this machine's temp folder (the command then names what is wrong)."""
    temp = Path(tempfile.gettempdir()) / "distdl-logs"
    base = Path(folder).absolute() if folder and not is_uri(folder) else temp
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        base = temp
        base.mkdir(parents=True, exist_ok=True)
    return base / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"


@contextmanager
def capture(path: Optional[Path]) -> Iterator[Optional[Path]]:
    """Until the block ends, all that this process (and what it starts) writes to descriptors 1
    and 2 goes to ``path``; ``say`` still reaches the console. ``path`` None: nothing moves
    (--verbose). On an error the log is named before the error propagates."""
    global _capture
    if path is None:
        yield None
        return
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    out, err = _console_on(sys.stdout, 1, saved[0]), _console_on(sys.stderr, 2, saved[1])
    for fd in (1, 2):
        os.dup2(log.fileno(), fd)
    _capture = _Capture(out, err, log)
    unhook = _forward_own_worker_lines()
    colour_chosen = COLOUR in os.environ
    os.environ.setdefault(COLOUR, "0")  # Ray colours the worker prefixes it prints: noise in a file
    say(f"{OWN}Ray's output goes to {path} (--verbose shows it here)")
    try:
        yield path
    except BaseException:
        say(f"{OWN}full log (Ray's output too): {path}", err=True)
        raise
    finally:
        if not colour_chosen:
            del os.environ[COLOUR]
        unhook()
        _capture = None
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
        for stream in {out, err} - {sys.stdout, sys.stderr}:
            stream.close()
        for old in saved:
            os.close(old)
        log.close()


def _console_on(stream: TextIO, fd: int, saved: int) -> TextIO:
    """A stream to where ``stream`` writes now. One on descriptor ``fd`` needs a new stream on the
    saved copy; any other (e.g. pytest's capture of sys.stdout) is unaffected by the move."""
    try:
        bound = stream.fileno() == fd
    except (AttributeError, ValueError, io.UnsupportedOperation):
        bound = False
    if not bound:
        return stream
    return open(saved, "w", buffering=1, encoding=stream.encoding or "utf-8", errors="replace", closefd=False)


def _forward_own_worker_lines() -> Callable[[], None]:
    """Ray's driver hands each batch of worker output to its handlers; its own printer now writes
    into the log. This one also puts distdl's lines among them (rank 0's epochs) on the console.
    Returns the undo."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    def forward(batch: dict) -> None:
        for line in batch.get("lines", ()):
            if line.startswith(OWN):
                _to_console(line, bool(batch.get("is_err")))

    dispatcher.add_handler(HANDLER, forward)
    return lambda: dispatcher.remove_handler(HANDLER)

"""A progress bar on the console while Ray works elsewhere: the epochs of a training run, the
rows of a scoring job. It follows what the run has committed to storage (metrics.jsonl, the
output's parts), polled from a thread while the driver waits on Ray. It shows only while
logs.capture runs: with --verbose, and in library calls, the output stays as it was.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional, TextIO

from tqdm import tqdm

from distdl import logs
from distdl.polling import polling

POLL_S = 2.0
# Off a terminal (a pipe, a Ray job's log) each redraw is a line of its own: the bar is drawn
# when it starts, when it ends, and at most once a minute between.
OFF_TERMINAL_REDRAW_S = 60.0


class _Lines:
    """tqdm's file off a terminal: each redraw becomes a whole line. Its carriage returns would
    glue the bar to the next line written to the same pipe or job log."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def shown() -> bool:
    """Whether bars are shown now (worth counting what they need, e.g. the rows of an input)."""
    return logs.capturing()


@contextmanager
def following(desc: str, unit: str, total: Optional[int], initial: int, done: Callable[[], int]) -> Iterator[None]:
    """A bar of ``total`` ``unit``s (None: unknown, no ETA) from ``initial``, following ``done()``
    until the block ends."""
    if not shown():
        yield
        return
    stream = logs.console(err=True)
    tty = stream.isatty()
    redraw_s = 0.5 if tty else OFF_TERMINAL_REDRAW_S
    bar = tqdm(desc=desc, unit=unit, total=total, initial=initial, file=stream if tty else _Lines(stream),
               dynamic_ncols=tty, mininterval=redraw_s, maxinterval=max(redraw_s, 10.0))

    def update() -> None:
        try:
            now = done()
        except (OSError, ValueError):  # e.g. a file being rewritten: the next poll reads it
            return
        if now > bar.n:
            bar.update(now - bar.n)

    try:
        with polling(update, POLL_S, "distdl-progress"):
            yield
    finally:
        bar.close()  # a finished run's bar ends full: polling's last call updated it

"""Work done from a thread while the driver waits on Ray: a progress bar, the tracking log."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def polling(work: Callable[[], None], interval_s: float, name: str) -> Iterator[None]:
    """Call ``work`` every ``interval_s`` from a daemon thread while the block runs, and once
    more when it ends (so the last of what it follows is not missed)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            work()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        work()

"""Hooks the tests hand to distdl's workers and actors (step hooks for distdl.train.run, a
Predictor that logs its calls); the tests pickle this module by value into them."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from distdl.predict import Predictor


class EpochLog:
    """Appends each epoch number rank 0 starts to ``log``: shows what was (re-)trained."""

    def __init__(self, log: Path):
        self.log = str(log)

    def __call__(self, rank: int, epoch: int, step: int) -> None:
        if rank == 0 and step == 0:
            with open(self.log, "a") as f:
                f.write(f"{epoch}\n")

    def epochs(self) -> list[int]:
        return [int(line) for line in Path(self.log).read_text().split()]


class KillOnce(EpochLog):
    """SIGKILLs the worker process of ``rank`` at (epoch, step), the first time only."""

    def __init__(self, log: Path, rank: int, epoch: int, step: int):
        super().__init__(log)
        self.at, self.marker = (rank, epoch, step), str(log) + ".killed"

    def __call__(self, rank: int, epoch: int, step: int) -> None:
        super().__call__(rank, epoch, step)
        if (rank, epoch, step) == self.at and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)


class Interrupt(EpochLog):
    """Raises at the start of ``epoch``, as if the job were stopped there."""

    def __init__(self, log: Path, epoch: int):
        super().__init__(log)
        self.epoch = epoch

    def __call__(self, rank: int, epoch: int, step: int) -> None:
        super().__call__(rank, epoch, step)
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"interrupted at epoch {epoch}")


class CallSpans(Predictor):
    """A Predictor that appends "pid start end" (monotonic seconds) of each call to ``call_log``."""

    def __init__(self, *args, call_log: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.call_log = call_log

    def __call__(self, batch, **options):
        start = time.monotonic()
        out = super().__call__(batch, **options)
        with open(self.call_log, "a") as f:
            f.write(f"{os.getpid()} {start} {time.monotonic()}\n")
        return out

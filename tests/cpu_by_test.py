"""``pytest --cpu-by-test``: the CPU-seconds each test cost, its Ray, actors and subprocesses included.

The suite is CPU-bound on 2 cores, so a test's wall time (``--durations``) says as much about
what ran beside it as about its own work. While the session runs, the controller reads every
process's CPU ticks from /proc twice a second. It gives each process's ticks to the pytest
worker the process came from: the worker itself (it writes its pid to a folder the controller
names), or any process whose environment has PYTEST_XDIST_WORKER, which every Ray process,
raylet and subprocess a worker starts inherits. Then it gives them to the test that worker was
running at that moment (its setup, call and teardown). Linux only.
"""
from __future__ import annotations

import bisect
import collections
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

PERIOD_S = 0.5
PID_DIR = "DISTDL_CPU_BY_TEST_DIR"  # where each worker writes its pid (the controller sets it)
SHOWN = 25
CONTROLLER = "main"  # the pytest process that runs no tests under xdist, and all of them without
TICKS = os.sysconf("SC_CLK_TCK")


def _ticks(pid: str) -> tuple[int, int] | None:
    """(start time, CPU ticks so far) of a process; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19]), int(fields[11]) + int(fields[12])


def _inherited_worker(pid: str, pid_dir: str) -> str | None:
    """The worker a process came from, by the environment it inherited: PYTEST_XDIST_WORKER, or
    only PID_DIR (started by the controller: a plain `pytest` without workers); None: not ours."""
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    environ = dict(entry.decode(errors="replace").split("=", 1) for entry in entries if b"=" in entry)
    if environ.get(PID_DIR) != pid_dir:
        return None
    return environ.get("PYTEST_XDIST_WORKER", CONTROLLER)


class Sampler:
    """CPU ticks per worker in each PERIOD_S, in a thread of the controller."""

    def __init__(self, pid_dir: Path):
        self.pid_dir = pid_dir
        self.samples: list[tuple[float, dict[str, int]]] = []  # (time, worker -> ticks since the last)
        self._last: dict[tuple[str, int], int] = {}
        self._inherited: dict[tuple[str, int], str | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-by-test", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(PERIOD_S):
            self._sample()

    def _sample(self) -> None:
        # A worker writes its pid a second or two after it starts: looked up anew every time.
        worker_pids = {path.read_text(): path.name for path in self.pid_dir.glob("gw*")}
        worker_pids[str(os.getpid())] = CONTROLLER
        now, spent, seen = time.time(), collections.Counter(), {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            read = _ticks(pid)
            if read is None:
                continue
            key = (pid, read[0])
            if key not in self._inherited:
                self._inherited[key] = _inherited_worker(pid, str(self.pid_dir))
            worker = worker_pids.get(pid) or self._inherited[key]
            if worker:
                seen[key] = read[1]
                # a process first seen now started since the last sample (nearly always): all its ticks count
                spent[worker] += read[1] - self._last.get(key, 0)
        self._last = seen
        self.samples.append((now, dict(spent)))


class Timeline:
    """Which test each worker ran when: the start and stop of every setup, call and teardown."""

    def __init__(self):
        self.phases: dict[str, list[tuple[float, float, str]]] = collections.defaultdict(list)
        self._starts: dict[str, list[float]] = {}  # a worker's phases' starts, in order: made by the first lookup

    def add(self, report: pytest.TestReport) -> None:
        node = getattr(report, "node", None)  # the xdist worker that sent it
        worker = node.gateway.id if node is not None else CONTROLLER
        self.phases[worker].append((report.start, report.stop, report.nodeid))
        self._starts.pop(worker, None)

    def test_at(self, worker: str, when: float) -> str:
        """The test running on ``worker`` at ``when``; between two, the one that ran last."""
        phases = self.phases.get(worker, [])
        if not phases:
            return f"({worker}: no test)"
        if worker not in self._starts:
            phases.sort()
            self._starts[worker] = [start for start, _, _ in phases]
        i = bisect.bisect_right(self._starts[worker], when) - 1
        return phases[i][2] if i >= 0 else f"({worker}: before its first test)"


class CpuByTest:
    def __init__(self):
        self.pid_dir = Path(tempfile.mkdtemp(prefix="cpu-by-test-"))
        os.environ[PID_DIR] = str(self.pid_dir)  # the workers, started after this, inherit it
        self.sampler = Sampler(self.pid_dir)
        self.timeline = Timeline()
        self.started = time.time()
        self.sampler.start()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.timeline.add(report)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        self.sampler.stop()
        shutil.rmtree(self.pid_dir, ignore_errors=True)
        wall = time.time() - self.started
        per_test: collections.Counter = collections.Counter()
        for when, spent in self.sampler.samples:
            for worker, ticks in spent.items():
                per_test[self.timeline.test_at(worker, when)] += ticks / TICKS
        per_module: collections.Counter = collections.Counter()
        for test, seconds in per_test.items():
            per_module[test.split("::")[0]] += seconds
        total = sum(per_test.values())
        write = terminalreporter.write_line
        terminalreporter.section("CPU-seconds by test (--cpu-by-test)")
        write(f"{total:.0f} CPU-s in {wall:.0f} s of wall time: {total / wall:.2f} cores on average")
        write("by module:")
        for module, seconds in per_module.most_common():
            write(f"  {seconds:8.1f}  {module}")
        write(f"the {SHOWN} costliest tests:")
        for test, seconds in per_test.most_common(SHOWN):
            write(f"  {seconds:8.1f}  {test}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-by-test", action="store_true",
                     help="print the CPU-seconds each test cost, its Ray and subprocesses included (Linux)")


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("cpu_by_test"):
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # a worker: tell the controller which process it is
        Path(os.environ[PID_DIR], worker).write_text(str(os.getpid()))
    else:
        config.pluginmanager.register(CpuByTest(), "cpu_by_test_sampler")

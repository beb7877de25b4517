"""--cpu-by-test (tests/cpu_by_test.py): whose CPU a process's ticks are, and which test ran when."""
from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

from cpu_by_test import PID_DIR, TICKS, Sampler, Timeline

SPIN = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 1.5: pass"


def test_a_subprocess_is_charged_to_the_worker_whose_environment_it_inherited(tmp_path):
    sampler = Sampler(tmp_path)
    env = {**os.environ, PID_DIR: str(tmp_path), "PYTEST_XDIST_WORKER": "gw7"}
    stranger = {k: v for k, v in env.items() if k != PID_DIR}  # not started under this sampler
    sampler.start()
    try:
        for environment in (env, stranger):
            subprocess.run([sys.executable, "-c", SPIN], env=environment, check=True, timeout=120)
    finally:
        sampler.stop()
    charged = {}
    for _, spent in sampler.samples:
        for worker, ticks in spent.items():
            charged[worker] = charged.get(worker, 0) + ticks / TICKS
    # most of its 1.5 CPU-s: the ticks after the last sample before it exits are not seen
    assert 0.5 < charged.get("gw7", 0) <= 2.0, charged
    assert set(charged) <= {"gw7", "main"}, charged  # the stranger's ticks are nobody's here


def report(worker: str, start: float, stop: float, nodeid: str) -> SimpleNamespace:
    return SimpleNamespace(start=start, stop=stop, nodeid=nodeid, node=SimpleNamespace(gateway=SimpleNamespace(id=worker)))


def test_a_moment_belongs_to_the_test_its_worker_ran_then_or_last():
    timeline = Timeline()
    for worker, start, stop, test in (("gw0", 10, 20, "a"), ("gw0", 21, 30, "b"), ("gw1", 5, 40, "c")):
        timeline.add(report(worker, start, stop, test))
    assert [timeline.test_at("gw0", t) for t in (15, 20.5, 25, 99)] == ["a", "a", "b", "b"]
    assert timeline.test_at("gw1", 15) == "c"
    assert timeline.test_at("gw0", 1) == "(gw0: before its first test)"
    assert timeline.test_at("gw2", 15) == "(gw2: no test)"

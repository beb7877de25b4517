"""Every benchmark script runs end to end with --smoke (every model and setup it has, on tiny
sizes, real Ray) and prints its rates and ratios.

A new script under benchmarks/ is collected here by itself, so it fails until it has --smoke.
A script whose smoke run is also a behaviour's end-to-end test runs in that test instead (once).

The smokes run two at a time, each a process with its own Ray: most of a smoke is processes
starting and waiting on each other, so two share 2 cores with less idle time than one.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import pytest
from smoke import ROOT, ratios, run_smoke

HELPERS = {"common.py", "loadgen.py"}  # modules the scripts import, not scripts themselves
SMOKED_ELSEWHERE = {"elastic.py": "tests/test_elastic.py"}
SCRIPTS = sorted(path.name for path in (ROOT / "benchmarks").glob("*.py")
                 if path.name not in HELPERS and path.name not in SMOKED_ELSEWHERE)
# Started first, so that neither lane ends on a long smoke while the other is idle.
LONGEST = ("tune_throughput.py", "serve_throughput.py")
AT_ONCE = 2


def test_ratio_lines_of_every_script_are_recognized():
    printed = ("(c, auto) / (a) = 0.713    (c, auto) / (b, 1 worker(s)) = 0.766\n"
               "    ratio (b)/(a): 1.03   (b)/(a'): 0.93\n"
               "concurrency 32: (c)/(a) req/s 0.76, p99 0.92x\n"
               "goal: (c, auto) >= 0.95 x best of (a), (b): 35.4 / 49.6 = 0.713 -> NOT met\n"
               "1 worker(s) x 2 thread(s): (a) plain PyTorch 72.8 samples/s | (b)/(a) = nan\n")
    assert [str(r) for r in ratios(printed)] == ["0.713", "0.766", "1.03", "0.93", "0.76", "nan"]


def test_a_script_smoked_elsewhere_is_a_benchmark_and_its_test_runs_it():
    for script, test in SMOKED_ELSEWHERE.items():
        assert (ROOT / "benchmarks" / script).is_file(), script
        assert f'run_smoke("{script}"' in (ROOT / test).read_text(), f"{test} does not run {script}"


@pytest.fixture(scope="module")
def smokes() -> Iterator[dict[str, Future]]:
    """Every script's smoke run, AT_ONCE at a time, started with the first test that asks."""
    order = sorted(SCRIPTS, key=lambda script: (script not in LONGEST, script))
    with ThreadPoolExecutor(max_workers=AT_ONCE, thread_name_prefix="smoke") as pool:
        running = {script: pool.submit(run_smoke, script) for script in order}
        yield running
        for future in running.values():  # after a failure with -x: start no more
            future.cancel()


@pytest.mark.e2e
@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_runs_every_model_and_setup_and_prints_rates_and_ratios(script, smokes):
    smokes[script].result()

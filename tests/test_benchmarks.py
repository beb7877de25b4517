"""Every benchmark script runs end to end with --smoke (every model and setup it has, on tiny
sizes, real Ray) and prints its rates and ratios.

A new script under benchmarks/ is collected here by itself, so it fails until it has --smoke.
"""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HELPERS = {"common.py", "loadgen.py"}  # modules the scripts import, not scripts themselves
SCRIPTS = sorted(path.name for path in (ROOT / "benchmarks").glob("*.py") if path.name not in HELPERS)
TIMEOUT_S = 900  # a guard against a hang, far above a smoke's time on a busy 2-core machine

# A setup's label, "(a)", "(a')" or "(c, auto)" / "(b, 2 worker(s))", and a ratio of two of
# them with its value: "(c)/(a) = 0.97", "ratio (b)/(a'): 1.03", "(c)/(a) req/s 0.52".
SETUP = r"\([a-z]'?(?:, [^)]*\)?)?\)"
RATIO = re.compile(rf"{SETUP}\s*/\s*{SETUP}(?: req/s)?\s*[=:]?\s*([-+\w.]+)")
RATE = re.compile(r"\b(?:rows|samples|tokens|req)/s\b")


def run_smoke(script: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``python benchmarks/<script> --smoke`` from the repository
    root, on its own embedded Ray (never a RAY_ADDRESS the tests may have set)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with subprocess.Popen([sys.executable, f"benchmarks/{script}", "--smoke"], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the script and what it started (its Ray)
            out, err = proc.communicate()
            pytest.fail(f"{script} --smoke still running after {TIMEOUT_S} s:\n{out[-3000:]}\n{err[-3000:]}")
    return proc.returncode, out, err


def ratios(output: str) -> list[float]:
    return [float(value) for value in RATIO.findall(output)]


def test_ratio_lines_of_every_script_are_recognized():
    printed = ("(c, auto) / (a) = 0.713    (c, auto) / (b, 1 worker(s)) = 0.766\n"
               "    ratio (b)/(a): 1.03   (b)/(a'): 0.93\n"
               "concurrency 32: (c)/(a) req/s 0.76, p99 0.92x\n"
               "goal: (c, auto) >= 0.95 x best of (a), (b): 35.4 / 49.6 = 0.713 -> NOT met\n"
               "1 worker(s) x 2 thread(s): (a) plain PyTorch 72.8 samples/s | (b)/(a) = nan\n")
    assert [str(r) for r in ratios(printed)] == ["0.713", "0.766", "1.03", "0.93", "0.76", "nan"]


@pytest.mark.e2e
@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_runs_every_model_and_setup_and_prints_rates_and_ratios(script):
    status, out, err = run_smoke(script)
    assert status == 0, f"{script} --smoke exited {status}:\n{out[-3000:]}\n{err[-3000:]}"
    assert RATE.search(out), f"{script} printed no rate (rows/s, samples/s, tokens/s or req/s):\n{out}"
    found = ratios(out)
    assert found, f"{script} printed no ratio such as '(c)/(a) = 0.97':\n{out}"
    assert all(math.isfinite(r) and r > 0 for r in found), f"{script}: ratios {found}:\n{out}"

"""Running a benchmark script with --smoke, and what every smoke run must print."""
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
TIMEOUT_S = 900  # a guard against a hang, far above a smoke's time on a busy 2-core machine

# A setup's label, "(a)", "(a')" or "(c, auto)" / "(b, 2 worker(s))", and a ratio of two of
# them with its value: "(c)/(a) = 0.97", "ratio (b)/(a'): 1.03", "(c)/(a) req/s 0.52".
SETUP = r"\([a-z]'?(?:, [^)]*\)?)?\)"
RATIO = re.compile(rf"{SETUP}\s*/\s*{SETUP}(?: req/s)?\s*[=:]?\s*([-+\w.]+)")
RATE = re.compile(r"\b(?:rows|samples|tokens|req)/s\b")


def run_smoke(script: str, *args: str) -> str:
    """The output of ``python benchmarks/<script> --smoke ARGS`` from the repository root, on its
    own Ray (never a RAY_ADDRESS the tests may have set), once it has exited 0 and printed a
    rate and only finite, positive ratios."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with subprocess.Popen([sys.executable, f"benchmarks/{script}", "--smoke", *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the script and what it started (its Ray)
            out, err = proc.communicate()
            pytest.fail(f"{script} --smoke still running after {TIMEOUT_S} s:\n{out[-3000:]}\n{err[-3000:]}")
    assert proc.returncode == 0, f"{script} --smoke exited {proc.returncode}:\n{out[-3000:]}\n{err[-3000:]}"
    assert RATE.search(out), f"{script} printed no rate (rows/s, samples/s, tokens/s or req/s):\n{out}"
    found = ratios(out)
    assert found, f"{script} printed no ratio such as '(c)/(a) = 0.97':\n{out}"
    assert all(math.isfinite(r) and r > 0 for r in found), f"{script}: ratios {found}:\n{out}"
    return out


def ratios(output: str) -> list[float]:
    return [float(value) for value in RATIO.findall(output)]

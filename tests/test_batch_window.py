"""The adaptive batching window (serve.batch_wait_timeout_s: auto): a fraction of the recent
forward passes while requests come concurrently, and no wait at all for a lone client."""
from __future__ import annotations

import pytest

from distdl.serve.batch_window import AdaptiveWindow


def test_a_lone_client_never_waits():
    window = AdaptiveWindow()
    assert [window.after_pass(1, 0.08) for _ in range(50)] == [0.0] * 50


def test_concurrent_passes_open_a_window_of_a_fraction_of_a_recent_pass():
    window = AdaptiveWindow(fraction=0.25, most_s=0.05)
    waits = [window.after_pass(8, 0.08) for _ in range(50)]
    assert waits[-1] == pytest.approx(0.25 * 0.08, rel=1e-3)
    assert waits[0] < waits[-1] and waits == sorted(waits)  # it opens as the averages take in the passes


def test_the_window_is_capped_for_slow_passes_and_closes_when_the_load_ends():
    window = AdaptiveWindow(fraction=0.25, most_s=0.05)
    assert [window.after_pass(16, 2.0) for _ in range(20)][-1] == 0.05
    assert [window.after_pass(1, 2.0) for _ in range(20)][-1] == 0.0  # one request at a time again

"""The adaptive batching window (``serve.batch_wait_timeout_s: auto``): how long a batch that
starts at an idle replica waits for more rows, from the passes before it.

Under load no window is needed: rows that arrive during a forward pass wait and go together
into the next one (model.py). What a window can still gather is the clients that the last
pass answered: they send their next request a few milliseconds apart, the first finds the
replica idle and starts a small pass alone, and the rest wait for all of it. So the window is a
fraction of a recent pass, and nothing while requests come one at a time: a lone client never
waits for rows that will not come.
"""
from __future__ import annotations

# Rows per pass (smoothed) above which requests are taken to be concurrent.
CONCURRENT_ROWS = 1.5


class AdaptiveWindow:
    def __init__(self, fraction: float = 0.25, most_s: float = 0.05, smoothing: float = 0.2):
        """``fraction`` of the smoothed pass duration, at most ``most_s``; ``smoothing``: the
        weight of the newest pass in the running averages."""
        self.fraction, self.most_s, self.smoothing = fraction, most_s, smoothing
        self.rows, self.seconds = 1.0, 0.0  # running averages of a pass's rows and duration

    def after_pass(self, rows: int, seconds: float) -> float:
        """The window for the next batch, after a pass of ``rows`` that took ``seconds``."""
        self.rows += self.smoothing * (rows - self.rows)
        self.seconds += self.smoothing * (seconds - self.seconds)
        return min(self.most_s, self.fraction * self.seconds) if self.rows > CONCURRENT_ROWS else 0.0

"""A bounded closed-loop HTTP load generator for a served model (benchmarks/serve_throughput.py,
tests/test_serve.py).

Each of ``concurrency`` threads keeps one keep-alive connection (stdlib http.client) and
sends the same request again as soon as the last one is answered, until ``seconds`` pass.
A 503 (a replica restarting) or a dropped connection is retried after a short pause, up to
``retries`` times; what is still not a 2xx then counts as a failure.

A module, not a benchmark: it has no --smoke of its own; `serve_throughput.py --smoke` (run by
tests/test_benchmarks.py) and tests/test_serve.py drive it.
"""
from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

RETRY_PAUSE_S = 0.2


@dataclass
class Result:
    seconds: float
    latencies_s: list[float] = field(default_factory=list)  # successful requests, retries included
    failures: list[str] = field(default_factory=list)  # final status or error of each failed request
    retried: int = 0  # 503s and dropped connections that a retry then handled

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies_s) / self.seconds

    def latency_ms(self, percentile: float) -> float:
        return float(np.percentile(self.latencies_s, percentile)) * 1000 if self.latencies_s else float("nan")

    def describe(self) -> str:
        return (f"{len(self.latencies_s)} ok, {len(self.failures)} failed, {self.retried} retried; "
                f"{self.requests_per_s:.1f} req/s, p50 {self.latency_ms(50):.1f} ms, p99 {self.latency_ms(99):.1f} ms")


class Client:
    """One keep-alive connection; ``post`` retries 503s and dropped connections."""

    def __init__(self, url: str, headers: dict[str, str], retries: int = 0, timeout_s: float = 60.0):
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port, parts.path + (f"?{parts.query}" if parts.query else "")
        self.headers, self.retries, self.timeout_s = headers, retries, timeout_s
        self.conn: http.client.HTTPConnection | None = None
        self.retried = 0

    def post(self, body: bytes) -> tuple[int, bytes]:
        """(status, body) of the last attempt; status 0 when the connection itself failed."""
        for attempt in range(self.retries + 1):
            status, answer = self._once(body)
            if status not in (0, 503) or attempt == self.retries:
                return status, answer
            self.retried += 1
            time.sleep(RETRY_PAUSE_S)
        raise AssertionError("unreachable")

    def _once(self, body: bytes) -> tuple[int, bytes]:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self.conn.request("POST", self.path, body=body, headers=self.headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:  # reset, refused, timed out: reconnect next time
            self.close()
            return 0, repr(exc).encode()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def closed_loop(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float,
                retries: int = 0) -> Result:
    """Send ``body`` to ``url`` from ``concurrency`` threads for ``seconds``; stops by itself."""
    result = Result(seconds=seconds)
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        client = Client(url, headers, retries)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status, answer = client.post(body)
            with lock:
                if 200 <= status < 300:
                    result.latencies_s.append(time.perf_counter() - started)
                else:
                    result.failures.append(f"{status}: {answer[:200]!r}")
        client.close()
        with lock:
            result.retried += client.retried

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - started  # the last requests end after the deadline
    return result

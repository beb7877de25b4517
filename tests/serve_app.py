"""What the serving tests share: the API key's variable, the served app's address, waiting."""
from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

# Set while pytest collects, before the session's Ray starts, so that Serve replicas (Ray
# workers inherit the raylet's environment) can read the key: the server fails closed without it.
KEY_ENV = "DISTDL_TEST_SERVE_KEY"
os.environ.setdefault(KEY_ENV, secrets.token_hex(16))


@dataclass
class App:
    url: str
    checkpoints: dict[str, str]  # model name -> checkpoint path
    holdout: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {os.environ[KEY_ENV]}"}

    def route(self, model: str = "digits", task: str = "classify-image") -> str:
        return f"{self.url}/models/{model}/{task}"

    def post(self, body: bytes, content_type: str, model: str = "digits", query: str = "",
             task: str = "classify-image") -> requests.Response:
        return requests.post(self.route(model, task) + query, data=body,
                             headers={**self.auth, "Content-Type": content_type})

    def post_json(self, model: str, task: str, obj: Any, query: str = "") -> requests.Response:
        return requests.post(self.route(model, task) + query, json=obj, headers=self.auth)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up after {timeout_s} s waiting for {what}"
        time.sleep(0.5)

"""Fuzzing every route of a served app that holds one model of every family: every answer is
below 500 and the server stays healthy (probes answer, no model replica dies).

test_serve.py imports these tests, so they run against its one app (a cnn, and serve_families'
rnn, transformer and gan models): the suite pays for one deploy. Two kinds of input:

- schemathesis, per operation of /openapi.json: valid and invalid data generated from the
  route's own schema (bodies in every content type it takes, query and path parameters), a
  few examples each, derandomized: the same cases every run;
- a table of hostile inputs for every prediction route: malformed bodies, wrong content types,
  non-UTF-8 bytes, huge numbers, empty lists, NaN and infinities, each field of a valid body
  replaced in turn.
"""
from __future__ import annotations

import json

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from serve_app import App

from distdl.serve.api import ROUTES

EXAMPLES_PER_OPERATION = 40
OPERATIONS = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/models"),
              *(("POST", f"/models/{{name}}/{route.path}") for route in ROUTES.values())]


def assert_healthy(app: App) -> None:
    assert requests.get(f"{app.url}/healthz", timeout=30).status_code == 200
    ready = requests.get(f"{app.url}/readyz", timeout=30).json()
    assert ready == {"ready": True, "models": dict.fromkeys(app.checkpoints, "ready")}, ready


@pytest.mark.parametrize("method, path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_schemathesis_cases_of_each_operation_get_answers_below_500(app, no_replica_dies, method, path):
    operation = schemathesis.openapi.from_url(f"{app.url}/openapi.json", headers=app.auth)[path][method]
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in GenerationMode))

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def call(case: schemathesis.Case) -> None:
        answer = case.call(base_url=app.url, headers=app.auth, timeout=60)
        assert answer.status_code < 500, f"{case.as_curl_command()}\n-> {answer.status_code} {answer.text[:500]}"

    call()
    assert_healthy(app)


# ---- hostile inputs, the same every run ------------------------------------------------------
JSON = "application/json"
VALID = {  # route path -> a body its models take (or refuse with a 4xx): each field gets replaced in turn
    "classify-image": {"images": [[[0, 255], [255, 0]]]},
    "classify-sequence": {"sequences": [[0.5, 0.25, 0.0]]},
    "classify-audio": {"clips": ["UklGRiQAAABXQVZF"]},
    "classify-text": {"texts": ["rain and thunder"]},
    "embed-text": {"texts": ["rain and thunder"]},
    "generate-text": {"prompts": ["the cat"], "max_new_tokens": 2, "temperature": 0.5, "top_k": 2, "seed": 1},
    "generate-image": {"n": 1, "seed": 1},
}
HUGE = b"1" + b"0" * 400  # an integer no 64-bit type holds
HOSTILE_VALUES = {  # raw JSON, as a client may send it (Python's json writes NaN and Infinity too)
    "empty list": b"[]",
    "list of an empty list": b"[[]]",
    "NaN": b"NaN",
    "list of NaN": b"[NaN, [NaN]]",
    "infinities": b"[Infinity, -Infinity, [Infinity]]",
    "huge integer": HUGE,
    "list of huge integers": b"[" + HUGE + b", [-" + HUGE + b"]]",
    "huge float": b"1e400",
    "list of huge floats": b"[1e400, [[1e308, -1e400]]]",
    "negative": b"-1",
    "null": b"null",
    "non-ASCII text": json.dumps(["\u00e9\u65e5\U0001f600\u0000"]).encode(),
    "lone surrogate": b'["\\ud800"]',
}
MULTIPART_NON_UTF8 = (b'--x\r\nContent-Disposition: form-data; name="\xff\xfe"; filename="\xff.png"\r\n\r\n'
                      b"\x89PNG\xff\r\n--x--\r\n")
HOSTILE_BODIES = {  # (body, Content-Type or None for none)
    "non-UTF-8 bytes as JSON": (b'{"texts": ["\xff\xfe\x80"]}', JSON),
    "non-UTF-8 bytes as a file": (b"\xff\xfe\x00\x80" * 16, "application/octet-stream"),
    "non-UTF-8 bytes in a form": (MULTIPART_NON_UTF8, "multipart/form-data; boundary=x"),
    "a form without a boundary": (b"--x\r\n\r\n--x--\r\n", "multipart/form-data"),
    "plain text": (b"rain and thunder", "text/plain"),
    "no Content-Type": (b'{"texts": ["a"]}', None),
    "an unknown charset": (b'{"texts": ["a"]}', "application/json; charset=klingon"),
    "JSON that is a huge number": (b"1e400", JSON),
    "JSON that is null": (b"null", JSON),
    "an empty JSON object": (b"{}", JSON),
    "JSON nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, JSON),
    "broken JSON": (b'{"images": [[[0, 1]', JSON),
}
HOSTILE_QUERIES = ["?top_k=NaN", "?top_k=1e400", f"?top_k={HUGE.decode()}", "?top_k=-1", "?top_k=", "?top_k=%FF",
                   "?top_k=1&top_k=2", "?unknown=1"]


def with_value(body: dict, field: str, raw: bytes) -> bytes:
    """``body`` as JSON with ``field``'s value replaced by the raw JSON ``raw``."""
    marker = "\u0000REPLACED\u0000"
    return json.dumps({**body, field: marker}).encode().replace(json.dumps(marker).encode(), raw)


def hostile_requests(path: str) -> list[tuple[str, bytes, str | None, str]]:
    """(case, body, Content-Type, query) for the route ``path``."""
    cases = [(f"{field}: {name}", with_value(VALID[path], field, raw), JSON, "")
             for field in VALID[path] for name, raw in HOSTILE_VALUES.items()]
    cases += [(name, body, content_type, "") for name, (body, content_type) in HOSTILE_BODIES.items()]
    return cases + [(f"query {query}", json.dumps(VALID[path]).encode(), JSON, query) for query in HOSTILE_QUERIES]


@pytest.mark.parametrize("path", [route.path for route in ROUTES.values()])
def test_hostile_input_to_every_route_gets_an_answer_below_500(app, no_replica_dies, path):
    models = requests.get(f"{app.url}/models", headers=app.auth, timeout=30).json()["models"]
    url = app.url + next(m["route"] for m in models if m["route"].endswith(f"/{path}"))
    bad = []
    with requests.Session() as session:
        for case, body, content_type, query in hostile_requests(path):
            headers = {**app.auth, **({"Content-Type": content_type} if content_type else {})}
            answer = session.post(url + query, data=body, headers=headers, timeout=60)
            if answer.status_code >= 500:
                bad.append(f"{case}: {answer.status_code} {answer.text[:300]}")
    assert bad == []
    assert_healthy(app)

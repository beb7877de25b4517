"""Overload sheds load instead of queueing without end, against one real Serve app: a model
whose queue is full answers 503 with Retry-After, one that does not answer in its
request_timeout_s answers 504, and the ingress holds a bounded amount of request bodies.
Ray's metrics endpoint then counts each model's requests, refusals and forward passes.

The unit tests at the end drive the ingress's body budget (an ASGI middleware) directly."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from ray import serve
from serve_app import App, free_port, wait_for
from test_hardening_inputs import chars_checkpoint, image_checkpoint

from distdl import serve as distdl_serve
from distdl.serve import metrics, overload
from distdl.serve.app import load_models
from distdl.spec import ServeSpec
from distdl.specbase import from_dict

FLOOD = 200
# "queued": a language model generating 200 characters per prompt, one request at a time and two
# waiting: a flood of FLOOD requests fills its queue whatever the machine's speed.
QUEUED = {"max_batch_size": 1, "max_ongoing_requests": 1, "max_queued_requests": 2}
HURRIED = {"request_timeout_s": 0.001}  # less than any model call takes, even an idle one


@pytest.fixture(scope="module")
def app(ray_session, tmp_path_factory) -> App:
    root = tmp_path_factory.mktemp("overload")
    paths = {"queued": chars_checkpoint(root / "queued", {"name": "queued", "serve": QUEUED}),
             "hurried": image_checkpoint(root / "hurried", {"name": "hurried", "serve": HURRIED})}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"checkpoints": list(paths.values()), "cpus_per_replica": 0.25, "threads_per_replica": 1}
    serve.run(distdl_serve.build_app(args), name=distdl_serve.APP_NAME, route_prefix="/")
    yield App(f"http://127.0.0.1:{port}", paths, root)
    serve.shutdown()


def test_a_flood_on_a_small_queue_gets_only_200s_and_503s_then_the_server_answers_normally(app):
    prompts = {"prompts": ["the cat", "a dog", "the sun", "a bird"]}
    start = threading.Barrier(FLOOD)

    def post() -> requests.Response:
        start.wait()  # every client sends at once
        return requests.post(app.route("queued", "generate-text"), json=prompts, timeout=120)

    with ThreadPoolExecutor(FLOOD) as pool:  # a reset or refused connection raises here, failing the test
        answers = list(pool.map(lambda _: post(), range(FLOOD)))
    statuses = [a.status_code for a in answers]
    print(f"\n{FLOOD} concurrent requests: {statuses.count(200)} answered, {statuses.count(503)} shed")
    assert set(statuses) == {200, 503}, sorted(set(statuses))
    for shed in (a for a in answers if a.status_code == 503):
        assert shed.headers["Retry-After"] == "1"
        assert shed.json() == {"detail": "model 'queued' is at capacity: its queue of waiting requests is full; retry"}
    assert all(len(g) == 200 for a in answers if a.status_code == 200 for g in a.json()["generated"])
    after = requests.post(app.route("queued", "generate-text"), json=prompts, timeout=120)
    assert after.status_code == 200, after.text
    assert requests.get(f"{app.url}/readyz").json() == {"ready": True, "models": {"queued": "ready", "hurried": "ready"}}


def test_a_model_that_does_not_answer_in_time_gets_a_504_with_the_reason(app):
    answer = requests.post(app.route("hurried"), json={"images": [[[0] * 8] * 8]}, timeout=60)
    assert answer.status_code == 504, answer.text
    assert answer.json() == {"detail": "model 'hurried' did not answer within 0.001 s (its serve.request_timeout_s)"}
    models = requests.get(f"{app.url}/models").json()["models"]
    assert {m["name"]: m["limits"]["request_timeout_s"] for m in models} == {"queued": 60.0, "hurried": 0.001}


def scrape() -> list[tuple[str, dict[str, str], float]]:
    """Every sample on the metrics export port of the session's Ray (one node), as Prometheus reads it."""
    url = metrics.export_url()
    assert url, "the session's Ray exports no metrics"
    text = requests.get(url, timeout=10).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` with these ``labels``, over every replica. As in Prometheus,
    a label that is absent is empty."""
    return sum(value for n, have, value in samples
               if n == name and all(have.get(k, "") == v for k, v in labels.items()))


def test_the_metrics_endpoint_counts_each_models_requests_refusals_and_forward_passes(app):
    """Only this module serves "hurried" and "queued", and only this test sends them 415s: those
    counts are exact. Unknown models, model "", are counted from before the test's requests:
    the serving tests of other modules send some too, and Ray's agent keeps their counts."""
    not_found = {"name": "ray_distdl_serve_rejected_requests_total", "model": "", "reason": "not_found"}
    not_found_before = total(scrape(), **not_found)
    answered = requests.post(app.route("queued", "generate-text"), json={"prompts": ["the cat", "a dog", "the sun"]},
                             timeout=120)
    assert answered.status_code == 200, answered.text
    for _ in range(2):
        assert requests.post(app.route("hurried"), data=b"x", headers={"Content-Type": "text/plain"}).status_code == 415
    assert requests.post(app.route("nope"), json={"images": [[[0] * 8] * 8]}).status_code == 404
    assert requests.post(app.route("hurried"), json={"images": [[[0] * 8] * 8]}, timeout=60).status_code == 504
    image_route, text_route = "/models/{name}/classify-image", "/models/{name}/generate-text"
    samples: list = []

    def exported() -> bool:  # Ray's processes report to the metrics agent every 10 s (metrics_report_interval_ms)
        samples[:] = scrape()
        return (total(samples, "ray_distdl_serve_requests_total", model="hurried", status="415") >= 2
                and total(samples, **not_found) > not_found_before
                and total(samples, "ray_distdl_serve_rejected_requests_total", model="hurried", reason="timeout") >= 1
                and total(samples, "ray_distdl_serve_batch_rows_count", model="queued") >= 3)

    wait_for(exported, 60, "the ingress's and the replicas' metrics on the metrics export port")
    assert total(samples, "ray_distdl_serve_requests_total", model="hurried", route=image_route, status="415") == 2
    assert total(samples, "ray_distdl_serve_rejected_requests_total", model="hurried",
                 reason="unsupported_media_type") == 2
    # an unknown model gets no label value of its own: it counts as model "" on route "other"
    assert total(samples, **not_found) == not_found_before + 1
    assert total(samples, "ray_distdl_serve_requests_total", model="nope") == 0
    assert total(samples, "ray_distdl_serve_requests_total", model="queued", route=text_route, status="200") >= 1
    latency = total(samples, "ray_distdl_serve_request_seconds_count", model="queued", route=text_route)
    assert latency == total(samples, "ray_distdl_serve_requests_total", model="queued", route=text_route)
    # max_batch_size 1: three prompts are three forward passes of one row each, not one of three
    passes = total(samples, "ray_distdl_serve_batch_rows_count", model="queued")
    assert sum(value for name, labels, value in samples if name == "ray_distdl_serve_batch_rows_bucket"
               and labels.get("model") == "queued" and float(labels["le"]) == 1) == passes
    assert total(samples, "ray_distdl_serve_rows_total", model="queued") == passes
    # every 503 of "queued" is a full queue (the flood test's, when it ran before)
    assert (total(samples, "ray_distdl_serve_rejected_requests_total", model="queued", reason="queue_full")
            == total(samples, "ray_distdl_serve_requests_total", model="queued", status="503"))
    # the queue depth is Serve's own gauge, per model deployment
    assert any(name == "ray_serve_deployment_queued_queries" and labels.get("deployment") == "model-queued"
               for name, labels, _ in samples)


def test_queue_and_timeout_are_checked_serve_settings():
    problems: list[tuple[str, str]] = []
    from_dict(ServeSpec, {"max_queued_requests": 0, "request_timeout_s": float("inf"), "max_body_bytes": 2**31},
              "serve", problems)
    assert problems == [("serve.max_queued_requests", "must be >= 1, got 0"),
                        ("serve.max_body_bytes", "must be <= 1073741824, the request bodies the server holds at "
                                                 "once; got 2147483648"),
                        ("serve.request_timeout_s", "must be a finite number > 0, got inf")]


def test_the_proxy_queue_in_front_of_the_ingress_is_bounded_by_the_body_budget(tmp_path):
    paths = [image_checkpoint(tmp_path / name, {"name": name, "serve": {"max_body_bytes": size}})
             for name, size in (("small", 2**20), ("large", 64 * 2**20))]
    served = load_models(paths, {})
    assert [s.options.max_queued_requests for s in served] == [64, 64]  # the default
    assert overload.proxy_queue(max(s.options.max_body_bytes for s in served), 1024) == 16  # 1 GiB / 64 MiB
    assert overload.proxy_queue(2**20, 1024) == 1024  # small bodies: as many as the ingress takes


# ---- the ingress's body budget, as ASGI ------------------------------------------------------
class Held:
    """An ASGI app that answers 200 once ``release`` is set: requests stay inside the budget meanwhile."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, scope: dict, receive, send) -> None:
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app, headers: dict[bytes, bytes]) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": "/", "headers": list(headers.items())}, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_the_body_budget_sheds_a_request_whose_body_does_not_fit_and_frees_it_on_answer():
    async def scenario() -> None:
        held = Held()
        budget = overload.BodyBudget(held, budget=100, largest=60)
        first = asyncio.create_task(call(budget, {b"content-length": b"50"}))
        await asyncio.sleep(0)  # the first request is inside, holding 50 bytes
        assert budget.held == 50
        status, headers, body = await call(budget, {b"content-length": b"51"})
        assert (status, headers[b"retry-after"]) == (503, b"1")
        assert b"the server holds its most request bodies now (100 bytes in all); retry" in body
        chunked = await call(budget, {b"transfer-encoding": b"chunked"})  # holds `largest`: 60 more do not fit
        assert chunked[0] == 503
        fits = asyncio.create_task(call(budget, {b"content-length": b"50"}))
        no_body = asyncio.create_task(call(budget, {}))  # a probe: nothing to hold, always in
        await asyncio.sleep(0)
        assert budget.held == 100
        held.release.set()
        assert [(await t)[0] for t in (first, fits, no_body)] == [200, 200, 200]
        assert budget.held == 0
        assert (await call(budget, {b"content-length": b"51"}))[0] == 200

    asyncio.run(scenario())


def test_a_request_shed_by_the_body_budget_is_counted_as_such():
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"101")]}
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(overload.BodyBudget(Held(), budget=100, largest=200)(scope, None, send))
    assert sent[0]["status"] == 503
    assert metrics.rejection(503, scope["state"][metrics.REJECTION]) == "body_budget"

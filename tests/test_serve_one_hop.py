"""One checkpoint is served in one hop: its model deployment is the HTTP ingress too, and gives
the same API as an ingress in front of several models: probes, the model list, the API key,
predictions, and the same 503 when its queue is full and 504 when it is too slow, while the
probes still answer under a flood. One real Serve app on the session's Ray."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from ray import serve
from serve_app import KEY_ENV, App, free_port
from test_hardening_inputs import chars_checkpoint
from test_serve_overload import FLOOD, QUEUED

from distdl import serve as distdl_serve
from distdl.predict import Predictor
from distdl.serve.model import DEPLOYMENT_PREFIX
from distdl.serve.overload import Admission, QueueFull

PROMPTS = {"prompts": ["the cat", "a dog", "the sun", "a bird"]}


def deploy(checkpoint: str, **options) -> None:
    args = {"checkpoints": [checkpoint], "api_key_env": KEY_ENV, "cpus_per_replica": 0.25, "threads_per_replica": 1}
    serve.run(distdl_serve.build_app({**args, **options}), name=distdl_serve.APP_NAME, route_prefix="/")


@pytest.fixture(scope="module")
def app(ray_session, tmp_path_factory) -> App:
    root = tmp_path_factory.mktemp("one_hop")
    path = chars_checkpoint(root / "queued", {"name": "queued", "serve": QUEUED})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy(path)
    yield App(f"http://127.0.0.1:{port}", {"queued": path}, root)
    serve.shutdown()


def test_the_model_deployment_is_the_only_one_and_answers_http(app):
    deployments = serve.status().applications[distdl_serve.APP_NAME].deployments
    assert set(deployments) == {f"{DEPLOYMENT_PREFIX}queued"}
    assert requests.get(f"{app.url}/healthz").json() == {"status": "ok"}
    assert requests.get(f"{app.url}/readyz").json() == {"ready": True, "models": {"queued": "ready"}}
    assert requests.get(f"{app.url}/models").status_code == 401
    assert requests.post(app.route("queued", "generate-text"), json=PROMPTS).status_code == 401
    listed = requests.get(f"{app.url}/models", headers=app.auth).json()["models"]
    assert [(m["name"], m["task"], m["checkpoint"]) for m in listed] == [("queued", "text_generation", None)]
    assert requests.post(app.route("nope", "generate-text"), json=PROMPTS, headers=app.auth).status_code == 404
    assert requests.get(f"{app.url}/openapi.json", headers=app.auth).json()["paths"]


def test_predictions_are_the_predictors(app):
    options = {"max_new_tokens": 20, "temperature": 0.0}  # greedy: the same text each time
    answer = app.post_json("queued", "generate-text", {"prompts": ["the cat"], **options})
    assert answer.status_code == 200, answer.text
    expected = Predictor(app.checkpoints["queued"])({"text": np.array(["the cat"], dtype=object)}, **options)
    assert answer.json()["generated"] == list(expected["generated"])


def test_a_flood_gets_200s_and_503s_while_the_probes_still_answer(app):
    start = threading.Barrier(FLOOD + 1)

    def post() -> requests.Response:
        start.wait()
        return app.post_json("queued", "generate-text", PROMPTS)

    with ThreadPoolExecutor(FLOOD) as pool:
        answers = [pool.submit(post) for _ in range(FLOOD)]
        start.wait()
        probes = [requests.get(f"{app.url}/healthz", timeout=30).status_code for _ in range(3)]
        answers = [a.result() for a in answers]
    statuses = [a.status_code for a in answers]
    assert set(statuses) == {200, 503}, sorted(set(statuses))
    assert probes == [200] * 3
    for shed in (a for a in answers if a.status_code == 503):
        assert shed.headers["Retry-After"] == "1"
        assert shed.json() == {"detail": "model 'queued' is at capacity: its queue of waiting requests is full; retry"}
    assert app.post_json("queued", "generate-text", PROMPTS).status_code == 200


def test_a_model_too_slow_for_its_timeout_gets_a_504(app):
    deploy(app.checkpoints["queued"], request_timeout_s=0.001)
    try:
        answer = app.post_json("queued", "generate-text", PROMPTS)
        assert answer.status_code == 504, answer.text
        assert answer.json() == {"detail": "model 'queued' did not answer within 0.001 s (its serve.request_timeout_s)"}
    finally:
        deploy(app.checkpoints["queued"])


def test_admission_runs_ongoing_calls_holds_queued_ones_and_refuses_the_rest():
    async def scenario() -> tuple[list, list[int]]:
        reported: list[int] = []
        admission = Admission(ongoing=1, queued=1, report_waiting=reported.append)
        release, order = asyncio.Event(), []

        async def call(name: str) -> None:
            async with admission.slot():
                order.append(name)
                await release.wait()

        first, second = asyncio.create_task(call("first")), asyncio.create_task(call("second"))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):  # one running, one waiting: no room for a third
            async with admission.slot():
                pass
        release.set()
        await asyncio.gather(first, second)
        async with admission.slot():  # room again once they are done
            order.append("third")
        return order, reported

    order, reported = asyncio.run(scenario())
    assert order == ["first", "second", "third"]
    assert reported == [1, 0, 1, 0, 1, 0]  # each call waits (1), then runs (0); the second waited behind the first

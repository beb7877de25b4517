"""distdl serve over real HTTP: one Serve app for the module, deployed by `serve run` from the
config that export_config writes, on the session's local Ray.

Two tiny image classifiers are served side by side: "digits" (grayscale 8x8, autoscaled 1..2
with short delays) and "digits_rgb" (3-channel 12x12, one replica), and beside them one model
of every other served task (serve_families.py builds them and holds their tests, which run
here, against this app); each takes its settings from the serve section of its own
checkpoint, with the export's args laid over all.
"""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from PIL import Image
from ray import serve
import loadgen
from serve_app import KEY_ENV, App, free_port, wait_for
from serve_families import (  # noqa: F401 (the tests: collected here, so they run against this module's app)
    family_checkpoints, test_bad_input_to_any_family_gets_a_4xx_naming_the_item,
    test_generated_images_are_ids_0_to_n_of_batch_generation_with_the_seed,
    test_generation_follows_each_requests_options_also_when_requests_share_a_batch,
    test_models_lists_each_task_with_its_input_and_limits, test_sequences_of_numbers_or_vectors_are_classified_as_offline,
    test_texts_are_classified_and_embedded_as_offline, test_wav_clips_are_classified_as_offline_in_every_encoding)
from serve_fuzz import (  # noqa: F401 (the tests: collected here, so they run against this module's app)
    test_hostile_input_to_every_route_gets_an_answer_below_500,
    test_schemathesis_cases_of_each_operation_get_answers_below_500)
from test_predict import tiny_checkpoint

from distdl import checkpoint, score
from distdl import serve as distdl_serve
from distdl.serve.api import ROUTES
from distdl.serve.model import ModelServer

AUTOSCALED = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 0.5,
              "downscale_delay_s": 2, "look_back_period_s": 11, "max_batch_size": 8, "max_ongoing_requests": 16,
              "max_body_bytes": 2**20, "max_items_per_request": 8, "max_image_pixels": 64 * 64}
# The export's args, for every model: 9 replicas at most (digits autoscales to 2) in 4 Ray CPUs.
OVERRIDES = {"cpus_per_replica": 0.25, "threads_per_replica": 1}
MODEL_PREFIX = "SERVE_REPLICA::distdl#model-"


def replicas(model: str = "digits") -> set[str]:
    """Names of the model's live replica actors (a restarted replica gets a new name); "": every model's."""
    import ray

    prefix = f"{MODEL_PREFIX}{model}#" if model else MODEL_PREFIX
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


def replica_states(model: str = "digits") -> dict[str, int]:
    return dict(serve.status().applications[distdl_serve.APP_NAME].deployments[f"model-{model}"].replica_states)


@pytest.fixture(scope="module")
def app(ray_session, digits, tmp_path_factory) -> App:
    from ray.serve.schema import ServeDeploySchema

    root = tmp_path_factory.mktemp("serve")
    gray = tiny_checkpoint(root / "gray", digits["train"], spec={"name": "digits", "serve": AUTOSCALED})
    rgb = tiny_checkpoint(root / "rgb", digits["train"], size=12, channels=3,
                          spec={"name": "digits_rgb", "serve": {"top_k": 3}})
    families = family_checkpoints(root, gray)
    config = distdl_serve.export_config([gray, rgb, *families.values()], api_key_env=KEY_ENV, **OVERRIDES)
    port = free_port()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    ServeDeploySchema.model_validate(config)
    (root / "serve.yaml").write_text(yaml.safe_dump(config))
    serve_cli = Path(sys.executable).with_name("serve")
    subprocess.run([str(serve_cli), "run", "--non-blocking", "--address", ray_session.get_runtime_context().gcs_address,
                    str(root / "serve.yaml")], check=True, capture_output=True, timeout=300)
    wait_for(lambda: _status() == "RUNNING", 300, "the app to run")
    yield App(f"http://127.0.0.1:{port}", {"digits": gray, "digits_rgb": rgb, **families}, digits["holdout"])
    serve.shutdown()


def _status() -> str:
    status = serve.status().applications.get(distdl_serve.APP_NAME)
    assert status is None or status.status != "DEPLOY_FAILED", status.message
    return status.status if status else "NOT_STARTED"


@pytest.fixture
def no_replica_dies():
    """Every model replica alive before the test is alive, the same actor, after it."""
    before = replicas("")
    yield
    assert before <= replicas(""), "a model replica died"


def holdout_pngs(app: App, n: int) -> tuple[list, list[bytes]]:
    table = pq.read_table(app.holdout).slice(0, n)
    return table["id"].to_pylist(), table["image"].to_pylist()


# ---- what a client sees ----------------------------------------------------------------------
def test_probes_and_the_model_list(app):
    assert requests.get(f"{app.url}/healthz").json() == {"status": "ok"}
    assert requests.get(f"{app.url}/readyz").json() == {"ready": True, "models": dict.fromkeys(app.checkpoints, "ready")}
    models = {m["name"]: m for m in requests.get(f"{app.url}/models", headers=app.auth).json()["models"]}
    assert set(models) == set(app.checkpoints)
    for name, path in app.checkpoints.items():
        assert models[name]["checkpoint_id"] == checkpoint.identity(path)
    for name in ("digits", "digits_rgb"):
        assert models[name]["family"] == "cnn" and models[name]["task"] == "image_classification"
        assert models[name]["route"] == f"/models/{name}/classify-image"
    assert models["digits"]["input"] == {"image_size": 8, "channels": 1, "classes": list(range(10))}
    assert models["digits_rgb"]["input"]["channels"] == 3
    assert models["digits"]["limits"]["max_items_per_request"] == 8  # from its checkpoint's serve section
    assert models["digits_rgb"]["limits"]["top_k"] == 3
    paths = requests.get(f"{app.url}/openapi.json", headers=app.auth).json()["paths"]
    assert {f"/models/{{name}}/{route.path}" for route in ROUTES.values()} <= set(paths)  # every task has a route


def test_an_image_means_the_same_in_every_encoding(app):
    _, (png, *_) = holdout_pngs(app, 1)
    pixels = np.asarray(Image.open(io.BytesIO(png)))  # uint8 (8, 8): integers are 0..255
    answers = [
        app.post(png, "application/octet-stream"),
        requests.post(app.route(), files=[("images", ("a.png", png))], headers=app.auth),
        requests.post(app.route(), json={"images": [base64.b64encode(png).decode()]}, headers=app.auth),
        requests.post(app.route(), json={"images": [pixels.tolist()]}, headers=app.auth),
        requests.post(app.route(), json={"images": [(pixels / 255).tolist()]}, headers=app.auth),  # floats: 0..1
    ]
    first = answers[0].json()["predictions"][0]
    assert len(first["top"]) == 5 and first["top"][0]["label"] == first["label"]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        got = answer.json()["predictions"][0]
        assert got["label"] == first["label"] and got["probability"] == pytest.approx(first["probability"], rel=1e-5)


def test_http_answers_equal_distdl_score(app, tmp_path):
    """Online = offline: the same rows through HTTP and through batch scoring."""
    ids, pngs = holdout_pngs(app, 24)
    pq.write_table(pq.read_table(app.holdout).slice(0, 24), tmp_path / "rows.parquet")
    score.score(app.checkpoints["digits"], str(tmp_path / "rows.parquet"), str(tmp_path / "out"),
                score.Resources(batch_size=8, max_actors=1))
    offline = {r["id"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    files = [("images", (f"{i}.png", png)) for i, png in enumerate(pngs[:8])]
    online = requests.post(app.route(), files=files, headers=app.auth).json()["predictions"]
    online += [app.post(png, "application/octet-stream").json()["predictions"][0] for png in pngs[8:]]
    for row_id, got in zip(ids, online):
        assert got["label"] == offline[row_id]["label"]
        assert [t["label"] for t in got["top"]] == offline[row_id]["top_labels"]
        np.testing.assert_allclose([t["probability"] for t in got["top"]], offline[row_id]["top_probabilities"], rtol=1e-5)


def test_each_model_answers_on_its_own_route_with_its_own_settings(app):
    _, pngs = holdout_pngs(app, 2)
    rgb = requests.post(app.route("digits_rgb"), files=[("images", ("a.png", p)) for p in pngs], headers=app.auth)
    assert rgb.status_code == 200 and rgb.json()["model"] == "digits_rgb"
    assert [len(p["top"]) for p in rgb.json()["predictions"]] == [3, 3]  # its checkpoint says top_k: 3
    fewer = app.post(pngs[0], "application/octet-stream", query="?top_k=2").json()["predictions"][0]
    assert len(fewer["top"]) == 2


# ---- bad input: a 4xx with a reason, never a 500 or a dead replica ---------------------------
def _png(size: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (size, size)).save(out, "PNG")
    return out.getvalue()


def _json(obj) -> tuple[bytes, str]:
    return json.dumps(obj).encode(), "application/json"


BAD_INPUTS = {  # case: (body, content type, model, expected status, words in the reason)
    "wrong content type": (b"abc", "text/plain", "digits", 415, "unsupported Content-Type 'text/plain'"),
    "broken base64": (*_json({"images": ["not base64!"]}), "digits", 422, "not valid base64"),
    "base64 with non-ASCII": (*_json({"images": ["Ã©"]}), "digits", 422, "not valid base64"),  # found by fuzzing
    "bytes that are no image": (b"GIF89a garbage", "application/octet-stream", "digits", 422, "not a readable image"),
    "pixel array of a wrong shape": (*_json({"images": [[[1, 2], [3, 4], [5]]]}), "digits", 422, "rectangular"),
    "pixel array of 5 values": (*_json({"images": [[1, 2, 3, 4, 5]]}), "digits", 422, "pixel array has shape (5,)"),
    "NaN pixels": (json.dumps({"images": [[[float("nan")] * 8] * 8]}).encode(), "application/json", "digits", 422,
                   "NaN"),
    "empty image list": (*_json({"images": []}), "digits", 422, "at least 1 item"),
    "empty body": (b"", "application/octet-stream", "digits", 422, "empty request body"),
    "broken JSON": (b'{"images": [', "application/json", "digits", 422, "Invalid JSON"),
    "unknown JSON field": (*_json({"images": [[[0] * 8] * 8], "labels": [1]}), "digits", 422, "Extra inputs"),
    "huge body": (b"\0" * (20 * 2**20), "application/octet-stream", "digits", 413, "over 8388608 bytes"),
    "body over this model's limit": (b"\0" * (3 * 2**19), "application/octet-stream", "digits", 413,
                                     "at most 1048576"),  # digits_rgb keeps the default 8 MiB
    "too many images": (*_json({"images": [[[0] * 8] * 8] * 9}), "digits", 413, "9 images in one request"),
    "too many pixels": (_png(65), "application/octet-stream", "digits", 413, "4225 pixels"),
    "unknown model": (_png(8), "application/octet-stream", "nope", 404, "unknown model 'nope'"),
    "broken multipart": (b"--x\r\nbroken", "multipart/form-data; boundary=x", "digits", 422, "no 'images' file"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_a_4xx_that_says_what_was_wrong(app, no_replica_dies, case):
    body, content_type, model, status, reason = BAD_INPUTS[case]
    answer = app.post(body, content_type, model)
    assert answer.status_code == status, answer.text
    assert reason in json.dumps(answer.json()["detail"])


def test_one_bad_image_names_its_index_and_fails_its_request_only(app, no_replica_dies):
    _, (png, *_) = holdout_pngs(app, 1)
    files = [("images", ("a.png", png)), ("images", ("b.png", b"junk")), ("images", ("c.png", png))]
    answer = requests.post(app.route(), files=files, headers=app.auth)
    assert answer.status_code == 422
    assert [(d["loc"], d["type"]) for d in answer.json()["detail"]] == [(["images", 1], "bad_input")]
    assert "(index 1)" in answer.json()["detail"][0]["msg"]
    assert app.post(png, "application/octet-stream").status_code == 200


def test_requests_and_docs_need_the_api_key_but_probes_do_not(app):
    _, (png, *_) = holdout_pngs(app, 1)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": os.environ[KEY_ENV]}):
        answer = requests.post(app.route(), data=png, headers={**headers, "Content-Type": "application/octet-stream"})
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
        assert "API key" in answer.json()["detail"]
        for path in ("/models", "/docs", "/openapi.json"):
            assert requests.get(app.url + path, headers=headers).status_code == 401
    for path in ("/healthz", "/readyz"):
        assert requests.get(app.url + path).status_code == 200


def test_fuzzed_requests_from_the_openapi_schema_never_get_a_500(app, no_replica_dies):
    """Every operation, fed valid and invalid data generated from its own schema. Schemathesis's
    default checks: no server error, only documented status codes, responses that match their
    documented schema, invalid data rejected. Left out: "schema-valid data is accepted", which
    no image API can pass: random bytes fit the 'binary' schema but are no image (a 422)."""
    schema = schemathesis.openapi.from_url(f"{app.url}/openapi.json", headers=app.auth)
    cases = st.one_of(*(schema.as_strategy(generation_mode=mode) for mode in GenerationMode))

    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def call_and_check(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=app.url, headers=app.auth, excluded_checks=[positive_data_acceptance])

    call_and_check()


# ---- load, autoscaling, a killed replica -----------------------------------------------------
def test_under_load_nothing_fails_and_replicas_scale_up_then_back_to_min(app):
    _, (png, *_) = holdout_pngs(app, 1)
    samples: list[dict[str, int]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            samples.append(replica_states())

    def scaled_up() -> bool:
        return any(s.get("STARTING", 0) + s.get("RUNNING", 0) > AUTOSCALED["min_replicas"] for s in samples)

    watcher = threading.Thread(target=watch)
    watcher.start()
    # Serve's handles push load metrics every 10 s, and on a busy machine the push that shows the
    # load can come late: the load goes on, 5 s at a time, until a replica is added (45 s at most).
    results: list[loadgen.Result] = []
    deadline = time.monotonic() + 45
    while not scaled_up() and time.monotonic() < deadline:
        results.append(loadgen.closed_loop(app.route(), png, {**app.auth, "Content-Type": "application/octet-stream"},
                                           concurrency=32, seconds=5))
    done.set()
    watcher.join()
    print(f"\n32 concurrent clients for {5 * len(results)} s: " + "; ".join(r.describe() for r in results))
    assert all(r.failures == [] and r.latencies_s for r in results)
    assert scaled_up(), f"the autoscaler never went above min_replicas: {samples}"
    wait_for(lambda: replica_states() == {"RUNNING": AUTOSCALED["min_replicas"]}, 180,
             "the deployment to scale back to min_replicas")


def test_a_replica_killed_under_load_is_replaced_and_client_retries_lose_nothing(app):
    import ray

    _, (png, *_) = holdout_pngs(app, 1)
    victim = sorted(replicas())[0]
    results: list[loadgen.Result] = []
    load = threading.Thread(target=lambda: results.append(loadgen.closed_loop(
        app.route(), png, {**app.auth, "Content-Type": "application/octet-stream"}, concurrency=32, seconds=12,
        retries=100)))  # a retry every 0.2 s: up to 20 s without a replica
    load.start()
    time.sleep(3)
    ray.kill(ray.get_actor(victim, namespace="serve"))
    load.join()
    print(f"\nreplica killed 3 s into 12 s of load: {results[0].describe()}")
    assert results[0].failures == []
    wait_for(lambda: victim not in replicas() and replica_states().get("RUNNING", 0) >= 1, 180,
             "Serve to replace the killed replica")
    assert app.post(png, "application/octet-stream").status_code == 200


# ---- batching inside a model replica ---------------------------------------------------------
@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
class HeldModelServer(ModelServer.func_or_class):
    """The model deployment, holding its first forward pass until ``release`` exists and
    noting the rows of every pass and how many requests have reached the replica."""

    def __init__(self, release: str, *args: Any):
        super().__init__(*args)
        self.release, self.passes, self.arrived = Path(release), [], 0

    async def predict(self, values: list[Any], options: dict[str, Any]) -> list[dict]:
        self.arrived += 1
        return await super().predict(values, options)

    def _forward(self, rows: list, options: dict[str, Any]) -> list[dict]:
        self.passes.append(len(rows))
        while len(self.passes) == 1 and not self.release.exists():
            time.sleep(0.01)
        return super()._forward(rows, options)

    async def seen(self) -> tuple[int, list[int]]:
        return self.arrived, self.passes


@pytest.mark.parametrize("batch_wait_timeout_s", [0.0, 0.005])
def test_requests_that_arrive_during_a_forward_pass_go_together_into_the_next(app, tmp_path, batch_wait_timeout_s):
    """Ray 2.60's @serve.batch alone forms the next batch as soon as a pass starts, so a slow
    pass was followed by batches of one row; ModelServer's gate makes rows wait and go together."""
    _, pngs = holdout_pngs(app, 1 + 3 * 8)
    release = tmp_path / "release"
    handle = serve.run(HeldModelServer.bind(str(release), app.checkpoints["digits"], {}, 1, "cpu", 8,
                                            batch_wait_timeout_s), name="held", route_prefix=None)
    try:
        first = handle.predict.remote([pngs[0]], {})
        wait_for(lambda: handle.seen.remote().result()[1] == [1], 60, "the first forward pass to start")
        rest = [handle.predict.remote([png], {}) for png in pngs[1:]]
        wait_for(lambda: handle.seen.remote().result()[0] == len(pngs), 60, "every request to reach the replica")
        release.touch()
        answers = [response.result() for response in [first, *rest]]
        assert [a[0]["error"] for a in answers] == [None] * len(pngs)
        assert handle.seen.remote().result()[1] == [1, 8, 8, 8]
    finally:
        serve.delete("held")

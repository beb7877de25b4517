"""What a served app gives away or chokes on, against one real Serve app with an API key: the
schema, docs and model list need the key (only the probes answer without it), storage paths
only with ?detail=true, and hostile sampling parameters and image files get a 4xx, never a 500."""
from __future__ import annotations

import io

import pytest
import requests
from PIL import Image
from ray import serve
from serve_app import KEY_ENV, App, free_port
from test_hardening_inputs import bomb_png, chars_checkpoint, image_checkpoint

from distdl import serve as distdl_serve
from distdl.preprocessors.image import MAX_PIXELS
from distdl.serve.text import MAX_TOP_K

PROTECTED = ("/models", "/models?detail=true", "/openapi.json", "/docs")


@pytest.fixture(scope="module")
def app(ray_session, tmp_path_factory) -> App:
    root = tmp_path_factory.mktemp("hardening")
    paths = {"digits": image_checkpoint(root / "digits", {"name": "digits", "serve": {"max_image_pixels": MAX_PIXELS}}),
             "chars": chars_checkpoint(root / "chars", {"name": "chars", "serve": {"max_new_tokens": 20}})}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"checkpoints": list(paths.values()), "api_key_env": KEY_ENV, "cpus_per_replica": 0.25,
            "threads_per_replica": 1}
    serve.run(distdl_serve.build_app(args), name=distdl_serve.APP_NAME, route_prefix="/")
    yield App(f"http://127.0.0.1:{port}", paths, root)
    serve.shutdown()


def test_without_the_key_only_the_probes_answer(app):
    assert requests.get(f"{app.url}/healthz").status_code == 200
    assert requests.get(f"{app.url}/readyz").json() == {"ready": True, "models": {"digits": "ready", "chars": "ready"}}
    for path in PROTECTED:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            answer = requests.get(app.url + path, headers=headers)
            assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer", path
        assert requests.get(app.url + path, headers=app.auth).status_code == 200, path
    schema = requests.get(f"{app.url}/openapi.json", headers=app.auth).json()
    assert {"/models/{name}/classify-image", "/models/{name}/generate-text"} <= set(schema["paths"])
    assert "swagger-ui" in requests.get(f"{app.url}/docs", headers=app.auth).text
    assert requests.get(f"{app.url}/redoc", headers=app.auth).status_code == 404


def test_the_model_list_names_storage_paths_only_in_detail(app):
    brief = requests.get(f"{app.url}/models", headers=app.auth).json()["models"]
    assert [m["checkpoint"] for m in brief] == [None, None]
    assert str(app.holdout) not in str(brief)  # no path under the checkpoints' folder, anywhere
    detailed = requests.get(f"{app.url}/models?detail=true", headers=app.auth).json()["models"]
    assert {m["name"]: m["checkpoint"] for m in detailed} == app.checkpoints


def test_a_subnormal_temperature_generates_greedily_instead_of_failing_the_batch(app):
    prompts = {"prompts": ["the cat", "a dog"], "max_new_tokens": 10}
    tiny = app.post_json("chars", "generate-text", {**prompts, "temperature": 1e-320})
    assert tiny.status_code == 200, tiny.text
    greedy = app.post_json("chars", "generate-text", {**prompts, "temperature": 0})
    assert tiny.json()["generated"] == greedy.json()["generated"]
    too_many = app.post_json("chars", "generate-text", {**prompts, "top_k": MAX_TOP_K + 1})
    assert too_many.status_code == 422 and "top_k" in str(too_many.json()["detail"])


def test_an_image_of_an_unlisted_format_or_past_the_decoded_pixels_gets_a_4xx(app):
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PPM")
    ppm = app.post(buf.getvalue(), "application/octet-stream")
    assert ppm.status_code == 422 and "not a readable image file (PNG, JPEG" in ppm.json()["detail"][0]["msg"]
    bomb = app.post(bomb_png(), "application/octet-stream")
    assert bomb.status_code == 413, bomb.text
    assert f"this model takes at most {MAX_PIXELS}" in bomb.json()["detail"][0]["msg"]

"""`distdl serve` from the command line: help, the exported Serve config, errors before Ray,
and a real server on the session's Ray that prints its URL, answers and stops on Ctrl-C."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from ray.serve.schema import ServeDeploySchema
from test_predict import tiny_checkpoint
from test_serve import free_port

from distdl import cli
from distdl import serve as distdl_serve


def test_help_explains_serving(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["serve", "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    for words in ("--checkpoint [NAME=]PATH", "--set FIELD=VALUE", "--api-key-env NAME", "--export FILE",
                  "Ctrl-C", "/models/NAME/<task>", "classify-image (cnn)", "generate-image (gan)"):
        assert words in " ".join(out.split()), words


def test_export_writes_a_serve_config_that_ray_accepts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["serve", "--checkpoint", "runs/a/best", "--checkpoint", "b=s3://bucket/b", "--set",
                     "max_replicas=4", "--api-key-env", "DISTDL_KEY", "--export", "serve.yaml"]) == 0
    assert "serve deploy serve.yaml" in capsys.readouterr().out
    config = yaml.safe_load((tmp_path / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    assert config == {"applications": [{
        "name": "distdl", "route_prefix": "/", "import_path": "distdl.serve:build_app",
        "args": {"checkpoints": [str(tmp_path / "runs/a/best"), "b=s3://bucket/b"], "api_key_env": "DISTDL_KEY",
                 "max_replicas": 4}}]}


def test_bad_settings_and_missing_checkpoints_fail_before_ray_starts(tmp_path, capsys):
    assert cli.main(["serve", "--checkpoint", "x", "--set", "max_batch_size=64", "--set", "max_ongoin_requests=1",
                     "--export", str(tmp_path / "s.yaml")]) == 2
    err = capsys.readouterr().err
    assert "serve.max_ongoin_requests: unknown key; did you mean 'max_ongoing_requests'?" in err
    assert "serve.max_ongoing_requests: must be >= max_batch_size (64)" in err
    # --verbose: Ray's own lines would show, had it started
    missing = subprocess.run([sys.executable, "-m", "distdl", "serve", "--verbose", "--checkpoint",
                              str(tmp_path / "none")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "Started a local Ray instance" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none'} is not a complete distdl checkpoint (no COMPLETE marker)"


@pytest.fixture(scope="module")
def ckpt(ray_session, digits, tmp_path_factory) -> str:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "c", digits["train"], spec={"name": "digits"})


def test_build_app_refuses_two_models_of_one_name(ckpt):
    with pytest.raises(ValueError, match=r"both named \['digits'\]: name them with NAME=PATH"):
        distdl_serve.build_app({"checkpoints": [ckpt, ckpt]})
    assert len(distdl_serve.load_models([ckpt, f"other={ckpt}"], {})) == 2


def test_replicas_no_node_can_hold_are_refused_before_serve_starts(ray_session, ckpt):
    """The session's Ray is embedded and has no GPU: a GPU replica would wait forever."""
    from ray import serve

    with pytest.raises(ValueError, match=r"^gpus_per_replica 1 per replica of digits, but the largest node of this "
                                         r"Ray cluster has 0 GPUs: no replica of digits could start$"):
        distdl_serve.run([ckpt], {"gpus_per_replica": 1}, None, "127.0.0.1", free_port(), None)
    assert distdl_serve.APP_NAME not in serve.status().applications


def test_a_taken_port_is_refused_before_ray_starts(ckpt, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # an embedded Ray: Serve would bind on this machine
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--checkpoint", ckpt, "--port", str(port)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --port {port}: 127.0.0.1:{port} is not free (Address already in use); choose another --port")


def test_serve_prints_the_url_answers_and_stops_cleanly_on_ctrl_c(ray_session, digits, ckpt):
    from ray import serve

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "distdl", "serve", "--checkpoint", ckpt, "--port", str(port),
                               "--set", "cpus_per_replica=0.5", "--address",
                               ray_session.get_runtime_context().gcs_address],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not _ready(port):
            assert server.poll() is None, server.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(1)
        png = next(Path(digits["images"]).rglob("*.png")).read_bytes()
        answer = requests.post(f"http://127.0.0.1:{port}/models/digits/classify-image", data=png,
                               headers={"Content-Type": "application/octet-stream"})
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in range(10)
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=120)
        assert server.returncode == 0, err[-3000:]
        assert f"serving at http://127.0.0.1:{port}/" in out
        assert f"digits           POST http://127.0.0.1:{port}/models/digits/classify-image" in out
        assert out.rstrip().endswith("stopped")
        assert distdl_serve.APP_NAME not in serve.status().applications  # its app was deleted
    finally:
        if server.poll() is None:
            server.kill()
        serve.shutdown()  # the Serve controller and proxy it started on the session's Ray


def _ready(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    except requests.RequestException:  # refused, or no app routed yet
        return False

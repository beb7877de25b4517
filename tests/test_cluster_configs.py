"""cluster/: the Ray cluster launcher configs pass the schema Ray ships (and the checks `ray up`
runs before it contacts a cloud), and the Dockerfile builds on the Ray and Python in use here."""
from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.commands import prepare_config
from ray.autoscaler._private.util import validate_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "cluster").glob("*.yaml"))
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_there_is_a_config_for_aws_and_gcp():
    assert [p.name for p in CONFIGS] == ["aws.yaml", "gcp.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_passes_rays_launcher_schema_and_checks(path):
    config = load(path)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # top level and node types: unknown keys are errors
    validate_config(prepare_config(config))  # as `ray up` does, after filling the provider's defaults


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_has_a_cpu_head_a_cpu_group_and_a_gpu_group_from_zero_on_the_distdl_image(path):
    config = load(path)
    types = config["available_node_types"]
    head = types.pop(config["head_node_type"])
    assert head["resources"] == {"CPU": 0}
    assert set(types) == {"cpu_worker", "gpu_worker"}
    cpu, gpu = types["cpu_worker"], types["gpu_worker"]
    # One CPU node stays up (a job that does not wait for nodes is sized from the live ones); the
    # GPU group idles at zero until a job asks the autoscaler for GPUs (wait_for_resources_s).
    assert "GPU" not in cpu["resources"] and 1 == cpu["min_workers"] < cpu["max_workers"]
    assert gpu["resources"]["GPU"] >= 1 and 0 == gpu["min_workers"] < gpu["max_workers"]
    assert cpu["max_workers"] + gpu["max_workers"] <= config["max_workers"]
    assert config["docker"]["image"].endswith(f"/distdl:{VERSION}")
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


def test_dockerfile_builds_on_the_ray_and_python_in_use_and_copies_what_exists():
    text = (ROOT / "cluster" / "Dockerfile").read_text()
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-{python}-gpu$", text, re.M)
    sources = [src for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", text, re.M) for src in line.split()[:-1]]
    assert sources and all((ROOT / src).exists() for src in sources)
    assert "pip install --no-cache-dir -r requirements.txt" in text and re.search(r"^USER ray$", text, re.M)

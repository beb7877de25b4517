"""scaling.wait_for_resources_s: what a training job asks Ray's autoscaler for, the wait, and the
message when nothing joins. The request goes to the session's real Ray (its autoscaler request
store); the nodes a wait sees come from a list the test grows, as an autoscaler would."""
from __future__ import annotations

import json
import sys
import time

import pytest
import yaml
from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
from ray.autoscaler.v2.utils import is_autoscaler_v2
from ray.experimental.internal_kv import _internal_kv_get
from test_cluster import client_env, run

from distdl import capacity
from distdl.layout import LayoutError
from distdl.spec import ScalingSpec, WorkerRange

CPU_NODE = {"CPU": 2.0, "memory": 1e9}
GPU_NODE = {"CPU": 4.0, "GPU": 1.0}


def requested() -> list[dict]:
    """What the autoscaler is asked for now (Ray's v1 request store, the one a local Ray uses)."""
    assert not is_autoscaler_v2()
    return json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL) or b"[]")


@pytest.mark.parametrize("scaling, bundles", [
    (ScalingSpec(), [{"CPU": 1.0}]),
    (ScalingSpec(use_gpu=True), [{"GPU": 1.0}]),
    (ScalingSpec(use_gpu=True, num_workers=2, gpus_per_worker=0.5, cpus_per_worker=3.0),
     [{"GPU": 0.5, "CPU": 3.0}, {"GPU": 0.5, "CPU": 3.0}]),
    # elastic: training starts with min workers; Ray Train asks for the rest up to max itself
    (ScalingSpec(use_gpu=True, num_workers=WorkerRange(min=2, max=8)), [{"GPU": 1.0}, {"GPU": 1.0}]),
])
def test_what_is_asked_for_is_what_the_spec_sets_explicitly(scaling, bundles):
    assert capacity.wanted(scaling) == bundles


def test_the_shortfall_names_each_resource_and_what_the_cluster_has():
    assert capacity.shortfall([{"GPU": 1.0}] * 2, [CPU_NODE, {"CPU": 0.0, "GPU": 1.0}]) == "2 GPU (the cluster has 0)"
    assert capacity.shortfall([{"CPU": 1.0}], [{"CPU": 0.0}]) == "1 CPU (the cluster has 0)"  # a head kept for Ray
    assert capacity.shortfall([{"GPU": 1.0}], [CPU_NODE, GPU_NODE]) is None


def test_a_wait_asks_the_autoscaler_and_trains_on_the_node_that_joins_then_withdraws_the_ask(ray_session):
    nodes, seen = [CPU_NODE], []

    def alive() -> list[dict]:
        seen.append(requested())
        if len(seen) == 3:
            nodes.append(GPU_NODE)  # the autoscaler's node joins
        return list(nodes)

    cluster = capacity.wait_for(ScalingSpec(use_gpu=True), 30, alive, poll_s=0.01)
    assert (cluster.nodes, cluster.total_gpus) == (2, 1.0)
    assert [{"GPU": 1.0}] in seen  # asked while waiting
    assert requested() == []  # and withdrawn


def test_without_a_wait_nothing_is_asked(ray_session):
    started = time.monotonic()
    cluster = capacity.wait_for(ScalingSpec(use_gpu=True), 0, lambda: [CPU_NODE])
    assert cluster.total_gpus == 0 and requested() == [] and time.monotonic() - started < 5


def test_a_wait_that_ends_without_the_node_names_what_it_waited_for(ray_session):
    with pytest.raises(LayoutError, match=r"waited 0.2 s \(scaling.wait_for_resources_s\) for 1 GPU "
                                          r"\(the cluster has 0\)"):
        capacity.wait_for(ScalingSpec(use_gpu=True), 0.2, lambda: [CPU_NODE], poll_s=0.05)
    assert requested() == []


@pytest.mark.e2e
def test_a_gpu_job_on_a_cpu_cluster_fails_after_its_wait_with_the_reason(ray_cluster, digits, tmp_path):
    (tmp_path / "data").symlink_to(digits["train"].parent)
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump({
        "name": "gpu", "data": {"train": "data/train.parquet"},
        "scaling": {"use_gpu": True, "wait_for_resources_s": 3}}))
    done = run(sys.executable, "-m", "distdl", "submit", "gpu.yaml", "--address", ray_cluster.address, "--follow",
               cwd=tmp_path, env=client_env(ray_cluster))
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "waiting up to 3 s (scaling.wait_for_resources_s) for 1 GPU (the cluster has 0)" in done.stdout
    assert "waited 3 s (scaling.wait_for_resources_s) for 1 GPU (the cluster has 0)" in done.stdout

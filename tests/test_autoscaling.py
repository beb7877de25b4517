"""A real autoscaling Ray cluster whose head has no CPUs and whose worker group starts at zero
nodes (the shape of cluster/*.yaml, scaled to zero): distdl says what it waits for and Ray's
autoscaler adds the node (ray_cluster.AutoscalingCluster). Training needs a live node to size
its layout and says so."""
from __future__ import annotations

import sys

import pyarrow.parquet as pq
import pytest
from test_cluster import ROOT, client_env, run
from test_predict import tiny_checkpoint


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray_cluster import AutoscalingCluster

    cluster = AutoscalingCluster(tmp_path_factory.mktemp("autoscaling_logs"),
                                 {"cpu_worker": {"resources": {"CPU": 2}, "min_workers": 0, "max_workers": 1}})
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def driver_env(cluster) -> dict[str, str]:
    """A driver that joins the cluster itself (ray.init with its address and token)."""
    return {**client_env(cluster), "RAY_AUTH_MODE": "token"}


def test_training_with_no_node_to_size_it_from_is_refused_with_the_fix(cluster, digits, tmp_path):
    result = run(sys.executable, "-m", "distdl", "train", "jobs/cnn_digits.yaml", "--set", f"storage={tmp_path}",
                 "--set", f"data.train={digits['train']}",
                 "--address", f"127.0.0.1:{cluster.gcs_port}", cwd=ROOT, env=driver_env(cluster))
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: no node of this Ray cluster has CPUs to train on (worker groups scaled to zero?)")


def test_scoring_announces_the_missing_node_and_finishes_once_the_autoscaler_adds_it(cluster, ray_session, digits,
                                                                                   tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", digits["train"])
    assert len(cluster.alive_nodes()) == 1  # the head alone
    result = run(sys.executable, "-m", "distdl", "score", "--checkpoint", ckpt, "--input", str(digits["holdout"]),
                 "--output", str(tmp_path / "out"), "--address", f"127.0.0.1:{cluster.gcs_port}",
                 cwd=ROOT, env=driver_env(cluster))
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("[distdl] warning: --cpus 1 per scoring actor, but the largest node of this Ray cluster has 0 CPUs; "
            "each scoring actor waits until such a node joins") in result.stderr
    assert "the pool is sized from the nodes alive now: 1 actor(s); --max-actors N lets it grow" in result.stderr
    assert [node["resources_total"]["CPU"] for node in cluster.alive_nodes() if not node["is_head_node"]] == [2.0]
    rows = len(pq.read_table(digits["holdout"]))
    assert f"rows in: {rows}  rows scored: {rows}  rows with errors: 0" in result.stdout

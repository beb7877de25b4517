"""One embedded local Ray for the whole session, and small real data sets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# 4 logical CPUs on a 2-core machine: room for two 1-CPU Train workers plus Ray Data.
RAY_CPUS = 4
RAY_FIXTURES = {"ray_session", "ray_cluster"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a Ray (directly or through another fixture) is end to end: `make
    test-fast` (-m "not e2e") skips it without each test having to say so.

    The tests on the two-raylet cluster run last, in their order: the cluster, once started,
    lives to the end of the session, and idle it still takes a few percent of 2 cores."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: "ray_cluster" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory) -> str:
    """Every training run in the suite is tracked, into one sqlite store for the session: MLflow
    creates a store's tables once (a second or two), not once per run's storage folder."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from distdl import runtime

    runtime.connect(num_cpus=RAY_CPUS)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, Path]:
    """scikit-learn's handwritten digits as parquet (PNG bytes), holdout, and an image folder."""
    from distdl.demo_data import write_digits

    return write_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real two-node Ray cluster (two raylets) with token auth, shared by every cluster test.
    Head: 3 CPUs, second node: 2 CPUs — a 2-CPU Train worker fits once on each, never twice on one."""
    from ray_cluster import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("ray_cluster_logs"), head_cpus=3, node_cpus=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for modules of tiny in-process models: a second intra-op thread only
    adds OpenMP hand-offs, ~10x slower on a busy 2-core machine (measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

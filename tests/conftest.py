"""One embedded local Ray for the whole session, and small real data sets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["cpu_by_test"]  # --cpu-by-test

# The suite always runs more torch threads than the 2 cores it has (two pytest workers, each
# with Ray workers, servers and subprocesses). libgomp's threads spin while they wait for work,
# on cores another process needs: two processes with 2 torch threads each ran a ResNet-18
# forward loop 3.3x faster with PASSIVE waits than with the default (measured). Set before
# anything loads torch; every Ray worker and subprocess of the session inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# 4 logical CPUs on a 2-core machine: room for two 1-CPU Train workers plus Ray Data.
RAY_CPUS = 4
RAY_FIXTURES = {"ray_session", "ray_cluster"}


# `make test` runs the suite on two pytest-xdist workers, each with its own embedded Ray. A
# worker takes a whole group of tests at a time: a module, so that its module-scoped servers and
# runs start once, or every module with tests on the shared two-raylet cluster, so that one
# cluster starts, not one per worker. The longest groups go first (as measured with
# --durations), so that none starts while the other worker is about to run out of work; the
# rest follow in file order. The order only moves time around; it never changes a result.
CLUSTER_MODULES = {"test_cluster", "test_capacity", "test_submit"}
LONGEST_FIRST = ("ray_cluster", "test_benchmarks", "test_tune", "test_serve", "test_train", "test_elastic",
                 "test_tracking", "test_rnn_train", "test_score_faults")


def group_of(nodeid: str) -> str:
    module = Path(nodeid.split("::")[0]).stem
    return "ray_cluster" if module in CLUSTER_MODULES else module


def uses_the_cluster(item: pytest.Item) -> bool:
    return "ray_cluster" in getattr(item, "fixturenames", ())


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadgroup` hands out the groups above. (xdist's own loadgroup reads marks that
    pytest 9 no longer lets it attach to test ids.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return ByGroup(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a Ray (directly or through another fixture) is end to end: `make
    test-fast` (-m "not e2e") skips it without each test having to say so.

    Items are ordered group by group, and the cluster's tests last in their group (below)."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
        if uses_the_cluster(item) and group_of(item.nodeid) != "ray_cluster":
            raise pytest.UsageError(f"{item.nodeid} uses the ray_cluster fixture: add its module to "
                                    "CLUSTER_MODULES in tests/conftest.py")
    group_rank = {group: rank for rank, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: (group_rank.get(group_of(item.nodeid), len(LONGEST_FIRST)), uses_the_cluster(item)))


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """The two-raylet cluster stops after its last test: idle, it still takes a few percent of
    2 cores, which the rest of the session can use."""
    if uses_the_cluster(item) and (nextitem is None or not uses_the_cluster(nextitem)):
        item.funcargs["ray_cluster"].stop()


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

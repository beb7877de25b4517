"""Resource layout: workers, CPUs, threads, and what stays free for Ray Data."""
from __future__ import annotations

import pytest

from distdl.layout import Cluster, LayoutError, resolve, sized_from_live_nodes
from distdl.spec import ScalingSpec, WorkerRange


def cluster(nodes=1, cpus=2.0, gpus=0.0) -> Cluster:
    return Cluster(nodes=nodes, cpus_per_node=cpus, gpus_per_node=gpus, total_cpus=nodes * cpus, total_gpus=nodes * gpus)


def test_auto_on_a_two_core_machine_is_one_worker_using_both_cores_and_leaving_one_cpu_for_data():
    layout = resolve(ScalingSpec(), cluster(cpus=2))
    assert (layout.num_workers, layout.use_gpu, layout.cpus_per_worker, layout.threads_per_worker) == (1, False, 1, 2)
    assert layout.data_cpus == 1


def test_auto_on_cpu_nodes_is_one_worker_per_node_with_a_quarter_left_for_data():
    layout = resolve(ScalingSpec(), cluster(nodes=3, cpus=16))
    assert (layout.num_workers, layout.cpus_per_worker, layout.threads_per_worker) == (3, 12, 12)
    assert layout.data_cpus == 12


def test_auto_on_gpu_nodes_is_one_worker_per_gpu():
    layout = resolve(ScalingSpec(), cluster(nodes=2, cpus=32, gpus=4))
    assert (layout.num_workers, layout.use_gpu, layout.gpus_per_worker) == (8, True, 1.0)
    assert layout.cpus_per_worker == 6  # (32 - 8 for data) / 4 workers per node
    assert layout.data_cpus == 64 - 8 * 6


def test_explicit_workers_share_what_data_does_not_need():
    layout = resolve(ScalingSpec(num_workers=2), cluster(cpus=2))
    assert (layout.cpus_per_worker, layout.threads_per_worker, layout.data_cpus) == (0.5, 1, 1)


def test_a_layout_that_reserves_every_cpu_is_refused_because_ingest_would_stall():
    with pytest.raises(LayoutError, match="Ray Data would get none"):
        resolve(ScalingSpec(num_workers=2, cpus_per_worker=1), cluster(cpus=2))


def test_asking_for_gpus_on_a_cpu_cluster_is_an_error():
    with pytest.raises(LayoutError, match="no GPUs"):
        resolve(ScalingSpec(use_gpu=True), cluster(cpus=8))


def test_nodes_without_cpus_do_not_train_and_a_cluster_of_none_is_refused_with_the_fix():
    head, gpu_node = {"CPU": 0.0, "memory": 8e9}, {"CPU": 4.0, "GPU": 1.0}
    assert Cluster.of([head, gpu_node]) == Cluster(nodes=1, cpus_per_node=4, gpus_per_node=1, total_cpus=4, total_gpus=1)
    with pytest.raises(LayoutError, match=r"no node of this Ray cluster has CPUs to train on .*min_workers: 1"):
        Cluster.of([head])


def test_auto_fields_sized_from_the_live_nodes_say_so_for_clusters_that_autoscale():
    two_nodes = cluster(nodes=2)
    assert sized_from_live_nodes(ScalingSpec(), two_nodes) == (
        "auto scaling.num_workers and scaling.use_gpu sized from the 2 node(s) with CPUs alive now; nodes an "
        "autoscaler adds later are not counted (a GPU group at zero counts as no GPUs): to train on them, ask for "
        "them (use_gpu: true and scaling.wait_for_resources_s) or scale their worker group up first (min_workers "
        "in cluster/*.yaml, minReplicas in KubeRay)")
    assert sized_from_live_nodes(ScalingSpec(num_workers=2), two_nodes).startswith("auto scaling.use_gpu sized")
    assert sized_from_live_nodes(ScalingSpec(num_workers=2, use_gpu=False), two_nodes) is None


def test_an_elastic_range_is_sized_for_its_min_and_handed_to_ray_as_a_tuple():
    layout = resolve(ScalingSpec(num_workers=WorkerRange(min=2, max=4), cpus_per_worker=2), cluster(nodes=2, cpus=3))
    assert (layout.num_workers, layout.max_workers, layout.ray_num_workers) == (2, 4, (2, 4))
    assert layout.data_cpus == 2  # what 2 workers leave now; nodes that join bring their own CPUs
    assert layout.describe().startswith("2..4 worker(s) x (2 CPU")
    assert resolve(ScalingSpec(num_workers=2), cluster(nodes=2)).ray_num_workers == 2


def test_only_one_fixed_worker_reads_the_datasets_whole():
    assert not resolve(ScalingSpec(num_workers=1), cluster()).splits_data
    assert resolve(ScalingSpec(num_workers=2, cpus_per_worker=1), cluster(nodes=2)).splits_data
    assert resolve(ScalingSpec(num_workers=WorkerRange(min=1, max=2), cpus_per_worker=1), cluster(cpus=3)).splits_data


def test_an_elastic_min_that_would_reserve_every_cpu_is_refused():
    with pytest.raises(LayoutError, match="Ray Data would get none"):
        resolve(ScalingSpec(num_workers=WorkerRange(min=2, max=3), cpus_per_worker=1), cluster(cpus=2))

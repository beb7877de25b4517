"""Resource layout: how many Train workers, how many CPUs/GPUs and threads each, and
what is left for Ray Data, from the spec's ``scaling`` section and the cluster.

On CPU nodes ``auto`` means one worker per node using the node's cores as torch threads:
it needs no gradient all-reduce and matches or beats several 1-thread workers
(benchmarks/train_throughput.py on a 2-core machine, ResNet-18 32x32: distdl 1x2 threads
50.9 samples/s vs 2x1 48.7; plain DDP 52.7 vs 53.6, a tie within noise). Train must never
reserve every CPU: Ray Data then gets no budget and ingest stalls forever.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import ray

from distdl.spec import ScalingSpec


class LayoutError(ValueError):
    pass


@dataclass(frozen=True)
class Cluster:
    nodes: int
    cpus_per_node: float  # the smallest node that has CPUs
    gpus_per_node: float  # the smallest node that has GPUs (0: no GPU nodes)
    total_cpus: float
    total_gpus: float

    @classmethod
    def current(cls) -> "Cluster":
        return cls.of([node["Resources"] for node in ray.nodes() if node["Alive"]])

    @classmethod
    def of(cls, nodes: list[dict[str, float]]) -> "Cluster":
        """The cluster of these nodes' resources; nodes without CPUs (a head kept for the GCS) do not train."""
        alive = [r for r in nodes if r.get("CPU", 0) > 0]
        if not alive:
            # E.g. a launcher cluster whose head keeps CPU: 0 and whose worker groups are at zero:
            # Ray 2.60 does not tell a driver which nodes an autoscaler could add.
            raise LayoutError("no node of this Ray cluster has CPUs to train on (worker groups scaled to zero?): "
                              "the layout is sized from the nodes alive when training starts; start a worker "
                              "node first (min_workers: 1 in cluster/*.yaml), or set scaling.wait_for_resources_s "
                              "to ask the autoscaler for one")
        gpu_nodes = [r["GPU"] for r in alive if r.get("GPU", 0) > 0]
        return cls(
            nodes=len(alive),
            cpus_per_node=min(r["CPU"] for r in alive),
            gpus_per_node=min(gpu_nodes, default=0.0),
            total_cpus=sum(r["CPU"] for r in alive),
            total_gpus=sum(gpu_nodes),
        )


@dataclass(frozen=True)
class Layout:
    num_workers: int  # the workers it starts with (an elastic range's min)
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float
    threads_per_worker: int
    data_cpus: float  # CPUs Train leaves unreserved with num_workers, Ray Data's budget
    max_workers: Optional[int] = None  # elastic: Ray Train grows the group up to it; None: a fixed group

    @property
    def ray_num_workers(self) -> Union[int, tuple[int, int]]:
        """ScalingConfig(num_workers=...): a (min, max) tuple turns on Ray Train's elastic group."""
        return self.num_workers if self.max_workers is None else (self.num_workers, self.max_workers)

    @property
    def splits_data(self) -> bool:
        """Whether the datasets are split over several workers. One fixed worker reads them whole:
        Ray's split would start a coordinator actor per dataset (~2.4 CPU-s each) to feed one reader."""
        return self.max_workers is not None or self.num_workers > 1

    def describe(self) -> str:
        device = f"{self.gpus_per_worker:g} GPU + " if self.use_gpu else ""
        workers = str(self.num_workers) if self.max_workers is None else f"{self.num_workers}..{self.max_workers}"
        return (f"{workers} worker(s) x ({device}{self.cpus_per_worker:g} CPU, "
                f"{self.threads_per_worker} torch threads); {self.data_cpus:g} CPU left for Ray Data")


def _data_reserve(node_cpus: float) -> float:
    """CPUs per node kept out of Train's reservation for Ray Data's read/preprocess tasks."""
    if node_cpus < 2:
        return node_cpus / 2
    return max(1.0, math.floor(node_cpus / 4))


def resolve(scaling: ScalingSpec, cluster: Cluster) -> Layout:
    use_gpu = cluster.total_gpus > 0 if scaling.use_gpu == "auto" else scaling.use_gpu
    if use_gpu and cluster.total_gpus == 0:
        raise LayoutError("scaling.use_gpu is true but the cluster has no GPUs")
    gpus = scaling.gpus_per_worker if use_gpu else 0.0
    if scaling.min_workers != "auto":  # a range is sized for its min: what must fit now
        workers = scaling.min_workers
    elif use_gpu:
        workers = max(1, int(cluster.total_gpus // gpus))
    else:
        workers = cluster.nodes
    workers_per_node = max(1, math.ceil(workers / cluster.nodes))
    node_cpus = cluster.cpus_per_node
    if scaling.cpus_per_worker != "auto":
        cpus = scaling.cpus_per_worker
    else:
        share = (node_cpus - _data_reserve(node_cpus)) / workers_per_node
        cpus = math.floor(share) if share >= 1 else max(0.25, math.floor(share * 4) / 4)
    if scaling.threads_per_worker != "auto":
        threads = scaling.threads_per_worker
    elif workers_per_node == 1 and node_cpus <= 4:
        threads = int(node_cpus)  # small node: Data's work is light next to the model; use every core
    else:
        threads = max(1, int(cpus))
    data_cpus = cluster.total_cpus - workers * cpus
    if data_cpus <= 0:
        raise LayoutError(
            f"scaling: {workers} worker(s) x {cpus:g} CPU reserve all {cluster.total_cpus:g} CPUs of the cluster; "
            "Ray Data would get none and ingest would stall. Lower scaling.cpus_per_worker or scaling.num_workers")
    return Layout(workers, use_gpu, cpus, gpus, threads, data_cpus,
                  max_workers=scaling.num_workers.max if scaling.elastic else None)


def sized_from_live_nodes(scaling: ScalingSpec, cluster: Cluster) -> str | None:
    """What to tell a user whose layout ``auto`` fields were sized from the nodes alive now, on
    a cluster that may be autoscaling: Ray 2.60 does not tell a driver which nodes an autoscaler
    could add (a GPU worker group at zero looks like no GPUs), so those nodes are not counted.
    Explicit fields alone do not help: their CPUs and GPUs are checked against the live nodes too,
    unless scaling.wait_for_resources_s has the autoscaler add what they ask for (capacity.py)."""
    auto = [f"scaling.{name}" for name in ("num_workers", "use_gpu") if getattr(scaling, name) == "auto"]
    if not auto:
        return None
    return (f"auto {' and '.join(auto)} sized from the {cluster.nodes} node(s) with CPUs alive now; nodes an "
            "autoscaler adds later are not counted (a GPU group at zero counts as no GPUs): to train on them, "
            "ask for them (use_gpu: true and scaling.wait_for_resources_s) or scale their worker group up first "
            "(min_workers in cluster/*.yaml, minReplicas in KubeRay)")

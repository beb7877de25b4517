"""How many trials run at a time, and the layout of each: the cluster cut into equal slices,
each laid out by the rules ``distdl train`` uses (layout.resolve), so every trial keeps its
share of CPU for Ray Data's ingest.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Union

from distdl.layout import Cluster, Layout, LayoutError, resolve
from distdl.spec import ScalingSpec


@dataclass(frozen=True)
class Plan:
    concurrent: int
    layout: Layout  # of one trial

    def describe(self) -> str:
        """"2 trials at a time x 1 worker x 1 CPU, 1 thread each; 2 CPU left for Ray Data"."""
        lay = self.layout
        gpu = f" + {lay.gpus_per_worker:g} GPU" if lay.use_gpu else ""
        trials = "1 trial" if self.concurrent == 1 else f"{self.concurrent} trials"
        workers = "1 worker" if lay.num_workers == 1 else f"{lay.num_workers} workers"
        threads = "1 thread" if lay.threads_per_worker == 1 else f"{lay.threads_per_worker} threads"
        return (f"{trials} at a time x {workers} x {lay.cpus_per_worker:g} CPU{gpu}, {threads} each; "
                f"{self.concurrent * lay.data_cpus:g} CPU left for Ray Data")

    def scaling(self) -> dict:
        """The ``scaling`` section every trial's spec gets: the plan, spelled out."""
        lay = self.layout
        return {"num_workers": lay.num_workers, "use_gpu": lay.use_gpu, "cpus_per_worker": lay.cpus_per_worker,
                "gpus_per_worker": lay.gpus_per_worker or 1.0, "threads_per_worker": lay.threads_per_worker}


def share(cluster: Cluster, concurrent: int) -> Cluster:
    """The part of ``cluster`` one of ``concurrent`` trials gets: whole nodes while there are
    enough, else an equal part of each node."""
    per_node = math.ceil(concurrent / cluster.nodes)
    return Cluster(nodes=max(1, cluster.nodes // concurrent), cpus_per_node=cluster.cpus_per_node / per_node,
                   gpus_per_node=cluster.gpus_per_node / per_node, total_cpus=cluster.total_cpus / concurrent,
                   total_gpus=cluster.total_gpus / concurrent)


def trial_layout(scaling: ScalingSpec, cluster: Cluster, concurrent: int) -> Layout:
    """One trial's layout in its share. Trials that share a node get one torch thread per CPU
    (train's rule on a small node also gives torch the cores kept for Ray Data: two trials'
    threads would then fight over the same cores)."""
    part = share(cluster, concurrent)
    layout = resolve(scaling, part)
    gpus = layout.num_workers * layout.gpus_per_worker
    if layout.use_gpu and gpus > part.total_gpus + 1e-9:  # resolve sizes one run: it never divides a GPU
        raise LayoutError(f"each trial needs {gpus:g} GPU(s) and gets {part.total_gpus:g}")
    if scaling.threads_per_worker == "auto" and concurrent > cluster.nodes:
        layout = dataclasses.replace(layout, threads_per_worker=max(1, int(layout.cpus_per_worker)))
    return layout


def fit(scaling: ScalingSpec, cluster: Cluster, trials: int, max_concurrent: Union[str, int]) -> Plan:
    """The plan for ``trials`` trials. ``max_concurrent`` "auto": the most trials at a time that
    still give each worker a whole CPU (or its GPUs) and keep CPU for Ray Data; an explicit
    number is refused (LayoutError) when its share of the cluster holds no trial."""
    if max_concurrent != "auto":
        concurrent = min(int(max_concurrent), trials)
        try:
            return Plan(concurrent, trial_layout(scaling, cluster, concurrent))
        except LayoutError as exc:
            raise LayoutError(f"--max-concurrent {max_concurrent}: each trial's share of the cluster is too "
                              f"small: {exc}") from None
    for concurrent in range(min(trials, max(1, int(cluster.total_cpus))), 1, -1):
        try:
            layout = trial_layout(scaling, cluster, concurrent)
        except LayoutError:
            continue
        if layout.cpus_per_worker >= 1 or scaling.cpus_per_worker != "auto":
            return Plan(concurrent, layout)
    return Plan(1, trial_layout(scaling, cluster, 1))

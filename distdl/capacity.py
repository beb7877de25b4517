"""Waiting for the nodes a training job asks for, on a cluster that autoscales.

A layout is sized from the nodes alive when training starts (layout.py), and Ray 2.60 does not
tell a driver which nodes an autoscaler could add: a GPU group at zero looks like no GPUs. With
``scaling.wait_for_resources_s`` above 0, what the spec asks for explicitly (``use_gpu: true``
and its workers' GPUs, or any node with CPUs) is requested from Ray's autoscaler
(``ray.autoscaler.sdk.request_resources``), and training starts once live nodes hold it, or
fails after the wait naming what it waited for. The request is withdrawn either way, so the
autoscaler may later remove the nodes when they go idle.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import ray
from ray.autoscaler.sdk import request_resources

from distdl.layout import Cluster, LayoutError
from distdl.logs import say
from distdl.spec import ScalingSpec

POLL_S = 2.0


def wanted(scaling: ScalingSpec) -> list[dict[str, float]]:
    """The resource bundles the spec asks for explicitly: a GPU worker's GPUs (and CPUs when
    set) for each worker (an elastic range's ``min``: training starts with those, and Ray Train
    asks for the rest up to ``max`` itself), or one CPU somewhere when it trains on CPUs.
    ``auto`` fields ask for nothing more: they are sized from what is there."""
    if scaling.use_gpu is True:
        bundle = {"GPU": scaling.gpus_per_worker}
        if scaling.cpus_per_worker != "auto":
            bundle["CPU"] = scaling.cpus_per_worker
        return [dict(bundle) for _ in range(1 if scaling.min_workers == "auto" else scaling.min_workers)]
    return [{"CPU": 1.0}]


def shortfall(bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> Optional[str]:
    """What of ``bundles`` the nodes' total resources lack ("2 GPU (the cluster has 0)"), or None."""
    asked: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            asked[name] = asked.get(name, 0.0) + amount
    have = {name: sum(node.get(name, 0.0) for node in nodes if node.get("CPU", 0) > 0) for name in asked}
    short = [f"{asked[name]:g} {name} (the cluster has {have[name]:g})" for name in asked if have[name] < asked[name]]
    return ", ".join(short) or None


def live_nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def wait_for(scaling: ScalingSpec, wait_s: float, nodes: Callable[[], list[dict[str, float]]] = live_nodes,
             poll_s: float = POLL_S) -> Cluster:
    """The cluster, once its live nodes hold what ``scaling`` asks for; without a wait (0), or
    when they already do, the cluster as it is (layout.resolve then refuses what does not fit)."""
    bundles = wanted(scaling)
    missing = shortfall(bundles, nodes())
    if missing is None or wait_s <= 0:
        return Cluster.of(nodes())
    say(f"[distdl] waiting up to {wait_s:g} s (scaling.wait_for_resources_s) for {missing}: asked the "
        "autoscaler for it")
    request_resources(bundles=bundles)
    deadline = time.monotonic() + wait_s
    try:
        while missing and time.monotonic() < deadline:
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
            missing = shortfall(bundles, nodes())
    finally:
        request_resources(bundles=[])  # withdrawn: a request stands until replaced
    if missing:
        raise LayoutError(f"waited {wait_s:g} s (scaling.wait_for_resources_s) for {missing}; no node with it "
                          "joined. Does the cluster have a worker group with these resources, and room to add "
                          "a node to it (its max_workers / maxReplicas)?")
    say("[distdl] the nodes joined")
    return Cluster.of(nodes())

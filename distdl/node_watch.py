"""Nodes joining and leaving a Ray cluster, and Ray Data's view of them.

Ray Data sizes its work from an autoscaling coordinator (a Ray-internal actor) whose view of the
cluster's nodes is refreshed every 20 s. A node that joins is therefore unused for up to 20 s by
an elastic training group (its resize check) and by a scoring pool (its autoscaler), and a
restart right after a node died is sized for the dead node too. Here the view is refreshed as
soon as a join is seen. Where the coordinator differs in another Ray, only this speed-up is lost.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Optional

import ray

JOIN_POLL_S = 1.0  # how often a watcher looks for a joined node (a GCS call)


def alive_nodes() -> set[str]:
    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


def dead_nodes() -> set[str]:
    """The cluster's nodes that died (the GCS keeps them listed, not alive)."""
    return {node["NodeID"] for node in ray.nodes() if not node["Alive"]}


def refresh_ray_data_view() -> None:
    """Make Ray Data's coordinator recount the nodes alive now (measured: a restart right after
    a node died was otherwise sized for the dead node's worker too, and waited out Ray Train's
    60 s worker-group start timeout)."""
    if not ray.is_initialized():  # not in a Ray process: nothing to refresh (and no Ray to start)
        return
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        coordinator = get_or_create_autoscaling_coordinator()
        ray.get(coordinator.get_reserved_resources.remote("distdl", recompute=True), timeout=10)
    except (ImportError, AttributeError, TypeError, ray.exceptions.RayError):
        pass


def refresh_on_join(known: set[str], stop: Optional[threading.Event] = None) -> None:
    """Until ``stop`` is set (None: for the rest of the process), refresh Ray Data's view as
    soon as a node joins that is not ``known``."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            alive = alive_nodes()
        except ray.exceptions.RayError:  # Ray is going away with this process's work
            return
        if alive - known:
            refresh_ray_data_view()
        known = alive
        stop.wait(JOIN_POLL_S)


@contextmanager
def refreshed_on_join() -> Iterator[None]:
    """Ray Data's view refreshed as nodes join, for the block's length (a thread)."""
    stop = threading.Event()
    watcher = threading.Thread(target=refresh_on_join, args=(alive_nodes(), stop), daemon=True,
                               name="distdl-node-joins")
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()

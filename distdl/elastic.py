"""Elastic training (``scaling.num_workers: {min, max}``): the rules that keep a run's learning
curve and failure budget independent of how many nodes happened to be there.

Ray Train 2.60 resizes an elastic group by restarting it with the new world size; the loop
resumes from the newest complete checkpoint in storage (loop.py). Here:

- each rank's share of the global batch, and the loss weight that makes DDP's averaged
  gradient the mean over exactly ``train.batch_size`` rows, whatever the world size;
- which worker failures count against ``failure.max_failures``: a worker lost with its node is
  a resize, not a failure (Ray would count it; distdl gives Ray an unlimited budget in
  elastic mode and counts the other failures itself).
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import ray
from ray.exceptions import RayActorError
from ray.train import UserCallback

from distdl.runtime import cause_in

NODE_DIED = "its node has died"  # Ray's GCS: "The actor died because its node has died. Node Id: ..."
# The GCS marks a node dead after 5 failed health checks 3 s apart (Ray 2.60's defaults), ~15 s.
SETTLE_S = 20.0
JOIN_POLL_S = 1.0  # how often the controller looks for a joined node (a GCS call)


@dataclass(frozen=True)
class Share:
    """One rank's part of each optimizer step."""
    rows: int  # rows per step on this rank
    loss_weight: float  # its mean loss times this: DDP's average over ranks is the global-batch mean
    even: bool  # every rank takes as many rows: equal shards end on the same step by themselves


def share(global_batch: int, world: int, rank: int) -> Share:
    """Rank ``rank``'s share of ``global_batch`` rows over ``world`` ranks: the first
    ``global_batch % world`` ranks take one row more. DDP averages the ranks' gradients, so a
    rank whose mean loss covers ``rows`` rows is weighted ``rows * world / global_batch``:
    (1/world) * sum_r (rows_r * world / B) * mean_r = (1/B) * sum of all B rows' losses."""
    if global_batch < world:
        raise ValueError(f"a global batch of {global_batch} rows cannot give each of {world} workers a row")
    base, extra = divmod(global_batch, world)
    rows = base + (1 if rank < extra else 0)
    return Share(rows=rows, loss_weight=rows * world / global_batch, even=extra == 0)


def resized(previous: Optional[int], world: int, resume_from: str, nodes_before: Sequence[str] = (),
            nodes_now: Sequence[str] = ()) -> Optional[str]:
    """The log line of a group that restarted with another world size, or None. ``nodes_before``
    and ``nodes_now`` (node_names() at each group's start; empty: not known) name the nodes that
    joined or left in between."""
    if previous is None or previous == world:
        return None
    changes = ([f"node {name} joined" for name in sorted(set(nodes_now) - set(nodes_before))]
               + [f"node {name} left" for name in sorted(set(nodes_before) - set(nodes_now))])
    said = f" ({', '.join(changes)})" if nodes_before and nodes_now and changes else ""
    return f"workers {previous} → {world}{said}, resuming from {resume_from.rstrip('/').rsplit('/', 1)[-1]}"


def node_names() -> list[str]:
    """The cluster's live nodes as a log names them: a short node id (the dashboard's) and the address."""
    return sorted(f"{node['NodeID'][:8]} at {node['NodeManagerAddress']}" for node in ray.nodes() if node["Alive"])


def is_node_loss(error: BaseException) -> bool:
    """Whether a worker's error is its actor dying with its node (killed, preempted, drained).
    Ray's health check wraps the actor's death (WorkerHealthCheckFailedError.health_check_failure)."""
    error = getattr(error, "health_check_failure", error)
    return isinstance(error, RayActorError) and (error.preempted or NODE_DIED in str(error))


class TooManyFailures(RuntimeError):
    pass


class ElasticWatch(UserCallback):
    """Runs in Ray Train's controller of an elastic run and watches its nodes: counts the
    worker-group failures that are not lost nodes, ending the run once there are more than
    ``max_failures`` (-1: never), and makes a joining node seen at once (below).

    A node's death reaches Ray in pieces: its workers' peers fail at once (their collective
    breaks: "Connection closed by peer"), while the GCS marks the node dead only after its
    health checks fail (seconds later), and only then do the dead workers' errors say so. So a
    failure is a lost node when any error says so, or when a node not known ``dead`` before is
    marked dead within ``settle_s`` (a node may have joined and died between two reports); only
    other failures wait that long before counting. ``dead`` None: no cluster to ask.

    From its first report on it also watches for nodes joining that were not ``alive`` at the
    start (_refresh_on_join), so that a resize check sees them at once."""

    def __init__(self, max_failures: int, dead: Optional[set[str]] = None, alive: Optional[set[str]] = None,
                 settle_s: float = SETTLE_S):
        self.max_failures, self.settle_s = max_failures, settle_s
        self.failures = 0
        self.dead = dead  # the cluster's dead nodes already accounted for
        self.alive = alive  # the nodes alive when the run started: a node not among them joined
        self.watching = False  # whether this process (the controller) watches for joining nodes

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if not self.watching and self.alive is not None:  # in the controller now, where a thread can live
            self.watching = True
            threading.Thread(target=_refresh_on_join, args=(self.alive,), daemon=True,
                             name="distdl-node-joins").start()

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        said_so = any(is_node_loss(error) for error in worker_exceptions.values())
        if said_so or self._a_node_died():
            if self.dead is not None:
                self.dead = dead_nodes()  # accounted for: a later failure is not this node's
            _say("a node left with workers of the group: it restarts on the rest from the newest checkpoint "
                 "(not counted against failure.max_failures)")
            _refresh_ray_view()  # the restart is sized without the dead node
            return
        self.failures += 1
        if 0 <= self.max_failures < self.failures:
            rank, error = min(worker_exceptions.items(), key=lambda item: item[0])
            raise TooManyFailures(f"{self.failures} worker failures (lost nodes not counted), more than "
                                  f"failure.max_failures={self.max_failures}; the last, on rank {rank}: "
                                  f"{cause_in(str(error))}")

    def _a_node_died(self) -> bool:
        """Whether a node not accounted for is dead, or dies within ``settle_s``."""
        if self.dead is None:
            return False
        deadline = time.monotonic() + self.settle_s
        while not (dead_nodes() - self.dead):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)
        return True


def _refresh_on_join(known: set[str]) -> None:
    """For the rest of the run (a daemon thread of the controller): refresh Ray's view of the
    nodes as soon as one joins that is not ``known``, so that the next resize check
    (scaling.resize_check_s) counts it, not only Ray Data's own refresh, up to 20 s later."""
    while True:
        try:
            alive = alive_nodes()
        except ray.exceptions.RayError:  # the controller is going away with its run
            return
        if alive - known:
            _refresh_ray_view()
        known = alive
        time.sleep(JOIN_POLL_S)


def alive_nodes() -> set[str]:
    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


def dead_nodes() -> set[str]:
    """The cluster's nodes that died (the GCS keeps them listed, not alive)."""
    return {node["NodeID"] for node in ray.nodes() if not node["Alive"]}


def _refresh_ray_view() -> None:
    """Make Ray Train's elastic policy see the nodes alive now. It sizes the group from Ray
    Data's autoscaling coordinator, whose view of the nodes is refreshed every 20 s: measured
    here, a restart right after a node died was sized for the dead node's worker too and waited
    out Ray's 60 s worker-group start timeout, and a joined node went unseen for up to 20 s.
    The coordinator is Ray-internal: where it differs, only this speed-up is lost."""
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


def _say(message: str) -> None:
    """A line for the driver's console (logs.py forwards a Ray process's lines that start so)."""
    sys.stdout.write(f"[distdl] {message}\n")
    sys.stdout.flush()

"""Elastic training (``scaling.num_workers: {min, max}``): the rules that keep a run's learning
curve and failure budget independent of how many nodes happened to be there.

Ray Train 2.60 resizes an elastic group by restarting it with the new world size; the loop
resumes from the newest complete checkpoint in storage (loop.py). Here:

- each rank's share of the global batch, and the loss weight that makes DDP's averaged
  gradient the mean over exactly ``train.batch_size`` rows, whatever the world size;
- which worker failures count against ``failure.max_failures``: a worker lost with its node is
  a resize, not a failure, while the nodes left hold the group's ``min`` workers (Ray would
  count it; distdl gives Ray an unlimited budget in elastic mode and counts the failures itself).
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import ray
from ray.exceptions import RayActorError
from ray.train import UserCallback

from distdl.capacity import live_nodes
from distdl.node_watch import dead_nodes, refresh_on_join, refresh_ray_data_view
from distdl.runtime import cause_in

NODE_DIED = "its node has died"  # Ray's GCS: "The actor died because its node has died. Node Id: ..."
# The GCS marks a node dead after 5 failed health checks 3 s apart (Ray 2.60's defaults), ~15 s.
SETTLE_S = 20.0


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


@dataclass(frozen=True)
class Floor:
    """An elastic group's smallest size and one worker's resources ({"CPU": 2.0, "GPU": 1.0}):
    a node lost is a resize while the nodes left hold ``min_workers``; below that, a failure."""
    min_workers: int
    worker: dict[str, float]

    def held_by(self, nodes: list[dict[str, float]]) -> int:
        """How many workers these nodes' resources hold, each worker on one node."""
        wanted = {kind: amount for kind, amount in self.worker.items() if amount > 0}
        return sum(min((int(node.get(kind, 0.0) // amount) for kind, amount in wanted.items()), default=0)
                   for node in nodes)


class ElasticWatch(UserCallback):
    """Runs in Ray Train's controller of an elastic run and watches its nodes: counts the
    worker-group failures that are not lost nodes, ending the run once there are more than
    ``max_failures`` (-1: never), and makes a joining node seen at once (below). A lost node
    counts as a failure too when the nodes left cannot hold the group's ``floor``.

    A node's death reaches Ray in pieces: its workers' peers fail at once (their collective
    breaks: "Connection closed by peer"), while the GCS marks the node dead only after its
    health checks fail (seconds later), and only then do the dead workers' errors say so. So a
    failure is a lost node when any error says so, or when a node not known ``dead`` before is
    marked dead within ``settle_s`` (a node may have joined and died between two reports); only
    other failures wait that long before counting. ``dead`` None: no cluster to ask.

    From its first report on it also watches for nodes joining that were not ``alive`` at the
    start (node_watch.refresh_on_join), so that a resize check sees them at once."""

    def __init__(self, max_failures: int, dead: Optional[set[str]] = None, alive: Optional[set[str]] = None,
                 settle_s: float = SETTLE_S, floor: Optional[Floor] = None,
                 nodes: Callable[[], list[dict[str, float]]] = live_nodes):
        self.max_failures, self.settle_s = max_failures, settle_s
        self.failures = 0
        self.dead = dead  # the cluster's dead nodes already accounted for
        self.alive = alive  # the nodes alive when the run started: a node not among them joined
        self.watching = False  # whether this process (the controller) watches for joining nodes
        self.floor, self.nodes = floor, nodes  # floor None: any lost node is a resize

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if not self.watching and self.alive is not None:  # in the controller now, where a thread can live
            self.watching = True
            threading.Thread(target=refresh_on_join, args=(self.alive,), daemon=True,
                             name="distdl-node-joins").start()

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        said_so = any(is_node_loss(error) for error in worker_exceptions.values())
        if said_so or self._a_node_died():
            if self.dead is not None:
                self.dead = dead_nodes()  # accounted for: a later failure is not this node's
            refresh_ray_data_view()  # the restart is sized without the dead node
            held = self.floor.held_by(self.nodes()) if self.floor else None
            if held is None or held >= self.floor.min_workers:
                _say("a node left with workers of the group: it restarts on the rest from the newest checkpoint "
                     "(not counted against failure.max_failures)")
                return
            _say(f"a node left with workers of the group, and the nodes left hold {held} worker(s), fewer than "
                 f"scaling.num_workers.min={self.floor.min_workers}: counted against failure.max_failures; "
                 "the group restarts once nodes join")
        self.failures += 1
        if 0 <= self.max_failures < self.failures:
            rank, error = min(worker_exceptions.items(), key=lambda item: item[0])
            raise TooManyFailures(f"{self.failures} worker failures (a lost node counts only when fewer than "
                                  f"scaling.num_workers.min workers fit on the rest), more than "
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


def _say(message: str) -> None:
    """A line for the driver's console (logs.py forwards a Ray process's lines that start so)."""
    sys.stdout.write(f"[distdl] {message}\n")
    sys.stdout.flush()

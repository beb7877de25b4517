"""A real two-node Ray cluster on this machine: `ray start --head` plus `ray start --address`.

Each `ray start --block` runs in a session of its own (setsid); every process Ray starts for
it (GCS, raylet, dashboard, workers — workers get their own process group, not their own
session) stays in that session, so teardown stops exactly this cluster: SIGTERM to the two
`ray start` processes, then SIGKILL to whatever is left in their sessions. Never `ray stop`:
it would stop every Ray on the machine. All ports are free ones, not Ray's defaults, and
token authentication is on, with a token of the cluster's own (RAY_AUTH_TOKEN).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

import requests

from distdl import runtime

VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def sigkill_sessions(sessions: set[int]) -> None:
    """SIGKILL every process whose session id is in ``sessions`` (start_new_session: each
    `ray start`'s session id is its own pid)."""
    for pid in (int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
        try:
            if os.getsid(pid) in sessions:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # gone already, or not ours


class StartFailed(RuntimeError):
    """A `ray start` of the cluster exited."""

    def __init__(self, proc: subprocess.Popen, logs: Path):
        super().__init__(f"`{' '.join(proc.args[:3])}` exited with {proc.returncode}; see {logs}")
        self.proc = proc


class LocalCluster:
    def __init__(self, logs: Path, head_cpus: int, node_cpus: int, quick_node_death: bool = False):
        """``quick_node_death``: the GCS health-checks each raylet every second and marks it dead
        after 3 failures (~3 s); Ray's defaults (every 3 s, 5 failures) take ~15 s."""
        self.logs, self.head_cpus, self.node_cpus = logs, head_cpus, node_cpus
        self.quick_node_death = quick_node_death
        self.token = secrets.token_hex(32)
        # Short: Ray's unix socket paths live under it and must stay under 108 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="ddr-", dir="/tmp")
        # The head's 5 other ports; each joining node's 4 are picked as it joins (_join).
        (self.gcs_port, self.dashboard_port, *self._ports) = free_ports(7)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.procs: list[subprocess.Popen] = []
        self.nodes: dict[str, subprocess.Popen] = {}  # each joined node's `ray start`, by its name
        self.node_ids: dict[str, str] = {}  # by add_node's name

    @property
    def env(self) -> dict[str, str]:
        """The cluster's environment: this venv's `python` and `ray`, token auth, no PYTHONPATH
        (a job imports distdl only from what it ships), and Ray Train's worker polls as often
        as on the embedded Ray (runtime.connect), since both nodes are this one machine. Ray
        Train's preemption watcher stays on, as on any cluster, even when the embedded Ray of
        the process starting the cluster turned it off."""
        unset = ("PYTHONPATH", "RAY_ADDRESS", runtime.PREEMPTION_WATCHER)
        env = {k: v for k, v in os.environ.items() if k not in unset}
        quick = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        return {**env, "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0", runtime.TRAIN_POLL_INTERVAL: "0.25",
                **(quick if self.quick_node_death else {})}

    def _ray_start(self, name: str, args: list[str]) -> subprocess.Popen:
        ports = [self._ports.pop() for _ in range(4)]
        # A temp dir per node, as on separate machines: one shared logs folder would have both
        # nodes' log monitors stream every worker's output (each line twice, twice the work).
        cmd = [str(VENV_BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
               f"--node-name={name}", f"--temp-dir={self.temp_dir}/{name}", f"--dashboard-agent-listen-port={ports[0]}",
               f"--dashboard-agent-grpc-port={ports[1]}", f"--runtime-env-agent-port={ports[2]}",
               f"--metrics-export-port={ports[3]}", *args]
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self, timeout_s: float = 300) -> None:
        self._start_head([], timeout_s)
        self._join("node", self.node_cpus, timeout_s)

    def start_alone(self, timeout_s: float = 300) -> None:
        """The head only: nodes join later (add_node)."""
        self._start_head([], timeout_s)

    def add_node(self, name: str, cpus: int, timeout_s: float = 120) -> str:
        """One more raylet, ``name``, joining the running cluster (as a machine an autoscaler
        adds); its node id."""
        self.node_ids[name] = self._join(name, cpus, timeout_s)
        return self.node_ids[name]

    def _join(self, name: str, cpus: int, timeout_s: float) -> str:
        """Start raylet ``name`` joining the head; its node id once the GCS has it alive.

        Ray gives a joining raylet 30 s to register with the GCS (fixed in ray/_private/node.py);
        on a busy 2-core machine that is sometimes too little, and its `ray start` exits 1.
        Then that attempt's processes are killed (its logs kept in the cluster's logs folder),
        and a second raylet joins under another name.
        Nodes are told apart by name, not by counting: a node killed just before is still
        counted alive until the GCS's health checks mark it dead."""
        for attempt in (name, f"{name}-2"):
            self._ports.extend(free_ports(4))
            proc = self._ray_start(attempt, [f"--address=127.0.0.1:{self.gcs_port}", f"--num-cpus={cpus}"])
            try:
                joined = self._wait_until(lambda nodes: [n["node_id"] for n in nodes if n["node_name"] == attempt],
                                          f"node {attempt!r} joined", timeout_s)
            except StartFailed as failed:
                if failed.proc is not proc or attempt != name:
                    raise
                self._kill_session(proc)
                raylet_logs = Path(self.temp_dir, attempt, "session_latest", "logs")
                if raylet_logs.is_dir():  # why it did not register (the temp dir goes at stop())
                    shutil.copytree(raylet_logs, self.logs / f"{attempt}-logs", ignore_dangling_symlinks=True)
                continue
            self.nodes[name] = proc
            return joined[0]
        raise AssertionError("unreachable")

    def kill_node(self, name: str, timeout_s: float = 120) -> None:
        """SIGKILL raylet ``name`` and every process of its session (its workers) at once, as when
        its machine dies: nothing is drained, and the GCS finds out by its health checks. Returns
        once the GCS has marked it dead (~3 s with quick_node_death, ~15 s without), so that what
        runs next is never scheduled onto a node that is gone."""
        self._kill_session(self.nodes.pop(name))
        node_id = self.node_ids.pop(name)
        self._wait_until(lambda nodes: all(n["node_id"] != node_id for n in nodes), f"node {name!r} dead", timeout_s)

    def _kill_session(self, leader: subprocess.Popen) -> None:
        """SIGKILL a node's `ray start` (``leader``) and every process in its session."""
        sigkill_sessions({leader.pid})
        leader.wait()
        self.procs.remove(leader)  # gone for good: not a `ray start` that failed (_wait_until)

    def _start_head(self, args: list[str], timeout_s: float) -> None:
        self._ray_start("head", ["--head", f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
                                 "--include-dashboard=true", f"--ray-client-server-port={self._ports.pop()}",
                                 f"--num-cpus={self.head_cpus}", *args])
        self._wait_for_nodes(1, timeout_s)

    def get(self, path: str, **params) -> dict:
        """GET from the dashboard's HTTP API, with the token."""
        r = requests.get(self.address + path, params=params, timeout=30,
                         headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return r.json()

    def alive_nodes(self) -> list[dict]:
        try:
            nodes = self.get("/api/v0/nodes", detail="true")["data"]["result"]["result"]
        except (requests.RequestException, KeyError, ValueError):
            return []  # the dashboard is still starting
        return [n for n in nodes if n["state"] == "ALIVE"]

    def ray_job_id(self, submission_id: str) -> str:
        """The hex Ray job id behind a Jobs API submission id."""
        return self.get(f"/api/jobs/{submission_id}")["job_id"]

    def actors(self, job_id: str) -> list[dict]:
        """Every actor of a Ray job (by its hex job id), dead or alive, with the node it ran on."""
        return self.get("/api/v0/actors", detail="true", limit=10000, filter_keys="job_id",
                        filter_predicates="=", filter_values=job_id)["data"]["result"]["result"]

    def _wait_for_nodes(self, n: int, timeout_s: float) -> None:
        self._wait_until(lambda nodes: len(nodes) >= n, f"{n} node(s) alive", timeout_s)

    def _wait_until(self, found: Callable[[list[dict]], T], what: str, timeout_s: float) -> T:
        """Poll the alive nodes until ``found`` of them is truthy, and return it."""
        deadline = time.monotonic() + timeout_s
        while not (result := found(self.alive_nodes())):
            for p in self.procs:
                if p.poll() is not None:
                    raise StartFailed(p, self.logs)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster: not {what} after {timeout_s:.0f}s; see {self.logs}")
            time.sleep(1)
        return result

    def stop(self, grace_s: float = 5) -> None:
        """SIGTERM both `ray start` processes, then SIGKILL whatever is left in their sessions.
        An idle cluster exits 2 s after SIGTERM; the autoscaling one still ran after 15 s, and
        a throwaway cluster has nothing to save by waiting longer."""
        sessions = {p.pid for p in self.procs}  # start_new_session: each session id is its leader's pid
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            time.sleep(0.5)
        sigkill_sessions(sessions)
        for p in self.procs:
            p.wait()
        self.procs = []  # stopped: a second stop() has nothing to do
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class AutoscalingCluster(LocalCluster):
    """A head with no CPUs (as in cluster/*.yaml) whose autoscaler adds worker nodes of
    ``node_types`` on demand and removes them when idle. The provider is Ray's fake multi-node
    one: its "instances" are real raylets started on this machine, in the head's session, so
    they are stopped with it; the autoscaler, its decisions and the scheduling are Ray's own."""

    def __init__(self, logs: Path, node_types: dict[str, dict]):
        super().__init__(logs, head_cpus=0, node_cpus=0)
        self.node_types = node_types

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}

    def start(self, timeout_s: float = 300) -> None:
        config = self.logs / "autoscaling.json"
        config.write_text(json.dumps({
            "cluster_name": "fake", "max_workers": sum(t["max_workers"] for t in self.node_types.values()),
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{self.gcs_port}"},
            "available_node_types": {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                                     **{name: {"node_config": {}, **t} for name, t in self.node_types.items()}},
            "head_node_type": "ray.head.default", "idle_timeout_minutes": 5, "upscaling_speed": 1.0,
            "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "rsync_exclude": [],
            "rsync_filter": [], "file_mounts_sync_continuously": False, "initialization_commands": [],
            "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
            "head_start_ray_commands": [], "worker_start_ray_commands": []}))
        self._start_head([f"--autoscaling-config={config}"], timeout_s)

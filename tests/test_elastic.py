"""Elastic training (`scaling.num_workers: {min, max}`) on the session's real Ray cluster: a
raylet joins mid-run and the group grows; that raylet is killed mid-epoch and the group shrinks,
without a failure counted, an epoch lost or repeated, or a change of the global batch. One run
does both, on conftest.ray_cluster (head 3 CPUs + a node of 2; the third raylet has 2).
Also the failure budget that tells a lost node from a failure, on Ray's own exception types."""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from ray.exceptions import RayActorError
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

from distdl import checkpoint
from distdl.elastic import FailureBudget, TooManyFailures, is_node_loss

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 4
# `distdl train SPEC --address ADDRESS`, with a step hook that holds a group of W workers still
# while the file HOLD.W exists: Ray notices a node joining on its own clock (up to ~20 s), and
# the run must neither end nor train epochs meanwhile.
DRIVER = """
import functools, os, sys, time
import ray.train
from distdl import logs, runtime, spec, train

def hold(gate, rank, epoch, step):
    while os.path.exists(f"{gate}.{ray.train.get_context().get_world_size()}"):
        time.sleep(0.1)

job = spec.load(sys.argv[1])
log = logs.log_file(f"{job.run_dir}/logs", "train")
with logs.capture(log), runtime.session(sys.argv[2]):
    logs.say(train.run(job, step_hook=functools.partial(hold, sys.argv[3])).describe(log))
"""
NODE_DIED = RayActorError(error_msg="The actor died because its node has died. Node Id: 4f2c\n"
                                    "\tthe actor's node was terminated unexpectedly: health check failed")


def test_a_worker_lost_with_its_node_is_a_resize_and_other_failures_spend_the_budget():
    assert is_node_loss(NODE_DIED)
    assert is_node_loss(WorkerHealthCheckFailedError("worker health check failed", NODE_DIED))
    assert is_node_loss(RayActorError(preempted=True))
    assert not is_node_loss(RayActorError(error_msg="The actor died unexpectedly: worker exit code 1"))
    assert not is_node_loss(ValueError("bad label 'eleven'"))

    budget = FailureBudget(max_failures=1)
    # a lost node's peers fail too (their collective breaks): still one resize, not a failure
    budget.after_exception(None, {0: RuntimeError("Connection closed by peer"), 2: NODE_DIED})
    budget.after_exception(None, {1: ValueError("bad label 'eleven'")})
    with pytest.raises(TooManyFailures, match=r"2 worker failures \(lost nodes not counted\), more than "
                                              r"failure.max_failures=1; the last, on rank 1: bad label 'eleven'"):
        budget.after_exception(None, {1: ValueError("bad label 'eleven'")})
    unlimited = FailureBudget(max_failures=-1)
    for _ in range(5):
        unlimited.after_exception(None, {0: ValueError("flaky")})


class Followed:
    """A running `distdl train` and its output lines, each with the time it arrived."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, pattern: str, after: int = 0, timeout_s: float = 120) -> int:
        """The index of the first line from ``after`` on that matches ``pattern``."""
        deadline = time.monotonic() + timeout_s
        while True:
            ended = not self.reader.is_alive()  # its output read to the end
            for i, (_, line) in enumerate(self.lines[after:], start=after):
                if re.search(pattern, line):
                    return i
            assert not ended, f"the run ended without a line matching {pattern!r}:\n{self.text[-4000:]}"
            assert time.monotonic() < deadline, f"no line matching {pattern!r} in {timeout_s:.0f}s:\n{self.text[-4000:]}"
            time.sleep(0.2)


def test_a_run_grows_when_a_node_joins_and_shrinks_when_it_dies_losing_nothing(ray_cluster, digits, tmp_path):
    spec = tmp_path / "elastic.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "elastic", "storage": str(tmp_path / "runs"),
        "data": {"train": str(digits["train"]), "val_fraction": 0.2},
        "model": {"arch": "smallcnn", "width": 4, "batchnorm": False},
        "preprocess": {"image_size": 8, "channels": 1, "mean": [0.3], "std": [0.3]},
        # 64 rows a step: 32 + 32 on two workers, 22 + 21 + 21 on three
        "train": {"epochs": EPOCHS, "batch_size": 64, "lr": 0.01, "schedule": "constant", "shuffle": False},
        # 2 CPUs a worker: one fits on each raylet; no failure may be counted
        "scaling": {"num_workers": {"min": 2, "max": 3}, "cpus_per_worker": 2, "resize_check_s": 1},
        "failure": {"max_failures": 0}, "tracking": {"enabled": False},
    }))
    gate, run_dir = tmp_path / "hold", str(tmp_path / "runs" / "elastic")
    env = {**ray_cluster.env, "PYTHONPATH": str(ROOT)}
    run = Followed([sys.executable, "-c", DRIVER, str(spec), f"127.0.0.1:{ray_cluster.gcs_port}", str(gate)], env)
    try:
        run.wait_for(r"\[distdl\] epoch 1/")
        Path(f"{gate}.2").touch()  # the two workers wait in epoch 2 for the third
        ray_cluster.add_node("elastic", cpus=2)
        grown = run.wait_for(r"\[distdl\] workers 2 → 3, resuming from epoch_0001")
        Path(f"{gate}.2").unlink()
        run.wait_for(r"\[distdl\] epoch 2/", after=grown)
        while not (checkpoint.latest(run_dir) or "").endswith("epoch_0002"):  # rank 0 writes it after that line
            time.sleep(0.1)
        ray_cluster.kill_node("elastic")  # in epoch 3, on its third worker's node
        run.wait_for(r"\[distdl\] workers 3 → 2, resuming from epoch_0002", after=grown)
        assert run.proc.wait(timeout=300) == 0, run.text[-4000:]
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    out = run.text
    assert "[distdl] 2 worker(s) on cpu" in out and f"done: {EPOCHS} epochs" in out
    assert "a node left with workers of the group: it restarts on the rest" in out
    shown = [int(n) for n in re.findall(rf"\[distdl\] epoch (\d+)/{EPOCHS} ", out)]
    assert sorted(shown) == list(range(1, EPOCHS + 1)), shown  # none lost, none trained twice

    history = checkpoint.read_metrics(run_dir)
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    workers = [row["workers"] for row in history]
    assert workers == [2, 3, 2, 2]
    for row in history:  # every step took 64 rows; two workers' last step is the shard's remainder
        if row["workers"] == 3:
            assert row["train_samples"] == 64 * row["train_steps"], row
        else:
            assert 64 * (row["train_steps"] - 1) < row["train_samples"] <= 64 * row["train_steps"], row
    state, _ = checkpoint.load_train_state(checkpoint.latest(run_dir))
    assert state["epoch"] == EPOCHS and state["world"] == 2

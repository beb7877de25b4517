"""Elastic training (`scaling.num_workers: {min, max}`) on a real Ray cluster of raylets: one
joins mid-run and the group grows; it is killed mid-epoch and the group shrinks, without a
failure counted, an epoch lost or repeated, or a change of the global batch. That is what
benchmarks/elastic.py does; its smoke run is this test.
Also the failure budget that tells a lost node from a failure, on Ray's own exception types."""
from __future__ import annotations

import re

import pytest
from ray.exceptions import RayActorError
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
from smoke import run_smoke

from distdl import checkpoint
from distdl.elastic import ElasticWatch, Floor, TooManyFailures, is_node_loss

EPOCHS = 3  # the benchmark's --smoke: a raylet joins after epoch 1 and, in run (b), leaves after epoch 2
BATCH = 63  # odd: two workers take 32 + 31 rows a step, and step only while both have a full share
NODE_DIED = RayActorError(error_msg="The actor died because its node has died. Node Id: 4f2c\n"
                                    "\tthe actor's node was terminated unexpectedly: health check failed")


def test_a_worker_lost_with_its_node_is_a_resize_and_other_failures_spend_the_budget():
    assert is_node_loss(NODE_DIED)
    assert is_node_loss(WorkerHealthCheckFailedError("worker health check failed", NODE_DIED))
    assert is_node_loss(RayActorError(preempted=True))
    assert not is_node_loss(RayActorError(error_msg="The actor died unexpectedly: worker exit code 1"))
    assert not is_node_loss(ValueError("bad label 'eleven'"))

    budget = ElasticWatch(max_failures=1)
    # a lost node's peers fail too (their collective breaks): still one resize, not a failure
    budget.after_exception(None, {0: RuntimeError("Connection closed by peer"), 2: NODE_DIED})
    budget.after_exception(None, {1: ValueError("bad label 'eleven'")})
    with pytest.raises(TooManyFailures, match=r"2 worker failures \(a lost node counts only when fewer than "
                                              r"scaling.num_workers.min workers fit on the rest\), more than "
                                              r"failure.max_failures=1; the last, on rank 1: bad label 'eleven'"):
        budget.after_exception(None, {1: ValueError("bad label 'eleven'")})
    unlimited = ElasticWatch(max_failures=-1)
    for _ in range(5):
        unlimited.after_exception(None, {0: ValueError("flaky")})


def test_a_lost_node_counts_as_a_failure_only_when_the_rest_cannot_hold_the_minimum(capsys):
    two_cpus = Floor(min_workers=2, worker={"CPU": 2.0, "GPU": 0.0})
    assert two_cpus.held_by([{"CPU": 3.0}, {"CPU": 2.0}, {"CPU": 0.0}]) == 2  # a CPU-less head holds none
    assert two_cpus.held_by([{"CPU": 4.0}]) == 2  # two on one node
    assert Floor(1, {"CPU": 1.0, "GPU": 1.0}).held_by([{"CPU": 8.0}, {"CPU": 8.0, "GPU": 2.0}]) == 2

    enough = ElasticWatch(max_failures=0, floor=two_cpus, nodes=lambda: [{"CPU": 3.0}, {"CPU": 2.0}])
    enough.after_exception(None, {1: NODE_DIED})  # two workers still fit: a resize
    assert enough.failures == 0 and "not counted against failure.max_failures" in capsys.readouterr().out

    too_few = ElasticWatch(max_failures=0, floor=two_cpus, nodes=lambda: [{"CPU": 3.0}])
    with pytest.raises(TooManyFailures, match=r"1 worker failures .* failure.max_failures=0"):
        too_few.after_exception(None, {1: NODE_DIED})
    assert ("the nodes left hold 1 worker(s), fewer than scaling.num_workers.min=2: counted against "
            "failure.max_failures" in capsys.readouterr().out)



@pytest.mark.e2e
def test_a_run_grows_when_a_node_joins_and_shrinks_when_it_dies_losing_nothing(tmp_path):
    # (a): 1 worker, a raylet joins after epoch 1: 2 workers. (b): the same, then that raylet is
    # SIGKILLed once epoch 2 is checkpointed, in epoch 3: back to 1 worker, from epoch_0002.
    out = run_smoke("elastic.py", "--batch-size", str(BATCH), "--runs", str(tmp_path))
    # Each change names the node: the raylet that joined, and in (b) the same raylet gone.
    joined = re.findall(r"\[distdl\] workers 1 → 2 \(node (\w{8} at [\d.]+) joined\), resuming from epoch_0001", out)
    left = re.findall(r"\[distdl\] workers 2 → 1 \(node (\w{8} at [\d.]+) left\), resuming from epoch_0002", out)
    assert len(joined) == 2 and len(left) == 1 and left[0] in joined, out[-4000:]
    assert "a node left with workers of the group: it restarts on the rest" in out
    shown = [int(n) for n in re.findall(rf"\[distdl\] epoch (\d+)/{EPOCHS} ", out)]
    assert sorted(shown) == sorted(2 * list(range(1, EPOCHS + 1))), shown  # none lost, none trained twice

    for run, workers in (("a", [1, 2, 2]), ("b", [1, 2, 1])):
        run_dir = str(tmp_path / run)
        history = checkpoint.read_metrics(run_dir)
        assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1)), history
        assert [row["workers"] for row in history] == workers, history
        for row in history:  # every step took BATCH rows; one worker's last step is its remainder
            if row["workers"] == 2:
                assert row["train_samples"] == BATCH * row["train_steps"], row
            else:
                assert BATCH * (row["train_steps"] - 1) < row["train_samples"] <= BATCH * row["train_steps"], row
        state, _ = checkpoint.load_train_state(checkpoint.latest(run_dir))
        assert state["epoch"] == EPOCHS and state["world"] == workers[-1]

"""tasks/: every task is a base.Task; trainable ones say how they are trained and evaluated."""
from __future__ import annotations

import pytest

from distdl import tasks
from distdl.tasks.base import Task


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_task_implements_the_interface(name):
    task = tasks.TASKS[name]
    assert issubclass(task, Task)
    assert not getattr(task, "__abstractmethods__", None), f"{name} leaves {task.__abstractmethods__} abstract"
    if task.metrics:  # trainable: a loss or a step of its own, and an evaluation
        assert task.default_best in task.metrics
        assert task.loss is not Task.loss or task.train_step is not Task.train_step
        assert task.eval_sums is not Task.eval_sums and task.eval_metrics is not Task.eval_metrics


class Untrainable(Task):
    def predict(self, model, features):
        return {}


def test_the_usual_step_needs_a_loss():
    with pytest.raises(NotImplementedError, match="Untrainable has no loss"):
        Untrainable(None).loss(None, {})

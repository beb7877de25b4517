"""Readable failures: the user's own error is pulled out of Ray's wrapping, and an actor no node
can hold is refused (embedded Ray) or announced (a cluster that may autoscale) instead of
waiting in silence."""
from __future__ import annotations

import pytest

from distdl import runtime
from distdl.runtime import root_cause


def wrapped(inner: str, outer: str) -> Exception:
    try:
        try:
            raise RuntimeError(inner)
        except RuntimeError as exc:
            raise RuntimeError(outer) from exc
    except RuntimeError as exc:
        return exc


def test_distdl_errors_win_over_rays_advice():
    inner = ("Traceback (most recent call last):\n  File x\n"
             "(RayTrainWorker pid=12) distdl.preprocess.BadInputError: cannot decode image (file /d/1/x.png): not a readable image\n"
             "ray.exceptions.UserCodeException: UDF failed to process a data block.\n"
             "To change retry attempts, configure DataContext if you believe this to be transient.")
    assert root_cause(wrapped(inner, "Training failed")) == "cannot decode image (file /d/1/x.png): not a readable image"


def test_otherwise_the_innermost_error_line_or_the_last_line():
    assert root_cause(wrapped("KeyError: 'x'\nsome advice", "outer")) == "'x'"
    assert root_cause(RuntimeError("just a message\nsecond line")) == "second line"


def test_rays_wrapper_of_a_user_code_error_is_not_the_cause():
    inner = ("  File \"/x/model.py\", line 3, in forward\n"
             "ValueError: expected 3 channels, got 1\n"
             "The above exception was the direct cause of the following exception:\n"
             "ray.exceptions.UserCodeException: UDF failed to process a data block.\n"
             "Failed to apply UDF transform after 1/1 attempts (total backoff 0.0s).")
    assert root_cause(wrapped(inner, "Dataset execution failed")) == "expected 3 channels, got 1"
    assert runtime.cause_in("ray.exceptions.ActorDiedError: The actor died unexpectedly") == "The actor died unexpectedly"


def test_an_actor_fits_when_one_node_holds_all_it_asks():
    gpu_node, cpu_node = {"CPU": 4.0, "GPU": 1.0}, {"CPU": 16.0}
    wanted = {"--cpus": ("CPU", 4.0), "--gpus": ("GPU", 1.0)}
    assert runtime.unplaceable(wanted, [gpu_node, cpu_node], "scoring actor") is None
    assert runtime.unplaceable({"--gpus": ("GPU", 2.0)}, [gpu_node, cpu_node], "scoring actor") == (
        "--gpus 2 per scoring actor, but the largest node of this Ray cluster has 1 GPUs")
    assert runtime.unplaceable({"cpus_per_replica": ("CPU", 1.0)}, [], "replica of m") == (
        "cpus_per_replica 1 per replica of m, but the largest node of this Ray cluster has 0 CPUs")


def test_the_embedded_ray_refuses_what_it_can_never_place(ray_session):
    with pytest.raises(ValueError, match="--gpus 1 per scoring actor, .* has 0 GPUs: no scoring actor could start"):
        runtime.require_a_node_for({"--gpus": ("GPU", 1.0)}, "scoring actor")
    runtime.require_a_node_for({"--cpus": ("CPU", 1.0)}, "scoring actor")  # fits: nothing said


def test_an_existing_cluster_may_still_gain_the_node_so_it_is_only_told(ray_session, monkeypatch, capsys):
    monkeypatch.setattr(runtime, "_embedded", False)  # as after connect("HOST:PORT"): maybe autoscaling
    runtime.require_a_node_for({"--gpus": ("GPU", 1.0)}, "scoring actor")
    assert capsys.readouterr().err == (
        "[distdl] warning: --gpus 1 per scoring actor, but the largest node of this Ray cluster has 0 GPUs; "
        "each scoring actor waits until such a node joins (an autoscaler adding one); Ctrl-C stops\n")


def test_the_embedded_rays_workers_poll_training_workers_often_and_watch_for_no_preemption(ray_session):
    """Ray Train's controller reads both settings in its own worker process."""
    @ray_session.remote(num_cpus=0)
    def settings() -> tuple[str | None, str | None]:
        import os
        return os.environ.get(runtime.TRAIN_POLL_INTERVAL), os.environ.get(runtime.PREEMPTION_WATCHER)

    assert ray_session.get(settings.remote()) == ("0.25", "0")

"""Readable failures: the user's own error is pulled out of Ray's wrapping."""
from __future__ import annotations

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

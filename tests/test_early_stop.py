"""The early-stopping rule: a pure function of the metric's history."""
from __future__ import annotations

import pytest

from distdl import early_stop


@pytest.mark.parametrize("values, mode, patience, min_delta, stop", [
    ([0.5, 0.6, 0.7], "max", 1, 0.0, False),  # improving every epoch
    ([0.5, 0.6, 0.6], "max", 1, 0.0, True),  # equal is no improvement
    ([0.5, 0.6, 0.6], "max", 2, 0.0, False),
    ([0.5, 0.6, 0.6, 0.55], "max", 2, 0.0, True),
    ([0.5, 0.6, 0.6, 0.65], "max", 2, 0.0, False),  # improved at the last epoch
    ([0.5, 0.6, 0.61, 0.62], "max", 2, 0.05, True),  # +0.01 twice: not more than min_delta
    ([0.5, 0.56, 0.57], "max", 1, 0.05, True),  # 0.56 beat 0.5 by more than 0.05; 0.57 beat 0.56 by less
    ([1.0, 0.9, 0.95, 0.92], "min", 2, 0.0, True),
    ([1.0, 0.9, 0.95, 0.85], "min", 2, 0.0, False),
    ([1.0], "min", 1, 0.0, False),  # the first epoch sets the best
])
def test_the_run_stops_after_patience_epochs_without_improvement(values, mode, patience, min_delta, stop):
    assert early_stop.should_stop(values, mode, patience, min_delta) is stop


def test_the_stop_record_and_its_message():
    history = [{"epoch": e, "val_accuracy": v} for e, v in ((1, 0.5), (2, 0.5), (3, 0.5))]
    assert early_stop.check(history, {"patience": None, "min_delta": 0.0}, "val_accuracy", "max") is None
    assert early_stop.check(history[:2], {"patience": 2, "min_delta": 0.0}, "val_accuracy", "max") is None
    stopped = early_stop.check(history, {"patience": 2, "min_delta": 0.0}, "val_accuracy", "max")
    assert early_stop.describe(stopped) == "stopped early at epoch 3: val_accuracy has not improved for 2 epochs"
    stopped = early_stop.check(history, {"patience": 2, "min_delta": 0.01}, "val_accuracy", "max")
    assert early_stop.describe(stopped).endswith("has not improved by more than 0.01 for 2 epochs")

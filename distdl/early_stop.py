"""Early stopping: end a run when ``checkpoint.best_metric`` stops improving (``train.early_stop``).

The rule reads only the epoch history, whose metrics are group-wide (all-reduced), so every
rank reaches the same decision at the same epoch without another collective, and a resumed
run recomputes it from the checkpointed history.
"""
from __future__ import annotations

from typing import Optional


def epochs_since_best(values: list[float], mode: str, min_delta: float) -> int:
    """Epochs after the last one that beat the best so far by more than ``min_delta``
    (the first epoch sets the best); ``mode`` is "max" or "min"."""
    best, since = None, 0
    for value in values:
        gain = None if best is None else (value - best if mode == "max" else best - value)
        if gain is None or gain > min_delta:
            best, since = value, 0
        else:
            since += 1
    return since


def should_stop(values: list[float], mode: str, patience: int, min_delta: float) -> bool:
    return epochs_since_best(values, mode, min_delta) >= patience


def check(history: list[dict], early_stop: dict, metric: str, mode: str) -> Optional[dict]:
    """The record kept in the train state when the run must stop after the history's last
    epoch; None to go on (or when ``train.early_stop`` is off)."""
    patience = early_stop["patience"]
    if patience is None:
        return None
    values = [row[metric] for row in history]
    if not should_stop(values, mode, patience, early_stop["min_delta"]):
        return None
    return {"epoch": history[-1]["epoch"], "metric": metric, "epochs": patience,
            "min_delta": early_stop["min_delta"]}


def describe(stopped: dict) -> str:
    """"stopped early at epoch 7: val_accuracy has not improved for 3 epochs"."""
    by = f" by more than {stopped['min_delta']:g}" if stopped["min_delta"] else ""
    return (f"stopped early at epoch {stopped['epoch']}: {stopped['metric']} has not improved{by} "
            f"for {stopped['epochs']} epochs")

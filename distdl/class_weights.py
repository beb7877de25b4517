"""``train.class_weights``: per-class weights of the classification training loss, resolved on
the driver once the classes are known, and handed to the workers as one number per class."""
from __future__ import annotations

from typing import Any, Optional, Union


def resolve(setting: Union[None, str, dict], classes: list[Any],
            counts: Optional[dict[Any, int]] = None) -> Optional[list[float]]:
    """One weight per class, in class order; None: unweighted.

    "auto": rows / (classes * rows of the class), so a balanced set gets all 1s (``counts``
    from ``label_counts``). A mapping: the named labels' weights, 1 for the others; a label
    that is not a class raises ValueError."""
    if setting is None:
        return None
    if setting == "auto":
        total = sum(counts.get(c, 0) for c in classes)
        return [total / (len(classes) * counts[c]) if counts.get(c) else 1.0 for c in classes]
    by_name = {str(c): i for i, c in enumerate(classes)}  # YAML keys are strings or numbers
    unknown = [label for label in setting if str(label) not in by_name]
    if unknown:
        raise ValueError(f"train.class_weights: {', '.join(map(repr, unknown))} is not one of the "
                         f"{len(classes)} classes {classes[:20]}")
    weights = [1.0] * len(classes)
    for label, weight in setting.items():
        weights[by_name[str(label)]] = float(weight)
    return weights

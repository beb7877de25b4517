"""The job spec's ``tune:`` section: what ``distdl tune`` searches and how (distdl.tune.search
reads it). It imports nothing of the spec, so spec.py can list it among its sections."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Union

from distdl.specbase import Auto, check, knob


@dataclass
class TuneSpec:
    search: dict = knob(factory=dict, help="searched fields: `{train.lr: \"loguniform:1e-4:1e-1\", model.width: "
                                           "\"choice:16,32,64\"}`, the same strings as `--search`")
    trials: int = knob(8, help="samples drawn from the search space; with `grid` fields each sample runs every "
                               "grid combination")
    max_concurrent: Union[Auto, int] = knob("auto", help="trials at a time; auto: as many as the cluster holds "
                                                         "with a whole CPU per worker and CPU left for Ray Data")
    scheduler: Literal["fifo", "asha", "median"] = knob("fifo", help="`asha` or `median`: stop poor trials early "
                                                                     "(after `grace_period` epochs); `fifo`: never")
    grace_period: int = knob(1, help="epochs every trial trains before a scheduler may stop it")
    algorithm: Literal["random", "optuna", "hyperopt"] = knob("random", help="how values are drawn; `optuna` and "
                                                                             "`hyperopt` need their package")

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(self.trials >= 1, "trials", f"must be >= 1, got {self.trials}")
        concurrent = self.max_concurrent
        yield from check(concurrent == "auto" or concurrent >= 1, "max_concurrent",
                         f"must be >= 1 or 'auto', got {concurrent}")
        yield from check(self.grace_period >= 1, "grace_period", f"must be >= 1, got {self.grace_period}")

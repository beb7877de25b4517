"""The Tune run: each trial is one call of train.run in a Tune trial actor.

The trial actor asks Tune for no CPU: it only drives Ray Train, whose controller takes none
and whose workers reserve the plan's CPUs (plan.py), so the trials at a time are set by the
plan (``max_concurrent_trials``), never by the trial actors. Each trial's Ray Train run
reports every epoch to Tune through TuneReportCallback; its schedulers (ASHA, median
stopping) count ``epoch``. Tune's own state lives in ``<storage>/<name>/ray_tune``:
re-running the same sweep restores it (Tuner.restore), keeping finished trials.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from distdl import capacity, runtime, train
from distdl import spec as specmod
from distdl.logs import say
from distdl.tune import parent_run, results
from distdl.tune.plan import Plan, fit
from distdl.tune.search import Dimension, Sweep, trial_raw
from distdl.tune.settings import TuneSpec

STATE = "ray_tune"  # Tune's experiment folder inside the sweep's folder
# The trial actor's request: no CPU (even 0.01 CPU per trial leaves Ray Data less than the whole
# CPU a task needs, and ingest stalls); Tune refuses an empty request, so a token of memory.
TRIAL_RESOURCES = {"cpu": 0, "memory": 1 << 20}
# ADDRESS_NOTE: a trial that a scheduler stops is killed, and so is its Ray Train controller;
# the workers' placement group (their CPUs) is then removed by Ray Train's PlacementGroupCleaner,
# which asks Ray's state API about the controller. Without RAY_ADDRESS that API fails on a
# machine running several Ray instances, the group is never removed, and the next trial's
# Ray Data ingest waits for CPU forever. A trial's runtime env reaches the cleaner.


@dataclass
class Outcome:
    rows: list[results.Row]  # best first
    best: Optional[str]  # <storage>/<name>/best
    plan: Plan
    resumed: bool
    wall_s: float

    def describe(self, metric: str) -> str:
        best = f"best checkpoint: {self.best}" if self.best else "no trial left a checkpoint"
        return f"{results.table(self.rows, metric)}\n{best}\ntrials: {len(self.rows)}, wall {self.wall_s:.0f}s"


def trial_name(trial_id: str) -> str:
    """"trial_00003" for Tune's "a1b2c_00003": the folder under ``<storage>/<name>/trials``."""
    return f"trial_{trial_id.rsplit('_', 1)[-1]}"


def _name_of(trial: Trial) -> str:
    return trial_name(trial.trial_id)


def run_trial(config: dict, base: dict, scaling: dict, sweep_dir: str, tracking: dict) -> None:
    """Tune's trainable: the trial's spec through train.run (a failure fails only this trial).

    train.run starts Ray Data work of its own (fitting the preprocessor), which would inherit
    the trial actor's placement group (Tune makes it capture child tasks) and never fit in its
    sliver of CPU: it runs in a task outside any placement group. The task is the trial
    actor's child, so it ends with it (a trial that a scheduler stops)."""
    name = trial_name(tune.get_context().get_trial_id())
    spec = specmod.parse(trial_raw(base, config, scaling, sweep_dir, name, tracking))
    outside = PlacementGroupSchedulingStrategy(placement_group=None)
    # The callback is made here, in the Tune session it reports to; Ray Train's controller runs it.
    env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # see ADDRESS_NOTE
    ray.get(_train.options(scheduling_strategy=outside, runtime_env={"env_vars": env})
            .remote(spec, TuneReportCallback()))


@ray.remote(num_cpus=0, max_retries=0)
def _train(spec: specmod.JobSpec, callback: TuneReportCallback) -> None:
    train.run(spec, callbacks=[callback])


class Progress(tune.Callback):
    """One line on the driver's console as each trial starts and ends."""

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        values = " ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        say(f"[distdl] {_name_of(trial)} started: {values}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        say(f"[distdl] {_name_of(trial)} ended after epoch {trial.last_result.get('epoch', 0)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        say(f"[distdl] {_name_of(trial)} failed (its log: {trial.path})", err=True)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _domain(dim: Dimension) -> Any:
    if dim.kind == "choice":
        return tune.choice(list(dim.values))
    if dim.kind == "grid":
        return tune.grid_search(list(dim.values))
    if dim.kind == "randint":
        return tune.randint(int(dim.low), int(dim.high) + 1)  # Tune's upper bound is exclusive
    return (tune.loguniform if dim.kind == "loguniform" else tune.uniform)(dim.low, dim.high)


def space(dims: list[Dimension]) -> dict[str, Any]:
    """Tune's param_space: searched field -> its Tune domain."""
    return {d.field: _domain(d) for d in dims}


def _scheduler(settings: TuneSpec, epochs: int) -> TrialScheduler:
    if settings.scheduler == "asha":
        # reduction_factor 2: in a sweep of a handful of trials, a rung keeps its better half.
        return ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=settings.grace_period, reduction_factor=2)
    if settings.scheduler == "median":
        return MedianStoppingRule(time_attr="epoch", grace_period=settings.grace_period, min_samples_required=2)
    return FIFOScheduler()


def search_algorithm(name: str) -> Any:
    """None: Tune's random search (BasicVariantGenerator, which also expands grids)."""
    if name == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch()
    if name == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch()
    return None


def _tuner(sweep: Sweep, plan: Plan, tracking: dict) -> tuple[tune.Tuner, bool]:
    """(the Tuner, whether it restores an earlier run of this sweep); ``tracking``: each trial's section."""
    spec = sweep.spec
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=sweep.raw, scaling=plan.scaling(), sweep_dir=spec.run_dir,
                             tracking=tracking),
        TRIAL_RESOURCES)
    state = f"{spec.run_dir}/{STATE}"
    if tune.Tuner.can_restore(state):
        return tune.Tuner.restore(state, trainable, resume_unfinished=True, resume_errored=False), True
    tune_config = tune.TuneConfig(
        metric=spec.checkpoint.best_metric, mode=spec.checkpoint.best_mode, num_samples=sweep.tune.trials,
        search_alg=search_algorithm(sweep.tune.algorithm), scheduler=_scheduler(sweep.tune, spec.train.epochs),
        max_concurrent_trials=plan.concurrent, trial_name_creator=_name_of, trial_dirname_creator=_name_of)
    run_config = tune.RunConfig(name=STATE, storage_path=spec.run_dir, verbose=0, callbacks=[Progress()])
    return tune.Tuner(trainable, param_space=space(sweep.dims), tune_config=tune_config,
                      run_config=run_config), False


def _row(result: Any, sweep: Sweep) -> results.Row:
    trial = result.path.rstrip("/").rsplit("/", 1)[-1]  # its folder: trial_dirname_creator gave it the name
    error = runtime.root_cause(result.error) if result.error else None
    return results.trial_row(trial, {d.field: result.config.get(d.field) for d in sweep.dims},
                             f"{sweep.spec.run_dir}/trials/{trial}", sweep.spec.train.epochs, error,
                             (result.metrics or {}).get("time_total_s", 0.0))


def sweep(sweep: Sweep) -> Outcome:
    """Run (or resume) the sweep on the connected Ray cluster; the table, tune.json and best/ at the end."""
    start = time.perf_counter()
    spec = sweep.spec
    wait_s = 0.0 if runtime.is_embedded() else spec.scaling.wait_for_resources_s
    plan = fit(spec.scaling, capacity.wait_for(spec.scaling, wait_s), sweep.trial_count(), sweep.tune.max_concurrent)
    specmod.parse(trial_raw(sweep.raw, {}, plan.scaling(), spec.run_dir, "trial", {}))  # e.g. batch_size vs workers
    say(f"[distdl] plan: {plan.describe()}")
    train.require_writable_storage(spec)
    parent = parent_run.start(sweep, plan.describe())
    if parent:
        say(f"[distdl] tracking: {parent.describe()}, a nested run per trial")
    tuner, resumed = _tuner(sweep, plan, parent_run.trial_tracking(parent))
    if resumed:
        say(f"[distdl] resuming the sweep in {spec.run_dir}/{STATE}: finished trials are kept")
    try:
        grid = tuner.fit()
    except BaseException:
        if parent:
            parent.finish("FAILED", [], "failed")
        raise
    rows = results.ranked([_row(result, sweep) for result in grid], spec.checkpoint.best_mode)
    best = results.write(spec.run_dir, rows, spec.checkpoint.best_metric, spec.checkpoint.best_mode)
    if parent:
        parent_run.finish(parent, rows[0].best if rows else None, spec.checkpoint.best_metric,
                          f"{spec.run_dir}/{results.TABLE}", failed=best is None)
    return Outcome(rows, best, plan, resumed, time.perf_counter() - start)

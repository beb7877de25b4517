"""`distdl tune`: a hyperparameter sweep of one job spec on Ray Tune (distdl.tune).

The spec, the search space and the settings are checked before Ray starts; the table, the
best checkpoint and tune.json are written at the end. Re-running the same command resumes.
"""
from __future__ import annotations

import argparse

from distdl.cli.common import at_least, prepare_run_folder, spec_args, verbose_arg

FLAGS = ("trials", "max_concurrent", "scheduler", "grace_period", "algorithm")  # TuneSpec fields set by flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search hyperparameters: many trials of one job spec on Ray Tune",
                       description="Run trials of a job spec with searched values, each a distdl training run "
                       "in <storage>/<name>/trials/<trial>; the best trial's checkpoint goes to "
                       "<storage>/<name>/best. Flags override the spec's `tune:` section. Re-running the same "
                       "command resumes the sweep without redoing finished trials.")
    spec_args(p)
    p.add_argument("--search", action="append", default=[], metavar="FIELD=KIND:ARGS",
                   help="a searched field: choice:16,32,64 | grid:16,32,64 | uniform:LOW:HIGH | "
                   "loguniform:LOW:HIGH | randint:LOW:HIGH (inclusive); repeatable")
    p.add_argument("--trials", type=at_least(1), help="samples from the search space (default 8); "
                   "grid fields run every combination per sample")
    p.add_argument("--max-concurrent", type=at_least(1),
                   help="trials at a time (default: as many as the cluster holds, CPU kept for Ray Data)")
    p.add_argument("--scheduler", choices=("fifo", "asha", "median"),
                   help="asha or median stop poor trials after --grace-period epochs (default fifo: never)")
    p.add_argument("--grace-period", type=at_least(1), help="epochs before a trial may be stopped (default 1)")
    p.add_argument("--algorithm", choices=("random", "optuna", "hyperopt"),
                   help="random (default); optuna and hyperopt need their package")
    p.add_argument("--address", default=None, help="Ray cluster to use (as for train)")
    p.add_argument("--fresh", action="store_true", help="delete an existing local sweep folder instead of resuming it")
    verbose_arg(p)


def load(args: argparse.Namespace):  # -> distdl.tune.search.Sweep, imported only when it runs
    """The sweep the parsed command asks for, checked (SpecError naming the flag)."""
    from distdl.tune import search

    return search.load(args.spec, args.overrides, args.search, {name: getattr(args, name) for name in FLAGS})


def sweep_flags(args: argparse.Namespace) -> list[str]:
    """The parsed command's sweep flags as arguments again: the same sweep, run on a cluster."""
    argv = [arg for text in args.search for arg in ("--search", text)]
    for name in FLAGS:
        if getattr(args, name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return argv + ["--fresh"] * args.fresh


def _tune(args: argparse.Namespace) -> int:
    sweep = load(args)
    spec = sweep.spec
    prepare_run_folder(spec, args.fresh)
    from distdl import logs, runtime
    from distdl.tune import run

    log = None if args.verbose else logs.log_file(f"{spec.run_dir}/logs", "tune")
    with logs.capture(log), runtime.session(args.address):
        outcome = run.sweep(sweep)
        logs.say(outcome.describe(spec.checkpoint.best_metric) + (f"\nlog: {log}" if log else ""))
    return 0


COMMANDS = {"tune": _tune}

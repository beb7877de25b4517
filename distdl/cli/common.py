"""Arguments that several commands share; no command lives here."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any, Callable


def prepare_run_folder(spec: Any, fresh: bool) -> None:
    """What `train` and `tune` check before Ray starts, and --fresh: the spec's paths (e.g. a gan's
    model.classifier), the data paths, a storage folder that can be made; with ``fresh`` an
    existing local run folder is removed first."""
    from distdl import spec as specmod
    from distdl.paths import is_uri
    from distdl.specbase import SpecError

    problems = specmod.path_problems(spec)
    if problems:
        raise SpecError(problems)
    if fresh and not is_uri(spec.run_dir) and Path(spec.run_dir).exists():
        print(f"[distdl] --fresh: removing {spec.run_dir}")
        shutil.rmtree(spec.run_dir)
    from distdl import data, train  # Ray is imported only once the spec is known to be valid

    data.infer_format(spec.data.train)  # a missing path fails here, before Ray starts
    if spec.data.val:
        data.infer_format(spec.data.val)
    train.require_writable_storage(spec)  # so does a storage folder that cannot be made


def spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="job spec YAML (fields: docs/training.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a spec field, e.g. --set train.lr=0.01 (value parsed as YAML; repeatable)")


def verbose_arg(p: argparse.ArgumentParser, hides: bool = True) -> None:
    """-v/--verbose, which every command takes; ``hides``: the command writes Ray's output to a log."""
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's own output here (its INFO/WARNING lines, worker output) instead of "
                   "writing it to the command's log file" if hides else "(this command hides nothing)")


def at_least(minimum: int | float, kind: type = int) -> Callable[[str], Any]:
    """An argparse type: ``kind`` of the text, refused below ``minimum`` before anything runs."""
    def parse(text: str) -> Any:
        value = kind(text)
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return parse


def generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top-k", type=at_least(1), default=None,
                   help="classification: top labels kept per row (default 5); language model: sample from "
                   "the k most likely characters (default: all)")
    p.add_argument("--max-new-tokens", type=at_least(0), default=None,
                   help="language model: characters to generate (default 200)")
    p.add_argument("--temperature", type=at_least(0.0, float), default=None,
                   help="language model: 0 is greedy (default 1.0)")
    p.add_argument("--seed", type=at_least(0), default=None,
                   help="language model: sampling seed per row; score --generate: with the row id, seeds each "
                   "image's latent, so the same seed gives the same images (default 0)")


def generation_options(args: argparse.Namespace) -> dict:
    """The prediction options given on the command line (the task's own defaults for the rest)."""
    names = ("top_k", "max_new_tokens", "temperature", "seed")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}

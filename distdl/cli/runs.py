"""`distdl runs`: the runs in a storage folder as a table, or two of them compared. No Ray."""
from __future__ import annotations

import argparse
from pathlib import Path

from distdl.cli.common import verbose_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    runs = sub.add_parser(
        "runs", help="list the runs in a storage folder, or compare two",
        description="List the runs in STORAGE (name, family, status, epochs done/configured, best metric and "
        "its epoch, wall time, best checkpoint), oldest start first; a wall time marked ~ is the epochs' own "
        "time (a running run, or one from before run.json). With --compare: the spec fields that differ, the metrics side by "
        "side, and an HTML page with both runs' learning curves overlaid.",
        epilog="examples:\n  distdl runs\n  distdl runs s3://BUCKET/runs\n"
        "  distdl runs --compare cnn_digits cnn_digits_lr01 --output out/compare.html",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_argument("storage", nargs="?", default="runs",
                      help="folder or URI holding run folders, the spec's 'storage' (default: runs)")
    runs.add_argument("--compare", nargs=2, metavar=("RUN", "RUN"),
                      help="two runs: names of runs in STORAGE, or run folder paths")
    runs.add_argument("--output", default=None, metavar="PATH",
                      help="--compare: where the HTML page goes (default: compare.html)")
    verbose_arg(runs, hides=False)


def _runs(args: argparse.Namespace) -> int:
    from distdl import runs

    if args.output and not args.compare:
        raise ValueError("--output names the page --compare writes; give --compare RUN RUN too")
    if not args.compare:
        found = runs.listing(args.storage)
        if found:
            print(runs.format_listing(found))
        else:
            hint = " (it is itself a run folder; list its storage instead)" if runs.is_run(args.storage) else ""
            print(f"no runs in {args.storage}{hint}")
        return 0
    from distdl import compare

    a, b = (runs.load(runs.resolve(args.storage, name)) for name in args.compare)
    print(compare.format_comparison(a, b))
    out = Path(args.output or "compare.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(compare.html(a, b))
    print(f"\nlearning curves: {out}")
    return 0


COMMANDS = {"runs": _runs}

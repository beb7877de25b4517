"""`distdl report RUN_DIR`: write (or rewrite) a run's report.html."""
from __future__ import annotations

import argparse

from distdl.cli.common import verbose_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="write RUN_DIR/report.html: learning curves, the task's own views, "
                            "layout and spec",
                            description="Build one self-contained HTML page (works offline) from a run folder's "
                            "metrics.jsonl, checkpoint and run.json. A classifier's worst misclassified validation "
                            "rows are read and scored with Ray.")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. runs/cnn_digits")
    report.add_argument("--address", default=None, help="Ray cluster to use (as for train)")
    verbose_arg(report)


def _report(args: argparse.Namespace) -> int:
    from distdl import logs, report, runtime
    from distdl.report.run import load

    load(args.run_dir)  # a folder that is not a run fails here, before Ray starts
    log = None if args.verbose else logs.log_file(f"{args.run_dir.rstrip('/')}/logs", "report")
    with logs.capture(log), runtime.session(args.address):
        logs.say(f"report: {report.write(args.run_dir)}")
    return 0


COMMANDS = {"report": _report}

"""Command line: parse, call, print. The work lives in the modules it calls.

    run.py      train, score, validate, generate, demo-data, import
    serve.py    serve
    cluster.py  submit, jobs, k8s render
    runs.py     runs (list, --compare)
    report.py   report
    tune.py     tune
    export.py   export
    common.py   arguments several commands share

Each command imports what it needs when it runs, so `distdl --help`, a command's --help and a
mistyped flag answer without importing torch or Ray (the job spec's model configs live beside
their torch modules).
"""
from __future__ import annotations

import argparse
import sys

from distdl.cli import cluster, export, report, run, runs, serve, tune
from distdl.specbase import SpecError

EPILOG = """examples:
  distdl validate jobs/cnn_digits.yaml
  distdl train jobs/cnn_digits.yaml --set train.lr=0.01 --set scaling.num_workers=1
  distdl train jobs/cnn_digits.yaml --address auto        # an already running Ray cluster
  distdl score --checkpoint runs/cnn_digits/best --input data/unlabeled/ --output out/scores/
  distdl generate --checkpoint runs/rnn_lm/best --prompt "the cat" --temperature 0.8 --seed 1
  distdl import path/to/hf-model-folder --output runs/minilm   # sentence embeddings, no training
  distdl serve --checkpoint runs/cnn_digits/best --port 8080
  distdl serve --checkpoint runs/cnn_digits/best --export serve_config.yaml   # for serve deploy / KubeRay
  distdl submit jobs/cnn_digits.yaml --address http://HEAD:8265 --follow   # a Ray job on a cluster
  distdl k8s render train jobs/x.yaml --image REGISTRY/distdl:0.1.0 --set storage=s3://BUCKET/runs
  distdl score --checkpoint runs/gan_digits/best --generate 10000 --seed 1 --output out/samples/
  distdl runs --compare cnn_digits cnn_digits_lr01        # spec diff, metrics, compare.html
  distdl report runs/cnn_digits                           # runs/cnn_digits/report.html
  distdl tune jobs/cnn_digits.yaml --search train.lr=loguniform:1e-4:1e-1 --trials 8 --scheduler asha
  distdl export --checkpoint runs/cnn_digits/best --output cnn_digits.onnx  # for onnxruntime

Ray's own output (its INFO/WARNING lines, worker output) goes to a log file that the command
names; -v/--verbose shows it instead.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distdl", description="Distributed deep learning on Ray: "
                                "one job spec from data to a safe checkpoint.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run.add_train(sub)
    run.add_score(sub)
    serve.add_parser(sub)
    run.add_validate(sub)
    cluster.add_parsers(sub)
    run.add_tools(sub)
    runs.add_parser(sub)
    report.add_parser(sub)
    tune.add_parser(sub)
    export.add_parser(sub)
    return p


COMMANDS = {**run.COMMANDS, **serve.COMMANDS, **cluster.COMMANDS, **runs.COMMANDS, **report.COMMANDS,
            **tune.COMMANDS, **export.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as exc:  # OSError: a path that cannot be read or made
        print(f"error: {exc}", file=sys.stderr)
        return 1

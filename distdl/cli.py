"""Command line: parse, call, print. The work lives in the modules it calls."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from distdl import spec as specmod
from distdl.paths import is_uri

EPILOG = """examples:
  distdl validate jobs/cnn_digits.yaml
  distdl train jobs/cnn_digits.yaml --set train.lr=0.01 --set scaling.num_workers=1
  distdl train jobs/cnn_digits.yaml --address auto        # an already running Ray cluster
  distdl score --checkpoint runs/cnn_digits/best --input data/unlabeled/ --output out/scores/
  distdl score --checkpoint runs/gan_digits/best --generate 10000 --seed 1 --output out/samples/
"""


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="job spec YAML (see README: 'The job spec')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a spec field, e.g. --set train.lr=0.01 (value parsed as YAML; repeatable)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distdl", description="Distributed deep learning on Ray: "
                                "one job spec from data to a safe checkpoint.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model from a job spec",
                           description="Read the data with Ray Data, train with Ray Train (DDP), write "
                           "checkpoints to <storage>/<name>. Re-running the same spec resumes the run.")
    _spec_args(train)
    train.add_argument("--address", default=None,
                       help="Ray cluster to use: 'auto', 'ray://HOST:10001' or HOST:PORT "
                       "(default: $RAY_ADDRESS, else an embedded local Ray)")
    train.add_argument("--fresh", action="store_true",
                       help="delete an existing local run folder of this name instead of resuming it")

    score = sub.add_parser("score", help="score a data set with a checkpoint into parquet",
                           description="Run the checkpoint's model over every row in a Ray Data actor pool. "
                           "Re-running with the same --output resumes; bad rows get an 'error' message.")
    score.add_argument("--checkpoint", required=True, help="checkpoint folder, e.g. runs/cnn_digits/best")
    rows = score.add_mutually_exclusive_group(required=True)
    rows.add_argument("--input", help="parquet/csv/jsonl file or folder, image folder, or URI")
    rows.add_argument("--generate", type=int, metavar="N",
                      help="generative checkpoints (gan): N images for ids 0..N-1, as PNG bytes in column 'image'")
    score.add_argument("--seed", type=int, default=0,
                       help="--generate: with the row id, seeds each image's latent (same seed, same images)")
    score.add_argument("--output", required=True, help="output folder (parquet files + manifest)")
    score.add_argument("--format", default="auto", help="input format (default: from the path)")
    score.add_argument("--id-column", default=None,
                       help="unique row id column (default: 'id', else 'path'; without one a content hash is "
                       "used and the job cannot resume)")
    score.add_argument("--batch-size", type=int, default=256)
    score.add_argument("--min-actors", type=int, default=1)
    score.add_argument("--max-actors", type=int, default=None,
                       help="default: one per CPU (or GPU), leaving one CPU for reading")
    score.add_argument("--cpus", type=float, default=1.0, help="CPUs per actor (fractions allowed)")
    score.add_argument("--gpus", type=float, default=0.0, help="GPUs per actor")
    score.add_argument("--top-k", type=int, default=None,
                       help="classification: how many top labels to keep per row (default 5)")
    score.add_argument("--overwrite", action="store_true", help="replace an output of another checkpoint")
    score.add_argument("--address", default=None, help="Ray cluster to use (as for train)")

    validate = sub.add_parser("validate", help="check a job spec without starting Ray")
    _spec_args(validate)
    validate.add_argument("--print", action="store_true", help="print the resolved spec with every default")

    demo = sub.add_parser("demo-data", help="write the digits demo data set (parquet + image folder)")
    demo.add_argument("out", nargs="?", default="data/digits", help="output folder (default: data/digits)")
    return p


def _train(args: argparse.Namespace) -> int:
    spec = specmod.load(args.spec, args.overrides)
    problems = specmod.path_problems(spec)  # e.g. a gan's model.classifier, before Ray starts
    if problems:
        raise specmod.SpecError(problems)
    if args.fresh and not is_uri(spec.run_dir) and Path(spec.run_dir).exists():
        print(f"[distdl] --fresh: removing {spec.run_dir}")
        shutil.rmtree(spec.run_dir)
    from distdl import data, runtime, train  # Ray is imported only once the spec is known to be valid

    data.infer_format(spec.data.train)  # a missing path fails here, before Ray starts
    if spec.data.val:
        data.infer_format(spec.data.val)
    runtime.connect(args.address)
    print(train.run(spec).describe())
    return 0


def _score(args: argparse.Namespace) -> int:
    from distdl import data, runtime, score

    if args.input:
        data.infer_format(args.input)  # a missing path fails here, before Ray starts
    else:
        score.check_generative(args.checkpoint, args.generate, args.seed)
    runtime.connect(args.address)
    resources = score.Resources(args.batch_size, args.min_actors, args.max_actors, args.cpus, args.gpus)
    if args.generate is not None:
        summary = score.generate(args.checkpoint, args.generate, args.output, resources, args.seed, args.overwrite)
    else:
        options = {"top_k": args.top_k} if args.top_k is not None else {}
        summary = score.score(args.checkpoint, args.input, args.output, resources, args.format, args.id_column,
                              args.overwrite, options)
    print(summary.describe())
    return 0


def _validate(args: argparse.Namespace) -> int:
    spec = specmod.load(args.spec, args.overrides)
    print(specmod.dump(spec) if args.print else f"{args.spec}: ok ({spec.model_family} '{spec.name}')")
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from distdl.demo_data import write_digits

    paths = write_digits(Path(args.out))
    print("\n".join(f"{name}: {path}" for name, path in paths.items()))
    return 0


COMMANDS = {"train": _train, "score": _score, "validate": _validate, "demo-data": _demo_data}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except specmod.SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

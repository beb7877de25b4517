"""Command line: parse, call, print. The work lives in the modules it calls.

Each command imports what it needs when it runs, so `distdl --help`, a command's --help and a
mistyped flag answer without importing torch or Ray (the job spec's model configs live beside
their torch modules).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from distdl import clustercli
from distdl.paths import is_uri
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
"""
DEMO_KINDS = ("digits", "sequences", "text", "speech", "topics")  # demo_data.WRITERS (imported only when used)


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="job spec YAML (see README: 'The job spec')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a spec field, e.g. --set train.lr=0.01 (value parsed as YAML; repeatable)")


def _at_least(minimum: int | float, kind: type = int) -> Callable[[str], Any]:
    """An argparse type: ``kind`` of the text, refused below ``minimum`` before anything runs."""
    def parse(text: str) -> Any:
        value = kind(text)
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return parse


def _generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top-k", type=_at_least(1), default=None,
                   help="classification: top labels kept per row (default 5); language model: sample from "
                   "the k most likely characters (default: all)")
    p.add_argument("--max-new-tokens", type=_at_least(0), default=None,
                   help="language model: characters to generate (default 200)")
    p.add_argument("--temperature", type=_at_least(0.0, float), default=None,
                   help="language model: 0 is greedy (default 1.0)")
    p.add_argument("--seed", type=_at_least(0), default=None,
                   help="language model: sampling seed per row; score --generate: with the row id, seeds each "
                   "image's latent, so the same seed gives the same images (default 0)")


def generation_options(args: argparse.Namespace) -> dict:
    """The prediction options given on the command line (the task's own defaults for the rest)."""
    names = ("top_k", "max_new_tokens", "temperature", "seed")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


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
    score.add_argument("--output", required=True, help="output folder (parquet files + manifest)")
    score.add_argument("--format", default="auto", help="input format (default: from the path)")
    score.add_argument("--id-column", default=None,
                       help="unique row id column (default: 'id', else 'path'; without one a content hash is "
                       "used and the job cannot resume)")
    # Defaults: the checkpoint's `score` section (its spec.yaml), else ScoreSpec's.
    pool = score.add_argument_group("actor pool and output (default: the checkpoint spec's 'score' section)")
    pool.add_argument("--batch-size", type=int, help="rows per forward pass (256)")
    pool.add_argument("--min-actors", type=int, help="actors kept while the pool scales (1)")
    pool.add_argument("--max-actors", type=int,
                      help="largest pool (auto: one per GPU, else every CPU but one, left for reading)")
    pool.add_argument("--cpus", type=float, help="CPUs per actor, fractions allowed (1)")
    pool.add_argument("--gpus", type=float, help="GPUs per actor, fractions allowed; above 0 the model runs on cuda (0)")
    pool.add_argument("--rows-per-file", type=int,
                      help="rows per output parquet part (auto: one part per block Ray Data writes)")
    _generation_args(score)
    score.add_argument("--overwrite", action="store_true", help="replace an output of another checkpoint")
    score.add_argument("--address", default=None, help="Ray cluster to use (as for train)")

    _serve_parser(sub)

    validate = sub.add_parser("validate", help="check a job spec without starting Ray")
    _spec_args(validate)
    validate.add_argument("--print", action="store_true", help="print the resolved spec with every default")

    clustercli.add_parsers(sub)

    generate = sub.add_parser("generate", help="generate text from a language-model checkpoint",
                              description="Load the checkpoint once (no Ray) and print the prompt and its continuation.")
    generate.add_argument("--checkpoint", required=True, help="checkpoint folder, e.g. runs/rnn_lm/best")
    generate.add_argument("--prompt", required=True, help="text to continue")
    _generation_args(generate)

    demo = sub.add_parser("demo-data", help="write a demo data set: digits (default), sequences, text, speech "
                          "or topics")
    demo.add_argument("out", nargs="?", default=None, help="output folder (default: data/<kind>)")
    demo.add_argument("--kind", choices=DEMO_KINDS, default="digits",
                      help="digits: images; sequences: variable-length waveforms; text: sentences for a "
                      "language model; speech: wav clips in class folders; topics: 4-topic sentences "
                      "for text classification")

    imp = sub.add_parser("import", help="turn a local Hugging Face model folder into a sentence-embedding checkpoint",
                         description="Mean-pooled sentence embeddings need no training: write the folder's "
                         "encoder and tokenizer as a distdl checkpoint for `distdl score` (no data, no Ray).")
    imp.add_argument("model_dir", help="local folder with config.json, *.safetensors and tokenizer files")
    imp.add_argument("--output", required=True, help="checkpoint folder to write, e.g. runs/minilm")
    imp.add_argument("--max-length", type=int, default=128, help="tokens per text, [CLS]/[SEP] included")
    imp.add_argument("--refuse-long", action="store_true",
                     help="a text over --max-length tokens becomes a bad row (default: truncate it)")
    imp.add_argument("--no-normalize", action="store_true", help="keep the raw mean-pooled vectors (no L2 norm)")
    imp.add_argument("--input-column", default="text", help="the text column in data to score (default: text)")
    return p


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve", help="serve checkpoints over HTTP with Ray Serve (or export a Serve config)",
        description="Start Ray Serve (embedded local Ray, or --address) with one autoscaled deployment per "
        "checkpoint (any model family) behind a FastAPI ingress, print the URL, and serve until Ctrl-C. "
        "Each model's settings come from the 'serve' section of its checkpoint's spec.yaml; --set overrides them.",
        epilog="routes: GET /healthz /readyz /models /docs; POST /models/NAME/<task> by the model's task: "
        "classify-image (cnn), classify-sequence, classify-audio, generate-text (rnn), classify-text, "
        "embed-text (transformer), generate-image (gan); request shapes: /docs or README 'HTTP API'")
    serve.add_argument("--checkpoint", dest="checkpoints", action="append", required=True, metavar="[NAME=]PATH",
                       help="checkpoint folder; its route name is NAME, else the spec's name (repeatable)")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a serve setting for every model, e.g. --set max_replicas=4 "
                       "(value parsed as YAML; fields: README 'Serving'; repeatable)")
    serve.add_argument("--api-key-env", default=None, metavar="NAME",
                       help="require 'Authorization: Bearer <key>' with the key in environment variable NAME")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--address", default=None, help="Ray cluster to use (as for train); Ctrl-C then "
                       "deletes only this application")
    serve.add_argument("--export", default=None, metavar="FILE",
                       help="write a Serve config YAML (serve deploy / serve run / KubeRay RayService) and exit")


def _train(args: argparse.Namespace) -> int:
    from distdl import spec as specmod

    spec = specmod.load(args.spec, args.overrides)
    problems = specmod.path_problems(spec)  # e.g. a gan's model.classifier, before Ray starts
    if problems:
        raise SpecError(problems)
    if args.fresh and not is_uri(spec.run_dir) and Path(spec.run_dir).exists():
        print(f"[distdl] --fresh: removing {spec.run_dir}")
        shutil.rmtree(spec.run_dir)
    from distdl import data, runtime, train  # Ray is imported only once the spec is known to be valid

    data.infer_format(spec.data.train)  # a missing path fails here, before Ray starts
    if spec.data.val:
        data.infer_format(spec.data.val)
    train.require_writable_storage(spec)  # so does a storage folder that cannot be made
    runtime.connect(args.address)
    print(train.run(spec).describe())
    return 0


def _score(args: argparse.Namespace) -> int:
    from distdl import data, runtime, score
    from distdl.predict import check_options

    if args.input:
        data.infer_format(args.input)  # a missing path fails here, before Ray starts
    else:
        score.check_generative(args.checkpoint, args.generate, args.seed or 0)
    set_by_flags = {field: getattr(args, flag[2:].replace("-", "_")) for field, flag in score.FLAGS.items()}  # argparse's dest
    given = {field: value for field, value in set_by_flags.items() if value is not None}
    resources = score.resources(args.checkpoint, given)  # bad settings fail here, before Ray starts
    check_options(args.checkpoint, generation_options(args))  # e.g. --temperature for a classifier
    runtime.connect(args.address)
    if args.generate is not None:
        summary = score.generate(args.checkpoint, args.generate, args.output, resources, args.seed or 0,
                                 args.overwrite)
    else:
        summary = score.score(args.checkpoint, args.input, args.output, resources, args.format, args.id_column,
                              args.overwrite, generation_options(args))
    print(summary.describe())
    return 0


def _serve(args: argparse.Namespace) -> int:
    import yaml

    from distdl import serve
    from distdl import spec as specmod

    raw = specmod.apply_overrides({}, args.overrides)  # same FIELD=VALUE parsing as train's --set
    if args.export:
        config = serve.export_config(args.checkpoints, api_key_env=args.api_key_env, **raw)
        Path(args.export).write_text(yaml.safe_dump(config, sort_keys=False))
        for _, path in map(serve.split_entry, config["applications"][0]["args"]["checkpoints"]):
            if not is_uri(path) and not Path(path).exists():
                print(f"note: {path} is not on this machine; it must exist where the config is deployed")
        print(f"wrote {args.export}; deploy it with: serve deploy {args.export}  (or: serve run {args.export})")
        return 0
    serve.run(args.checkpoints, raw, args.api_key_env, args.host, args.port, args.address)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from distdl import spec as specmod

    spec = specmod.load(args.spec, args.overrides)
    print(specmod.dump(spec) if args.print else f"{args.spec}: ok ({spec.model_family} '{spec.name}')")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import numpy as np

    from distdl.predict import Predictor

    predictor = Predictor(args.checkpoint, **generation_options(args))
    if "generated" not in predictor.output_columns:
        raise ValueError(f"{args.checkpoint} is a {predictor.task_name} model; generate needs a language model")
    out = predictor({predictor.pre.input_column: np.array([args.prompt], dtype=object)})
    if out["error"][0]:
        raise ValueError(out["error"][0])
    print(args.prompt + out["generated"][0])
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from distdl.demo_data import WRITERS

    paths = WRITERS[args.kind](Path(args.out or f"data/{args.kind}"))
    print("\n".join(f"{name}: {path}" for name, path in paths.items()))
    return 0


def _import(args: argparse.Namespace) -> int:
    from distdl.importer import import_embedding

    path = import_embedding(args.model_dir, args.output, args.max_length, truncate=not args.refuse_long,
                            normalize=not args.no_normalize, input_column=args.input_column)
    print(f"checkpoint: {path}\nscore it:   distdl score --checkpoint {path} --input DATA --output OUT")
    return 0


COMMANDS = {"train": _train, "score": _score, "serve": _serve, "validate": _validate, "generate": _generate,
            "import": _import, "demo-data": _demo_data, **clustercli.COMMANDS}


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

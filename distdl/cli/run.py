"""The commands that run here: `distdl train | score | validate | generate | demo-data | import`.

train and score print distdl's own lines and a progress bar; Ray's output goes to a log file
(distdl.logs) unless --verbose.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from distdl.cli.common import generation_args, generation_options, prepare_run_folder, spec_args, verbose_arg

DEMO_KINDS = ("digits", "sequences", "text", "speech", "topics")  # demo_data.WRITERS (imported only when used)


def add_train(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a model from a job spec",
                           description="Read the data with Ray Data, train with Ray Train (DDP), write "
                           "checkpoints to <storage>/<name>. Re-running the same spec resumes the run.")
    spec_args(train)
    train.add_argument("--address", default=None,
                       help="Ray cluster to use: 'auto', 'ray://HOST:10001' or HOST:PORT "
                       "(default: $RAY_ADDRESS, else an embedded local Ray)")
    train.add_argument("--fresh", action="store_true",
                       help="delete an existing local run folder of this name instead of resuming it")
    verbose_arg(train)


def add_score(sub: argparse._SubParsersAction) -> None:
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
    ids = score.add_mutually_exclusive_group()
    ids.add_argument("--id-column", default=None,
                     help="unique row id column (default: 'id', else 'path'; without one a content hash is "
                     "used and the job cannot resume). Null, repeated or text-alike ids are refused")
    ids.add_argument("--content-ids", action="store_true",
                     help="identify rows by a hash of their content even where the input has an id column "
                     "(an input whose ids repeat; the job cannot resume)")
    # Defaults: the checkpoint's `score` section (its spec.yaml), else ScoreSpec's.
    pool = score.add_argument_group("actor pool and output (default: the checkpoint spec's 'score' section)")
    pool.add_argument("--batch-size", type=int, help="rows per forward pass (256)")
    pool.add_argument("--min-actors", type=int, help="actors kept while the pool scales (1)")
    pool.add_argument("--max-actors", type=int,
                      help="largest pool (auto: one per GPU, else every CPU but one, left for reading)")
    pool.add_argument("--cpus", type=float, help="CPUs per actor, fractions allowed (1)")
    pool.add_argument("--gpus", type=float, help="GPUs per actor, fractions allowed; above 0 the model runs on cuda (0)")
    pool.add_argument("--backend", choices=("torch", "onnx"),
                      help="onnx: export the model once and run it in onnxruntime in every actor (torch)")
    pool.add_argument("--rows-per-file", type=int,
                      help="rows per output parquet part (auto: one part per block Ray Data writes)")
    generation_args(score)
    score.add_argument("--overwrite", action="store_true",
                       help="replace an output of another checkpoint, other options or a changed input")
    score.add_argument("--address", default=None, help="Ray cluster to use (as for train)")
    verbose_arg(score)


def add_validate(sub: argparse._SubParsersAction) -> None:
    validate = sub.add_parser("validate", help="check a job spec without starting Ray")
    spec_args(validate)
    validate.add_argument("--print", action="store_true", help="print the resolved spec with every default")
    verbose_arg(validate, hides=False)


def add_tools(sub: argparse._SubParsersAction) -> None:
    """generate, demo-data and import: no Ray."""
    generate = sub.add_parser("generate", help="generate text from a language-model checkpoint",
                              description="Load the checkpoint once (no Ray) and print the prompt and its continuation.")
    generate.add_argument("--checkpoint", required=True, help="checkpoint folder, e.g. runs/rnn_lm/best")
    generate.add_argument("--prompt", required=True, help="text to continue")
    generation_args(generate)
    verbose_arg(generate, hides=False)

    demo = sub.add_parser("demo-data", help="write a demo data set: digits (default), sequences, text, speech "
                          "or topics")
    demo.add_argument("out", nargs="?", default=None, help="output folder (default: data/<kind>)")
    demo.add_argument("--kind", choices=DEMO_KINDS, default="digits",
                      help="digits: images; sequences: variable-length waveforms; text: sentences for a "
                      "language model; speech: wav clips in class folders; topics: 4-topic sentences "
                      "for text classification")
    verbose_arg(demo, hides=False)

    imp = sub.add_parser("import", help="turn a local Hugging Face model folder into a sentence-embedding checkpoint",
                         description="Mean-pooled sentence embeddings need no training: write the folder's "
                         "encoder and tokenizer as a distdl checkpoint for `distdl score` (no data, no Ray).")
    imp.add_argument("model_dir", help="local folder with config.json, *.safetensors and tokenizer files")
    imp.add_argument("--output", required=True, help="checkpoint folder to write, e.g. runs/minilm")
    imp.add_argument("--max-length", type=int, default=None,
                     help="tokens per text, [CLS]/[SEP] included (default: the folder's own maximum, "
                     "sentence_bert_config.json's max_seq_length, else the model's position limit)")
    imp.add_argument("--refuse-long", action="store_true",
                     help="a text over --max-length tokens becomes a bad row (default: truncate it)")
    imp.add_argument("--no-normalize", action="store_true", help="keep the raw mean-pooled vectors (no L2 norm)")
    imp.add_argument("--input-column", default="text", help="the text column in data to score (default: text)")
    verbose_arg(imp, hides=False)


def command_parser() -> argparse.ArgumentParser:
    """`distdl train ...`, `distdl score ...` and `distdl tune ...` alone: how a command meant for a
    cluster is checked here."""
    from distdl.cli import tune

    p = argparse.ArgumentParser(prog="distdl")
    sub = p.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_score(sub)
    tune.add_parser(sub)
    return p


def _train(args: argparse.Namespace) -> int:
    from distdl import spec as specmod

    spec = specmod.load(args.spec, args.overrides)
    prepare_run_folder(spec, args.fresh)
    from distdl import logs, runtime, train

    log = None if args.verbose else logs.log_file(f"{spec.run_dir}/logs", "train")
    with logs.capture(log), runtime.session(args.address):
        logs.say(train.run(spec).describe(log))
    return 0


def _score(args: argparse.Namespace) -> int:
    from distdl import data, logs, runtime, score
    from distdl.predict import check_options

    if args.input:
        data.infer_format(args.input)  # a missing path fails here, before Ray starts
    else:
        score.check_generative(args.checkpoint, args.generate, args.seed or 0)
    set_by_flags = {field: getattr(args, flag[2:].replace("-", "_")) for field, flag in score.FLAGS.items()}  # argparse's dest
    given = {field: value for field, value in set_by_flags.items() if value is not None}
    resources = score.resources(args.checkpoint, given)  # bad settings fail here, before Ray starts
    check_options(args.checkpoint, generation_options(args))  # e.g. --temperature for a classifier
    # Beside the output, not in it: the output folder holds only what distdl score wrote there.
    log = None if args.verbose else logs.log_file(args.output.rstrip("/") + ".logs", "score")
    with logs.capture(log), runtime.session(args.address):
        if args.generate is not None:
            summary = score.generate(args.checkpoint, args.generate, args.output, resources, args.seed or 0,
                                     args.overwrite)
        else:
            summary = score.score(args.checkpoint, args.input, args.output, resources, args.format, args.id_column,
                                  args.overwrite, generation_options(args), args.content_ids)
        logs.say(summary.describe(log))
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


COMMANDS = {"train": _train, "score": _score, "validate": _validate, "generate": _generate,
            "import": _import, "demo-data": _demo_data}

"""`distdl serve`: checkpoints behind HTTP with Ray Serve here, or written as a Serve config."""
from __future__ import annotations

import argparse
from pathlib import Path

from distdl.cli.common import verbose_arg
from distdl.paths import is_uri


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve", help="serve checkpoints over HTTP with Ray Serve (or export a Serve config)",
        description="Start Ray Serve (embedded local Ray, or --address) with one autoscaled deployment per "
        "checkpoint (any model family) behind a FastAPI ingress, print the URL, and serve until Ctrl-C. "
        "Each model's settings come from the 'serve' section of its checkpoint's spec.yaml; --set overrides them.",
        epilog="routes: GET /healthz /readyz /models /docs; POST /models/NAME/<task> by the model's task: "
        "classify-image (cnn), classify-sequence, classify-audio, generate-text (rnn), classify-text, "
        "embed-text (transformer), generate-image (gan); request shapes: the server's /docs page or docs/serving.md")
    serve.add_argument("--checkpoint", dest="checkpoints", action="append", required=True, metavar="[NAME=]PATH",
                       help="checkpoint folder; its route name is NAME, else the spec's name (repeatable)")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a serve setting for every model, e.g. --set max_replicas=4 "
                       "(value parsed as YAML; fields: docs/serving.md; repeatable)")
    serve.add_argument("--api-key-env", default=None, metavar="NAME",
                       help="require 'Authorization: Bearer <key>' with the key in environment variable NAME")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--address", default=None, help="Ray cluster to use (as for train); Ctrl-C then "
                       "deletes only this application")
    serve.add_argument("--export", default=None, metavar="FILE",
                       help="write a Serve config YAML (serve deploy / serve run / KubeRay RayService) and exit")
    verbose_arg(serve)


def _serve(args: argparse.Namespace) -> int:
    import yaml

    from distdl import logs, serve
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
    log = None if args.verbose else logs.log_file(None, "serve")
    serve.run(args.checkpoints, raw, args.api_key_env, args.host, args.port, args.address, log)
    return 0


COMMANDS = {"serve": _serve}

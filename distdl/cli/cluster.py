"""The cluster commands: `distdl submit`, `distdl jobs ...`, `distdl k8s render`.

Parse, call, print; the work lives in distdl.submit (Ray Jobs) and distdl.k8s (KubeRay).
A command meant for the cluster is checked with the parser of `distdl train`, `distdl score`
and `distdl tune` (cli.run), as a local run would be.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from distdl.cli import tune
from distdl.cli.common import at_least, verbose_arg
from distdl.cli.run import command_parser

SUBMIT_EPILOG = """COMMAND is what a local run would take: `train SPEC [--set FIELD=VALUE ...] [--fresh]`
(or just SPEC), `tune SPEC --search FIELD=KIND:ARGS [...]`, or `score --checkpoint C --input I
--output O [...]`. It is checked here first
(a bad spec never reaches the cluster); relative paths in it (data, storage, --checkpoint,
--input, --output) are made absolute against the current directory and must exist at that
place on the cluster (shared storage, or s3:// / gs://). The working directory and this copy
of distdl are shipped with the job. A cluster with token authentication needs its token:
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token.

examples:
  distdl submit jobs/cnn_digits.yaml --address http://HEAD:8265 --follow
  distdl submit --address http://HEAD:8265 jobs/cnn_digits.yaml --set storage=s3://bucket/runs
  distdl submit --address http://HEAD:8265 tune jobs/cnn_digits.yaml --search train.lr=loguniform:1e-4:1e-1 \\
      --set storage=s3://bucket/runs --trials 16 --scheduler asha
  distdl submit --address http://HEAD:8265 score --checkpoint s3://bucket/runs/cnn_digits/best \\
      --input s3://bucket/digits/holdout.parquet --output s3://bucket/scores/digits
"""


K8S_EPILOG = """examples (the files in k8s/ are these commands' output):
  distdl k8s render cluster --image REGISTRY/distdl:0.1.0 > k8s/raycluster.yaml
  distdl k8s render train jobs/cnn_digits.yaml --image REGISTRY/distdl:0.1.0 \\
      --set storage=s3://BUCKET/runs --set data.train=s3://BUCKET/digits/train.parquet | kubectl apply -f -
  distdl k8s render tune jobs/cnn_digits.yaml --image REGISTRY/distdl:0.1.0 --nodes 4 \\
      --search train.lr=loguniform:1e-4:1e-1 --trials 16 --set storage=s3://BUCKET/runs \\
      --set data.train=s3://BUCKET/digits/train.parquet
  distdl k8s render score --image REGISTRY/distdl:0.1.0 --checkpoint s3://BUCKET/runs/cnn_digits/best \\
      --input s3://BUCKET/digits/holdout.parquet --output s3://BUCKET/scores/digits
  distdl k8s render serve --image REGISTRY/distdl:0.1.0 --checkpoint s3://BUCKET/runs/cnn_digits/best

scaling and queues:
  a scoring job that starts with 2 worker pods and grows to 8 as its actor pool asks for them:
  distdl k8s render score --image REGISTRY/distdl:0.1.0 --nodes 2 --max-nodes 8 --max-actors 8 \\
      --checkpoint s3://BUCKET/runs/cnn_digits/best --input s3://BUCKET/digits/holdout.parquet \\
      --output s3://BUCKET/scores/digits
  a training job that Kueue's LocalQueue team-a admits whole (fixed size, no autoscaler):
  distdl k8s render train jobs/cnn_digits.yaml --image REGISTRY/distdl:0.1.0 --queue team-a \\
      --set storage=s3://BUCKET/runs --set data.train=s3://BUCKET/digits/train.parquet
"""


def _address_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="the cluster's Ray Jobs API (its dashboard), e.g. http://HEAD:8265 "
                   "(default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else http://127.0.0.1:8265)")


def _submit_options(p: argparse.ArgumentParser) -> None:
    _address_arg(p)
    p.add_argument("--working-dir", default=".",
                   help="folder shipped as the job's working directory (default: .); a train spec must be in it")
    p.add_argument("--follow", action="store_true",
                   help="stream the job's logs, then exit with its result (0: SUCCEEDED, 1: FAILED or STOPPED)")
    p.add_argument("--allow-secrets", action="store_true",
                   help="upload the working directory even though it holds files that look like secrets "
                   "(.env, *.pem, id_rsa*, .aws/, credentials*) not listed in .gitignore or .rayignore")
    verbose_arg(p)  # here, and passed on to the job's command


def _k8s_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", default=None,
                   help="the distdl image (built from cluster/Dockerfile), e.g. REGISTRY/distdl:0.1.0; required")
    p.add_argument("--cpus-per-node", type=int, default=8, help="CPUs of each worker pod (default: 8)")
    p.add_argument("--memory-per-node", default="32Gi", help="memory of each worker pod (default: 32Gi)")
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help="GPUs of each worker pod (default: 1 for training unless scaling.use_gpu is false; "
                   "score: its --gpus; serve: 0)")
    p.add_argument("--nodes", type=at_least(0), default=None,
                   help="worker pods a job starts with (default: as many as the spec's scaling.num_workers "
                   "need, else 1); the minimum of each group of a cluster (default: 1 CPU pod, 0 GPU pods) or of a service "
                   "(default: 1)")
    p.add_argument("--max-nodes", type=at_least(1), default=None,
                   help="autoscaling maximum of worker pods (per group): cluster and serve default to 4, a job to "
                   "the size it starts at (it may shrink as its pods go idle)")
    p.add_argument("--name", default="distdl", help="name of the RayCluster / RayService (default: distdl)")
    p.add_argument("--queue", default=None,
                   help="train, tune, score: the queue that admits the job whole, at a fixed size: a Kueue "
                   "LocalQueue (label kueue.x-k8s.io/queue-name), or with --batch-scheduler volcano a Volcano Queue")
    p.add_argument("--batch-scheduler", default=None, metavar="volcano",
                   help="train, tune, score: gang-schedule the job's pods with Volcano (label "
                   "ray.io/scheduler-name; KubeRay must run with batchScheduler.name=volcano)")


def _own_options(args: argparse.Namespace, add_options, prog: str) -> list[str]:
    """Take a command's own options out of ``args.argv`` (they may come anywhere); the rest."""
    own = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    add_options(own)
    return own.parse_known_args(args.argv, namespace=args)[1]


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distdl k8s render serve", allow_abbrev=False)
    p.add_argument("--checkpoint", action="append", required=True, help="checkpoint URI to serve (repeatable)")
    p.add_argument("--api-key-env", default=None, help="env var holding the API key clients must send")
    return p


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `submit`, `jobs` and `k8s` to distdl's subcommands."""
    _add_submit(sub)
    _add_jobs(sub)
    _add_k8s(sub)


def _add_submit(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser("submit", help="run train or score as a Ray job on a running cluster",
                            description="Submit a distdl command to a Ray cluster through the Ray Jobs API "
                            "and print its submission id.", epilog=SUBMIT_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _submit_options(submit)
    submit.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                        help="the distdl command to run on the cluster (see below)")


def _add_jobs(sub: argparse._SubParsersAction) -> None:
    jobs = sub.add_parser("jobs", help="list, inspect, follow or stop Ray jobs on a cluster",
                          description="The Ray jobs of a cluster (ids as printed by `distdl submit`).")
    actions = jobs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every job: id, status, start time, entrypoint")
    _address_arg(listing)
    verbose_arg(listing, hides=False)
    for action, text in (("status", "a job's status, times and message"), ("logs", "a job's output so far"),
                         ("stop", "stop a running job (SIGTERM, then SIGKILL) and wait until it has stopped")):
        one = actions.add_parser(action, help=text, description=text)
        one.add_argument("job_id", help="submission id, e.g. raysubmit_...")
        _address_arg(one)
        verbose_arg(one, hides=False)
    actions.choices["logs"].add_argument("--follow", action="store_true",
                                         help="keep streaming until the job ends; exit 0 if it SUCCEEDED, else 1")


def _add_k8s(sub: argparse._SubParsersAction) -> None:
    k8s = sub.add_parser("k8s", help="KubeRay manifests (RayCluster, RayJob, RayService) from a job spec")
    render = k8s.add_subparsers(dest="action", required=True).add_parser(
        "render", help="print KubeRay manifests for a cluster, a train or score job, or a service",
        description="Print KubeRay YAML for `kubectl apply -f -`. Paths must be s3:// or gs:// URIs: pods "
        "share no filesystem. Token authentication is on (authOptions.mode: token).", epilog=K8S_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _k8s_options(render)
    verbose_arg(render, hides=False)
    render.add_argument("kind", choices=["cluster", "train", "tune", "score", "serve"])
    render.add_argument("argv", nargs=argparse.REMAINDER, metavar="ARGS ...",
                        help="train: SPEC [--set FIELD=VALUE ...]; tune: SPEC and the options of `distdl tune`; "
                        "score: the options of `distdl score`; "
                        "serve: --checkpoint URI [--checkpoint URI ...] [--api-key-env NAME]")


def _submit(args: argparse.Namespace) -> int:
    from distdl import logs, submit, upload

    # Submit's own options may come anywhere (`distdl submit SPEC --address URL`); the rest must be
    # a command that `distdl` itself accepts here.
    rest = _own_options(args, _submit_options, "distdl submit")
    if not rest:
        raise ValueError("distdl submit needs a command: a spec (`distdl submit jobs/x.yaml`) or `score ...`")
    command = rest if rest[0] in ("train", "score", "tune") else ["train", *rest]
    local = command_parser().parse_args(command)
    working_dir = Path(args.working_dir)
    verbose = ["--verbose"] if args.verbose else []
    if local.command == "train":
        job = submit.spec_job("train", local.spec, local.overrides, working_dir, ["--fresh"] * local.fresh + verbose)
    elif local.command == "tune":
        tune.load(local)  # a bad search fails here, before anything is uploaded
        job = submit.spec_job("tune", local.spec, local.overrides, working_dir, tune.sweep_flags(local) + verbose)
    else:
        job = submit.score_job(command[1:] + verbose)
    if not args.allow_secrets:
        upload.refuse_secrets(working_dir, submit.EXCLUDES)  # before the cluster is contacted
    # The client's own chatter (e.g. "Uploading package ...") goes to a log; the job's output,
    # quiet itself unless --verbose, streams to the console.
    with logs.capture(None if args.verbose else logs.log_file(None, "submit")):
        jobs = submit.Jobs(args.address)
        job_id = jobs.submit(job, working_dir)
        logs.say(f"submitted {job_id} to {jobs.address}\n  entrypoint: {job.entrypoint}")
        if args.follow:
            return _follow(jobs, job_id)
    print(f"  follow it:  distdl jobs logs {job_id} --follow --address {jobs.address}")
    return 0


def _follow(jobs, job_id: str) -> int:
    from distdl import logs

    try:
        status = jobs.follow(job_id, logs.console())
    except KeyboardInterrupt:
        logs.say(f"\nstopped following; the job keeps running (distdl jobs stop {job_id})", err=True)
        return 130
    logs.say(f"job {job_id} {status}")
    return 0 if status == "SUCCEEDED" else 1


def _jobs(args: argparse.Namespace) -> int:
    from distdl import submit

    jobs = submit.Jobs(args.address)
    if args.action == "list":
        for job in jobs.list():
            print(submit.summary_line(job))
    elif args.action == "status":
        print(submit.describe(jobs.info(args.job_id)))
    elif args.action == "logs":
        if args.follow:
            return _follow(jobs, args.job_id)
        print(jobs.logs(args.job_id), end="")
    elif not jobs.stop(args.job_id):
        print(f"{args.job_id} had already ended: {jobs.info(args.job_id).status}")
    else:
        print(f"{args.job_id} {jobs.wait(args.job_id)}")
    return 0


def _k8s(args: argparse.Namespace) -> int:
    from distdl import k8s

    rest = _own_options(args, _k8s_options, "distdl k8s render")
    if not args.image:
        raise ValueError("distdl k8s render needs --image: the distdl image built from cluster/Dockerfile")
    shape = k8s.Shape(args.image, args.cpus_per_node, args.memory_per_node, args.gpus_per_node, args.nodes,
                      args.max_nodes)
    gang = k8s.Gang(args.queue, args.batch_scheduler)
    if args.kind in ("cluster", "serve") and gang != k8s.Gang():
        raise ValueError(f"--queue and --batch-scheduler apply to train, tune and score, not to {args.kind}")
    if args.kind == "train":
        local = command_parser().parse_args(["train", *rest])
        docs = k8s.train_job(local.spec, local.overrides, shape, gang=gang)
    elif args.kind == "tune":
        local = command_parser().parse_args(["tune", *rest])
        sweep = tune.load(local)
        docs = k8s.train_job(local.spec, local.overrides, shape, ["tune", *tune.sweep_flags(local)],
                             concurrent=sweep.tune.max_concurrent, gang=gang)
    elif args.kind == "score":
        local = command_parser().parse_args(["score", *rest])
        paths = {"--checkpoint": local.checkpoint, "--input": local.input, "--output": local.output}
        # Only the --gpus flag sizes the pods: the checkpoint (and its score section) may exist only
        # on the cluster's storage, unreadable here.
        docs = k8s.score_job(rest, paths, local.gpus or 0.0, shape, gang)
    elif args.kind == "serve":
        serve = _serve_parser().parse_args(rest)
        docs = k8s.rayservice(serve.checkpoint, serve.api_key_env, shape, args.name)
    elif rest:
        raise ValueError(f"distdl k8s render cluster takes no arguments, got {' '.join(rest)}")
    else:
        docs = k8s.raycluster(shape, args.name)
    print(k8s.render(docs), end="")
    return 0


COMMANDS = {"submit": _submit, "jobs": _jobs, "k8s": _k8s}

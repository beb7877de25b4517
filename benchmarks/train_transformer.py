"""Transformer training throughput: distdl (Ray Data + Ray Train) against a plain PyTorch loop.

Both train the same from-config BERT (jobs/transformer_text.yaml's size: hidden 64, 2 layers,
2 heads; 4 topic classes) on the same synthetic topic sentences, with the same tokenizer
(fitted on all training rows), global batch (32), dynamic padding per batch and AdamW:

  (a) one process, one torch thread per core; rows tokenized up front, each batch padded
      to its longest row (distdl's collate) inside the timed loop;
  (c) ``distdl.train.run`` on an embedded local Ray with ``scaling.num_workers: auto``
      (one worker with every core on a CPU machine: plain PyTorch is then also the DDP
      baseline, as one-process DDP does no all-reduce), reading the rows as parquet and
      tokenizing them in Ray Data every epoch, or with ``--cache`` (``train.cache``) once.

Only steady-state training is timed: (a) after a few warm-up steps, (c) as the mean of the
per-epoch ``samples_per_s`` its loop logs, leaving out the first epoch (start-up).

    .venv/bin/python benchmarks/train_transformer.py --cache     # about 1 minute on 2 cores
    .venv/bin/python benchmarks/train_transformer.py             # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/train_transformer.py --smoke     # (a) and (c) on 64 rows (train.cache is tested in tests/)
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from common import distdl_steady, parse_args

from distdl import models, runtime, tasks
from distdl.collate import to_tensors
from distdl.demo_data import TOPICS, sentence
from distdl.layout import Cluster, resolve
from distdl.loop import make_optimizer
from distdl.models.transformer import TransformerConfig
from distdl.preprocessors import tokenized
from distdl.spec import JobSpec, parse

BATCH, MAX_LENGTH, VOCAB = 32, 32, 500
MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 2}
OPTIMIZER = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.0}
WARMUP_STEPS = 3
SMOKE = {"rows": 64, "epochs": 2, "val_rows": 64}


def sentences(rows: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    labels = [str(t) for t in rng.choice(sorted(TOPICS), size=rows)]
    return [sentence(rng, label) for label in labels], labels


def write_parquet(path: Path, texts: list[str], labels: list[str]) -> str:
    pq.write_table(pa.table({"text": texts, "label": labels}), path)
    return str(path)


# ---- (a) plain PyTorch ---------------------------------------------------------------------
def plain(texts: list[str], labels: list[str], epochs: int) -> float:
    """Global samples/s of a single-process loop over the same tokenized rows and model."""
    torch.set_num_threads(os.cpu_count())
    pre = tokenized.TextPreprocessor("text", "label", MAX_LENGTH, True, tokenized.fit_wordpiece(texts, VOCAB, True),
                                sorted(set(labels)))
    rows = pre({"text": np.array(texts, dtype=object), "label": np.array(labels, dtype=object)})
    cfg = models.complete_config("transformer", TransformerConfig(**MODEL), pre)
    torch.manual_seed(0)
    model = models.build_model("transformer", cfg).train()
    task, optimizer = tasks.create("classification", pre), make_optimizer(model.parameters(), OPTIMIZER)
    g = torch.Generator().manual_seed(0)

    def steps(n_epochs: int, limit: int | None = None) -> int:
        done = 0
        for _ in range(n_epochs):
            for idx in torch.randperm(len(texts), generator=g).split(BATCH)[:limit]:
                batch = to_tensors({k: v[idx.numpy()] for k, v in rows.items()})  # pads to the batch's longest
                loss, n = task.loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss.item()  # distdl's loop reads the loss every step: the same sync point
                done += n
        return done

    steps(1, WARMUP_STEPS)
    start = time.perf_counter()
    seen = steps(epochs)
    return seen / (time.perf_counter() - start)


# ---- (c) distdl ----------------------------------------------------------------------------
def distdl_spec(folder: Path, train_path: str, val_path: str, rows: int, epochs: int, cache: bool) -> JobSpec:
    return parse({
        "name": f"bench_transformer{'_cache' if cache else ''}", "storage": str(folder / "runs"),
        "data": {"train": train_path, "val": val_path},
        "model": {"family": "transformer", **MODEL},
        "preprocess": {"max_length": MAX_LENGTH, "vocab_size": VOCAB, "fit_rows": rows},
        "train": {"epochs": epochs, "batch_size": BATCH, "schedule": "constant", "shuffle": True, "cache": cache,
                  **OPTIMIZER},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048, help="training sentences (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="distdl epochs, >= 2; the first is warm-up, plain PyTorch times epochs - 1 "
                             "(default: %(default)s)")
    parser.add_argument("--cache", action="store_true", help="distdl with train.cache: tokenize once, not every epoch")
    parser.add_argument("--val-rows", type=int, default=256, help="validation sentences (default: %(default)s)")
    args = parse_args(parser, SMOKE)
    if args.epochs < 2 or args.rows < BATCH:
        parser.error(f"need --epochs >= 2 and --rows >= {BATCH}")
    texts, labels = sentences(args.rows, seed=0)
    runtime.connect()
    with tempfile.TemporaryDirectory(prefix="distdl-bench-") as tmp:
        folder = Path(tmp)
        train_path = write_parquet(folder / "train.parquet", texts, labels)
        val_path = write_parquet(folder / "val.parquet", *sentences(args.val_rows, seed=1))
        spec = distdl_spec(folder, train_path, val_path, args.rows, args.epochs, args.cache)
        layout = resolve(spec.scaling, Cluster.current())
        a = plain(texts, labels, args.epochs - 1)  # first, while Ray is idle
        print(f"(a) plain PyTorch: {a:.1f} samples/s", flush=True)
        rate, wait = distdl_steady(spec)
    c = "(c, cache)" if args.cache else "(c)"
    print(f"\n{'setup':<24}{'workers x threads':>18}{'samples/s':>11}{'ingest wait':>13}")
    print(f"{'(a) plain PyTorch':<24}{f'1 x {os.cpu_count()}':>18}{a:>11.1f}{'-':>13}")
    shape = f"{layout.num_workers} x {layout.threads_per_worker}"
    print(f"{c + ' distdl, auto':<24}{shape:>18}{rate:>11.1f}{wait:>13.1%}")
    print(f"\n{c} / (a) = {rate / a:.3f}")


if __name__ == "__main__":
    main()

"""DCGAN training throughput, side by side: distdl (Ray Data + Ray Train, the gan family's own
D/G step) against plain PyTorch DDP, with the same model, data, global batch and workers.

  (a) torch.distributed DDP (gloo, localhost) with W processes, cores // W threads each (W = 1:
      one plain process, no wrapper). Every rank takes its slice of each global batch from
      in-memory tensors and runs the DCGAN step written plainly: torch.randn latents, a D update
      on real (target 0.9) and fake images, a G update through the updated D, Adam(beta1=0.5).
  (b) ``distdl.train.run`` with ``scaling.num_workers: W`` (threads per worker from distdl's
      layout: cores // W) on an embedded local Ray, reading the same digits as parquet (PNG bytes).

Both use distdl's DCGAN (``models/gan.py``) on scikit-learn's digits scaled to 32x32 in [-1, 1].
Only steady-state training is timed: the baseline after a few warm-up steps; for distdl the
first epoch is left out and its per-epoch ``samples_per_s`` (training pass only: not the
per-epoch quality evaluation, which here uses an untrained classifier) is averaged.

Run from the repository root on an otherwise idle machine:

    .venv/bin/python benchmarks/train_gan.py                 # W = 1 and 2, about 2 minutes on 2 cores
    .venv/bin/python benchmarks/train_gan.py --workers 2 --epochs 2
    .venv/bin/python benchmarks/train_gan.py --smoke         # W = 2 on 128 digits, one timed epoch
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.nn.functional as F
from common import ddp_threads, distdl_steady, parse_args, spawn_ranks
from torch.nn.parallel import DistributedDataParallel

from distdl import checkpoint, models, runtime
from distdl.demo_data import write_digits
from distdl.models.cnn import CNNConfig
from distdl.models.gan import GANConfig
from distdl.preprocessors.image import ImagePreprocessor
from distdl.spec import parse

SIZE, WIDTH, LATENT, BATCH, LR = 32, 32, 64, 64, 2e-4
WARMUP_STEPS = 3
SMOKE = {"workers": "2", "epochs": 1, "rows": 2 * BATCH}  # W = 2: DDP too, in one run


def new_gan(classifier: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build_model("gan", GANConfig(classifier=classifier, image_size=SIZE, channels=1,
                                               width=WIDTH, latent_dim=LATENT))


# ---- (a) plain PyTorch ---------------------------------------------------------------------
def steps(gen, disc, opt_g, opt_d, x: torch.Tensor, batches: list[torch.Tensor], rank: int, world: int) -> None:
    for idx in batches:
        real = x[idx.tensor_split(world)[rank]]  # this rank's slice of the global batch
        fake = gen(torch.randn(len(real), LATENT))
        d_real, d_fake = disc(real), disc(fake.detach())
        d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, 0.9))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_out = disc(fake)
        g_loss = F.binary_cross_entropy_with_logits(g_out, torch.ones_like(g_out))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        d_loss.item(), g_loss.item()  # distdl reads both losses every step; the same sync point


def measure(rank: int, world: int, x: torch.Tensor, classifier: str, epochs: int) -> float:
    """Global samples/s over ``epochs`` passes after WARMUP_STEPS untimed steps."""
    model = new_gan(classifier)
    wrap = DistributedDataParallel if world > 1 else (lambda m: m)
    gen, disc = wrap(model.generator), wrap(model.discriminator)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=LR, betas=(0.5, 0.999)) for m in (gen, disc))
    g = torch.Generator().manual_seed(0)
    batches = [b for _ in range(epochs + 1) for b in torch.randperm(len(x), generator=g).split(BATCH)]
    steps(gen, disc, opt_g, opt_d, x, batches[:WARMUP_STEPS], rank, world)
    timed = batches[-(len(batches) * epochs // (epochs + 1)):]
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    steps(gen, disc, opt_g, opt_d, x, timed, rank, world)
    if world > 1:
        dist.barrier()  # the group is done when its slowest rank is
    return sum(len(b) for b in timed) / (time.perf_counter() - start)


def plain(x: torch.Tensor, classifier: str, epochs: int, world: int) -> float:
    if world == 1:
        torch.set_num_threads(os.cpu_count())
        return measure(0, 1, x, classifier, epochs)
    return spawn_ranks(measure, world, ddp_threads(world), x, classifier, epochs)


# ---- (b) distdl ----------------------------------------------------------------------------
def distdl(digits: Path, classifier: str, storage: str, epochs: int, world: int) -> tuple[float, float]:
    """(steady-state samples/s, ingest wait share) of a distdl run with ``world`` workers."""
    spec = parse({
        "name": f"gan_w{world}", "storage": storage, "data": {"train": str(digits / "train.parquet"),
                                                             "val": str(digits / "holdout.parquet")},
        "model": {"family": "gan", "classifier": classifier, "width": WIDTH, "latent_dim": LATENT},
        "preprocess": {"image_size": SIZE, "channels": 1},
        "train": {"epochs": epochs + 1, "batch_size": BATCH, "optimizer": "adam", "lr": LR, "schedule": "constant"},
        "scaling": {"num_workers": world},  # CPUs and threads per worker: distdl's layout (printed)
        "failure": {"max_failures": 0},
    })
    return distdl_steady(spec)


def untrained_classifier(dest: Path) -> str:
    pre = ImagePreprocessor("image", "label", SIZE, 1, [0.5], [0.5], list(range(10)))
    cfg = models.complete_config("cnn", CNNConfig(width=8), pre)
    return checkpoint.save(str(dest), models.build_model("cnn", cfg), "cnn", cfg, pre, {}, {"epoch": 0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (distdl trains one more first)")
    parser.add_argument("--rows", type=int, help="train on the first ROWS digits only (default: all 1,617)")
    args = parse_args(parser, SMOKE)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        digits = root / "digits"
        write_digits(digits)
        if args.rows:
            pq.write_table(pq.read_table(digits / "train.parquet").slice(0, args.rows), digits / "train.parquet")
        classifier = untrained_classifier(root / "classifier")
        pre = ImagePreprocessor("image", "", SIZE, 1, [0.5], [0.5], [])
        x = torch.from_numpy(pre({"image": pq.read_table(digits / "train.parquet")["image"].to_numpy(
            zero_copy_only=False)})["x"])  # (N, 1, 32, 32) in [-1, 1], what distdl's workers get
        runtime.connect()
        print(f"DCGAN {SIZE}x{SIZE}, width {WIDTH}, latent {LATENT}, global batch {BATCH}, {len(x)} rows, "
              f"{args.epochs} timed epochs, {os.cpu_count()} cores")
        for world in (int(w) for w in args.workers.split(",")):
            threads = ddp_threads(world)
            base = plain(x, classifier, args.epochs, world)
            rate, wait = distdl(digits, classifier, str(root / "runs"), args.epochs, world)
            print(f"{world} worker(s) x {threads} thread(s): (a) plain PyTorch{' DDP' if world > 1 else ''} "
                  f"{base:.1f} samples/s | (b) distdl {rate:.1f} samples/s, ingest wait {wait:.1%} | "
                  f"(b)/(a) = {rate / base:.2f}", flush=True)


if __name__ == "__main__":
    main()

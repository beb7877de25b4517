"""GAN family without Ray: networks, spec, the D/G step (learning, DDP parity), checkpoint, quality, generation."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from distdl import checkpoint, cli, loop, models
from distdl import spec as specmod
from distdl.models.cnn import CNNConfig
from distdl.models.gan import GANConfig, latents
from distdl.predict import Predictor
from distdl.preprocessors.image import ImagePreprocessor
from distdl.spec import SpecError, TrainSpec, to_dict
from distdl.tasks import gan_quality
from distdl.tasks.generation import ImageGeneration

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

SIZE = 16
GAN_PRE = ImagePreprocessor("image", "", SIZE, 1, [0.5], [0.5], [])  # what the gan family fits: [-1, 1]


def classifier(dest: Path) -> str:
    """An untrained cnn checkpoint: enough for the judge's plumbing (the Ray test trains one)."""
    pre = ImagePreprocessor("image", "label", 8, 1, [0.3], [0.3], list(range(10)))
    cfg = models.complete_config("cnn", CNNConfig(width=4), pre)
    torch.manual_seed(0)
    return checkpoint.save(str(dest), models.build_model("cnn", cfg), "cnn", cfg, pre, {}, {"epoch": 0})


@pytest.fixture(scope="module")
def judge_path(tmp_path_factory) -> str:
    return classifier(tmp_path_factory.mktemp("judge") / "cls")


def gan(judge_path: str, seed: int = 0, **cfg):
    config = models.complete_config("gan", GANConfig(classifier=judge_path, **{"width": 8, "latent_dim": 16, **cfg}),
                                    GAN_PRE)
    torch.manual_seed(seed)
    return models.build_model("gan", config)


def train_cfg(**overrides) -> dict:
    return to_dict(TrainSpec(**{"optimizer": "adam", "lr": 2e-3, "batch_size": 32, "schedule": "constant", **overrides}))


def prepared(model, train: dict, wrap=lambda m: m):
    task = ImageGeneration(GAN_PRE)
    trained, optimizers = task.prepare(model, wrap, lambda params: loop.make_optimizer(params, train))
    return task, trained, optimizers


def epoch(task, trained, optimizers, batches, train: dict, number: int = 1, rank: int = 0) -> dict:
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return loop.train_epoch(task, trained, optimizers, scaler, batches, torch.device("cpu"), train, number, rank, None)


def blob_images(n: int) -> torch.Tensor:
    """(n, 1, 16, 16) in [-1, 1]: a bright square in a random quadrant on a dark background."""
    g = torch.Generator().manual_seed(1)
    x = torch.full((n, 1, SIZE, SIZE), -1.0)
    for i, q in enumerate(torch.randint(0, 4, (n,), generator=g).tolist()):
        r, c = divmod(q, 2)
        x[i, :, 8 * r + 2:8 * r + 6, 8 * c + 2:8 * c + 6] = 1.0
    return x


# ---- networks and spec ---------------------------------------------------------------------
@pytest.mark.parametrize("size, channels", [(16, 1), (28, 1), (32, 3), (64, 3)])
def test_networks_are_sized_from_the_spec(judge_path, size, channels):
    cfg = GANConfig(classifier=judge_path, image_size=size, channels=channels, latent_dim=10, width=4)
    model = models.build_model("gan", cfg)
    images = model(z=torch.randn(3, 10))
    assert images.shape == (3, channels, size, size) and images.abs().max() <= 1
    assert model.discriminator(images).shape == (3,)


def test_the_spec_names_bad_gan_fields_and_picks_fid_as_best(tmp_path, monkeypatch):
    base = {"name": "g", "data": {"train": "d.parquet"}, "model": {"family": "gan", "classifier": "runs/c/best"}}
    spec = specmod.parse(base)
    assert spec.checkpoint.best_metric == "val_fid" and spec.checkpoint.best_mode == "min"
    assert spec.preprocess.image_size == 32 and spec.model.latent_dim == 64
    with pytest.raises(SpecError) as info:
        specmod.parse({**base, "model": {"family": "gan"}})
    assert dict(info.value.problems)["model.classifier"] == "is required"
    with pytest.raises(SpecError) as info:
        specmod.parse({**base, "model": {**base["model"], "latent_dim": 0, "label_smoothing": 0.7},
                       "preprocess": {"image_size": 20, "augment": ["random_crop"]}})
    found = dict(info.value.problems)
    assert found["model.latent_dim"] == "must be >= 1, got 0"
    assert found["model.label_smoothing"] == "must be in [0, 0.5), got 0.7"
    assert found["preprocess.image_size"] == "must be 16 | 28 | 32 | 64, got 20"
    assert "preprocess.augment[0]" in found
    monkeypatch.chdir(tmp_path)  # a relative classifier path is resolved like data paths, and checked
    (tmp_path / "job.yaml").write_text("name: g\ndata: {train: d.parquet}\nmodel: {family: gan, classifier: c/best}\n")
    spec = specmod.load(tmp_path / "job.yaml")
    assert spec.model.classifier == str(tmp_path / "c/best")
    assert specmod.path_problems(spec) == [("model.classifier", f"not found: {tmp_path / 'c/best'}")]
    (tmp_path / "c/best").mkdir(parents=True)  # e.g. its training is still running
    assert "is not a complete distdl checkpoint" in specmod.path_problems(spec)[0][1]


def test_the_cli_refuses_a_missing_classifier_and_generate_from_a_classifier(judge_path, tmp_path, capsys):
    """Both are caught before Ray starts (a missing file names its spec field)."""
    job = tmp_path / "gan.yaml"
    missing = tmp_path / "no_such_checkpoint"
    job.write_text(f"name: g\ndata: {{train: {tmp_path}/d.parquet}}\nmodel: {{family: gan, classifier: {missing}}}\n")
    assert cli.main(["train", str(job)]) == 2
    assert f"model.classifier: not found: {missing}" in capsys.readouterr().err
    assert cli.main(["score", "--checkpoint", judge_path, "--generate", "5", "--output", str(tmp_path / "o")]) == 1
    assert "is a cnn model, which scores data (--input); --generate needs a generative model" in capsys.readouterr().err


# ---- the step ------------------------------------------------------------------------------
def test_the_step_learns_a_fixed_batch(judge_path):
    """Overfit: with one batch of real images the generator's samples move to them, and the
    discriminator's loss leaves chance while the generator's answers it."""
    real = blob_images(32)
    model = gan(judge_path)
    train = train_cfg()
    task, trained, optimizers = prepared(model, train)
    z = latents([(7, i) for i in range(64)], 16)

    def distance() -> float:  # mean distance of each sample to its nearest real image
        with torch.inference_mode():
            fake = model.eval()(z=z).flatten(1)
        return torch.cdist(fake, real.flatten(1)).min(1).values.mean().item()

    before = distance()
    first = epoch(task, trained, optimizers, [{"x": real}] * 10, train)
    for n in range(2, 9):
        last = epoch(task, trained, optimizers, [{"x": real}] * 10, train, number=n)
    assert distance() < 0.5 * before
    assert first["train_samples"] == 320 and set(first) >= {"train_d_loss", "train_g_loss", "samples_per_s"}
    assert last["train_d_loss"] != first["train_d_loss"] and last["train_g_loss"] > 0


def _ddp_rank(rank: int, world: int, rendezvous: str, judge: str, batches: list, out: str) -> None:
    torch.set_num_threads(1)
    # A file, not a free TCP port: another process may take a port before rank 0 binds it.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        train = train_cfg(lr=0.01)
        task, trained, optimizers = prepared(gan(judge, batchnorm=False), train, wrap=DistributedDataParallel)
        per = len(batches[0]["x"]) // world
        mine = [{"x": b["x"][rank * per:(rank + 1) * per]} for b in batches]
        stats = epoch(task, trained, optimizers, mine, train, rank=rank)
        if rank == 0:
            raw = {"generator": trained.generator.module, "discriminator": trained.discriminator.module}
            save_file({f"{n}.{k}": v for n, m in raw.items() for k, v in m.state_dict().items()}, out)
            Path(out + ".loss").write_text(f"{stats['train_d_loss']} {stats['train_g_loss']}")
    finally:
        dist.destroy_process_group()


def test_two_workers_take_the_same_gan_steps_as_one(judge_path, tmp_path):
    """DDP on both networks: 2 workers x 16 rows (each its slice of the global batch's latents)
    must give the parameters of 1 worker x 32 rows, over steps that alternate D and G updates."""
    batches = [{"x": blob_images(32)}, {"x": blob_images(32).flip(2)}, {"x": blob_images(32).flip(3)}]
    train = train_cfg(lr=0.01)
    task, trained, optimizers = prepared(gan(judge_path, batchnorm=False), train)
    one = epoch(task, trained, optimizers, batches, train)
    out = str(tmp_path / "two.safetensors")
    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "rendezvous"), judge_path, batches, out), nprocs=2)
    two = load_file(out)
    single = {f"{n}.{k}": v for n in ("generator", "discriminator") for k, v in getattr(trained, n).state_dict().items()}
    assert single.keys() == two.keys()
    for name, value in single.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)
    d_loss, g_loss = map(float, Path(out + ".loss").read_text().split())
    assert d_loss == pytest.approx(one["train_d_loss"], rel=1e-4) and g_loss == pytest.approx(one["train_g_loss"], rel=1e-4)
    assert not torch.equal(single["generator.net.0.weight"], gan(judge_path, batchnorm=False).generator.net[0].weight)


# ---- checkpoint ----------------------------------------------------------------------------
def test_checkpoint_holds_both_networks_and_both_optimizers(judge_path, tmp_path):
    model = gan(judge_path)
    train = train_cfg()
    task, trained, optimizers = prepared(model, train)
    epoch(task, trained, optimizers, [{"x": blob_images(32)}] * 2, train)
    path = checkpoint.save(str(tmp_path / "ck"), model, "gan", model.cfg, GAN_PRE, {}, {"epoch": 1}, optimizers)
    keys = load_file(str(tmp_path / "ck" / "model.safetensors")).keys()
    assert {k.split(".")[0] for k in keys} == {"generator", "discriminator"}
    loaded, pre, meta = checkpoint.load_model(path)
    z = torch.randn(5, 16)
    with torch.inference_mode():
        assert torch.equal(loaded(z=z), model.eval()(z=z))
    assert pre == GAN_PRE and meta["family"] == "gan" and meta["args"]["classifier"] == judge_path
    _, saved = checkpoint.load_train_state(path)
    assert set(saved) == {"generator", "discriminator"}
    for name, optimizer in optimizers.items():
        fresh = loop.make_optimizer(getattr(model, name).parameters(), train)
        fresh.load_state_dict(saved[name])
        assert fresh.param_groups[0]["betas"] == [0.5, 0.999]
        for p in getattr(model, name).parameters():
            assert torch.equal(fresh.state[p]["exp_avg"], optimizer.state[p]["exp_avg"])


# ---- quality -------------------------------------------------------------------------------
def test_frechet_distance_and_coverage_on_known_inputs():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    cov = a @ a.T + np.eye(4)
    assert gan_quality.frechet(np.zeros(4), cov, np.zeros(4), cov) == pytest.approx(0, abs=1e-9)
    assert gan_quality.frechet(np.zeros(4), cov, np.full(4, 2.0), cov) == pytest.approx(16)
    # Diagonal covariances: sum of (sqrt(s1) - sqrt(s2))^2.
    assert gan_quality.frechet(np.zeros(2), np.diag([1.0, 4.0]), np.zeros(2), np.diag([9.0, 1.0])) == pytest.approx(5)
    feats = rng.normal(size=(200, 3))
    stats = {"real": 200.0, "real_sum": feats.sum(0), "real_outer": feats.T @ feats, "fake": 200.0,
             "fake_sum": feats.sum(0), "fake_outer": feats.T @ feats, "confident": 50.0, "classes": np.full(10, 20.0)}
    out = gan_quality.metrics(stats)
    assert out["val_fid"] == pytest.approx(0, abs=1e-9) and out["val_confident"] == 0.25
    assert out["val_coverage"] == pytest.approx(1.0)
    assert gan_quality.metrics({**stats, "classes": np.eye(10)[3] * 200})["val_coverage"] == 0.0


def test_evaluation_sees_the_same_samples_however_the_rows_are_batched(judge_path):
    model = gan(judge_path)
    task, trained, _ = prepared(model, train_cfg())
    real = blob_images(24)
    whole = loop.evaluate(task, trained, [{"x": real}], torch.device("cpu"), "fp32")
    split = loop.evaluate(task, trained, [{"x": real[:7]}, {"x": real[7:]}], torch.device("cpu"), "fp32")
    assert whole.keys() == {"val_fid", "val_confident", "val_coverage"}
    for name, value in whole.items():
        assert split[name] == pytest.approx(value, rel=1e-6, abs=1e-9)


# ---- generation ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gan_checkpoint(judge_path, tmp_path_factory) -> str:
    model = gan(judge_path)
    return checkpoint.save(str(tmp_path_factory.mktemp("gan") / "best"), model, "gan", model.cfg, GAN_PRE, {}, {})


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_generation_depends_only_on_seed_and_id(gan_checkpoint):
    ids = np.arange(10)
    out = Predictor(gan_checkpoint, seed=3, passthrough=["id"])({"id": ids})
    assert list(out["id"]) == list(ids) and all(e is None for e in out["error"])
    assert pixels(out["image"][0]).shape == (SIZE, SIZE)
    again = Predictor(gan_checkpoint, seed=3)({"id": ids[::-1].copy()})  # other order and batching
    piece = Predictor(gan_checkpoint, seed=3)({"id": ids[4:6]})
    for i in range(10):
        assert again["image"][9 - i] == out["image"][i]
    assert list(piece["image"]) == list(out["image"][4:6])
    other = Predictor(gan_checkpoint, seed=4)({"id": ids})
    assert not any(a == b for a, b in zip(other["image"], out["image"]))
    assert len({bytes(b) for b in out["image"]}) == 10


def test_bad_ids_become_row_errors(gan_checkpoint):
    batch = {"id": np.array([0, -1, "seven", 2.5, None, 3], dtype=object)}
    out = Predictor(gan_checkpoint, where_column="id")(batch)
    good = Predictor(gan_checkpoint)({"id": np.array([0, 3])})
    assert "id -1 (id -1) must be a non-negative integer" in out["error"][1]
    assert all("must be a non-negative integer" in out["error"][i] for i in (2, 3, 4))
    assert all(out["image"][i] is None for i in (1, 2, 3, 4))
    assert out["error"][0] is None and out["image"][0] == good["image"][0] and out["image"][5] == good["image"][1]

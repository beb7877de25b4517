"""GAN end to end on the session's local Ray: one 2-worker training run on the digits, judged by a
cnn classifier trained here, then generation through Ray Data (distdl score --generate)."""
from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from distdl import checkpoint, data, loop, models, score, spec as specmod, train
from distdl.models.cnn import CNNConfig
from distdl.predict import Predictor
from distdl.preprocessors import image
from distdl.tasks.classification import Classification
from distdl.tasks.generation import ImageGeneration

SIZE = 16


@pytest.fixture(scope="module")
def classifier(ray_session, digits, tmp_path_factory) -> str:
    """A small cnn trained in-process on the digits for 3 epochs: the judge of the samples."""
    ds = data.read(str(digits["train"]))
    pre = image.fit(ds, "image", "label", image.ImagePreprocessSpec(image_size=SIZE, channels=1, fit_rows=500))
    rows = ds.take_batch(5000, batch_format="numpy")
    x, y = torch.from_numpy(pre(rows)["x"]), torch.from_numpy(pre(rows)["y"])
    cfg = models.complete_config("cnn", CNNConfig(width=8), pre)
    torch.manual_seed(0)
    model = models.build_model("cnn", cfg)
    settings = specmod.to_dict(specmod.TrainSpec(lr=0.01))
    optimizer, scaler = loop.make_optimizer(model.parameters(), settings), torch.amp.GradScaler("cpu", enabled=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is much faster on a busy 2-core machine
    for epoch in range(1, 4):
        batches = [{"x": x[i], "y": y[i]} for i in torch.randperm(len(x)).split(64)]
        loop.train_epoch(Classification(pre), model, {"model": optimizer}, scaler, batches, torch.device("cpu"), settings,
                         epoch, 0, None)
    torch.set_num_threads(threads)
    return checkpoint.save(str(tmp_path_factory.mktemp("cnn") / "best"), model, "cnn", cfg, pre, {}, {"epoch": 3})


@pytest.fixture(scope="module")
def val(digits, tmp_path_factory) -> str:
    """160 held-out digits: an even count, so Ray's equal split over 2 workers drops none."""
    path = tmp_path_factory.mktemp("val") / "val.parquet"
    pq.write_table(pq.read_table(digits["holdout"]).slice(0, 160), path)
    return str(path)


@pytest.fixture(scope="module")
def run(ray_session, digits, val, classifier, tmp_path_factory) -> tuple[specmod.JobSpec, train.Summary]:
    spec = specmod.parse({
        "name": "gan", "storage": str(tmp_path_factory.mktemp("runs")),
        "data": {"train": str(digits["train"]), "val": val},
        "model": {"family": "gan", "classifier": classifier, "width": 16, "latent_dim": 32},
        "preprocess": {"image_size": SIZE, "channels": 1},
        "train": {"epochs": 2, "batch_size": 32, "optimizer": "adam", "lr": 0.001, "schedule": "constant"},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1, "threads_per_worker": 1},
        "failure": {"max_failures": 0},
    })
    return spec, train.run(spec)


def quality(model, pre, val: str) -> dict[str, float]:
    """The task's validation metrics, in-process, on the rows the run validated on."""
    task = ImageGeneration(pre)
    trained, _ = task.prepare(model, lambda m: m, lambda params: None)
    x = torch.from_numpy(pre({"image": pq.read_table(val)["image"].to_numpy(zero_copy_only=False)})["x"])
    return loop.evaluate(task, trained, [{"x": x}], torch.device("cpu"), "fp32")


def test_quality_improves_over_the_untrained_generator(run, val):
    spec, summary = run
    history = checkpoint.load_train_state(checkpoint.latest(spec.run_dir))[0]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    last = history[-1]
    model, pre, meta = checkpoint.load_model(summary.checkpoint)
    torch.manual_seed(spec.train.seed)  # the workers' initial weights
    untrained = quality(models.build_model("gan", models.config_from_args("gan", meta["args"])), pre, val)
    assert summary.best_metric == "val_fid" and summary.best_value == min(h["val_fid"] for h in history)
    assert last["val_fid"] < 0.5 * untrained["val_fid"]
    assert last["val_coverage"] > untrained["val_coverage"] + 0.3  # untrained: nearly one class for all
    # The numbers the two workers reported are the ones the saved generator gives here.
    final, _, _ = checkpoint.load_model(checkpoint.latest(spec.run_dir))
    again = quality(final, pre, val)
    for name in ("val_fid", "val_confident", "val_coverage"):
        assert again[name] == pytest.approx(last[name], rel=1e-4, abs=1e-6), name


def test_the_run_folder_has_a_grid_per_epoch_and_both_optimizers(run):
    spec, summary = run
    grids = [f"{spec.run_dir}/samples/epoch_{e:04d}.png" for e in (1, 2)]
    pictures = [np.asarray(Image.open(g)) for g in grids]
    assert pictures[0].shape == pictures[1].shape and not np.array_equal(pictures[0], pictures[1])
    # The grid comes from fixed latents: the saved generator redraws the last one exactly.
    final = checkpoint.latest(spec.run_dir)
    model, pre, _ = checkpoint.load_model(final)
    redraw = f"{spec.run_dir}/redraw"
    ImageGeneration(pre).epoch_end(model, redraw, 2)
    assert np.array_equal(np.asarray(Image.open(f"{redraw}/samples/epoch_0002.png")), pictures[1])
    _, optimizers = checkpoint.load_train_state(final)
    assert set(optimizers) == {"generator", "discriminator"} and all(o["state"] for o in optimizers.values())


def test_generate_writes_the_same_images_as_the_predictor(run, tmp_path):
    _, summary = run
    out = str(tmp_path / "samples")
    result = score.generate(summary.checkpoint, 48, out, score.Resources(batch_size=16, max_actors=2), seed=5)
    rows = sorted(pq.read_table(out).to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(48)) and all(r["error"] is None for r in rows)
    assert (result.rows_in, result.rows_scored, result.rows_with_errors) == (48, 48, 0)
    direct = Predictor(summary.checkpoint, seed=5)({"id": np.arange(48)})
    assert [r["image"] for r in rows] == list(direct["image"])
    assert np.asarray(Image.open(io.BytesIO(rows[0]["image"]))).shape == (SIZE, SIZE)
    with pytest.raises(ValueError, match="other options"):
        score.generate(summary.checkpoint, 48, out, seed=6)

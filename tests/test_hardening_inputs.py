"""Hostile inputs to the one inference path (Predictor), without Ray: wav headers that declare
huge expansions, image files of formats nobody listed or with decompression-bomb sizes,
sampling parameters at the edge of float32, and rows whose decoding or forward pass fails
in a way no check foresaw. Each is that row's error, never the batch's exception."""
from __future__ import annotations

import io
import struct
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from distdl import checkpoint, models
from distdl.demo_data import sentences
from distdl.models.cnn import CNNConfig
from distdl.models.rnn import RNNConfig
from distdl.predict import Predictor
from distdl.preprocessors import audio
from distdl.preprocessors.base import BadInputError
from distdl.preprocessors.image import MAX_PIXELS, ImagePreprocessor, png_bytes
from distdl.preprocessors.sequence import SequencePreprocessor
from distdl.preprocessors.text import UNKNOWN, CharPreprocessor
from distdl.serve.text import MAX_NEW_TOKENS, MAX_TOP_K, GenerateTextRequest
from distdl.tasks.language_model import generate


# ---- checkpoints (random weights, preprocessors built by hand: no Ray) -----------------------
def _save(dest: Path, family: str, cfg, pre, spec: dict | None = None) -> str:
    cfg = models.complete_config(family, cfg, pre)
    torch.manual_seed(0)
    return checkpoint.save(str(dest), models.build_model(family, cfg), family, cfg, pre, spec or {}, {})


def image_checkpoint(dest: Path, spec: dict | None = None) -> str:
    """An 8x8 grayscale digit classifier."""
    pre = ImagePreprocessor("image", "label", 8, 1, [0.5], [0.5], list(range(10)))
    return _save(dest, "cnn", CNNConfig(arch="smallcnn", width=8), pre, spec)


def chars_checkpoint(dest: Path, spec: dict | None = None) -> str:
    """A character language model over the demo sentences' characters."""
    pre = CharPreprocessor("text", [UNKNOWN, "\n", *sorted(set("".join(sentences(200, 0))))], 32, 60)
    return _save(dest, "rnn", RNNConfig(arch="lstm", task="language_model", hidden_size=16, embed_dim=8), pre, spec)


def audio_checkpoint(dest: Path, max_length: int) -> str:
    """A wav clip classifier: 8 kHz log-mel frames, at most ``max_length`` of them."""
    spec = audio.AudioSpec(sample_rate=8000, n_mels=16)
    pre = SequencePreprocessor("clip", "label", spec.size, [0.0] * spec.size, [1.0] * spec.size, ["a", "b"],
                               max_length, asdict(spec))
    return _save(dest, "rnn", RNNConfig(arch="gru", hidden_size=8), pre)


def column(*values) -> np.ndarray:
    cells = np.empty(len(values), dtype=object)  # one cell per value, whatever its type
    for i, value in enumerate(values):
        cells[i] = value
    return cells


# ---- 1. wav headers ----------------------------------------------------------------------------
def wav(samples: np.ndarray, rate: int) -> bytes:
    """A PCM wav file; scipy refuses to write rates below 1, so the header's rate is patched in."""
    import scipy.io.wavfile

    buf = io.BytesIO()
    scipy.io.wavfile.write(buf, 8000, samples)
    data = bytearray(buf.getvalue())
    struct.pack_into("<II", data, 24, rate, rate * samples.itemsize)  # fmt chunk: rate, byte rate
    return bytes(data)


def test_a_wav_header_rate_outside_the_accepted_range_is_refused_before_resampling():
    bomb = wav(np.zeros(2048, np.int16), rate=1)  # 4 KB: 2048 samples "at 1 Hz" = 32 M samples at 16 kHz
    with pytest.raises(ValueError, match=r"^WAV header declares 1 Hz; accepted: 1000 to 192000 Hz$"):
        audio.read_wav(bomb, 16000)
    with pytest.raises(ValueError, match="declares 384000 Hz"):
        audio.read_wav(wav(np.zeros(64, np.int16), rate=384000), 16000)


def test_a_clip_longer_than_max_length_is_refused_from_its_header_and_the_longest_that_fits_passes():
    spec = audio.AudioSpec(sample_rate=8000)
    limit = spec.max_samples(10)  # samples at 8 kHz that make 10 frames at most
    assert len(audio.features(audio.read_wav(wav(np.zeros(limit, np.int16), 8000), 8000, limit), spec)) == 10
    with pytest.raises(ValueError, match=rf"is {limit + 1} samples at 8000 Hz, more than the {limit} that fit max_length"):
        audio.read_wav(wav(np.zeros(limit + 1, np.int16), 8000), 8000, limit)
    at_4k = np.zeros(limit // 2, np.int16)  # resampled to 8 kHz: twice as many, as the header predicts
    assert len(audio.read_wav(wav(at_4k, 4000), 8000, limit)) == 2 * len(at_4k)
    with pytest.raises(ValueError, match=rf"is {2 * len(at_4k) + 2} samples"):
        audio.read_wav(wav(np.zeros(len(at_4k) + 1, np.int16), 4000), 8000, limit)


def test_a_wav_bomb_in_a_scoring_batch_is_its_rows_error(tmp_path):
    predictor = Predictor(audio_checkpoint(tmp_path / "audio", max_length=50))
    clip = wav((np.sin(np.arange(4000) / 5) * 9000).astype(np.int16), 8000)  # 0.5 s: 49 frames
    out = predictor({"clip": column(clip, wav(np.zeros(2048, np.int16), rate=1), clip)})
    assert out["error"][0] is None and out["error"][2] is None and out["label"][0] in ("a", "b")
    assert "declares 1 Hz" in out["error"][1] and out["label"][1] is None


# ---- anything unforeseen in one row: that row's error -----------------------------------------
def test_an_unexpected_exception_while_decoding_one_row_is_that_rows_error(tmp_path, monkeypatch):
    predictor = Predictor(chars_checkpoint(tmp_path / "lm"), max_new_tokens=4)
    decode = predictor.inputs.decode

    def decode_or_run_out_of_memory(value, where):
        if value == "the dog":
            raise MemoryError()
        return decode(value, where)

    monkeypatch.setattr(predictor.inputs, "decode", decode_or_run_out_of_memory)
    out = predictor({"text": column("the cat", "the dog", "a bird")})
    assert list(out["error"]) == [None, "cannot decode (row 1 of its batch): MemoryError", None]
    assert out["generated"][1] is None and all(len(out["generated"][i]) == 4 for i in (0, 2))


def test_a_forward_pass_that_fails_is_retried_row_by_row_and_only_the_failing_row_gets_an_error(tmp_path, monkeypatch):
    predictor = Predictor(chars_checkpoint(tmp_path / "lm"), max_new_tokens=6, where_column="id")
    batch = {"text": column("the cat", "the dog", "a bird"), "id": np.array([10, 11, 12])}
    expected = predictor(batch)["generated"]
    predict, dog = predictor.task.predict, torch.as_tensor(predictor.pre.encode("the dog"))

    def predict_or_fail_on_the_dog(model, features, **options):
        if any(torch.equal(x[:n].cpu(), dog) for x, n in zip(features["x"], features["lengths"].tolist())):
            raise RuntimeError("CUDA out of memory")
        return predict(model, features, **options)

    monkeypatch.setattr(predictor.task, "predict", predict_or_fail_on_the_dog)
    out = predictor(batch)
    assert list(out["error"]) == [None, "prediction failed (id 11): RuntimeError: CUDA out of memory", None]
    assert list(out["generated"]) == [expected[0], None, expected[2]]


# ---- 2. sampling parameters -------------------------------------------------------------------
@pytest.mark.parametrize("temperature, top_k", [(1e-320, None), (5e-5, 3), (float("inf"), None), (1.0, 10**9),
                                                (0.7, 0), (float("nan"), None)])
def test_no_sampling_parameter_makes_nan(tmp_path, temperature, top_k):
    model, pre, _ = checkpoint.load_model(chars_checkpoint(tmp_path / "lm"))
    prompt = torch.as_tensor(pre.encode("the cat"))
    ids = generate(model.eval(), prompt, 12, temperature, top_k, torch.Generator().manual_seed(0))
    assert len(ids) == 12 and all(0 <= i < len(pre.vocab) for i in ids)
    if not temperature >= 1e-4:  # below the smallest temperature: greedy
        assert ids == generate(model, prompt, 12, 0.0, None, torch.Generator())


def test_a_subnormal_temperature_generates_greedily_for_every_row_of_the_batch(tmp_path):
    predictor = Predictor(chars_checkpoint(tmp_path / "lm"), max_new_tokens=8)
    batch = {"text": column("the cat", "a bird")}
    out = predictor(batch, temperature=1e-320)
    assert list(out["error"]) == [None, None]
    assert list(out["generated"]) == list(predictor(batch, temperature=0.0)["generated"])
    with pytest.raises(ValueError, match="temperature >= 0"):
        predictor.task.predict(predictor.model, {}, temperature=float("nan"))


@pytest.mark.parametrize("field, value", [("top_k", MAX_TOP_K + 1), ("max_new_tokens", MAX_NEW_TOKENS + 1),
                                          ("temperature", 101.0), ("temperature", float("inf"))])
def test_the_generate_request_schema_bounds_every_sampling_parameter(field, value):
    with pytest.raises(ValidationError, match=field):
        GenerateTextRequest.model_validate({"prompts": ["a"], field: value})
    schema = GenerateTextRequest.model_json_schema()["properties"]
    assert all("maximum" in str(schema[name]) for name in ("top_k", "max_new_tokens", "temperature"))


# ---- 4. image formats and pixel counts --------------------------------------------------------
def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def bomb_png() -> bytes:
    """A PNG of a few KB whose header declares one pixel more than MAX_PIXELS."""
    side = int(MAX_PIXELS ** 0.5)
    return encoded(Image.new("1", (side + 1, side)), "PNG")


def test_only_the_listed_formats_decode_and_a_bomb_is_refused_from_its_header():
    pre = ImagePreprocessor("image", "label", 8, 1, [0.5], [0.5], list(range(10)))
    digit = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"):
        assert pre.decode(encoded(digit, fmt)).shape == (8, 8, 1), fmt
    for fmt in ("PPM", "PCX", "TGA", "ICO"):
        with pytest.raises(BadInputError, match=r"not a readable image file \(PNG, JPEG, BMP, GIF, WebP, TIFF\)"):
            pre.decode(encoded(digit, fmt))
    side = int(MAX_PIXELS ** 0.5)
    with pytest.raises(BadInputError, match=rf"image of {side + 1}x{side} pixels; at most {MAX_PIXELS} are decoded"):
        pre.decode(bomb_png(), "id 3")


def test_a_bomb_or_an_unlisted_format_in_a_scoring_batch_is_that_rows_error(tmp_path):
    predictor = Predictor(image_checkpoint(tmp_path / "cnn"), where_column="id")
    digit = png_bytes(np.arange(64, dtype=np.uint8).reshape(8, 8))
    ppm = encoded(Image.new("L", (8, 8)), "PPM")
    out = predictor({"image": column(digit, bomb_png(), ppm), "id": np.array([1, 2, 3])})
    assert out["error"][0] is None and out["label"][0] in range(10)
    assert "(id 2): image of" in out["error"][1] and "not a readable image file" in out["error"][2]
    assert out["label"][1] is None and out["label"][2] is None

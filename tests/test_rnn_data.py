"""RNN family inputs: numeric sequences, wav features, character windows; readers and fitting on Ray Data."""
from __future__ import annotations

import io
from dataclasses import asdict

import numpy as np
import pytest
import scipy.io.wavfile

from distdl import data
from distdl.demo_data import write_sequences, write_speech, write_text
from distdl.preprocessors import BadInputError, audio, sequence, text
from distdl.preprocessors.sequence import SequencePreprocessor, SequencePreprocessSpec
from distdl.preprocessors.text import UNKNOWN, CharPreprocessor

PRE = SequencePreprocessor("sequence", "label", 2, [1.0, -1.0], [2.0, 0.5], ["a", "b"], 5)


def objects(*values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def test_numbers_and_vectors_become_normalized_ragged_steps():
    one = SequencePreprocessor("sequence", "label", 1, [0.0], [1.0], ["a"], 5)
    assert one.decode([1, 2, 3]).shape == (3, 1)
    vectors = objects(np.array([3.0, 0.0]), np.array([1.0, -1.5]))  # how parquet/JSON give list<list<float>>
    out = PRE({"sequence": objects(vectors, [[1.0, -1.0]]), "label": np.array(["b", "a"])})
    assert out["lengths"].tolist() == [2, 1] and out["y"].tolist() == [1, 0]
    np.testing.assert_allclose(out["x"][0], [[1.0, 2.0], [0.0, -1.0]])  # (value - mean) / std per feature
    assert out["x"][1].dtype == np.float32


@pytest.mark.parametrize("value, message", [
    ([], "has shape (0, 1)"),
    ([[1.0, 2.0]] * 6, "6 steps, more than max_length 5"),
    ([1.0, 2.0], "1 values per step; the model was fitted on 2"),
    ([[1.0, float("nan")]], "NaN or infinity"),
    ("1 2 3", "expected a list of numbers"),
    (objects([1.0, 2.0], [1.0]), "cannot decode sequence"),
])
def test_bad_sequences_are_errors_that_name_the_row(value, message):
    with pytest.raises(BadInputError, match="row 0 of its batch") as info:
        PRE({"sequence": objects(value)})
    assert message in str(info.value)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    scipy.io.wavfile.write(buf, rate, samples)
    return buf.getvalue()


def tone(hz: float, rate: int, seconds: float = 0.25) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)


def test_wav_encodings_read_as_the_same_samples():
    wave = tone(440, 8000)
    as_float = audio.read_wav(wav_bytes(wave.astype(np.float32), 8000), 8000)
    for encoded in ((wave * 32767).astype(np.int16), np.round(wave * 127 + 128).astype(np.uint8),
                    np.stack([wave, wave], axis=1).astype(np.float32)):
        np.testing.assert_allclose(audio.read_wav(wav_bytes(encoded, 8000), 8000), as_float, atol=0.01)
    resampled = audio.read_wav(wav_bytes(wave.astype(np.float32), 8000), 16000)
    assert len(resampled) == 2 * len(wave)


@pytest.mark.parametrize("hz", [300.0, 1000.0, 2500.0])
def test_a_tone_peaks_in_the_mel_band_around_its_frequency(hz):
    spec = audio.AudioSpec(sample_rate=8000, n_mels=24)
    frames = audio.features(audio.read_wav(wav_bytes(tone(hz, 16000).astype(np.float32), 16000), 8000), spec)
    assert frames.shape == (1 + (2000 - spec.frame_length) // spec.hop_length, 24)
    band = int(np.median(frames.argmax(axis=1)))
    filters = audio.mel_filters(24, spec.n_fft, 8000)  # (24, bins)
    bins = np.fft.rfftfreq(spec.n_fft, 1 / 8000)
    assert filters[band, np.abs(bins - hz).argmin()] > 0  # the tone's frequency lies inside the peak band
    mfcc = audio.features(tone(hz, 8000), audio.AudioSpec(sample_rate=8000, n_mels=24, features="mfcc", n_mfcc=13))
    assert mfcc.shape == (frames.shape[0], 13) and np.isfinite(mfcc).all()


def test_an_unreadable_wav_names_its_file():
    pre = SequencePreprocessor("audio", "label", 40, [0.0] * 40, [1.0] * 40, ["a"], 100, asdict(audio.AudioSpec()))
    with pytest.raises(BadInputError, match=r"cannot decode wav file .*\(file /data/x.wav\): Not a WAV file"):
        pre({"audio": objects(b"RIFF not really"), "path": np.array(["/data/x.wav"])})


CHARS = CharPreprocessor("text", [UNKNOWN, "\n", " ", "a", "b", "c"], 4, 6)


def test_windows_predict_every_next_character_once():
    batch = CHARS({"text": np.array(["abc ab", "", "cab", "ba"], dtype=object)})
    ids = CHARS.encode("abc ab\n\ncab\nba\n")
    assert max(batch["lengths"]) == 5 and batch["lengths"].tolist() == [len(w) for w in batch["x"]]
    assert np.concatenate([w[1:] for w in batch["x"]]).tolist() == ids[1:].tolist()
    assert [w[0] for w in batch["x"]] == [ids[i] for i in range(0, len(ids) - 1, 4)]
    assert CHARS.encode("abz").tolist() == [3, 4, 0]  # unseen in training -> id 0


@pytest.mark.parametrize("prompt, message", [
    ("", "is empty"), ("abcabca", "7 characters, more than max_length 6"),
    ("abd", "characters the training text did not: ['d']"), (3, "must be text"),
])
def test_bad_prompts_are_errors(prompt, message):
    with pytest.raises(BadInputError, match=r"prompt \(id 7\)") as info:
        CHARS.decode(prompt, "id 7")
    assert message in str(info.value)


def test_fitting_reads_classes_widths_and_vocabulary(ray_session, tmp_path):
    paths = write_sequences(tmp_path / "seq", rows=60, holdout=4)
    pre = sequence.fit(data.read(str(paths["train"])), "sequence", "label", SequencePreprocessSpec())
    assert pre.classes == ["sawtooth", "sine", "square", "triangle"] and pre.input_size == 1
    steps = np.concatenate(pre({"sequence": data.read(str(paths["train"])).to_pandas()["sequence"].to_numpy()})["x"])
    assert abs(steps.mean()) < 1e-4 and abs(steps.std() - 1) < 1e-3
    lines = write_text(tmp_path / "text", rows=50)["train"]
    chars = text.fit(data.read(str(lines)), "text", 16, 100)
    assert chars.vocab == [UNKNOWN, *sorted(set(lines.read_text()))]


def test_audio_folders_are_read_and_fitted(ray_session, tmp_path):
    folder = write_speech(tmp_path / "speech", per_class=3, holdout=0)["train"]
    assert data.infer_format(str(folder)) == "audio_folder"
    ds = data.read(str(folder))
    assert sorted(ds.columns()) == ["audio", "label", "path"]
    cfg = SequencePreprocessSpec(input="audio", audio=audio.AudioSpec(sample_rate=8000, features="mfcc", n_mels=24))
    pre = sequence.fit(ds, "audio", "label", cfg)
    assert pre.classes == ["down", "tone", "up", "warble"] and pre.input_size == 13
    batch = ds.take_batch(12, batch_format="numpy")
    out = pre(batch)
    assert len(set(out["lengths"].tolist())) > 1 and all(x.shape[1] == 13 for x in out["x"])

"""RNN family in-process (no Ray): padding parity, learning, generation, checkpoints, spec checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distdl import checkpoint, loop, models, spec as specmod
from distdl.collate import to_tensors
from distdl.demo_data import sentences
from distdl.models.rnn import RNNConfig
from distdl.predict import Predictor
from distdl.preprocessors.base import ragged
from distdl.preprocessors.sequence import SequencePreprocessor
from distdl.preprocessors.text import UNKNOWN, CharPreprocessor
from distdl.spec import SpecError, TrainSpec, to_dict
from distdl.tasks.classification import Classification
from distdl.tasks.language_model import LanguageModel, row_seed

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

CLASSIFIERS = {
    "lstm": RNNConfig(arch="lstm", hidden_size=12, pool="last"),
    "lstm-bi-mean": RNNConfig(arch="lstm", hidden_size=12, bidirectional=True, pool="mean"),
    "gru-bi-2layers": RNNConfig(arch="gru", hidden_size=12, bidirectional=True, num_layers=2, pool="last"),
    "conv1d": RNNConfig(arch="conv1d", hidden_size=12, num_layers=3, kernel_size=3),
}
SEQ_PRE = SequencePreprocessor("sequence", "label", 3, [0.0] * 3, [1.0] * 3, ["a", "b", "c", "d"], 64)



def seq_cfg(name: str) -> RNNConfig:
    return models.complete_config("rnn", CLASSIFIERS[name], SEQ_PRE)


def classifier(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build_model("rnn", seq_cfg(name))


def seq_batch(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random (T_i, 3) rows padded by the real collate path, labels from the row's mean sign."""
    rng = np.random.default_rng(seed)
    rows = [rng.normal(size=(n, 3)).astype(np.float32) for n in lengths]
    return {**to_tensors(ragged(rows)), "y": torch.tensor([int(r[:, 0].mean() > 0) + 2 * int(r[:, 1].mean() > 0) for r in rows])}


def steps(task, model, batch, train: dict, n: int) -> list[float]:
    """n training steps on one batch through the worker loop's own epoch function."""
    optimizer = loop.make_optimizer(model.parameters(), train)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return [loop.train_epoch(task, model, {"model": optimizer}, scaler, [batch], torch.device("cpu"), train, 1, 0, None)["train_loss"]
            for _ in range(n)]


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_a_padded_batch_gives_each_row_its_unpadded_output(name):
    model = classifier(name).eval()
    batch = seq_batch([9, 1, 4, 9, 2, 6])
    with torch.inference_mode():
        together = model(x=batch["x"], lengths=batch["lengths"])  # (6, classes)
        alone = [model(x=batch["x"][i:i + 1, :n], lengths=batch["lengths"][i:i + 1])
                 for i, n in enumerate(batch["lengths"].tolist())]
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_each_classifier_overfits_one_padded_batch(name):
    model, batch = classifier(name), seq_batch([5, 12, 3, 8] * 4, seed=1)
    losses = steps(Classification(SEQ_PRE), model, batch, to_dict(TrainSpec(lr=0.02)), 120)
    assert losses[-1] < 0.1 * losses[0]
    with torch.inference_mode():
        assert (model.eval()(x=batch["x"], lengths=batch["lengths"]).argmax(1) == batch["y"]).all()


@pytest.fixture(scope="module")
def chars() -> CharPreprocessor:
    return CharPreprocessor("text", [UNKNOWN, "\n", *sorted(set("".join(sentences(200, 0))))], 32, 100)


def lm_cfg(pre: CharPreprocessor, arch: str = "lstm") -> RNNConfig:
    return models.complete_config("rnn", RNNConfig(arch=arch, task="language_model", hidden_size=32, embed_dim=16), pre)


def char_lm(pre: CharPreprocessor, arch: str = "lstm") -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build_model("rnn", lm_cfg(pre, arch))


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_the_language_model_loss_falls_on_text_windows(chars, arch):
    batch = to_tensors(chars({"text": np.array(sentences(40, 1), dtype=object)}))
    losses = steps(LanguageModel(chars), char_lm(chars, arch), batch, to_dict(TrainSpec(lr=0.01)), 40)
    assert losses[-1] < 0.5 * losses[0] and losses[-1] < losses[-2] * 1.05


def test_padding_past_a_window_does_not_change_its_loss(chars):
    """A short window padded into a batch gets the same summed loss as on its own."""
    model, task = char_lm(chars).eval(), LanguageModel(chars)
    windows = [chars.encode("the cat sees"), chars.encode("a dog")]
    with torch.inference_mode():
        together, tokens = task.nll(model, to_tensors(ragged(windows)), "sum")
        alone = [task.nll(model, to_tensors(ragged([w])), "sum")[0] for w in windows]
    assert tokens == (len(windows[0]) - 1) + (len(windows[1]) - 1)
    torch.testing.assert_close(together, sum(alone), rtol=1e-5, atol=1e-5)


def generate(model, pre, prompts: list[str], **options) -> list[str]:
    features = to_tensors(pre.features([pre.decode(p) for p in prompts]))
    return LanguageModel(pre).predict(model.eval(), features, **options)["generated"]


def test_generation_is_deterministic_with_a_seed_and_independent_of_the_batch(chars):
    model = char_lm(chars)
    first = generate(model, chars, ["the cat", "a dog sees the"], max_new_tokens=30, seed=7)
    assert first == generate(model, chars, ["the cat", "a dog sees the"], max_new_tokens=30, seed=7)
    assert generate(model, chars, ["a dog sees the"], max_new_tokens=30, seed=7) == first[1:]
    assert generate(model, chars, ["the cat"], max_new_tokens=30, seed=8) != first[:1]
    # each prompt draws its own random numbers (a trained model would otherwise continue
    # "the cat" and "a dog" identically: both are followed by the same grammar)
    assert row_seed(7, [3, 4]) != row_seed(7, [3, 5]) and row_seed(7, [3, 4]) == row_seed(7, [3, 4])
    assert all(len(text) == 30 and set(text) <= set(chars.vocab) for text in first)


def test_greedy_and_top_1_agree(chars):
    model = char_lm(chars)
    greedy = generate(model, chars, ["the robot"], max_new_tokens=20, temperature=0.0)
    assert generate(model, chars, ["the robot"], max_new_tokens=20, top_k=1, seed=3) == greedy


@pytest.mark.parametrize("kind", ["classification", "language_model"])
def test_checkpoint_round_trip_gives_identical_outputs(chars, tmp_path, kind):
    if kind == "classification":
        batch = seq_batch([4, 7, 2])
        cfg, pre, inputs = seq_cfg("gru-bi-2layers"), SEQ_PRE, {"x": batch["x"], "lengths": batch["lengths"]}
    else:
        cfg, pre, inputs = lm_cfg(chars), chars, {"x": torch.from_numpy(chars.encode("the cat"))[None]}
    torch.manual_seed(0)
    model = models.build_model("rnn", cfg).eval()
    path = checkpoint.save(str(tmp_path / kind), model, "rnn", cfg, pre, {}, {"epoch": 0})
    loaded, loaded_pre, meta = checkpoint.load_model(path)
    with torch.inference_mode():
        assert torch.equal(model(**inputs), loaded(**inputs))
    assert loaded_pre == pre and meta["family"] == "rnn" and meta["args"]["task"] == kind


def test_predictor_options_must_belong_to_the_task(tmp_path):
    cfg = seq_cfg("lstm")
    path = checkpoint.save(str(tmp_path / "seq"), models.build_model("rnn", cfg), "rnn", cfg, SEQ_PRE, {}, {"epoch": 0})
    with pytest.raises(ValueError, match=r"\['temperature'\] do not apply to a classification model"):
        Predictor(path, temperature=0.5)


def spec_problems(model: dict, preprocess: dict | None = None) -> dict[str, str]:
    raw = {"name": "r", "data": {"train": "x.parquet"}, "model": {"family": "rnn", **model}}
    if preprocess:
        raw["preprocess"] = preprocess
    with pytest.raises(SpecError) as info:
        specmod.parse(raw)
    return dict(info.value.problems)


def test_spec_errors_name_the_rnn_fields():
    found = spec_problems({"task": "language_model", "arch": "conv1d", "kernel_size": 4, "hiden_size": 8},
                          {"audio": {"n_mfcc": 50}, "block_size": 0})
    assert found["model.arch"] == "a language_model needs 'lstm' or 'gru'"
    assert found["model.kernel_size"] == "must be odd and >= 1, got 4"
    assert found["model.hiden_size"] == "unknown key; did you mean 'hidden_size'?"
    assert found["preprocess.audio.n_mfcc"] == "must be in [1, n_mels], got 50"
    assert found["preprocess.block_size"] == "must be >= 1, got 0"
    assert "must not read ahead" in spec_problems({"task": "language_model", "bidirectional": True})["model.bidirectional"]


@pytest.mark.parametrize("model, preprocess, column, best", [
    ({}, {}, "sequence", ("val_accuracy", "max")),
    ({"arch": "conv1d"}, {"input": "audio"}, "audio", ("val_accuracy", "max")),
    ({"task": "language_model"}, {}, "text", ("val_perplexity", "min")),
])
def test_rnn_defaults_follow_the_task_and_input(model, preprocess, column, best):
    spec = specmod.parse({"name": "r", "data": {"train": "x"}, "model": {"family": "rnn", **model}, "preprocess": preprocess})
    assert spec.data.input_column == column
    assert (spec.checkpoint.best_metric, spec.checkpoint.best_mode) == best


@pytest.mark.parametrize("job", ["rnn_sequences", "rnn_lm", "speech_tones"])
def test_the_example_jobs_are_valid_specs(job):
    spec = specmod.load(f"jobs/{job}.yaml")
    assert spec.model_family == "rnn" and spec.data.input_column in ("sequence", "text", "audio")


def test_demo_data_offers_every_writer():
    from distdl.cli import run
    from distdl.demo_data import WRITERS

    assert sorted(run.DEMO_KINDS) == sorted(WRITERS)

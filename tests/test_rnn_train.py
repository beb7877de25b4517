"""RNN family end to end on the session's local Ray: 2-worker DDP parity for the recurrent step,
a character LM that beats a unigram model, and scoring/generation with per-row errors."""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from distdl import checkpoint, cli, score, spec as specmod, train
from distdl.collate import to_tensors
from distdl.demo_data import sentences, waveform_rows
from distdl.predict import Predictor
from replay import assert_same_parameters, replay

ONE_THREAD = {"cpus_per_worker": 1, "threads_per_worker": 1}  # tiny models: see test_rnn_models.one_thread


def write_jsonl(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


@pytest.fixture(scope="module")
def waves(tmp_path_factory):
    """48 training and 16 validation waveforms of 16..64 steps (jsonl lists of floats)."""
    root = tmp_path_factory.mktemp("waves")
    signals, labels = waveform_rows(64, seed=3)
    rows = [{"id": i, "sequence": s.tolist(), "label": label} for i, (s, label) in enumerate(zip(signals, labels))]
    write_jsonl(root / "train.jsonl", rows[:48])
    write_jsonl(root / "val.jsonl", rows[48:])
    return root


@pytest.fixture(scope="module")
def gru_run(ray_session, waves, tmp_path_factory):
    """Global batch 48 = all training rows: one step per epoch, split over 2 DDP workers."""
    spec = specmod.parse({
        "name": "gru2", "storage": str(tmp_path_factory.mktemp("runs")),
        "data": {"train": str(waves / "train.jsonl"), "val": str(waves / "val.jsonl")},
        "model": {"family": "rnn", "arch": "gru", "hidden_size": 8, "bidirectional": True, "pool": "mean"},
        "train": {"epochs": 2, "batch_size": 48, "optimizer": "sgd", "lr": 0.5, "schedule": "constant", "shuffle": False},
        "scaling": {"num_workers": 2, **ONE_THREAD}, "failure": {"max_failures": 0},
    })
    return spec, train.run(spec)


def test_two_workers_take_the_steps_of_one_process(gru_run, waves):
    """2 x 24 rows with DDP-averaged gradients must give the parameters of the same two steps
    taken by the worker loop in this process over all 48 rows: sharding, padding per shard
    and gradient averaging of the packed-sequence step are all right."""
    spec, summary = gru_run
    history = [json.loads(line) for line in open(f"{spec.run_dir}/{checkpoint.METRICS}")]
    assert [r["train_samples"] for r in history] == [48, 48] and "val_accuracy" in history[-1]
    trained, pre, meta = checkpoint.load_model(checkpoint.latest(spec.run_dir))
    rows = [json.loads(line) for line in open(waves / "train.jsonl")]
    batch = to_tensors(pre({"sequence": objects([r["sequence"] for r in rows]), "label": np.array([r["label"] for r in rows])}))
    assert_same_parameters(trained, replay(spec, pre, meta, batch))


def test_bad_sequences_score_as_errors_and_good_ones_as_the_model_says(gru_run, waves):
    spec, summary = gru_run
    rows = [json.loads(line) for line in open(waves / "val.jsonl")][:4]
    good = [r["sequence"] for r in rows]
    bad = [[], [[1.0, 2.0]] * 3, [float("nan")] * 5, "0.1 0.2"]
    out = Predictor(summary.checkpoint, passthrough=["id"], where_column="id")(
        {"id": np.arange(8), "sequence": objects([good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3], good[3]])})
    errors = {i: e for i, e in enumerate(out["error"]) if e}
    assert sorted(errors) == [1, 3, 4, 6] and all(f"id {i}" in e for i, e in errors.items())
    assert "2 values per step" in errors[3] and "NaN" in errors[4]
    model, pre, _ = checkpoint.load_model(summary.checkpoint)
    with torch.inference_mode():
        probs = torch.softmax(model(**to_tensors(pre.features([pre.decode(g) for g in good]))), dim=1)
    assert [out["label"][i] for i in (0, 2, 5, 7)] == [pre.classes[j] for j in probs.argmax(1)]
    np.testing.assert_allclose([out["probability"][i] for i in (0, 2, 5, 7)], probs.max(1).values, rtol=1e-5)
    assert all(out["label"][i] is None for i in errors)


@pytest.fixture(scope="module")
def lm_run(ray_session, tmp_path_factory):
    """A character LSTM on 600 sentences of the demo grammar, validated on 100 others."""
    root = tmp_path_factory.mktemp("lm")
    (root / "train.txt").write_text("".join(f"{line}\n" for line in sentences(600, seed=0)))
    (root / "val.txt").write_text("".join(f"{line}\n" for line in sentences(100, seed=1)))
    spec = specmod.parse({
        "name": "lm", "storage": str(root / "runs"),
        "data": {"train": str(root / "train.txt"), "val": str(root / "val.txt")},
        "model": {"family": "rnn", "task": "language_model", "arch": "lstm", "hidden_size": 64, "embed_dim": 16},
        "preprocess": {"block_size": 32, "max_length": 64},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "schedule": "constant"},
        "scaling": {"num_workers": 1, **ONE_THREAD}, "failure": {"max_failures": 0},
    })
    return root, spec, train.run(spec)


def unigram_perplexity(train_text: str, val_text: str) -> float:
    """Perplexity of predicting each validation character by its training frequency alone."""
    counts, total = Counter(train_text), len(train_text)
    return math.exp(-sum(math.log(counts[c] / total) for c in val_text[1:]) / (len(val_text) - 1))


def test_the_language_model_beats_a_unigram_model(lm_run):
    root, spec, summary = lm_run
    history = [json.loads(line) for line in open(f"{spec.run_dir}/{checkpoint.METRICS}")]
    baseline = unigram_perplexity((root / "train.txt").read_text(), (root / "val.txt").read_text())
    assert summary.best_metric == "val_perplexity" and summary.best_value == min(r["val_perplexity"] for r in history)
    assert history[-1]["val_perplexity"] < history[0]["val_perplexity"]
    assert summary.best_value < 0.25 * baseline, (summary.best_value, baseline)  # ~18 for this grammar
    # every next character once, but the first of each Ray Data batch (its predecessor is in the batch before)
    assert 0 < (root / "train.txt").stat().st_size - history[0]["train_samples"] <= 16


def test_scored_prompts_generate_deterministic_text_and_bad_prompts_are_errors(lm_run, tmp_path, capsys):
    root, spec, summary = lm_run
    prompts = ["the cat", "", "a dog chases", "the #1 robot", "my sister " * 10, "our teacher"]
    write_jsonl(root / "prompts.jsonl", [{"id": i, "text": p} for i, p in enumerate(prompts)])
    options = {"max_new_tokens": 24, "temperature": 0.8, "seed": 1}
    done = score.score(summary.checkpoint, str(root / "prompts.jsonl"), str(tmp_path / "out"),
                       score.Resources(batch_size=4, max_actors=1), options=options)
    assert (done.rows_scored, done.rows_with_errors) == (3, 3)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    assert "is empty" in rows[1]["error"] and "['#', '1']" in rows[3]["error"] and "max_length 64" in rows[4]["error"]
    assert all(rows[i]["generated"] is None for i in (1, 3, 4))
    direct = Predictor(summary.checkpoint, **options)({"text": np.array(prompts[::-1], dtype=object)})["generated"][::-1]
    for i in (0, 2, 5):  # the same text in a Ray actor and here, in another batch order
        assert rows[i]["error"] is None and rows[i]["generated"] == direct[i] and len(direct[i]) == 24
    assert cli.main(["generate", "--checkpoint", summary.checkpoint, "--prompt", "the cat", "--max-new-tokens", "24",
                     "--temperature", "0.8", "--seed", "1"]) == 0
    assert capsys.readouterr().out == "the cat" + direct[0] + "\n"

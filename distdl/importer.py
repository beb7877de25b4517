"""``distdl import``: a local Hugging Face model folder -> a distdl checkpoint of sentence embeddings.

An embedding model needs no training, so there is no job spec, data or Ray here: the folder's
tokenizer becomes the checkpoint's preprocessor, its encoder (mean pooling on top) the model,
written with checkpoint.save like any trained epoch. ``distdl score`` (and serving) then load
it as they load every checkpoint, without the folder.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from distdl import checkpoint, models
from distdl.models.transformer import TransformerConfig
from distdl.preprocessors import tokenized
from distdl.specbase import SpecError, from_dict

FAMILY = "transformer"


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def folder_max_length(model_dir: str) -> Optional[int]:
    """The longest input the folder is configured for, as its own library would use it:
    sentence-transformers' ``max_seq_length`` (sentence_bert_config.json) when present, else the
    model's position limit, lowered to the tokenizer's ``model_max_length`` where that is smaller
    (RoBERTa counts 514 positions but takes 512 tokens). None: the folder says nothing."""
    folder = Path(model_dir)
    configured = _json(folder / "sentence_bert_config.json").get("max_seq_length")
    if configured:
        return int(configured)
    limits = [_json(folder / "config.json").get("max_position_embeddings"),
              _json(folder / "tokenizer_config.json").get("model_max_length")]
    limits = [int(n) for n in limits if isinstance(n, (int, float)) and n > 0]
    return min(limits) if limits else None


def import_embedding(model_dir: str, output: str, max_length: Optional[int] = None, truncate: bool = True,
                     normalize: bool = True, input_column: str = "text") -> str:
    """Write the embedding checkpoint of ``model_dir`` to ``output``; returns ``output``.
    ``max_length`` None: the folder's own (folder_max_length), so long texts embed as the model's
    library embeds them. The options are validated like the job spec's ``model`` / ``preprocess`` fields."""
    problems: list[tuple[str, str]] = []
    if max_length is None and Path(model_dir).is_dir():  # a missing folder is reported as model.pretrained
        max_length = folder_max_length(model_dir)
        if max_length is None:
            problems.append(("preprocess.max_length", f"{model_dir} states no maximum sequence length "
                             "(sentence_bert_config.json max_seq_length, config.json max_position_embeddings): "
                             "pass --max-length"))
    model_raw = {"task": "embed", "pretrained": model_dir, "normalize": normalize}
    cfg = from_dict(TransformerConfig, model_raw, "model", problems)
    pre_raw = {"truncate": truncate, **({"max_length": max_length} if max_length is not None else {})}
    pre_cfg = from_dict(tokenized.TextPreprocessSpec, pre_raw, "preprocess", problems)
    if problems:
        raise SpecError(problems)
    pre = tokenized.TextPreprocessor(input_column, "", pre_cfg.max_length, pre_cfg.truncate,
                                tokenized.tokenizer_from_dir(model_dir), classes=[])
    cfg = models.complete_config(FAMILY, cfg, pre)
    torch.manual_seed(0)  # nothing random should remain; seeded all the same
    model = models.build_model(FAMILY, cfg)
    models.init_weights(FAMILY, model, cfg)
    # What produced this checkpoint, in the job spec's terms (there was no data and no training).
    spec = {"imported_from": str(Path(model_dir).absolute()), "model": {"family": FAMILY, **model_raw},
            "preprocess": asdict(pre_cfg)}
    return checkpoint.save(output, model.eval(), FAMILY, cfg, pre, spec, {"epoch": 0, "history": [], "best": None})

"""``distdl import``: a local Hugging Face model folder -> a distdl checkpoint of sentence embeddings.

An embedding model needs no training, so there is no job spec, data or Ray here: the folder's
tokenizer becomes the checkpoint's preprocessor, its encoder (mean pooling on top) the model,
written with checkpoint.save like any trained epoch. ``distdl score`` (and serving) then load
it as they load every checkpoint, without the folder.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from distdl import checkpoint, models
from distdl.models.transformer import TransformerConfig
from distdl.preprocessors import tokenized
from distdl.specbase import SpecError, from_dict

FAMILY = "transformer"


def import_embedding(model_dir: str, output: str, max_length: int = 128, truncate: bool = True,
                     normalize: bool = True, input_column: str = "text") -> str:
    """Write the embedding checkpoint of ``model_dir`` to ``output``; returns ``output``.
    The options are validated like the job spec's ``model`` / ``preprocess`` fields."""
    problems: list[tuple[str, str]] = []
    model_raw = {"task": "embed", "pretrained": model_dir, "normalize": normalize}
    cfg = from_dict(TransformerConfig, model_raw, "model", problems)
    pre_cfg = from_dict(tokenized.TextPreprocessSpec, {"max_length": max_length, "truncate": truncate}, "preprocess", problems)
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

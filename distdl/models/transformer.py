"""Transformer family: Hugging Face ``transformers`` encoders for text classification and sentence embeddings.

A model comes from a LOCAL Hugging Face folder (``pretrained``: config.json + safetensors +
tokenizer files) or is built from a config (a small BERT sized by the fields below, e.g. for
tests). ``complete`` stores the Hugging Face config in the model args, so a checkpoint
rebuilds the model without the folder; the folder's weights are read once, when a fresh run
starts (``load_pretrained``). Nothing here reaches the network (distdl/__init__.py sets the
Hugging Face offline switches; every load is ``local_files_only``).

``transformers`` is imported only where a model is built or loaded: importing it takes 0.7 s,
which every CLI call, scoring actor and serving replica of the other families would pay,
since distdl.models names every family.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from distdl.preprocessors import tokenized
from distdl.specbase import check, knob

if TYPE_CHECKING:
    import transformers

# A from-config BERT takes these sizes unless the spec sets them: small enough for CPU tests.
TINY_BERT = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128, "dropout": 0.1}


@dataclass
class TransformerConfig:
    task: Literal["classify", "embed"] = knob("classify", help="`classify` (trainable) or `embed` (made by "
                                                               "`distdl import`, never trained)")
    pretrained: Optional[str] = knob(None, help="local Hugging Face model folder (config.json, safetensors, "
                                                "tokenizer); null: a BERT built from the sizes below")
    num_classes: Optional[int] = knob(None, help="classify: classes; null: from the data")
    hidden_size: Optional[int] = knob(None, help=f"from-config BERT only; null: {TINY_BERT['hidden_size']}")
    num_layers: Optional[int] = knob(None, help=f"from-config BERT only; null: {TINY_BERT['num_layers']}")
    num_heads: Optional[int] = knob(None, help=f"from-config BERT only; null: {TINY_BERT['num_heads']}")
    intermediate_size: Optional[int] = knob(None, help="from-config BERT only: feed-forward width; null: "
                                                       f"{TINY_BERT['intermediate_size']}")
    dropout: Optional[float] = knob(None, help="from-config BERT only: hidden and attention dropout; null: "
                                               f"{TINY_BERT['dropout']}")
    normalize: bool = knob(True, help="embed: L2-normalize the mean-pooled vector (a dot product is the cosine)")
    hf_config: Optional[dict] = knob(None, help="filled in by distdl (the folder's config.json, or the BERT sizes) "
                                                "so the checkpoint rebuilds the model without the folder; leave unset")

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.pretrained is not None and self.hf_config is None:  # a completed config no longer reads the folder
            yield from tokenized.local_dir_problems(self.pretrained, "pretrained")
            folder = Path(self.pretrained)
            if folder.is_dir():
                yield from check((folder / "config.json").is_file(), "pretrained", f"{folder} has no config.json")
                yield from check(any(folder.glob("*.safetensors")), "pretrained",
                                 f"{folder} has no *.safetensors weights (pickled .bin weights are never loaded)")
            for name in TINY_BERT:
                yield from check(getattr(self, name) is None, name, "sizes a from-config model; remove it or "
                                 "model.pretrained")
        sizes = {name: getattr(self, name) if getattr(self, name) is not None else TINY_BERT[name] for name in TINY_BERT}
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            yield from check(sizes[name] >= 1, name, f"must be >= 1, got {sizes[name]}")
        yield from check(sizes["num_heads"] < 1 or sizes["hidden_size"] % sizes["num_heads"] == 0, "hidden_size",
                         f"must be divisible by num_heads ({sizes['num_heads']}), got {sizes['hidden_size']}")
        yield from check(0.0 <= sizes["dropout"] < 1.0, "dropout", f"must be in [0, 1), got {sizes['dropout']}")
        yield from check(self.num_classes is None or self.num_classes >= 2, "num_classes",
                         f"must be >= 2, got {self.num_classes}")
        yield from check(self.task == "classify" or self.pretrained is not None, "pretrained",
                         "task 'embed' needs a pretrained model folder")

    def size(self, name: str) -> int | float:
        value = getattr(self, name)
        return TINY_BERT[name] if value is None else value


class Classifier(nn.Module):
    """AutoModelForSequenceClassification whose forward returns the logits tensor."""

    def __init__(self, config: transformers.PretrainedConfig):
        import transformers

        super().__init__()
        self.net = transformers.AutoModelForSequenceClassification.from_config(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, T) each
        return self.net(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, classes)


class MeanPooled(nn.Module):
    """Sentence embeddings: the encoder's last hidden states averaged over the real (unmasked) tokens."""

    def __init__(self, config: transformers.PretrainedConfig, normalize: bool):
        import transformers

        super().__init__()
        self.net = transformers.AutoModel.from_config(config)
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, T) each
        hidden = self.net(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1): padding adds nothing
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def _bert_config(cfg: TransformerConfig, pre: tokenized.TextPreprocessor) -> dict:
    """A from-config BERT sized by the spec; positions cover max_length, the vocabulary the tokenizer's.
    pad_token_id stays BERT's 0, where fitted vocabularies and BERT tokenizers put [PAD]."""
    dropout = cfg.size("dropout")
    return {"model_type": "bert", "vocab_size": pre.vocab_size, "hidden_size": cfg.size("hidden_size"),
            "num_hidden_layers": cfg.size("num_layers"), "num_attention_heads": cfg.size("num_heads"),
            "intermediate_size": cfg.size("intermediate_size"), "hidden_dropout_prob": dropout,
            "attention_probs_dropout_prob": dropout, "max_position_embeddings": pre.max_length}


def complete(cfg: TransformerConfig, pre: tokenized.TextPreprocessor) -> TransformerConfig:
    """Fill the Hugging Face config (folder or sizes) and the class count; check the tokenizer fits the model."""
    pretrained = str(Path(cfg.pretrained).absolute()) if cfg.pretrained else None  # workers run elsewhere
    hf = cfg.hf_config or (json.loads((Path(pretrained) / "config.json").read_text()) if pretrained
                           else _bert_config(cfg, pre))
    if pre.vocab_size > hf["vocab_size"]:
        raise ValueError(f"the tokenizer has {pre.vocab_size} tokens but the model's vocabulary has only "
                         f"{hf['vocab_size']}: use the model's own tokenizer (preprocess.tokenizer: null)")
    if pre.max_length > hf.get("max_position_embeddings", pre.max_length):
        raise ValueError(f"preprocess.max_length {pre.max_length} is longer than the model's "
                         f"{hf['max_position_embeddings']} positions")
    classes = len(pre.classes) if cfg.task == "classify" else None
    return replace(cfg, pretrained=pretrained, hf_config=hf, num_classes=cfg.num_classes or classes)


def build(cfg: TransformerConfig) -> nn.Module:
    if cfg.hf_config is None or (cfg.task == "classify" and cfg.num_classes is None):
        raise ValueError("TransformerConfig needs hf_config and num_classes resolved (complete()) before build()")
    import transformers

    config = transformers.AutoConfig.for_model(**cfg.hf_config)
    if cfg.task == "embed":
        return MeanPooled(config, cfg.normalize)
    config.num_labels = cfg.num_classes
    return Classifier(config)


def load_pretrained(model: nn.Module, cfg: TransformerConfig) -> None:
    """Fresh runs: the folder's encoder weights (safetensors only); a classification head stays seeded-random."""
    if cfg.pretrained:
        import transformers

        transformers.utils.logging.disable_progress_bar()  # one "Loading weights" bar per worker is noise
        source = transformers.AutoModel.from_pretrained(cfg.pretrained, local_files_only=True, use_safetensors=True)
        model.net.base_model.load_state_dict(source.state_dict())


def fit_preprocessor(ds, data, pre_cfg: tokenized.TextPreprocessSpec, cfg: TransformerConfig) -> tokenized.TextPreprocessor:
    return tokenized.fit(ds, data.input_column, data.label_column, pre_cfg, pre_cfg.tokenizer or cfg.pretrained)


def augmentations(pre_cfg: tokenized.TextPreprocessSpec) -> list:
    return []


def task(cfg: TransformerConfig) -> str:
    return {"classify": "classification", "embed": "embedding"}[cfg.task]

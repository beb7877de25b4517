"""Preprocessors by kind; each checkpoint's preprocessor.json names its kind."""
from __future__ import annotations

import json
from typing import Any

from distdl.preprocessors.base import BadInputError
from distdl.preprocessors.image import ImagePreprocessor
from distdl.preprocessors.sequence import SequencePreprocessor
from distdl.preprocessors.text import CharPreprocessor
from distdl.preprocessors.tokenized import TextPreprocessor

KINDS: dict[str, type] = {
    "image": ImagePreprocessor,
    "sequence": SequencePreprocessor,
    "chars": CharPreprocessor,
    "text": TextPreprocessor,
}


def from_json(text: str) -> Any:
    """The preprocessor saved by ``to_json`` (plain JSON; nothing is unpickled)."""
    state = json.loads(text)
    kind = state.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown preprocessor kind {kind!r}; this distdl knows {sorted(KINDS)}")
    return KINDS[kind].from_state(state)


__all__ = ["BadInputError", "KINDS", "from_json"]

"""mkdocs hook: ``<!-- spec: KEY -->`` in a page becomes the generated spec table for KEY.

KEY is a key of ``distdl.spec_reference.tables()``: job, data, train, scaling, checkpoint,
failure, serve, score, model.FAMILY, preprocess.FAMILY. An unknown key fails the build.
"""
from __future__ import annotations

import functools
import re
from typing import Any

from mkdocs.exceptions import PluginError

from distdl import spec_reference

MARKER = re.compile(r"<!-- spec: ([\w.]+) -->")


@functools.cache
def _tables() -> dict[str, list[spec_reference.Row]]:
    return spec_reference.tables()


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    def table(match: re.Match) -> str:
        key = match.group(1)
        if key not in _tables():
            raise PluginError(f"{page.file.src_path}: no spec table {key!r}; known: {', '.join(_tables())}")
        return spec_reference.markdown(_tables()[key])

    return MARKER.sub(table, markdown)

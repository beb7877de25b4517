"""The docs agree with the code: every spec field has help, the built site lists every field
with its type and default, links resolve, and the pages describe the project as it is."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import typing
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

from distdl import models, spec, spec_reference
from distdl.specbase import field_help

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
TEXTS = [ROOT / "README.md", *PAGES]


def spec_classes() -> dict[str, type]:
    """Every dataclass a job spec is parsed into, by YAML prefix, nested sections included."""
    found = {"job": spec.JobSpec, **spec.SECTIONS}
    for name, family in models.FAMILIES.items():
        found[f"model ({name})"], found[f"preprocess ({name})"] = family.config, family.preprocess
    for prefix, cls in list(found.items()):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]) and hints[f.name] not in found.values():
                found[f"{prefix}.{f.name}"] = hints[f.name]
    return found


@pytest.mark.parametrize("prefix, cls", spec_classes().items(), ids=lambda v: getattr(v, "__name__", v))
def test_every_spec_field_has_help(prefix, cls):
    missing = [name for name, text in field_help(cls).items() if not text.strip()]
    assert not missing, f"{cls.__name__} fields without help (use specbase.knob): {missing}"


def leaf_paths(cls: type, prefix: str) -> list[str]:
    """The YAML path of every field a user sets in ``cls``, nested sections expanded."""
    hints = typing.get_type_hints(cls)
    return [path for name in field_help(cls)
            for path in (leaf_paths(hints[name], f"{prefix}.{name}") if dataclasses.is_dataclass(hints[name])
                         else [f"{prefix}.{name}"])]


def test_the_reference_lists_every_field():
    tables = spec_reference.tables()
    sources = {key: (cls, key) for key, cls in spec.SECTIONS.items()}
    for name, family in models.FAMILIES.items():
        sources[f"model.{name}"], sources[f"preprocess.{name}"] = (family.config, "model"), (family.preprocess, "preprocess")
    assert set(tables) == {"job", *sources}
    for key, (cls, prefix) in sources.items():
        assert [r.field for r in tables[key]] == leaf_paths(cls, prefix), key
    assert [r.field for r in tables["job"]] == ["name", "model.family", "storage"]
    rows = {r.field: r for table in tables.values() for r in table}
    assert rows["train.lr"][1:3] == ("float", "0.001")
    assert rows["data.train"].default == "required"
    assert rows["preprocess.audio.n_mels"].default == "40"
    assert rows["scaling.num_workers"].type == "`auto`, int or `{min, max}`"
    assert rows["model.family"].default == spec.DEFAULT_FAMILY


class TableRows(HTMLParser):
    """Text of each table row's cells, from every <tr> of a page."""

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[str, ...]] = []
        self._cells: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self._cells = []
        elif tag == "td" and self._cells is not None:
            self._cells.append("")

    def handle_endtag(self, tag):
        if tag == "tr" and self._cells is not None:
            self.rows.append(tuple(cell.strip() for cell in self._cells))
            self._cells = None

    def handle_data(self, data):
        if self._cells:
            self._cells[-1] += data


def test_the_built_site_lists_every_field_with_its_default(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    built = set()
    for page in site.rglob("index.html"):
        parser = TableRows()
        parser.feed(page.read_text())
        built.update(row[:3] for row in parser.rows)
    for key, table in spec_reference.tables().items():
        for r in table:
            assert (r.field, r.type.replace("`", ""), r.default) in built, f"{key}: {r} is not in the built docs"


def test_an_unknown_table_fails_the_build():
    path = ROOT / "docs" / "hooks" / "spec_tables.py"
    hook_spec = importlib.util.spec_from_file_location("spec_tables", path)
    hook = importlib.util.module_from_spec(hook_spec)
    hook_spec.loader.exec_module(hook)
    page = SimpleNamespace(file=SimpleNamespace(src_path="x.md"))
    assert "`train.lr`" in hook.on_page_markdown("<!-- spec: train -->", page=page)
    with pytest.raises(Exception, match="no spec table 'trian'"):
        hook.on_page_markdown("<!-- spec: trian -->", page=page)


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files(path):
    text = CODE.sub("", path.read_text())
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]
    broken = [t for t in targets if not (path.parent / t.partition("#")[0]).exists()]
    assert not broken, f"{path.name}: links to missing files: {broken}"


# Docs describe the project as it is: no work-log entries, dated history or machine moods.
HISTORY = re.compile(r"\bstop \d+\b|\bthis stop\b|\bsessions?\b|\b20\d\d-\d\d-\d\d\b|\bload average", re.I)


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_carry_no_history(path):
    found = [m.group(0) for m in HISTORY.finditer(path.read_text())]
    assert not found, f"{path.name} mentions {found}"

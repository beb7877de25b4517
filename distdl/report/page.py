"""A whole HTML document around already-rendered sections: inline CSS, no script, no external URL."""
from __future__ import annotations

import html

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1150px;
       padding: 1em 2em; color: #1f2328; background: #fff; }
h1 { border-bottom: 2px solid #0969da; padding-bottom: .3em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
nav { font-size: .9em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: right; vertical-align: top; }
th { background: #f6f8fa; }
td.text, th.text { text-align: left; }
img.plot { max-width: 100%; margin: .3em .6em .3em 0; }
img.thumb { image-rendering: pixelated; min-width: 96px; max-width: 160px; height: auto; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
.note { color: #59636e; font-style: italic; }
.grid { display: flex; flex-wrap: wrap; gap: .5em; }
"""


def anchor(heading: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in heading.lower()).strip("-")


def render(title: str, sections: list[tuple[str, str]]) -> str:
    """The document: a title, a table of contents, then each (heading text, inner HTML) section.
    Headings are escaped here; the inner HTML must already be."""
    nav = " ".join(f'<a href="#{anchor(h)}">{html.escape(h)}</a>' for h, _ in sections)
    body = "\n".join(f'<section id="{anchor(h)}">\n<h2>{html.escape(h)}</h2>\n{inner}\n</section>'
                     for h, inner in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n<nav>{nav}</nav>\n{body}\n</body>\n</html>\n")

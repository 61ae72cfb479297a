"""Small HTML building blocks: every string is escaped unless explicitly marked :class:`Raw`.

Hand-written rather than a template engine (jinja2 is not a dependency) because the report is a
handful of tables and figures; the one rule that matters is that text is always escaped.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

from medtl.formatting import format_duration
from medtl.formatting import format_interval as fci  # noqa: F401  (the report's short names)
from medtl.formatting import format_number as fnum  # noqa: F401
from medtl.formatting import format_percent as fpct  # noqa: F401

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;
background:#f6f7f9;line-height:1.45}
main{max-width:1000px;margin:0 auto;padding:24px;background:#fff}
h1{font-size:1.7em;margin:0 0 .2em}h2{border-bottom:2px solid #dde;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em}.meta{color:#555;font-size:.92em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.9em}
th,td{border:1px solid #ccd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.5em 0;border:1px solid #eee}
.headline{font-size:1.08em;background:#eef6ee;border-left:5px solid #3a8a3a;padding:.6em 1em}
.flag{background:#fff3e0;border-left:5px solid #e67e00;padding:.4em .8em;margin:.4em 0}
.error{background:#fdecea;border-left:5px solid #c0392b;padding:.4em .8em;margin:.4em 0}
.note{color:#555;font-style:italic}.todo{color:#b03a2e;font-weight:600}
.ok{color:#2e7d32}nav a{margin-right:.8em;font-size:.9em}
pre{background:#f4f4f4;padding:.6em;overflow-x:auto;font-size:.85em;white-space:pre-wrap}
footer{margin-top:3em;color:#666;font-size:.85em;border-top:1px solid #ddd;padding-top:.6em}
"""


class Raw(str):
    """A string that is already safe HTML (built by these helpers); never wrap user text in it."""


def esc(x: Any) -> str:
    """Escape ``x`` for HTML unless it is :class:`Raw`."""
    return x if isinstance(x, Raw) else html.escape(str(x), quote=True)


def join(parts: Iterable[Any]) -> Raw:
    return Raw("".join(esc(p) for p in parts))


def tag(name: str, content: Any = "", **attrs: Any) -> Raw:
    """``<name attrs>content</name>``; ``cls`` becomes ``class``; content is escaped unless Raw."""
    a = "".join(
        f' {"class" if k == "cls" else k}="{html.escape(str(v), quote=True)}"'
        for k, v in attrs.items()
        if v is not None
    )
    return Raw(f"<{name}{a}>{esc(content)}</{name}>")


def fseconds(v: Any) -> str:
    """A measured time ("45.0 s", "3 min 20 s"): :func:`medtl.formatting.format_duration`."""
    return format_duration(v, "measured")


def table(
    headers: Sequence[Any], rows: Iterable[Sequence[Any]], num_cols: Iterable[int] = ()
) -> Raw:
    """A table; cells are escaped unless Raw; columns in ``num_cols`` are right-aligned."""
    nums = set(num_cols)
    head = tag("tr", join(tag("th", h) for h in headers))
    body = join(
        tag("tr", join(tag("td", c, cls="num" if i in nums else None) for i, c in enumerate(r)))
        for r in rows
    )
    return tag("table", join([tag("thead", head), tag("tbody", body)]))


def img(png: bytes, alt: str) -> Raw:
    """An ``<img>`` with the PNG embedded as base64 (the report opens offline from disk)."""
    data = base64.b64encode(png).decode("ascii")
    return Raw(f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt, quote=True)}">')


def paragraphs(lines: Iterable[Any], cls: str | None = None) -> Raw:
    return join(tag("p", line, cls=cls) for line in lines)


def section(sid: str, title: str, *body: Any) -> Raw:
    return tag("section", join([tag("h2", title), *body]), id=sid)


def page(title: str, body: Raw, footer: Raw) -> str:
    """The whole document: inline CSS, no scripts, no external resources."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{body}\n<footer>{footer}</footer>\n</main>\n</body>\n</html>\n"
    )

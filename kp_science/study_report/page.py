"""The HTML of the study report: one self-contained page (inline CSS, figures as PNG data
URIs, no script, nothing fetched from a network) and the pieces sections are made of.

Every piece of text that goes into the page passes through :func:`escape`; functions whose
parameter is named ``*_html`` take HTML that was built here already.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
  margin: 0; background: #fafafa; }
header { background: #23395d; color: #fff; padding: 12px 24px; }
header h1 { margin: 0; font-size: 22px; }
header p { margin: 4px 0 0; color: #d6deeb; }
nav { position: sticky; top: 0; background: #e8edf5; padding: 6px 24px; z-index: 1;
  border-bottom: 1px solid #c8d1e0; }
nav a { margin-right: 16px; color: #23395d; text-decoration: none; font-weight: 600; }
nav a:hover { text-decoration: underline; }
main { padding: 0 24px 40px; max-width: 1200px; }
section { margin-top: 28px; }
h2 { border-bottom: 2px solid #23395d; padding-bottom: 2px; }
h3 { margin-bottom: 6px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 12.5px; background: #fff; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid #d5d9e0; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #eef1f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.flagged td { background: #fde2e1; }
tr.supported td { background: #e3f4e1; }
p.missing { color: #8a5a00; background: #fff6df; border-left: 4px solid #e0a800;
  padding: 6px 10px; }
figure { margin: 10px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e0e0e0; background: #fff; }
figcaption { font-size: 12px; color: #555; }
details { margin: 6px 0 12px; }
summary { cursor: pointer; color: #23395d; font-weight: 600; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.figures figure img { max-height: 380px; width: auto; }
code { font-size: 12px; }
"""

Formatter = Callable[[object], str]


def escape(value: object) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def is_missing(value: Any) -> bool:
    """Whether a cell holds nothing (None, NaN, NaT)."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and arrays are values
        return False


def format_value(value: object) -> str:
    """A cell as text: nothing as "—", integers as they are, other numbers with four
    significant digits, booleans as yes / no, everything else as its string."""
    if is_missing(value):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        number = float(value)
        if math.isinf(number):
            return "∞" if number > 0 else "−∞"
        return f"{number:.4g}"
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, Real)
        and not isinstance(value, (bool, np.bool_))
        and not is_missing(value)
    )


def table_html(
    frame: pd.DataFrame,
    caption: str | None = None,
    highlight: Sequence[bool] | None = None,
    highlight_class: str = "flagged",
    formats: Mapping[str, Formatter] | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """A DataFrame as an HTML table (its columns, not its index).

    ``highlight``: one flag per row; flagged rows get the CSS class ``highlight_class``.
    ``formats``: column → function formatting a cell (default :func:`format_value`).
    ``headers``: column → heading text (default the column name). All text is escaped.
    """
    formats = formats or {}
    headers = headers or {}
    if highlight is not None and len(highlight) != len(frame):
        raise ValueError(f"{len(highlight)} highlight flags for {len(frame)} rows")
    parts = ["<table>"]
    if caption:
        parts.append(f"<caption>{escape(caption)}</caption>")
    parts.append(
        "<thead><tr>"
        + "".join(f"<th>{escape(headers.get(str(c), c))}</th>" for c in frame.columns)
        + "</tr></thead><tbody>"
    )
    for i, row in enumerate(frame.itertuples(index=False, name=None)):
        marked = highlight is not None and bool(highlight[i])
        parts.append(f'<tr class="{escape(highlight_class)}">' if marked else "<tr>")
        for column, value in zip(frame.columns, row, strict=True):
            text = formats.get(str(column), format_value)(value)
            numeric = ' class="num"' if _is_number(value) else ""
            parts.append(f"<td{numeric}>{escape(text)}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def key_values_html(items: Mapping[str, object], caption: str | None = None) -> str:
    """A two-column table of names and values."""
    frame = pd.DataFrame({"": list(items), "value": [format_value(v) for v in items.values()]})
    return table_html(frame, caption)


def image_html(png: bytes, alt: str, caption: str | None = None) -> str:
    """PNG bytes as an inline ``<img>`` (base64 data URI) in a ``<figure>``. Raises
    ValueError for bytes that are not a PNG (a broken image would show as an icon)."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError(f"not PNG bytes: {alt!r}")
    data = base64.b64encode(png).decode("ascii")
    text = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">{text}</figure>'


def paragraph(text: str, css_class: str | None = None) -> str:
    """Text as a paragraph (escaped)."""
    attribute = f' class="{escape(css_class)}"' if css_class else ""
    return f"<p{attribute}>{escape(text)}</p>"


def missing(text: str) -> str:
    """A note saying what is missing and why (styled so a reader sees it is a gap)."""
    return paragraph(text, "missing")


def heading(text: str, level: int = 3) -> str:
    return f"<h{level}>{escape(text)}</h{level}>"


def bullet_list(items: Sequence[str]) -> str:
    """Text items as an unordered list (escaped)."""
    return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>"


def details_html(summary: str, body_html: str, open_: bool = False) -> str:
    """A collapsible block: ``summary`` (text) shown, ``body_html`` on a click."""
    state = " open" if open_ else ""
    return f"<details{state}><summary>{escape(summary)}</summary>{body_html}</details>"


def figures_row(figures_html: Sequence[str]) -> str:
    """Figures side by side, wrapping on a narrow window."""
    return '<div class="figures">' + "".join(figures_html) + "</div>"


def document_html(
    title: str, subtitle: str, sections: Sequence[tuple[str, str, str]], generator: str
) -> str:
    """The whole page: header, a contents bar linking every section, the sections.

    ``sections``: (id, heading text, body HTML) in order; ``generator``: what made the page
    (``<meta name="generator">``, e.g. "kp 0.1.0": kp replaces only files that carry it).
    """
    nav = "".join(f'<a href="#{escape(sid)}">{escape(name)}</a>' for sid, name, _ in sections)
    body = "".join(
        f'<section id="{escape(sid)}"><h2>{escape(name)}</h2>{content}</section>'
        for sid, name, content in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="generator" content="{escape(generator)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><header><h1>{escape(title)}</h1><p>{escape(subtitle)}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main></body></html>\n"
    )

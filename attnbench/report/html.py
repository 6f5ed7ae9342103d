"""A report as HTML, for a notebook cell (``Results._repr_html_``): the report's own markdown (``markup``)
re-typeset, every character of a label or message escaped."""

from __future__ import annotations

import html
from typing import List

from .markup import LITERAL_COLUMNS, Heading, Notes, Paragraph, Table, inline, parse


def _inline(text: str) -> str:
    tags = {"code": "code", "bold": "strong"}
    return "".join(
        html.escape(c) if k == "text" else f"<{tags[k]}>{html.escape(c)}</{tags[k]}>" for k, c in inline(text)
    )


def render_html(markdown: str) -> str:
    out: List[str] = []
    for b in parse(markdown):
        if isinstance(b, Heading):
            out.append(f"<h{b.level + 1}>{_inline(b.text)}</h{b.level + 1}>")  # h2 down: a notebook cell is no page
        elif isinstance(b, Paragraph):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Notes):
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in b.items) + "</ul>")
        elif isinstance(b, Table):
            align = ['style="text-align:right"' if r else 'style="text-align:left"' for r in b.right]
            head = "".join(f"<th {a}>{html.escape(h)}</th>" for a, h in zip(align, b.header))
            literal = [h in LITERAL_COLUMNS for h in b.header]
            rows = "".join(
                "<tr>"
                + "".join(
                    f"<td {a}>{html.escape(c) if lit else _inline(c)}</td>" for a, lit, c in zip(align, literal, row)
                )
                + "</tr>"
                for row in b.rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return "\n".join(out) + "\n"

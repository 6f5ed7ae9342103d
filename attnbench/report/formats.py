"""One report in any format: markdown (what ``report`` writes to <name>.md), LaTeX, HTML, CSV and JSON.

The same content in each: markdown is the tables; LaTeX and HTML typeset that markdown (``latex``, ``html``);
CSV and JSON are the tidy frame of the same records (``frame``: one row per cell and metric, every Δ with its
interval). ``report --format``, ``compare --format`` and :class:`attnbench.api.Results` all come here.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..records.record import Record
from .accuracy import render_accuracy
from .compare import CompareRow, render_compare_rows
from .tables import render_markdown

FORMATS = ("markdown", "latex", "csv", "json", "html")


def check_format(fmt: str) -> str:
    from ..errors import UnknownNameError

    if fmt not in FORMATS:
        raise UnknownNameError("format", fmt, FORMATS, f"known: {', '.join(FORMATS)}")
    return fmt


def report_markdown(records: Sequence[Record], name: str, overhead: Sequence[Record] = ()) -> str:
    """<name>.md: the accuracy table for an accuracy store (CPU latency joined from ``overhead``), else the cost tables."""
    if any(r.metric == "accuracy" for r in records):
        return render_accuracy(records, overhead, name)
    return render_markdown(records, name)


def render_report(
    records: Sequence[Record],
    name: str,
    fmt: str = "markdown",
    overhead: Sequence[Record] = (),
    context: Optional[Sequence[Record]] = None,
) -> str:
    """The report of ``records`` in ``fmt``; ``context`` (the whole store) gives the frame's Δ baselines
    when ``records`` is a selection."""
    check_format(fmt)
    if fmt in ("csv", "json"):
        from .frame import frame_csv, frame_json, tidy_frame

        frame = tidy_frame(records, context, overhead, store=name)
        return frame_csv(frame) if fmt == "csv" else frame_json(frame)
    text = report_markdown(records, name, overhead)
    return _typeset(text, fmt)


def render_compare_as(
    rows: Sequence[CompareRow], name_a: str, name_b: str, fmt: str = "markdown", fail_above: Optional[float] = None
) -> str:
    """``compare`` in ``fmt``: its markdown table, typeset, or one row per matched cell (csv, json)."""
    check_format(fmt)
    if fmt in ("csv", "json"):
        from .frame import compare_frame, frame_csv, frame_json

        frame = compare_frame(rows, fail_above)
        return frame_csv(frame) if fmt == "csv" else frame_json(frame)
    return _typeset(render_compare_rows(rows, name_a, name_b, fail_above), fmt)


def _typeset(markdown: str, fmt: str) -> str:
    if fmt == "latex":
        from .latex import render_latex

        return render_latex(markdown)
    if fmt == "html":
        from .html import render_html

        return render_html(markdown)
    return markdown

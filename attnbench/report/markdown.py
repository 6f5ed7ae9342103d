"""Markdown primitives and the marks a table cell may carry."""

from __future__ import annotations

from typing import Sequence

DASH = "—"


UNSTABLE = "†"


UNCOUNTED = "‡"


UNSEEN = "§"


FAILS_CHECK = "✗"  # the row's module fails `attnbench check`: its numbers are of a module that breaks the contract


CONTENDED = "¶"


TIMED_BY = (
    "°"  # °N: the row's timing was taken by process N of the note (several executors/hosts/processes timed this table)
)


def md_text(value: object) -> str:
    """Text safe in a markdown table cell or list item: a '|' is escaped and a line break becomes a space, so
    a label, name or message can never split a row (every table row goes through :func:`md_row`)."""
    return " ".join(str(value).replace("|", "\\|").splitlines())


def md_row(cells: Sequence[object]) -> str:
    """One markdown table row: the one place cells are escaped."""
    return "| " + " | ".join(md_text(c) for c in cells) + " |"

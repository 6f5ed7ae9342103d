"""The report's markdown read back as blocks, for the renderers of other formats (LaTeX, HTML).

The markdown renderers (``tables``, ``accuracy``) are the one place that decides what a table shows: its
sections, columns, cells, marks and notes. ``latex`` and ``html`` re-typeset their output rather than
rebuilding the tables, so every table, column and note a report has -- today's and any added later --
appears in each format, with the numbers as the same strings.

The markdown is attnbench's own, so reading it is exact: a table row is ``md_row``'s output (every ``|``
inside a cell escaped as ``\\|``, no line breaks), a note is one ``- `` line (md_text), a heading one
``#`` line. Inline markup (`code`, **bold**) appears only in text attnbench writes; labels inside it are
not markdown-escaped, so an odd backtick in a label makes at worst a literal backtick, never broken output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Tuple, Union

from .markdown import CONTENDED, FAILS_CHECK, TIMED_BY, UNCOUNTED, UNSEEN, UNSTABLE

MARKS = UNSTABLE + UNCOUNTED + UNSEEN + FAILS_CHECK + CONTENDED  # one-character marks; TIMED_BY takes a number
_TRAILING = re.compile(rf"^(.*?)\s*((?:[{MARKS}]|{TIMED_BY}\d+)+)$", re.S)
_LEADING = re.compile(rf"^((?:[{MARKS}]|{TIMED_BY}[N\d]+)+)(?=[\s:])")
_NUMBER = re.compile(r"^([+\-]?\d[\d,]*)(\.\d+)?(.*)$", re.S)
_SEPARATOR = re.compile(r"(?<!\\)\|")
LITERAL_COLUMNS = ("backbone", "module")  # user labels: no markdown spans are read inside them


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: List[str]
    right: List[bool]  # per column: right-aligned (numbers) in the markdown
    rows: List[List[str]] = field(default_factory=list)


@dataclass
class Notes:
    items: List[str] = field(default_factory=list)


Block = Union[Heading, Paragraph, Table, Notes]


def split_row(line: str) -> List[str]:
    """The cells of one ``md_row`` line, unescaped. md_row joins cells with ' | ' and escapes every '|' inside
    a cell as '\\|', so each unescaped '|' separates two cells and takes one space from either side."""
    inner = line[2:-2] if line.startswith("| ") and line.endswith(" |") else line.strip("|")
    pieces = _SEPARATOR.split(inner)
    last = len(pieces) - 1
    cells = [p[1 if i else 0 : len(p) - (1 if i < last else 0)] for i, p in enumerate(pieces)]
    return [c.replace("\\|", "|") for c in cells]


def parse(markdown: str) -> List[Block]:
    """Headings, paragraphs (one per line, as the renderers write them), tables and note lists, in order."""
    blocks: List[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        heading = re.match(r"^(#{1,6}) (.*)$", line)
        if heading:
            blocks.append(Heading(len(heading.group(1)), heading.group(2)))
        elif line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|(\s*-+:?\s*\|)+\s*$", lines[i + 1]):
            table = Table(
                split_row(line), [c.strip().endswith(":") for c in lines[i + 1].strip().strip("|").split("|")]
            )
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                table.rows.append(split_row(lines[i]))
                i += 1
            blocks.append(table)
            continue
        elif line.startswith("- "):
            last = blocks[-1] if blocks else None
            if not isinstance(last, Notes):
                last = Notes()
                blocks.append(last)
            last.items.append(line[2:])
        elif blocks and isinstance(blocks[-1], Notes) and not line.startswith(("|", "#")):
            blocks[-1].items[-1] += " " + line.strip()  # a lazy continuation line belongs to its item
        else:
            blocks.append(Paragraph(line))
        i += 1
    return blocks


def trailing_marks(text: str) -> Tuple[str, str]:
    """(text, marks): the marks a table appends to a cell ('14.13 (0.49)†¶' -> '14.13 (0.49)', '†¶')."""
    m = _TRAILING.match(text)
    return (m.group(1), m.group(2)) if m else (text, "")


def leading_marks(text: str) -> Tuple[str, str]:
    """(marks, rest) of a note that explains a mark ('† IQR above ...' -> '†', 'IQR above ...')."""
    m = _LEADING.match(text)
    return (m.group(1), text[m.end() :].lstrip()) if m else ("", text)


def mark_symbols(marks: str) -> List[str]:
    """'§✗°2' -> ['§', '✗', '°2']."""
    return re.findall(rf"[{MARKS}]|{TIMED_BY}[N\d]+", marks)


def number(text: str) -> Tuple[str, str, str]:
    """(integer part, '.fraction', rest) of a cell that starts with a number, else ('', '', text)."""
    m = _NUMBER.match(text)
    return (m.group(1), m.group(2) or "", m.group(3)) if m else ("", "", text)


def inline(text: str) -> List[Tuple[str, str]]:
    """Spans of ('text' | 'code' | 'bold', content): `code` and **bold** when closed, else literal text."""
    spans: List[Tuple[str, str]] = []
    i, plain = 0, ""
    while i < len(text):
        for opener, kind in (("**", "bold"), ("`", "code")):
            if text.startswith(opener, i):
                end = text.find(opener, i + len(opener))
                if end > i + len(opener):  # closed, and not empty
                    if plain:
                        spans.append(("text", plain))
                        plain = ""
                    spans.append((kind, text[i + len(opener) : end]))
                    i = end + len(opener)
                    break
        else:
            plain += text[i]
            i += 1
    if plain:
        spans.append(("text", plain))
    return spans

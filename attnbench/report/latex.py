"""Paper-ready LaTeX from a report: booktabs tables (``\\toprule``/``\\midrule``/``\\bottomrule``), numbers aligned
on the decimal point, every Δ with its interval, marks as footnote symbols with their notes under the table.

It typesets the report's own markdown (``markup``): the same tables, cells and notes in another format. Each
markdown table becomes a ``table`` float whose caption is the report's title and section; a right-aligned
(numeric) column becomes two columns, ``r@{}l``, split before the decimal point, so values with any number of
digits line up and the rest of a cell (IQR, interval, '(unpaired)') follows its number. The paragraphs under the
title (environment, settings, definitions) go in as ``%`` comment lines: kept with the table, not typeset. The
output needs ``\\usepackage{booktabs}`` and nothing else; it compiles with pdflatex in the default (OT1) and T1
font encodings. Every character of a label or message is escaped (:func:`tex`), including those LaTeX would
turn into ligatures (``--``, ``''``); a character pdflatex cannot typeset without extra packages is written as
its code point, ``[U+4E2D]``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Dict, List, Optional, Tuple

from .markdown import CONTENDED, FAILS_CHECK, TIMED_BY, UNCOUNTED, UNSEEN, UNSTABLE
from .markup import (
    LITERAL_COLUMNS,
    Heading,
    Notes,
    Paragraph,
    Table,
    inline,
    leading_marks,
    mark_symbols,
    number,
    parse,
    trailing_marks,
)

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "&": r"\&",
    "#": r"\#",
    "_": r"\_",
    "%": r"\%",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "|": r"\textbar{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    '"': r"{\ttfamily\char34}",
    "[": "{[}",
    "]": "{]}",
}  # braced: after a \\ (a row's end) a bracket would be read as its argument
# Non-ASCII characters the reports and common labels use, as pdflatex typesets them with no extra package
# (math-mode symbols: their text-mode forms would need the TS1 fonts).
_SYMBOLS = {
    "Δ": r"$\Delta$",
    "δ": r"$\delta$",
    "α": r"$\alpha$",
    "β": r"$\beta$",
    "γ": r"$\gamma$",
    "λ": r"$\lambda$",
    "μ": r"$\mu$",
    "µ": r"$\mu$",
    "π": r"$\pi$",
    "σ": r"$\sigma$",
    "Σ": r"$\Sigma$",
    "Ω": r"$\Omega$",
    "—": "---",
    "–": "--",
    "−": "$-$",
    "…": r"\ldots{}",
    "·": r"$\cdot$",
    "×": r"$\times$",
    "±": r"$\pm$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "≈": r"$\approx$",
    "→": r"$\rightarrow$",
    "←": r"$\leftarrow$",
    "°": r"$^{\circ}$",
    UNSTABLE: r"$\dagger$",
    UNCOUNTED: r"$\ddagger$",
    UNSEEN: r"$\S$",
    CONTENDED: r"$\P$",
    FAILS_CHECK: r"$\times$",
    "‘": "`{}",
    "’": "'{}",
    "“": "``",
    "”": "''",
    "\u00a0": "~",
    "ß": r"\ss{}",
    "æ": r"\ae{}",
    "Æ": r"\AE{}",
    "ø": r"\o{}",
    "Ø": r"\O{}",
    "œ": r"\oe{}",
    "Œ": r"\OE{}",
    "ł": r"\l{}",
    "Ł": r"\L{}",
    "ı": r"\i{}",
    "å": r"\aa{}",
    "Å": r"\AA{}",
}
_ACCENTS = {
    "\u0301": "'",
    "\u0300": "`",
    "\u0302": "^",
    "\u0308": '"',
    "\u0303": "~",
    "\u0327": "c",
    "\u030c": "v",
    "\u0306": "u",
    "\u0304": "=",
    "\u0307": ".",
    "\u030a": "r",
    "\u030b": "H",
}
# A mark as a superscript symbol (math mode: no TS1 fonts needed).
_MARK_MATH = {UNSTABLE: r"\dagger", UNCOUNTED: r"\ddagger", UNSEEN: r"\S", CONTENDED: r"\P", FAILS_CHECK: r"\times"}
_LIGATURE_PAIRS = {"--", "``", "''", "!`", "?`", ",,"}


def tex(text: str) -> str:
    """Text safe anywhere in a LaTeX document: specials escaped, line breaks as spaces (as in the markdown),
    ligature pairs broken, non-ASCII characters as LaTeX commands or, failing that, as their code point."""
    text = " ".join(str(text).replace("\t", " ").splitlines())
    out = []
    for i, ch in enumerate(text):
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if ch in _SPECIAL:
            out.append(_SPECIAL[ch])
        elif " " <= ch <= "~":
            out.append(ch + ("{}" if ch + nxt in _LIGATURE_PAIRS else ""))
        else:
            out.append(_unicode(ch))
    return "".join(out)


def _unicode(ch: str) -> str:
    if ch in _SYMBOLS:
        return _SYMBOLS[ch]
    decomposed = unicodedata.normalize("NFD", ch)
    base, accents = decomposed[0], decomposed[1:]
    if accents and " " < base <= "~" and base.isalpha() and all(a in _ACCENTS for a in accents):
        text = "\\i" if base == "i" else base  # a dotless i under an accent
        for a in accents:
            text = f"\\{_ACCENTS[a]}{{{text}}}"
        return text
    return r"{\ttfamily[U+%04X]}" % ord(ch)


def _tex_numbers(text: str) -> str:
    """Text of a number cell: a minus sign before a digit typeset as one ('-0.41 [-0.93, +0.11]')."""
    return "$-$".join(tex(part) for part in re.split(r"-(?=\d)", text))


def _inline(text: str, numbers: bool = False) -> str:
    """Markdown spans (`code`, **bold**) as \\texttt / \\textbf, every character escaped."""
    conv = _tex_numbers if numbers else tex
    out = []
    for kind, content in inline(text):
        if kind == "code":
            out.append(r"\texttt{%s}" % tex(content))
        elif kind == "bold":
            out.append(r"\textbf{%s}" % conv(content))
        else:
            out.append(conv(content))
    return "".join(out)


def superscript(marks: str) -> str:
    """'†¶' -> $^{\\dagger\\P}$; '°2' -> $^{\\circ 2}$ (°N: the process that timed the row)."""
    if not marks:
        return ""
    parts = []
    for m in mark_symbols(marks):
        if m.startswith(TIMED_BY):
            parts.append(r"\circ " + (r"\mathrm{N}" if m[1:] == "N" else m[1:]))
        else:
            parts.append(_MARK_MATH[m])
    return "$^{%s}$" % "".join(parts)


def _header(text: str, align: str, span: int) -> str:
    """A header cell, broken before its bracket ('Δ CPU latency %' / '[95% CI]') to keep columns narrow."""
    m = re.match(r"^(.+?) ([\[(].*)$", text)
    body = (
        tex(text)
        if m is None
        else r"\begin{tabular}[b]{@{}%s@{}}%s\\ %s\end{tabular}" % (align, tex(m.group(1)), tex(m.group(2)))
    )
    return body if span == 1 else r"\multicolumn{%d}{%s}{%s}" % (span, align, body)


def _cell(text: str, numeric_column: bool, literal: bool) -> Tuple[str, List[str]]:
    """A body cell as LaTeX (two '&'-joined halves in a numeric column) and the marks it carries."""
    body, marks = trailing_marks(text)
    sup = superscript(marks)
    if not numeric_column:
        return (tex(body) if literal else _inline(body)) + sup, mark_symbols(marks)
    whole, fraction, rest = number(body)
    if not whole:
        return r"\multicolumn{2}{c}{%s%s}" % (_inline(body, numbers=True), sup), mark_symbols(marks)
    return f"{_tex_numbers(whole)} & {_tex_numbers(fraction)}{_inline(rest, numbers=True)}{sup}", mark_symbols(marks)


def _table(table: Table) -> Tuple[List[str], set]:
    """The tabular of one markdown table, and the marks its cells use."""
    numeric = [
        right and any(number(trailing_marks(row[j])[0])[0] for row in table.rows if j < len(row))
        for j, right in enumerate(table.right)
    ]
    spec = " ".join("r@{}l" if n else ("r" if r else "l") for n, r in zip(numeric, table.right))
    lines = [
        r"\begin{tabular}{@{}%s@{}}" % spec,
        r"\toprule",
        " & ".join(
            _header(h, "c" if numeric[j] else ("r" if table.right[j] else "l"), 2 if numeric[j] else 1)
            for j, h in enumerate(table.header)
        )
        + r" \\",
        r"\midrule",
    ]
    used: set = set()
    grouped = table.header[:1] == ["backbone"]
    previous: Optional[str] = None
    for row in table.rows:
        row = (row + [""] * len(table.header))[: len(table.header)]
        if grouped and previous is not None and row[0] != previous:
            lines.append(r"\midrule")
        cells = []
        for j, text in enumerate(row):
            if grouped and j == 0 and text == previous:
                cells.append("")
                continue
            latex, marks = _cell(text, numeric[j], table.header[j] in LITERAL_COLUMNS)
            used.update(marks)
            cells.append(latex)
        previous = row[0]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return lines, used


def _slug(text: str) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower())) or "table"


def _note(item: str) -> str:
    marks, rest = leading_marks(item)
    return (superscript(marks) + " " if marks else "") + _inline(rest)


def render_latex(markdown: str) -> str:
    """A report's markdown (``render_markdown``, ``render_accuracy``, ``render_compare``) as LaTeX: one booktabs
    ``table`` float per markdown table, captioned with the title and its section (and the sentence that
    introduces it); under each table the notes that explain the marks it uses, and under the last one every
    other note. Each table is labelled ``tab:<title>[-<section>]``."""
    blocks = parse(markdown)
    title = next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "attnbench")
    prefix = f"tab:{_slug(title)}"
    comments: List[str] = []
    tables: List[Tuple[List[str], str, List[str], set]] = []  # (section headings, text before it, tabular, marks)
    sections: Dict[int, str] = {}
    pending: List[str] = []
    notes: List[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            if b.level > 1:
                sections = {k: v for k, v in sections.items() if k < b.level}
                sections[b.level] = b.text
            pending = []
        elif isinstance(b, Paragraph):
            if sections or tables:
                pending.append(b.text)
            else:
                comments.append(b.text)
        elif isinstance(b, Table):
            tabular, used = _table(b)
            tables.append(([sections[k] for k in sorted(sections)], " ".join(pending), tabular, used))
            pending = []
        elif isinstance(b, Notes):
            notes += b.items
    out = [f"% {_comment(title)}: written by attnbench (--format latex); needs \\usepackage{{booktabs}}"]
    out += [f"% {_comment(c)}" for c in comments]
    placed = set()
    labels: Dict[str, int] = {}
    for n, (heads, intro, tabular, used) in enumerate(tables):
        last = n == len(tables) - 1
        short = _inline(": ".join([title] + heads))
        slug = f"{prefix}-{_slug(' '.join(heads))}" if heads else prefix
        labels[slug] = labels.get(slug, 0) + 1
        slug += f"-{labels[slug]}" if labels[slug] > 1 else ""
        caption = f"[{short}]{{{short}. {_inline(intro)}}}" if intro else f"{{{short}}}"  # [list of tables]{full}
        out += ["", r"\begin{table}[htbp]", r"\centering", r"\caption" + caption, r"\label{%s}" % slug, r"\small"]
        out += tabular
        mine = [i for i, item in enumerate(notes) if set(mark_symbols(leading_marks(item)[0])) & used]
        if last:
            mine += [i for i in range(len(notes)) if i not in placed and i not in mine]
        if mine:
            out += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize\raggedright"]
            out += [_note(notes[i]) + r"\par" for i in mine]
            out.append(r"\end{minipage}")
        placed.update(mine)
        out.append(r"\end{table}")
    if not tables and notes:
        out += (
            ["", r"\begin{flushleft}\footnotesize"] + [_note(item) + r"\par" for item in notes] + [r"\end{flushleft}"]
        )
    return "\n".join(out) + "\n"


def _comment(text: str) -> str:
    """Text for a % comment line: one line, no control characters."""
    return "".join(ch if ch.isprintable() else " " for ch in " ".join(str(text).splitlines()))

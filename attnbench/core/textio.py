"""Output where the terminal cannot show attnbench's symbols: degraded to ASCII, never a traceback.

Tables and messages use a few symbols (Δ, ±, ¶, ‡, †, §, ·, ², —, ...). Under a locale whose encoding cannot
write them -- ``LC_ALL=C`` with Python's UTF-8 mode off, ``PYTHONIOENCODING=ascii``, a latin-1 terminal --
printing one raised ``UnicodeEncodeError`` after the work was done. :func:`degrade_streams` makes
``sys.stdout`` and ``sys.stderr`` write an ASCII look-alike instead (``Δ`` -> ``d``, ``±`` -> ``+/-``, anything
else without one -> ``?``); files attnbench writes are UTF-8 whatever the locale (``encoding="utf-8"`` everywhere),
so a table file is the same bytes under every locale.
"""

from __future__ import annotations

import codecs
import contextlib
import sys
import unicodedata

ERRORS = "attnbench-ascii"  # the codec error handler registered here
LOOK_ALIKES = {
    "Δ": "d",
    "δ": "d",
    "±": "+/-",
    "¶": "#",
    "‡": "++",
    "†": "+",
    "§": "S",
    "·": ".",
    "²": "^2",
    "⁴": "^4",
    "—": "--",
    "–": "-",
    "−": "-",
    "×": "x",
    "≥": ">=",
    "≤": "<=",
    "≈": "~",
    "→": "->",
    "←": "<-",
    "…": "...",
    "“": '"',
    "”": '"',
    "‘": "'",
    "’": "'",
    "✗": "x",
    "✓": "v",
    "°": " deg",
    "µ": "u",
    "μ": "u",
    "√": "sqrt",
    "ρ": "rho",
    "σ": "sigma",
    "α": "alpha",
    "β": "beta",
    "γ": "gamma",
    "λ": "lambda",
    "π": "pi",
    "Σ": "Sum",
    "Ω": "Ohm",
}


def _look_alike(ch: str) -> str:
    if ch in LOOK_ALIKES:
        return LOOK_ALIKES[ch]
    plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode("ascii")  # é -> e, Å -> A
    return plain or "?"


def _handler(exc: UnicodeError):
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    return "".join(_look_alike(ch) for ch in exc.object[exc.start : exc.end]), exc.end


codecs.register_error(ERRORS, _handler)

PROBE = "".join(LOOK_ALIKES)


def degrade_streams() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` write ASCII look-alikes for what their encoding cannot hold (a
    stream that can encode every symbol attnbench prints is left as it is)."""
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        if not encoding:
            continue
        try:
            PROBE.encode(encoding)
            continue
        except (UnicodeEncodeError, LookupError):
            pass
        with contextlib.suppress(AttributeError, ValueError, LookupError):
            stream.reconfigure(errors=ERRORS)  # type: ignore[union-attr]  # io.TextIOWrapper's

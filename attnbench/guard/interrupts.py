"""Ctrl-C and SIGTERM end a command like each other: one line, what is stored kept, exit 128 + signal.

SIGTERM is what ``timeout``, Slurm and container runtimes send; by default it kills Python silently.
Under :func:`handled` both signals raise :class:`Interrupted` (a ``KeyboardInterrupt``, so every
``except KeyboardInterrupt`` treats them alike) and are remembered, so the command line can say which
one ended it. :func:`deferred` notes them instead of raising, for work that must not be torn (moving a
store aside, writing the tables); :func:`exit_now` makes any later signal end the process at once.
:func:`is_signal` tells a real interrupt from a plugin raising ``KeyboardInterrupt`` in its forward
(:func:`watching` notes every signal while a cell or a check runs): only the former stops a run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator, List

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
received: List[int] = []  # signals delivered under handled(), oldest first


class Interrupted(KeyboardInterrupt):
    """A signal asked the process to stop; ``signum`` says which (exit status 128 + signum)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(NAMES.get(signum, f"signal {signum}"))
        self.signum = signum


def signum_of(exc: BaseException) -> int:
    """The signal behind an interrupt (a plain KeyboardInterrupt is Ctrl-C)."""
    return getattr(exc, "signum", signal.SIGINT)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise(signum, frame):
    received.append(signum)
    _delivered[0] += 1
    raise Interrupted(signum)


_delivered = [0]  # signals that reached a handler of ours (_raise, a deferred note, a watching() wrapper)
_watch_starts: List[int] = []  # _delivered when each active watching() began, innermost last


def is_signal(exc: BaseException) -> bool:
    """Whether ``exc`` is a real Ctrl-C or SIGTERM, as opposed to code (a plugin's forward) raising
    ``KeyboardInterrupt`` itself. Signals reach Python's main thread only, and under :func:`handled` or
    :func:`watching` every one is noted before anything is raised: there a KeyboardInterrupt no signal was
    noted for is code's. Where Python's own handler answers SIGINT (a plain KeyboardInterrupt for Ctrl-C,
    nothing watching), it cannot be told apart and counts as a signal."""
    if not isinstance(exc, KeyboardInterrupt) or not _main_thread():
        return False
    if isinstance(exc, Interrupted):
        return True
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not _raise and not getattr(handler, "attnbench_notes", False):
        return True  # Python's default handler (or a caller's own): a plain KeyboardInterrupt may be Ctrl-C
    return _delivered[0] > (_watch_starts[-1] if _watch_starts else 0)


def _noting(previous):
    """A handler that notes the signal, then does what ``previous`` did (Python's default: Interrupted)."""

    def handler(signum, frame):
        received.append(signum)
        _delivered[0] += 1
        if previous is signal.default_int_handler:
            raise Interrupted(signum)
        return previous(signum, frame)

    handler.attnbench_notes = True
    return handler


@contextlib.contextmanager
def watching() -> Iterator[None]:
    """Inside the block every SIGINT and SIGTERM is noted before its handler runs (a caller's own handler
    still runs), so :func:`is_signal` tells a real interrupt from a plugin's ``raise KeyboardInterrupt``:
    a cell or a check step fails for the latter and the run stops for the former. Main thread only (no
    other thread receives signals); SIG_DFL and SIG_IGN are left as they are."""
    if not _main_thread():
        yield
        return
    previous = {}
    for s in SIGNALS:
        h = signal.getsignal(s)
        if callable(h) and h is not _raise and not getattr(h, "attnbench_notes", False):
            previous[s] = h
            signal.signal(s, _noting(h))
    _watch_starts.append(_delivered[0])
    try:
        yield
    finally:
        _watch_starts.pop()
        for s, h in previous.items():
            signal.signal(s, h)


def install() -> dict:
    """From now on SIGINT and SIGTERM raise :class:`Interrupted` (main thread only); returns the previous handlers."""
    if not _main_thread():
        return {}
    received.clear()
    return {s: signal.signal(s, _raise) for s in SIGNALS}


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside the block (main thread only)."""
    previous = install()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred(reraise: bool = False) -> Iterator[List[int]]:
    """Signals that arrive inside the block are noted (yielded list), not raised; the previous handlers
    come back afterwards, and with ``reraise`` the first noted signal is raised then. A second Ctrl-C
    while the tables are written (or a store is moved aside) must not leave them half-done."""
    noted: List[int] = []
    if not _main_thread():
        yield noted
        return

    def note(signum, frame):
        noted.append(signum)
        received.append(signum)
        _delivered[0] += 1

    note.attnbench_notes = True
    previous = {s: signal.signal(s, note) for s in SIGNALS}
    try:
        yield noted
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if reraise and noted:
        raise Interrupted(noted[0])


def ignore_at_last_exit() -> None:
    """Register (first, so it runs last) an exit hook that ignores both signals: Python restores the default
    handlers before it tears its modules down (a second or more with torch loaded), and a Ctrl-C then would
    kill the process by signal after its one line and exit status were already given."""
    import atexit

    atexit.register(lambda: [signal.signal(s, signal.SIG_IGN) for s in SIGNALS] if _main_thread() else None)


def exit_now() -> None:
    """From here on a signal ends the process at once with 128 + signum (the exit is already decided;
    a Ctrl-C during the interpreter's shutdown must not print a traceback)."""
    if not _main_thread():
        return

    def leave(signum, frame):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(128 + signum)

    for s in SIGNALS:
        signal.signal(s, leave)

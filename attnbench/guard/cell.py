"""A cell's failure boundary: deadlines, out-of-memory and non-finite results as named failures.

``deadline(seconds)`` ends a hung cell with :class:`CellTimeout`: a ``SIGALRM`` timer that raises in
the main thread at the next Python instruction (a forward stuck in a Python loop, a sleep or a lock).
It cannot interrupt a single long C++ kernel until it returns, and off the main thread (Dask worker
threads) there is no timer: it is a no-op there, and docs/latency.md says so. Every deadline is also a
boundary for what a plugin raises to end a program (``sys.exit()``, ``KeyboardInterrupt`` with no signal
behind it, ``GeneratorExit``): it becomes :class:`Escaped`, that unit's failure (``contained``).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from typing import Iterator, Optional, Tuple

import torch

from ..errors import AttnBenchError, CellTimeout, Escaped, NonFiniteOutput, OutOfMemory  # noqa: F401 (raised and caught here)

ESCAPE_ADVICE = "raise an Exception for an error (SystemExit, KeyboardInterrupt and BaseException end programs)"


def contained(exc: BaseException) -> bool:
    """Whether a boundary (a cell, a check step, a plugin's import or forward) keeps ``exc`` as its own failure:
    every Exception, and whatever plugin code raises to end a program (see :class:`Escaped`). A real Ctrl-C or
    SIGTERM (``interrupts.is_signal``) and attnbench's own ``ControlFlow`` (a paused training) pass through."""
    from ..errors import ControlFlow
    from .interrupts import is_signal

    if isinstance(exc, Exception):
        return True
    return not isinstance(exc, ControlFlow) and not is_signal(exc)


def escape_text(exc: BaseException) -> str:
    """What escaped, in one line: ``SystemExit (exit status 0)``, ``KeyboardInterrupt raised by the code (no
    Ctrl-C or SIGTERM reached the process)``, ``GeneratorExit``, ``BaseException: its message``."""
    if isinstance(exc, SystemExit):
        code = exc.code
        if isinstance(code, str) and code.strip():
            return f"SystemExit: {code.strip().splitlines()[0][:200]}"
        return f"SystemExit (exit status {0 if code is None else code!r})"
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        text += " raised by the code (no Ctrl-C or SIGTERM reached the process)"
    return text


def escaped(exc: BaseException, where: str) -> Exception:
    """``exc`` as an Exception a boundary records: itself, or :class:`Escaped` saying what escaped ``where``."""
    if isinstance(exc, Exception):
        return exc
    return Escaped(f"{escape_text(exc)} in {where}; {ESCAPE_ADVICE}")


@contextlib.contextmanager
def deadline(seconds: Optional[float], what: str = "cell") -> Iterator[None]:
    """Raise CellTimeout in this block after ``seconds`` (main thread only; nested deadlines keep the outer one)."""
    usable = (
        seconds
        and math.isfinite(seconds)
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )
    if not usable:
        with _contained(what):
            yield
        return

    def expire(signum, frame):
        raise CellTimeout(
            f"{what} ran past its timeout of {seconds:g} s; raise the suite's 'timeout' or fix the module that hangs"
        )

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        with _contained(what):
            yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _contained(what: str) -> Iterator[None]:
    """A bounded unit of work fails with :class:`Escaped` where its code raised what ends programs."""
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, Exception) or not contained(exc):
            raise
        raise escaped(exc, what) from exc


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, and the CPU allocator's "can't allocate memory" / MemoryError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError, OutOfMemory)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def require_finite(output, what: str) -> None:
    """Raise NonFiniteOutput when any tensor in ``output`` holds NaN or inf."""
    tensors = output if isinstance(output, (tuple, list)) else [output]
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = "NaN" if bool(torch.isnan(t).any()) else "inf"
            raise NonFiniteOutput(
                f"{what} produced {bad} in its output; the module is numerically unstable at this "
                "input size (try a larger input_size), so no number of it is stored as ok"
            )


BATCHNORM_ONE_VALUE = "Expected more than 1 value per channel when training"


def as_unsupported(exc: BaseException, batch_size: int, input_size) -> BaseException:
    """BatchNorm's refusal to train on one value per channel is a known limit of the setting -- not a failure
    of the module -- only where batch 1 really reaches a 1x1 map: the size torch names (``got input size
    torch.Size([1, 512, 1, 1])``) is a map of one value per channel. Then it becomes ``Unsupported`` with the
    fix (also when it surfaces through torch.compile's fake tensors, which name no size). A BatchNorm over
    pooled (N, C) features (``torch.Size([1, 64])``: a plugin's BatchNorm1d), over a larger map, or inside an
    attached module whose own input is larger than 1x1 (it pooled to 1x1 itself: an SE with a BatchNorm2d) is the
    module's own failure, returned unchanged with its message naming the module; so is anything else."""
    text = str(exc)
    if BATCHNORM_ONE_VALUE not in text:
        return exc
    size = _bn_input_size(text)
    if size is not None and (len(size) < 3 or math.prod(size) != size[1]):
        return exc
    site = tuple(getattr(exc, "input_shape", ()) or ())  # raised inside an attached module (attach.ModuleFailed)
    if len(site) == 4 and site[2] * site[3] > 1:
        return exc  # the module pooled a larger map to 1x1 itself (SE with a BatchNorm2d): its own failure
    from ..errors import Unsupported

    h, w = (tuple(input_size) + tuple(input_size))[:2] if not isinstance(input_size, int) else (input_size, input_size)
    seen = f": BatchNorm input {list(size)}" if size is not None else ""
    return Unsupported(
        f"BatchNorm cannot train on one value per channel (batch {batch_size} at {h}x{w} reaches a 1x1 "
        f"map{seen}); use batch_size >= 2 or a larger input_size"
    )


def _bn_input_size(text: str) -> Optional[Tuple[int, ...]]:
    """The input size torch's BatchNorm message names (``torch.Size([1, 64, 1, 1])``), or None."""
    import re

    found = re.search(r"torch\.Size\(\[([\d,\s]*)\]\)", text[text.find(BATCHNORM_ONE_VALUE) :])
    if found is None:
        return None
    return tuple(int(v) for v in found.group(1).replace(" ", "").split(",") if v)

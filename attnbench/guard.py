"""A cell's failure boundary: deadlines, out-of-memory and non-finite results as named failures.

``deadline(seconds)`` ends a hung cell with :class:`CellTimeout`: a ``SIGALRM`` timer that raises in
the main thread at the next Python instruction (a forward stuck in a Python loop, a sleep or a lock).
It cannot interrupt a single long C++ kernel until it returns, and off the main thread (Dask worker
threads) there is no timer: it is a no-op there, and the README says so.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
from typing import Iterator, Optional

import torch

from .errors import AttnBenchError


class CellTimeout(AttnBenchError):
    """A cell ran past the suite's ``timeout``."""


class NonFiniteOutput(AttnBenchError):
    """A model produced NaN or inf: a measurement of it would be stored as ok while it is not."""


class OutOfMemory(AttnBenchError):
    """CPU or GPU allocation failure."""


@contextlib.contextmanager
def deadline(seconds: Optional[float], what: str = "cell") -> Iterator[None]:
    """Raise CellTimeout in this block after ``seconds`` (main thread only; nested deadlines keep the outer one)."""
    usable = (seconds and math.isfinite(seconds) and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise CellTimeout(f"{what} ran past its timeout of {seconds:g} s; raise the suite's 'timeout' or fix the module that hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, and the CPU allocator's "can't allocate memory" / MemoryError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError, OutOfMemory)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def check_finite(output, what: str) -> None:
    """Raise NonFiniteOutput when any tensor in ``output`` holds NaN or inf."""
    tensors = output if isinstance(output, (tuple, list)) else [output]
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = "NaN" if bool(torch.isnan(t).any()) else "inf"
            raise NonFiniteOutput(f"{what} produced {bad} in its output; the module is numerically unstable at this "
                                  "input size (try a larger input_size), so no number of it is stored as ok")


BATCHNORM_ONE_VALUE = "Expected more than 1 value per channel when training"


def as_unsupported(exc: BaseException, batch_size: int, input_size) -> BaseException:
    """BatchNorm's refusal to train on one value per channel (batch 1 reaching a 1x1 map, also when it
    surfaces through torch.compile's fake tensors) is a known limit of the setting, not a failure of the
    module: it becomes ``Unsupported`` with the fix; anything else is returned unchanged."""
    if BATCHNORM_ONE_VALUE not in str(exc):
        return exc
    from .errors import Unsupported

    h, w = (tuple(input_size) + tuple(input_size))[:2] if not isinstance(input_size, int) else (input_size, input_size)
    return Unsupported(f"BatchNorm cannot train on one value per channel (batch {batch_size} at {h}x{w} reaches a 1x1 "
                       "map); use batch_size >= 2 or a larger input_size")

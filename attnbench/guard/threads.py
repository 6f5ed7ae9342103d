"""One place that pins torch's CPU thread count for a measurement and always puts it back.

Timings and training runs are only comparable at a known thread count, and a cell that sets it
must not leak it into the next cell (or the user's session), even when the cell fails.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch


@contextlib.contextmanager
def fixed_threads(n: Optional[int]) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)`` (``None``/0: leave it as it is); yields the
    count in effect, and restores the previous one on exit, exception or not."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)

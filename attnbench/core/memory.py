"""How much memory this host has, and whether an input of a given size fits: read from /proc/meminfo."""

from __future__ import annotations

from typing import Optional


def available_memory() -> Optional[int]:
    """Bytes of memory available now (Linux MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def input_problem(batch: int, size, in_chans: int = 3) -> Optional[str]:
    """Why an input cannot run here (its tensor alone exceeds the memory available now), or None."""
    need = batch * in_chans * size[0] * size[1] * 4
    avail = available_memory()
    if avail is not None and need > avail:
        return (
            f"batch {batch} at {size[0]}x{size[1]} needs {need / 2**30:.1f} GiB for the input alone, more than the "
            f"{avail / 2**30:.1f} GiB available"
        )
    return None

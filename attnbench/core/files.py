"""Files that are never torn: write-then-rename, one helper for tables, checkpoints and shipped checkpoints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union


def write_atomic(path: Path, data: Union[str, bytes, Callable[[Path], None]]) -> None:
    """Write ``data`` (text as UTF-8 under every locale, bytes, or a writer called with the temporary path) to a
    hidden temporary file beside ``path``, then rename it over ``path``: a kill, a second Ctrl-C or a full disk
    mid-write leaves the previous file whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    if callable(data):
        data(tmp)
    elif isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)

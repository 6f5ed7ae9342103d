"""Append-only JSONL result store: one record per finished cell, fsync'd at once.

A kill -9 can at worst leave a torn last line, which is skipped on read, so a run loses at
most the cell in flight. The newest record per key wins; ``--resume`` skips keys whose
record is ok or skipped and re-runs failed ones.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterable, List


class Store:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.is_file()

    def records(self) -> List[dict]:
        """Every readable record, oldest first (torn or foreign lines are skipped)."""
        if not self.path.is_file():
            return []
        out = []
        with self.path.open() as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "key" in rec:
                    out.append(rec)
        return out

    def latest(self) -> List[dict]:
        """The newest record for each key, in first-seen key order."""
        by_key: Dict[str, dict] = {}
        for rec in self.records():
            by_key[rec["key"]] = rec
        return list(by_key.values())

    def done_keys(self) -> set:
        return {r["key"] for r in self.latest() if r.get("status") in ("ok", "skipped")}

    def repair(self) -> None:
        """Cut a torn last line (a kill -9 mid-write) so the next append starts on a fresh line."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self.path.open("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def extend(self, records: Iterable[dict]) -> None:
        for r in records:
            self.append(r)

    def reset(self) -> None:
        """Start a fresh store; the previous one is kept beside it as ``*.prev``."""
        if self.path.is_file():
            self.path.replace(self.path.with_suffix(self.path.suffix + ".prev"))

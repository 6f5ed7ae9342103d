"""Append-only JSONL result store: one record per finished cell, fsync'd at once.

A kill -9 can at worst leave a torn last line, which is skipped on read, so a run loses at
most the cell in flight. The newest record per key wins; ``--resume`` skips keys whose
record is ok, skipped or unsupported and re-runs failed ones. Lines that are not records of
this shape (torn, binary, foreign or wrongly typed fields) are skipped with one warning that counts them.
A run holds ``OUT/.attnbench.lock`` so that two runs never write one folder. A run without
``--resume`` never deletes a store: the previous one and its tables move to ``OUT/history/``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from ..errors import UsageError
from .record import DONE_STATUSES, ForeignRecord, Record, record_line

MIN_FREE_BYTES = 16 * 2**20
HISTORY = "history"  # OUT/history/<suite>-<time of its last write>/: stores a rerun without --resume moved aside
# What a run writes from OUT/<suite>.jsonl (report.write_outputs): archived with it, never left beside a new store.
TABLE_SUFFIXES = (
    ".md",
    ".csv",
    ".png",
    "-curves.png",
    "-sweeps.png",
    "-sites.png",
    "-predictors.md",
    "-predictors.png",
)


class StoreWarning(UserWarning):
    """Lines of a store that are not records were skipped."""


class Store:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._warned = 0  # lines counted in the last warning: a store read twice in a run warns once

    def records(self) -> List[Record]:
        """Every readable record, oldest first; torn, binary or foreign lines are skipped and counted once."""
        if not self.path.is_file():
            return []
        out, skipped = [], 0
        with self.path.open("rb") as f:
            for raw in f:
                try:
                    out.append(Record.from_dict(json.loads(raw.decode("utf-8"))))
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ForeignRecord):
                    skipped += raw.strip() != b""
        if skipped and skipped != self._warned:
            self._warned = skipped
            warnings.warn(
                f"attnbench: skipped {skipped} line(s) of {self.path} that are not attnbench records "
                "(torn, binary, foreign or wrongly typed)",
                StoreWarning,
                stacklevel=2,
            )
        return out

    def latest(self) -> List[Record]:
        """The newest record for each key, in first-seen key order."""
        by_key: Dict[str, Record] = {}
        for rec in self.records():
            by_key[rec.key] = rec
        return list(by_key.values())

    def done_keys(self, latest: Optional[List[Record]] = None) -> set:
        """Keys of cells that need no rerun, from ``latest`` when the caller has already read it."""
        return {r.key for r in (self.latest() if latest is None else latest) if r.status in DONE_STATUSES}

    def repair(self) -> None:
        """Make the next append start on a fresh line. A last line without its newline is either torn (a kill -9
        mid-write: cut) or a whole record whose newline is missing (an editor that strips the final newline, a
        copy that lost it: kept, and the newline added) -- never a valid record deleted."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as f:
            data = f.read()
            if data.endswith(b"\n"):
                return
            start = data.rfind(b"\n") + 1
            if _is_record(data[start:]):
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
            else:
                f.truncate(start)

    def append(self, record: Record) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = record_line(record)  # runner.readable() checked that this line reads back
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def extend(self, records: Iterable[Record]) -> None:
        for r in records:
            self.append(r)

    def outputs(self) -> List[Path]:
        """This store and the tables and plots written from it, those that exist."""
        paths = [self.path] + [self.path.with_name(self.path.stem + s) for s in TABLE_SUFFIXES]
        return [p for p in paths if p.is_file()]

    def archive(self) -> Optional[Path]:
        """Move this store and its tables into ``OUT/history/<suite>-<UTC time of the store's last write>/``
        (a new folder, never one that exists): a fresh run starts empty and nothing is deleted. Returns the
        folder, or None when there was nothing to move."""
        found = self.outputs()
        if not found:
            return None
        stem = self.path.stem
        when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(max(p.stat().st_mtime for p in found)))
        history = self.path.parent / HISTORY
        history.mkdir(exist_ok=True)
        for n in range(1, 10_000):
            folder = history / (f"{stem}-{when}" + (f"-{n}" if n > 1 else ""))
            try:
                folder.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise UsageError(f"{history} holds 10,000 copies of {stem}; clear it out")
        for p in found:
            p.replace(folder / p.name)
        return folder


def _is_record(raw: bytes) -> bool:
    """Whether one stored line (without its newline) reads as a record."""
    try:
        Record.from_dict(json.loads(raw.decode("utf-8")))
        return True
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ForeignRecord):
        return False


def check_output_dir(out: Path, what: str = "--out") -> None:
    """Before any work: OUT is (or can be made) a writable folder with some free space; ``what`` names it
    in the error (the flag, or e.g. "the store's folder")."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{what} {out} is a file, not a folder; give a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".attnbench-write-test-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to {what} {out}: {exc.strerror or exc}; give a writable folder")
    free = shutil.disk_usage(out).free
    if free < MIN_FREE_BYTES:
        raise UsageError(f"{what} {out} has only {free / 2**20:.1f} MiB free; free some space or give another folder")


class FolderLock:
    """An exclusive lock on a results folder (``fcntl.flock`` on OUT/.attnbench.lock, which holds the
    owner's pid): a second run on the same folder is refused, naming the process that holds it. The
    lock dies with its process, so a kill -9 never leaves a stale lock behind."""

    NAME = ".attnbench.lock"

    def __init__(self, out: Path):
        self.path = Path(out) / self.NAME
        self._fd: Optional[int] = None

    def __enter__(self) -> "FolderLock":
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UsageError(
                f"{self.path.parent} is in use by another attnbench run ({holder}); wait for it to "
                "finish or give another --out"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock; the file stays (removing it would race a new locker)
            self._fd = None

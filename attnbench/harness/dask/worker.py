"""The worker side of the Dask executor: what runs inside a Dask worker process for one task (the node gate
that keeps timings from overlapping, the cell itself, checkpoints written from the worker)."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from ...core.files import write_atomic
from ...records.record import Record
from ..execute import execute
from ..tasks import Task
from .options import (
    BUSY_LEASE_TIMEOUT,
    GATE_POLL_S,
    LEASE_TIMEOUT,
    MAX_BUSY,
    busy_name,
    relax_malloc_trimming,
    task_resources,
    timing_lock_name,
)


class NodeGate:
    """One node's timing exclusivity, for every run on the scheduler: a reader-writer lock from two named
    scheduler primitives. ``timing()``: hold the node's Lock, then wait until its busy-semaphore has no
    lease. ``busy()`` (counts, trainings): wait while the Lock is held, take a lease, and give it back and
    wait again if a timing took the Lock meanwhile. One instance per worker process and node."""

    _here: Dict[Tuple[str, str], "NodeGate"] = {}

    def __init__(self, host: str, lease_timeout: str):
        import dask
        from distributed import Lock, Semaphore

        with dask.config.set({"distributed.scheduler.locks.lease-timeout": lease_timeout}):
            self.lock = Lock(timing_lock_name(host))  # the lease is registered with the config in force here
            self.lock.register()
        with dask.config.set({"distributed.scheduler.locks.lease-timeout": BUSY_LEASE_TIMEOUT}):
            self.busy_leases = Semaphore(max_leases=MAX_BUSY, name=busy_name(host))
            self.busy_leases.register()

    @classmethod
    def here(cls, lease_timeout: str) -> "NodeGate":
        from distributed import get_worker

        key = (get_worker().address, lease_timeout)
        if key not in cls._here:
            cls._here[key] = cls(socket.gethostname(), lease_timeout)
        return cls._here[key]

    @contextlib.contextmanager
    def timing(self) -> Iterator[float]:
        t0 = time.monotonic()
        self.lock.acquire()
        try:
            while self.busy_leases.get_value() > 0:
                time.sleep(GATE_POLL_S)
            yield time.monotonic() - t0
        finally:
            self.lock.release()

    @contextlib.contextmanager
    def busy(self) -> Iterator[float]:
        t0 = time.monotonic()
        while True:
            while self.lock.locked():
                time.sleep(GATE_POLL_S)
            self.busy_leases.acquire()
            if not self.lock.locked():
                break
            self.busy_leases.release()  # a timing took the node between the look and the lease: let it have it
        try:
            yield time.monotonic() - t0
        finally:
            self.busy_leases.release()


@dataclass
class Outcome:
    """What a task sends back: its records, or (a training that paused) the checkpoint to go on from."""

    records: List[Record]
    worker: str
    state: Optional[bytes] = None  # a paused training's checkpoint bytes
    from_epoch: int = 0  # a training stretch: the epoch it started from
    epoch: int = 0  # ... and the epoch it paused after


def _worker_checkpoint(task: Task, worker, run_id: str, state: Optional[bytes]) -> Task:
    """The task with its checkpoint in the worker's own local directory, holding ``state`` (or nothing)."""
    folder = Path(worker.local_directory).resolve() / "attnbench-checkpoints" / run_id
    task = dataclasses.replace(task, checkpoint_dir=str(folder))
    if state is None:
        task.checkpoint_path.unlink(missing_ok=True)
    else:
        write_checkpoint(task, state)
    return task


def write_checkpoint(task: Task, state: bytes) -> None:
    """Put a shipped checkpoint at the task's checkpoint path, write-then-rename (a kill leaves no torn file)."""
    path = task.checkpoint_path
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, state)


def run_task_on_worker(
    task: Task, slot: str = "lock", run_id: str = "", lease_timeout: str = LEASE_TIMEOUT, state: Optional[bytes] = None
) -> Outcome:
    """Worker side: run a task inside its node's gate (timings exclusive, the rest shared), torch pinned to
    ``task.threads``; a training checkpoints into this worker's local directory and, when it pauses,
    sends the bytes back. Records say where and how they ran (``executor``)."""
    from distributed import get_worker

    from ...train.loop import TrainingPaused

    worker = get_worker()
    me = worker.address
    timing = task.exclusive and not task.training
    if task.exclusive:
        relax_malloc_trimming()
    if task.training:
        task = _worker_checkpoint(task, worker, run_id, state)
    gate = NodeGate.here(lease_timeout)
    info = {"kind": "dask", "worker": me, "node_share": task.threads}  # torch threads for cells that set none
    try:
        with gate.timing() if timing else gate.busy() as waited:
            try:
                records = execute(task)
            except TrainingPaused as paused:
                return Outcome([], me, task.checkpoint_path.read_bytes(), paused.start, paused.epoch)
    finally:
        if task.training:
            task.checkpoint_path.unlink(missing_ok=True)
    resources = task_resources(task, slot)
    if timing:
        info.update(slot=next(iter(resources), "lock"), lease_timeout=lease_timeout, slot_wait_s=round(waited, 3))
    elif task.training:
        info.update(
            slot=next(iter(resources)),
            node_shared=True,
            note="trained beside other trainings on this node: images/s are not exclusive",
        )
    stretch = (0, 0)
    if task.training and records and records[0].measurement is not None:
        stats = records[0].stats
        stretch = (int(stats.get("resumed_from_epoch") or 0), len(stats.get("curve") or []))
    return Outcome([dataclasses.replace(r, executor=dict(info)) for r in records], me, None, *stretch)

"""Dask options, checks and probes: the executor's settings, read in the coordinator before any work, and the
sizing rules both sides share (threads per worker, slots, lease names)."""

from __future__ import annotations

import os
import socket
from collections import Counter
from typing import Dict, List, Optional

from ...errors import (
    NoWorker,  # noqa: F401 (raised by the coordinator)
    UsageError,
)
from ..tasks import Task

CONNECT_TIMEOUT_S = 10.0  # an external scheduler that does not answer within this is an error


NO_WORKER_LIMIT_S = 60.0  # tasks no live worker can take for this long fail (watchdog)


WORKER_WAIT_S = 600.0  # an external scheduler: how long a run waits for its first worker (queued batch jobs)


LEASE_TIMEOUT = "5s"  # the node gate's leases: a dead holder frees them within this (+ validation)


LOCAL_LEASE_VALIDATION = "1s"  # how often a LocalCluster's scheduler expires stale leases


POLL_S = 0.5  # how often the coordinator checks the scheduler, the watchdog and what runs where


CHUNK_S = 10.0  # a training ships its checkpoint to the coordinator at the first epoch end after this long


WINDOW_PER_THREAD, MIN_WINDOW = 4, 16  # tasks on the scheduler at once, per kind of slot


MAX_BUSY = 1_000_000  # the busy-semaphore's leases: one per count or training running on a node


BUSY_LEASE_TIMEOUT = "30s"  # a dead count's lease holds timings back at most this long; a busy worker refreshes in time


GATE_POLL_S = 0.05


SLOT_RESOURCE, TRAIN_RESOURCE, GPU_RESOURCE = "latency_slot", "train_slot", "gpu"


SLOTS = ("lock", "resource")


SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")  # cross-process protocols distributed knows


def timing_lock_name(host: Optional[str] = None) -> str:
    return f"attnbench-timing-{host or socket.gethostname()}"


def busy_name(host: Optional[str] = None) -> str:
    return f"attnbench-busy-{host or socket.gethostname()}"


def relax_malloc_trimming(trim: int = 256 * 2**20, mmap: int = 32 * 2**20) -> bool:
    """Undo what Dask's worker default MALLOC_TRIM_THRESHOLD_=65536 does to timings.

    Setting it also freezes glibc's mmap threshold at 128 KiB, so every activation is mmap'ed and
    page-faulted afresh on each forward: ResNet-18 measured 2-3x slower on a worker than
    in-process here. Raise both thresholds (32 MiB is glibc's mmap maximum on 64-bit).
    """
    if not os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_TRIM_THRESHOLD, trim)) and bool(libc.mallopt(M_MMAP_THRESHOLD, mmap))
    except (OSError, AttributeError):  # not glibc
        return False


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask: a batch job's allocation, a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def worker_threads(workers: Dict[str, dict]) -> int:
    """Worker threads in the cluster (at least 1): how many tasks can run at once."""
    return sum(int(w.get("nthreads") or 1) for w in workers.values()) or 1


def node_shares(workers: Dict[str, dict], cpus: Dict[str, int]) -> Dict[str, int]:
    """Each worker's torch threads per task: its node's usable cores over all worker threads on that node."""
    per_host: Counter = Counter()
    for w in workers.values():
        per_host[w.get("host")] += int(w.get("nthreads") or 1)
    return {addr: max(1, int(cpus.get(addr) or 1) // max(1, per_host[w.get("host")])) for addr, w in workers.items()}


def jobqueue_worker_args(latency_slot: int = 1, train_slot: int = 1, gpu: int = 0) -> List[str]:
    """``worker_extra_args`` for dask-jobqueue (SLURMCluster, PBSCluster, ...): the resources as ONE
    comma-separated word. A job script joins the arguments with spaces, so ``"latency_slot=1 train_slot=1"``
    would reach ``dask worker`` as two words ("unexpected extra argument (train_slot=1)")."""
    resources = {SLOT_RESOURCE: latency_slot, TRAIN_RESOURCE: train_slot, GPU_RESOURCE: gpu}
    words = [f"{k}={v}" for k, v in resources.items() if v]
    return ["--resources", ",".join(words)] if words else []


def need_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"--executor dask needs Dask distributed ({exc}); pip install 'attnbench[dask]'") from None


def parse_scheduler_address(address: str) -> str:
    """``tcp://host:port`` (or ``host:port``, tcp implied) by distributed's own parser; anything else is one line."""
    need_distributed()
    from distributed.comm.addressing import parse_address, parse_host_port

    fix = "give --scheduler tcp://HOST:PORT (dask scheduler prints it; 8786 by default)"
    try:
        scheme, location = parse_address(address, strict=False)
        if scheme not in SCHEMES:
            raise ValueError(f"unknown protocol {scheme!r} (known: {', '.join(SCHEMES)})")
        if scheme != "ucx":
            host, _ = parse_host_port(location)
            if not host:
                raise ValueError("no host")
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--scheduler {address!r} is not a scheduler address ({exc}); {fix}") from None
    return f"{scheme}://{location}"


def check_dask_options(
    executor: str,
    scheduler: Optional[str] = None,
    workers: Optional[int] = None,
    slot: Optional[str] = None,
    worker_wait: Optional[float] = None,
) -> None:
    """Refuse bad executor options with one line each. ``None`` means "not given on the command line"."""
    if executor not in ("local", "dask"):
        raise UsageError(f"unknown executor {executor!r}; use --executor local or --executor dask")
    given = [
        name
        for name, value in (
            ("--scheduler", scheduler),
            ("--workers", workers),
            ("--slot", slot),
            ("--worker-wait", worker_wait),
        )
        if value is not None
    ]
    if executor != "dask":
        if given:
            verb, pronoun = ("applies", "it") if len(given) == 1 else ("apply", "them")
            raise UsageError(
                f"{', '.join(given)} only {verb} to --executor dask; add --executor dask or drop {pronoun}"
            )
        return
    if workers is not None and scheduler is not None:
        raise UsageError(
            "--workers sizes the LocalCluster started without --scheduler; with --scheduler, "
            "start workers yourself (dask worker ADDRESS) and drop --workers"
        )
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: a LocalCluster needs at least 1 worker; e.g. --workers 2")
    if worker_wait is not None and not (worker_wait == worker_wait and 0 < worker_wait < float("inf")):
        raise UsageError(
            f"--worker-wait {worker_wait}: give the seconds to wait for a first worker, e.g. --worker-wait 1800"
        )
    if slot is not None and slot not in SLOTS:
        raise UsageError(
            f"--slot {slot!r} is not 'lock' or 'resource'; use --slot lock (any cluster) "
            f"or --slot resource (workers started with --resources {SLOT_RESOURCE}=1)"
        )
    if scheduler is not None:
        parse_scheduler_address(scheduler)


def probe_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """One connection attempt with a bounded wait, so an unreachable scheduler is one line, not a hang."""
    import asyncio

    from distributed.comm import connect

    async def attempt():
        comm = await connect(address, timeout=timeout)
        await comm.close()

    try:
        asyncio.run(attempt())
    except (OSError, asyncio.TimeoutError) as exc:
        raise UsageError(
            f"cannot reach the Dask scheduler at {address} within {timeout:.0f} s "
            f"({type(exc).__name__}); start it (dask scheduler) or fix --scheduler"
        ) from None


def task_resources(task: Task, slot: str) -> Dict[str, int]:
    """What a task asks the scheduler for: trainings a training slot (or a GPU), timings the node's slot."""
    if task.training:
        device = str(task.cells[0].training.get("device") or task.cells[0].device)
        return {GPU_RESOURCE if device.startswith("cuda") else TRAIN_RESOURCE: 1}
    if task.exclusive and slot == "resource":
        return {SLOT_RESOURCE: 1}
    return {}

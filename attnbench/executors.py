"""Where tasks run: in this process (runner.local_executor) or on Dask distributed workers.

Dask (``pip install 'attnbench[dask]'``): counts (params, FLOPs) run freely on any worker;
timings take an exclusive per-node slot -- a ``distributed.Lock`` keyed by the worker's
hostname -- so two timings never share a machine, and they start only after every count of
the run has finished, so counts never share cores with them. Results stream back as they
finish and the coordinator alone writes the store. Without ``--scheduler`` a LocalCluster of process
workers (one thread each) is started and closed cleanly.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from .errors import AttnBenchError
from .runner import Task, error_info, execute, make_record

NO_WORKERS_TIMEOUT = "120s"  # a task no worker can take fails instead of waiting forever
SLOT_RESOURCE = "latency_slot"


def timing_lock_name(host: Optional[str] = None) -> str:
    return f"attnbench-timing-{host or socket.gethostname()}"


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


def run_task_on_worker(task: Task) -> List[dict]:
    """Worker side: timings hold their node's lock while they run, with malloc trimming relaxed."""
    if not task.exclusive:
        return execute(task)
    from distributed import Lock

    relax_malloc_trimming()
    with Lock(timing_lock_name()):
        return execute(task)


def execute_with_resource(task: Task) -> List[dict]:
    """Worker side, --slot resource: the scheduler already gives the task the node's slot."""
    relax_malloc_trimming()
    return execute(task)


def failed_records(task: Task, exc: BaseException, hint: str = "") -> List[dict]:
    """A task that never ran to completion (no worker could take it, the worker died): one failed record per cell."""
    err = error_info(exc)
    if hint:
        err["message"] = f"{err['message']}; {hint}"
    now = time.time()
    return [make_record(c, k, "failed", now, error=err) for c, k in zip(task.cells, task.keys)]


def dask_executor(scheduler: Optional[str] = None, n_workers: int = 2, local_directory: Path | str = "results/dask-scratch",
                  slot: str = "lock", no_workers_timeout: str = NO_WORKERS_TIMEOUT):
    """An executor for ``run_suite``: ``tasks -> iterator of (task, records)`` as they complete.

    ``slot="lock"`` (default) serialises timings per hostname with a distributed.Lock and works on
    any cluster; ``slot="resource"`` asks for the worker resource ``latency_slot=1`` instead (start
    exactly one worker per node with ``--resources latency_slot=1``). A request no worker can
    satisfy fails after ``no_workers_timeout`` and is stored as failed cells."""
    if slot not in ("lock", "resource"):
        raise AttnBenchError(f"slot {slot!r} is not 'lock' or 'resource'")
    try:
        import dask
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise AttnBenchError(f"--executor dask needs Dask distributed ({exc}); pip install 'attnbench[dask]'")

    scratch = Path(local_directory).resolve()

    def run(tasks: Iterable[Task]) -> Iterable[Tuple[Task, List[dict]]]:
        tasks = list(tasks)
        scratch.mkdir(parents=True, exist_ok=True)
        os.environ["DASK_TEMPORARY_DIRECTORY"] = str(scratch)  # workers spill and lock here, not in /tmp
        with dask.config.set({"temporary-directory": str(scratch),
                              "distributed.scheduler.no-workers-timeout": no_workers_timeout}):
            cluster = None
            try:
                if scheduler:
                    client = Client(scheduler, timeout="30s")
                else:
                    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, local_directory=str(scratch))
                    client = Client(cluster)
            except OSError as exc:
                raise AttnBenchError(f"cannot reach Dask scheduler {scheduler!r}: {exc}; check --scheduler")
            futures = {}
            try:
                # Counts first, then timings: a timing must not share the node's cores with counts
                # from this run (priorities alone would let another worker keep counting).
                for phase in ([t for t in tasks if not t.exclusive], [t for t in tasks if t.exclusive]):
                    batch = {}
                    for task in phase:
                        use_resource = task.exclusive and slot == "resource"
                        fut = client.submit(execute_with_resource if use_resource else run_task_on_worker, task, pure=False,
                                            key=f"attnbench-{task.keys[0]}",
                                            resources={SLOT_RESOURCE: 1} if use_resource else None)
                        batch[fut] = futures[fut] = task
                    for fut in as_completed(list(batch)):
                        task = batch[fut]
                        try:
                            records = fut.result()
                        except Exception as exc:  # no worker with the resource, a killed worker, ...
                            hint = (f"start one worker per node with --resources {SLOT_RESOURCE}=1"
                                    if task.exclusive and slot == "resource" else "see the Dask worker logs")
                            records = failed_records(task, exc, hint)
                        yield task, records
            finally:
                for fut in futures:
                    fut.cancel()
                client.close()
                if cluster is not None:
                    cluster.close()

    return run

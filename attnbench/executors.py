"""Where tasks run: in this process (runner.local_executor) or on Dask distributed workers.

Dask (``pip install 'attnbench[dask]'``): counts (params, FLOPs) run freely on any worker;
timings take an exclusive per-node slot -- a ``distributed.Lock`` keyed by the worker's
hostname -- so two timings never share a machine, and they are scheduled after the counts
(lower priority) so counts rarely overlap them. Results stream back as they finish and the
coordinator alone writes the store. Without ``--scheduler`` a LocalCluster of process
workers (one thread each) is started and closed cleanly.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from .errors import AttnBenchError
from .runner import Task, execute

NO_WORKERS_TIMEOUT = "120s"  # a task no worker can take fails instead of waiting forever


def timing_lock_name(host: Optional[str] = None) -> str:
    return f"attnbench-timing-{host or socket.gethostname()}"


def run_task_on_worker(task: Task) -> List[dict]:
    """Worker side: timings hold their node's lock while they run."""
    if not task.exclusive:
        return execute(task)
    from distributed import Lock

    with Lock(timing_lock_name()):
        return execute(task)


def dask_executor(scheduler: Optional[str] = None, n_workers: int = 2, local_directory: Path | str = "results/dask-scratch"):
    """An executor for ``run_suite``: ``tasks -> iterator of (task, records)`` as they complete."""
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
                              "distributed.scheduler.no-workers-timeout": NO_WORKERS_TIMEOUT}):
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
                for task in tasks:
                    fut = client.submit(run_task_on_worker, task, pure=False, priority=0 if task.exclusive else 10,
                                        key=f"attnbench-{task.keys[0]}")
                    futures[fut] = task
                for fut in as_completed(list(futures)):
                    yield futures[fut], fut.result()
            finally:
                for fut in futures:
                    fut.cancel()
                client.close()
                if cluster is not None:
                    cluster.close()

    return run

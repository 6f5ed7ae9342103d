"""Where tasks run: in this process (runner.local_executor) or on Dask distributed workers.

Dask (``pip install 'attnbench[dask]'``) runs a run in three phases, each finished before the next
starts, so counts never share cores with trainings or timings: counts (params, FLOPs) on any worker;
trainings, one per worker slot (resource ``train_slot=1``, or ``gpu=1`` for a CUDA training); timings,
one per node -- a ``distributed.Lock`` keyed by the worker's hostname (``--slot lock``) or the worker
resource ``latency_slot=1`` (``--slot resource``). Results stream back and the coordinator alone
writes the store. How runs fail is the run's own business, not the scheduler's config:

- options are checked (and an external scheduler probed, ``CONNECT_TIMEOUT_S``) before any cell runs;
- a watchdog fails the cells no live worker can take for ``NO_WORKER_LIMIT_S`` (missing resource,
  all workers gone) with the fix in their message, and the run goes on to its end;
- losing the scheduler raises ``SchedulerLost`` at once: no cell is stored as failed for it;
- the timing lock's lease is ``LEASE_TIMEOUT`` (a dead worker's slot frees within it plus the
  scheduler's lease-validation interval), and a task re-run after its worker died says so.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import uuid
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from .errors import AttnBenchError, SchedulerLost
from .records import Record
from .runner import Task, error_info, execute, make_record

CONNECT_TIMEOUT_S = 10.0  # an external scheduler that does not answer within this is an error
NO_WORKER_LIMIT_S = 60.0  # tasks no live worker can take for this long fail (watchdog)
LEASE_TIMEOUT = "5s"  # the per-node timing lock's lease: a dead holder frees it within this (+ validation)
LOCAL_LEASE_VALIDATION = "1s"  # how often a LocalCluster's scheduler expires stale leases
POLL_S = 0.5  # how often the coordinator checks the scheduler and the watchdog
SLOT_RESOURCE, TRAIN_RESOURCE, GPU_RESOURCE = "latency_slot", "train_slot", "gpu"
SLOTS = ("lock", "resource")
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")  # cross-process protocols distributed knows


class NoWorker(AttnBenchError):
    """No live worker could take a task for longer than the watchdog's limit."""


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


# ---- options, checked before anything starts ---------------------------------------------------

def need_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise AttnBenchError(f"--executor dask needs Dask distributed ({exc}); pip install 'attnbench[dask]'") from None


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
        raise AttnBenchError(f"--scheduler {address!r} is not a scheduler address ({exc}); {fix}") from None
    return f"{scheme}://{location}"


def check_dask_options(executor: str, scheduler: Optional[str] = None, workers: Optional[int] = None,
                       slot: Optional[str] = None) -> None:
    """Refuse bad executor options with one line each. ``None`` means "not given on the command line"."""
    if executor not in ("local", "dask"):
        raise AttnBenchError(f"unknown executor {executor!r}; use --executor local or --executor dask")
    given = [name for name, value in (("--scheduler", scheduler), ("--workers", workers), ("--slot", slot)) if value is not None]
    if executor != "dask":
        if given:
            verb, pronoun = ("applies", "it") if len(given) == 1 else ("apply", "them")
            raise AttnBenchError(f"{', '.join(given)} only {verb} to --executor dask; add --executor dask or drop {pronoun}")
        return
    if workers is not None and scheduler is not None:
        raise AttnBenchError("--workers sizes the LocalCluster started without --scheduler; with --scheduler, "
                             "start workers yourself (dask worker ADDRESS) and drop --workers")
    if workers is not None and workers < 1:
        raise AttnBenchError(f"--workers {workers}: a LocalCluster needs at least 1 worker; e.g. --workers 2")
    if slot is not None and slot not in SLOTS:
        raise AttnBenchError(f"--slot {slot!r} is not 'lock' or 'resource'; use --slot lock (any cluster) "
                             f"or --slot resource (workers started with --resources {SLOT_RESOURCE}=1)")
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
        raise AttnBenchError(f"cannot reach the Dask scheduler at {address} within {timeout:.0f} s "
                             f"({type(exc).__name__}); start it (dask scheduler) or fix --scheduler") from None


def make_executor(executor: str, scheduler: Optional[str], workers: Optional[int], slot: Optional[str],
                  local_directory: Path | str):
    """The CLI's one call: check the options, probe an external scheduler, return None (local) or a Dask executor."""
    check_dask_options(executor, scheduler, workers, slot)
    if executor == "local":
        return None
    need_distributed()
    if scheduler is not None:
        scheduler = parse_scheduler_address(scheduler)
        probe_scheduler(scheduler)
    return dask_executor(scheduler=scheduler, n_workers=workers or 2, local_directory=local_directory, slot=slot or "lock")


# ---- worker side -------------------------------------------------------------------------------

def task_resources(task: Task, slot: str) -> Dict[str, int]:
    """What a task asks the scheduler for: trainings a training slot (or a GPU), timings the node's slot."""
    if task.training:
        device = str(task.cells[0].training.get("device") or task.cells[0].device)
        return {GPU_RESOURCE if device.startswith("cuda") else TRAIN_RESOURCE: 1}
    if task.exclusive and slot == "resource":
        return {SLOT_RESOURCE: 1}
    return {}


def _count_attempt(name: str, me: str) -> Tuple[int, Optional[str]]:
    """Attempt number of this task and the worker of the previous attempt, kept on the scheduler:
    Dask re-runs a task elsewhere only when the worker running it was lost."""
    from distributed import Variable

    var = Variable(name)
    try:
        attempt, previous = var.get(timeout=0)
    except TimeoutError:
        attempt, previous = 0, None
    var.set((attempt + 1, me))
    return attempt + 1, previous


def _locked_execute(task: Task, lease_timeout: str) -> Tuple[List[Record], float]:
    """Hold the node's timing lock (short lease: a dead holder frees it soon) while the task runs."""
    import dask
    from distributed import Lock

    with dask.config.set({"distributed.scheduler.locks.lease-timeout": lease_timeout}):
        lock = Lock(timing_lock_name())  # the lease is registered with the config in force here
        t0 = time.monotonic()
        lock.acquire()
    waited = time.monotonic() - t0
    try:
        return execute(task), waited
    finally:
        lock.release()


def run_task_on_worker(task: Task, slot: str = "lock", run_id: str = "", lease_timeout: str = LEASE_TIMEOUT) -> List[Record]:
    """Worker side: counts run as they come; trainings and timings relax malloc trimming, count their
    attempts, and timings hold their node's slot. Records say where and how they ran (``executor``)."""
    from distributed import get_worker

    if not task.exclusive:
        return execute(task)
    me = get_worker().address
    attempt, previous = _count_attempt(f"attnbench-attempt-{run_id}-{task.keys[0]}", me)
    relax_malloc_trimming()
    info = {"kind": "dask", "worker": me, "host": socket.gethostname(), "attempt": attempt}
    resources = task_resources(task, slot)
    if resources:
        records = execute(task)
        info["slot"] = next(iter(resources))
    else:
        records, waited = _locked_execute(task, lease_timeout)
        info.update(slot="lock", lease_timeout=lease_timeout, slot_wait_s=round(waited, 3))
    if task.training:
        info["node_shared"] = True
        info["note"] = "trained beside other trainings on this node: images/s are not exclusive"
    if previous is not None:
        info["restarted"] = f"attempt {attempt}: worker {previous} was lost mid-task; re-run from scratch on {me}"
    restarted = info.get("restarted", "")
    return [dataclasses.replace(r, executor=dict(info), note="; ".join(filter(None, [r.note, restarted])))
            for r in records]


# ---- coordinator side --------------------------------------------------------------------------

def failed_records(task: Task, exc: BaseException, hint: str = "") -> List[Record]:
    """A task that never ran to completion (no worker could take it, the worker died): one failed record per cell."""
    err = error_info(exc)
    if hint:
        err["message"] = f"{err['message']}; {hint}"
    now = time.time()
    return [make_record(c, k, "failed", now, error=err) for c, k in zip(task.cells, task.keys)]


def no_worker_message(need: Dict[str, int], limit: float) -> str:
    if not need:
        return (f"no live Dask worker for {limit:.0f} s (all workers gone); "
                "start workers (dask worker ADDRESS) and rerun with --resume")
    (name, amount), = need.items()
    fix = {SLOT_RESOURCE: "start one worker per node with --resources latency_slot=1, or use --slot lock",
           TRAIN_RESOURCE: "start workers with --resources train_slot=1 (one per training slot)",
           GPU_RESOURCE: "start one worker per GPU with --resources gpu=1"}.get(name, f"start workers with --resources {name}={amount}")
    return f"no live Dask worker has the resource {name}={amount} for {limit:.0f} s; {fix}"


class Watchdog:
    """Fails tasks that no live worker can take for ``limit`` seconds, from the worker list alone,
    whatever the scheduler's own no-workers-timeout is (a scheduler we did not start may have none)."""

    def __init__(self, client, limit: float):
        self.client, self.limit = client, limit
        self.unmet_since: Dict[frozenset, float] = {}

    def stalled(self, needs: Iterable[frozenset]) -> List[frozenset]:
        info = self.client.scheduler_info(n_workers=-1)
        if "workers" not in info:  # no answer (the scheduler is going): no verdict this turn
            return []
        workers = info["workers"].values()
        now, out = time.monotonic(), []
        for need in set(needs):
            if any(all(w.get("resources", {}).get(k, 0) >= v for k, v in need) for w in workers):
                self.unmet_since.pop(need, None)
            elif now - self.unmet_since.setdefault(need, now) >= self.limit:
                out.append(need)
        return out


def _scheduler_gone(client) -> bool:
    return client.status not in ("running", "newly-created")


def _quiet_close(client, cluster) -> None:
    """Close without the client's reconnect tracebacks (the run has already said what happened)."""
    noisy = [logging.getLogger(n) for n in ("distributed.client", "distributed.utils", "distributed.core")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.CRITICAL)
    try:
        client.close(timeout=2)
        if cluster is not None:
            cluster.close(timeout=10)
    except Exception:  # closing a half-dead cluster: nothing left to save
        pass
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)


def local_cluster(n_workers: int, slot: str, scratch: Path):
    """A LocalCluster whose workers carry the slots tasks ask for: ``train_slot=1`` each, ``gpu=1`` on the
    first when CUDA exists, and ``latency_slot=1`` on the first with ``--slot resource`` (one node, one slot)."""
    import torch
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=0, threads_per_worker=1, processes=True, dashboard_address=":0",
                           local_directory=str(scratch))
    for i in range(n_workers):
        resources = {TRAIN_RESOURCE: 1}
        if i == 0 and torch.cuda.is_available():
            resources[GPU_RESOURCE] = 1
        if i == 0 and slot == "resource":
            resources[SLOT_RESOURCE] = 1
        cluster.worker_spec[i] = {**cluster.new_spec, "options": {**cluster.new_spec["options"], "resources": resources}}
    cluster.scale(n_workers)
    return cluster


def phases(tasks: List[Task]) -> List[List[Task]]:
    """Counts, then trainings, then timings: each phase ends before the next starts."""
    return [[t for t in tasks if not t.exclusive], [t for t in tasks if t.training],
            [t for t in tasks if t.exclusive and not t.training]]


def _connect(scheduler: Optional[str], n_workers: int, slot: str, scratch: Path, timeout: float):
    """A client on the given scheduler, or on a LocalCluster started here (closed by the caller)."""
    from distributed import Client

    cluster = None
    try:
        if scheduler:
            return Client(scheduler, timeout=timeout), None
        cluster = local_cluster(n_workers, slot, scratch)
        client = Client(cluster, timeout=timeout)
        client.wait_for_workers(n_workers, timeout=120)
        return client, cluster
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise AttnBenchError(f"cannot reach the Dask scheduler {scheduler or 'of the LocalCluster'} within {timeout:.0f} s "
                             f"({type(exc).__name__}); check --scheduler") from None


def _wait_some(pending: set) -> Tuple[set, set]:
    """Futures finished (or cancelled) within one poll, and the rest."""
    from distributed import wait

    try:
        return tuple(wait(pending, timeout=POLL_S, return_when="FIRST_COMPLETED"))
    except TimeoutError:
        return set(), pending
    except CancelledError:  # some were cancelled: by the scheduler's loss (the caller checks) or by hand
        done = {f for f in pending if f.done()}
        return done, pending - done


def _stream(needs: Dict, watchdog: Watchdog, check_scheduler) -> Iterable[Tuple[Task, List[Record]]]:
    """One phase's (task, records) as they finish; the watchdog's give-ups as failed records."""
    pending = set(needs)
    while pending:
        done, pending = _wait_some(pending)
        check_scheduler()
        for fut in done:
            if fut.status == "cancelled":  # only the scheduler's loss cancels our futures: let it show
                time.sleep(POLL_S)
                check_scheduler()
            yield needs[fut][0], _records_of(fut, needs[fut][0])
        try:
            stuck = watchdog.stalled(needs[f][1] for f in pending)
        except OSError:  # the scheduler went mid-call: said on the next turn
            continue
        for fut in [f for f in pending if needs[f][1] in stuck]:
            fut.cancel()
            pending.discard(fut)
            error = NoWorker(no_worker_message(dict(needs[fut][1]), watchdog.limit))
            yield needs[fut][0], failed_records(needs[fut][0], error)


def dask_executor(scheduler: Optional[str] = None, n_workers: int = 2, local_directory: Path | str = "results/dask-scratch",
                  slot: str = "lock", no_worker_limit: float = NO_WORKER_LIMIT_S, connect_timeout: float = CONNECT_TIMEOUT_S,
                  lease_timeout: str = LEASE_TIMEOUT):
    """An executor for ``run_suite``: ``tasks -> iterator of (task, records)`` as they complete.

    Raises ``SchedulerLost`` (a ``RunAborted``) when the scheduler goes away; cells no live worker
    can take for ``no_worker_limit`` seconds come back as failed records naming the fix."""
    check_dask_options("dask", scheduler, None if scheduler else n_workers, slot)
    need_distributed()
    import dask

    scratch = Path(local_directory).resolve()

    def run(tasks: Iterable[Task]) -> Iterable[Tuple[Task, List[Record]]]:
        tasks = list(tasks)
        total, stored, run_id = sum(len(t.cells) for t in tasks), 0, uuid.uuid4().hex[:12]
        scratch.mkdir(parents=True, exist_ok=True)
        os.environ["DASK_TEMPORARY_DIRECTORY"] = str(scratch)  # workers spill and lock here, not in /tmp
        with dask.config.set({"temporary-directory": str(scratch),
                              "distributed.scheduler.locks.lease-validation-interval": LOCAL_LEASE_VALIDATION}):
            client, cluster = _connect(scheduler, n_workers, slot, scratch, connect_timeout)
        address, watchdog, submitted = client.scheduler.address, Watchdog(client, no_worker_limit), []

        def check_scheduler():
            if _scheduler_gone(client):
                submitted.clear()  # nothing to cancel on a dead connection
                raise SchedulerLost(f"lost the Dask scheduler at {address}: {stored} of {total} cells stored, "
                                    "none marked failed for it; rerun with --resume to continue")

        try:
            for phase in phases(tasks):
                needs = {}
                for task in phase:
                    need = task_resources(task, slot)
                    fut = client.submit(run_task_on_worker, task, slot, run_id, lease_timeout, pure=False,
                                        key=f"attnbench-{run_id}-{task.keys[0]}", resources=need or None)
                    needs[fut] = (task, frozenset(need.items()))
                submitted += needs
                for task, records in _stream(needs, watchdog, check_scheduler):
                    yield task, records
                    stored += len(task.cells)
        finally:
            if submitted:
                client.cancel([f for f in submitted if not f.done()])
            _quiet_close(client, cluster)

    return run


def _records_of(fut, task: Task) -> List[Record]:
    """A finished task's records, or failed records saying why it never finished (worker crashes)."""
    try:
        return fut.result()
    except Exception as exc:  # KilledWorker (it took down several workers), cancelled by hand, a worker-side bug
        return failed_records(task, exc, "see the Dask worker logs")

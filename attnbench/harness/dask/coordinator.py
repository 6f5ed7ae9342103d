"""The coordinator side of the Dask executor: submits cells, watches workers and the scheduler, stores results
as they land, and never loses a finished cell when the cluster goes away (``attnbench run --executor dask``)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

from ...errors import AttnBenchError, SchedulerLost
from ...records.record import Record
from ..execute import error_info, make_record
from ..tasks import Task
from .options import (
    CHUNK_S,
    CONNECT_TIMEOUT_S,
    GPU_RESOURCE,
    LEASE_TIMEOUT,
    LOCAL_LEASE_VALIDATION,
    MIN_WINDOW,
    NO_WORKER_LIMIT_S,
    POLL_S,
    SLOT_RESOURCE,
    TRAIN_RESOURCE,
    WINDOW_PER_THREAD,
    WORKER_WAIT_S,
    NoWorker,
    check_dask_options,
    need_distributed,
    node_shares,
    parse_scheduler_address,
    probe_scheduler,
    task_resources,
    usable_cpus,
    worker_threads,
)
from .worker import Outcome, run_task_on_worker, write_checkpoint


def make_executor(
    executor: str,
    scheduler: Optional[str],
    workers: Optional[int],
    slot: Optional[str],
    local_directory: Path | str,
    worker_wait: Optional[float] = None,
):
    """The CLI's one call: check the options, probe an external scheduler, return None (local) or a Dask executor."""
    check_dask_options(executor, scheduler, workers, slot, worker_wait)
    if executor == "local":
        return None
    need_distributed()
    if scheduler is not None:
        scheduler = parse_scheduler_address(scheduler)
        probe_scheduler(scheduler)
    return dask_executor(
        scheduler=scheduler,
        n_workers=workers or 2,
        local_directory=local_directory,
        slot=slot or "lock",
        worker_wait=WORKER_WAIT_S if worker_wait is None else worker_wait,
    )


def failed_records(task: Task, exc: BaseException, hint: str = "") -> List[Record]:
    """A task that never ran to completion (no worker could take it, the worker died): one failed record per cell."""
    err = error_info(exc)
    if hint:
        err["message"] = f"{err['message']}; {hint}"
    now = time.time()
    return [make_record(c, k, "failed", now, error=err) for c, k in zip(task.cells, task.keys)]


def no_worker_message(need: Dict[str, int], limit: float) -> str:
    if not need:
        return (
            f"no live Dask worker for {limit:.0f} s (all workers gone); "
            "start workers (dask worker ADDRESS) and rerun with --resume"
        )
    ((name, amount),) = need.items()
    fix = {
        SLOT_RESOURCE: "start one worker per node with --resources latency_slot=1, or use --slot lock",
        TRAIN_RESOURCE: "start workers with --resources train_slot=1 (one per training slot)",
        GPU_RESOURCE: "start one worker per GPU with --resources gpu=1",
    }.get(name, f"start workers with --resources {name}={amount}")
    return f"no live Dask worker has the resource {name}={amount} for {limit:.0f} s; {fix}"


class Watchdog:
    """Fails tasks that no live worker can take for ``limit`` seconds, from the worker list alone,
    whatever the scheduler's own no-workers-timeout is (a scheduler we did not start may have none)."""

    def __init__(self, client, limit: float):
        self.client, self.limit = client, limit
        self.unmet_since: Dict[frozenset, float] = {}

    def stalled(self, needs: Iterable[frozenset], workers: Optional[Dict[str, dict]] = None) -> List[frozenset]:
        if workers is None:
            try:
                workers = live_workers(self.client)
            except OSError:  # no answer (the scheduler is going): no verdict this turn
                return []
        now, out = time.monotonic(), []
        for need in set(needs):
            if any(all(w.get("resources", {}).get(k, 0) >= v for k, v in need) for w in workers.values()):
                self.unmet_since.pop(need, None)
            elif now - self.unmet_since.setdefault(need, now) >= self.limit:
                out.append(need)
        return out


def live_workers(client) -> Dict[str, dict]:
    """The scheduler's workers now, from a call of our own: ``client.scheduler_info()`` returns the client's
    shared cache, which its periodic refresh may have just replaced with a worker-less summary."""
    return dict(client.sync(client.scheduler.identity, n_workers=-1).get("workers") or {})


def _scheduler_gone(client) -> bool:
    return client.status not in ("running", "newly-created")


@contextlib.contextmanager
def _quiet(*names: str):
    """Silence distributed's own loggers for a moment (reconnect tracebacks while a cluster closes)."""
    noisy = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)


def _quiet_close(client, cluster) -> None:
    """Close without the client's reconnect tracebacks (the run has already said what happened)."""
    with _quiet(
        "distributed.client",
        "distributed.utils",
        "distributed.core",
        "distributed.nanny",
        "distributed.scheduler",
        "distributed.worker",
    ):
        try:
            client.close(timeout=2)
            if cluster is not None:
                cluster.close(timeout=10)
        except Exception:  # closing a half-dead cluster: nothing left to save
            pass


def local_cluster(n_workers: int, slot: str, scratch: Path):
    """A LocalCluster whose workers carry the slots tasks ask for: ``train_slot=1`` each, ``gpu=1`` on the
    first when CUDA exists, and ``latency_slot=1`` on the first with ``--slot resource`` (one node, one slot)."""
    import torch
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=0, threads_per_worker=1, processes=True, dashboard_address=":0", local_directory=str(scratch)
    )
    for i in range(n_workers):
        resources = {TRAIN_RESOURCE: 1}
        if i == 0 and torch.cuda.is_available():
            resources[GPU_RESOURCE] = 1
        if i == 0 and slot == "resource":
            resources[SLOT_RESOURCE] = 1
        cluster.worker_spec[i] = {
            **cluster.new_spec,
            "options": {**cluster.new_spec["options"], "resources": resources},
        }
    cluster.scale(n_workers)
    return cluster


def phases(tasks: List[Task]) -> List[List[Task]]:
    """Counts, then trainings, then timings: each phase ends before the next starts."""
    return [
        [t for t in tasks if not t.exclusive],
        [t for t in tasks if t.training],
        [t for t in tasks if t.exclusive and not t.training],
    ]


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
        raise AttnBenchError(
            f"cannot reach the Dask scheduler {scheduler or 'of the LocalCluster'} within {timeout:.0f} s "
            f"({type(exc).__name__}); check --scheduler"
        ) from None


def _short(address: str) -> str:
    return address.split("://", 1)[-1]


def running_text(running: List[Tuple[str, str]], waiting: int, shown: int = 3) -> str:
    """'2 on workers: resnet18/se/macs on 10.0.0.5:40111 · ...' for the progress line: the cells the scheduler
    has given to a worker (running, or next in that worker's queue)."""
    if not running:
        return f"{waiting} queued, waiting for a worker" if waiting else "finishing"
    head = " · ".join(f"{name} on {_short(worker)}" for name, worker in running[:shown])
    more = f" · +{len(running) - shown} more" if len(running) > shown else ""
    return f"{len(running)} on workers: {head}{more}"


@dataclass
class Flight:
    """One task on its way through the cluster, as the coordinator follows it."""

    task: Task
    need: frozenset
    future: object = None
    lost: List[str] = field(default_factory=list)  # workers that died holding its current attempt (scheduler events)
    attempts: int = 1  # 1 + every worker lost while it held this task (or a stretch of it)
    epoch: int = 0  # a training: the epoch its current stretch starts from
    chunks: List[List] = field(default_factory=list)  # a training: [from epoch, to epoch, worker] per stretch
    earlier: bool = False  # a training: its first stretch got an earlier run's checkpoint
    notes: List[str] = field(default_factory=list)  # how it was re-run or resumed, for the record's note
    resumed_from: int = 0  # a training: the epoch it last resumed from after an interruption

    @property
    def name(self) -> str:
        if not self.task.training:
            return self.task.name
        return f"{self.task.name} (epoch {self.epoch + 1}.. of {self.task.cells[0].training.get('epochs', 1)})"


class DaskExecutor:
    """An executor for ``run_suite``: ``tasks -> iterator of (task, records)`` as they complete.

    ``threads`` (read by run_suite before it plans) connects, waits for workers and returns their share of
    a node. ``on_progress(text)``, when set, is told at every poll which cells run where. Raises
    ``SchedulerLost`` (a ``RunAborted``) when the scheduler goes away; cells no live worker can take for
    ``no_worker_limit`` seconds come back as failed records naming the fix."""

    def __init__(
        self,
        scheduler: Optional[str] = None,
        n_workers: int = 2,
        local_directory: Path | str = "results/dask-scratch",
        slot: str = "lock",
        no_worker_limit: float = NO_WORKER_LIMIT_S,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        lease_timeout: str = LEASE_TIMEOUT,
        worker_wait: float = WORKER_WAIT_S,
        chunk_s: float = CHUNK_S,
    ):
        check_dask_options("dask", scheduler, None if scheduler else n_workers, slot)
        need_distributed()
        self.scheduler, self.n_workers, self.slot = scheduler, n_workers, slot
        self.scratch = Path(local_directory).resolve()
        self.no_worker_limit, self.connect_timeout, self.lease_timeout = no_worker_limit, connect_timeout, lease_timeout
        self.worker_wait, self.chunk_s = worker_wait, chunk_s
        self.on_progress: Optional[Callable[[str], None]] = None
        self.client = self.cluster = None
        self._threads: Optional[int] = None
        self._slots = 1  # worker threads in the cluster at the last poll (sizes the window)
        self._inbox: "queue.SimpleQueue" = queue.SimpleQueue()  # finished futures, and workers lost with our tasks

    def _fetched(self, fut) -> None:
        """A future's done-callback (Dask's callback thread): fetch its result there, so a slow worker never
        holds up the coordinator's loop, its polls or the progress line."""
        try:
            out = fut.result()
        except BaseException as exc:  # noqa: B902 -- a cancelled or failed task: _landed says why
            out = exc
        self._inbox.put(("done", fut, out))

    def _on_event(self, event) -> None:
        """The scheduler's event log (topic ``all``): a worker that died (not retired) and the tasks it held."""
        _, msg = event
        if isinstance(msg, dict) and msg.get("action") == "remove-worker" and not msg.get("expected"):
            self._inbox.put(("lost", msg.get("worker", "?"), [str(k) for k in msg.get("processing-tasks") or ()]))

    # -- lifetime --

    def start(self) -> None:
        """Connect (or start a LocalCluster), wait for a worker, learn the node share. Idempotent."""
        if self.client is not None:
            return
        import dask

        self.scratch.mkdir(parents=True, exist_ok=True)
        os.environ["DASK_TEMPORARY_DIRECTORY"] = str(self.scratch)  # a LocalCluster's workers spill and lock here
        with dask.config.set(
            {
                "temporary-directory": str(self.scratch),
                "distributed.scheduler.locks.lease-validation-interval": LOCAL_LEASE_VALIDATION,
            }
        ):
            self.client, self.cluster = _connect(
                self.scheduler, self.n_workers, self.slot, self.scratch, self.connect_timeout
            )
        try:
            with contextlib.suppress(Exception):  # a scheduler without an event log: attempts go uncounted
                self.client.subscribe_topic("all", self._on_event)
            workers = self._wait_for_workers()
            self._threads = self._share(workers)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):  # else the scheduler's own "remove-client" event finds us gone
                self.client.unsubscribe_topic("all")
            _quiet_close(self.client, self.cluster)
        self.client = self.cluster = None

    @property
    def threads(self) -> int:
        self.start()
        return self._threads or 1

    def _progress(self, text: str) -> None:
        if self.on_progress is not None:
            self.on_progress(text)

    def _wait_for_workers(self) -> Dict[str, dict]:
        """The workers once at least one has joined; a stated timeout (queued batch jobs), one line if it passes."""
        address, t0 = self.client.scheduler.address, time.monotonic()
        while True:
            if _scheduler_gone(self.client):
                raise AttnBenchError(f"lost the Dask scheduler at {address} while waiting for workers; nothing ran")
            workers = live_workers(self.client)
            if workers:
                return workers
            waited = time.monotonic() - t0
            if waited >= self.worker_wait:
                raise AttnBenchError(
                    f"no Dask worker joined the scheduler at {address} within {self.worker_wait:.0f} s; "
                    "start workers (dask worker ADDRESS, or check your batch jobs with squeue) or give "
                    "--worker-wait more seconds; nothing ran"
                )
            self._progress(f"waiting for Dask workers at {_short(address)} ({waited:.0f} of {self.worker_wait:.0f} s)")
            time.sleep(min(POLL_S, self.worker_wait - waited))

    def _share(self, workers: Dict[str, dict]) -> int:
        """Torch threads per task: the smallest share of a node over the workers there now."""
        try:
            cpus = self.client.run(usable_cpus, on_error="ignore")
        except Exception:  # a worker left mid-call: assume one core each
            cpus = {}
        self._slots = worker_threads(workers)
        return min(node_shares(workers, cpus).values(), default=1)

    # -- the run --

    def __call__(self, tasks: Iterable[Task]) -> Iterator[Tuple[Task, List[Record]]]:
        tasks = list(tasks)
        self.start()
        run_id = uuid.uuid4().hex[:12]
        threads = self._threads
        tasks = [t if t.threads else dataclasses.replace(t, threads=threads) for t in tasks]
        total, self._stored = sum(len(t.cells) for t in tasks), 0
        try:
            for phase in phases(tasks):
                for task, records in self._phase(phase, run_id, total):
                    yield task, records
                    self._stored += len(task.cells)
        finally:
            self.close()

    def _check_scheduler(self, total: int) -> None:
        if self.client is not None and _scheduler_gone(self.client):
            address = self.client.scheduler.address
            raise SchedulerLost(
                f"lost the Dask scheduler at {address}: {self._stored} of {total} cells stored, "
                "none marked failed for it; rerun with --resume to continue"
            )

    def _phase(self, tasks: List[Task], run_id: str, total: int) -> Iterator[Tuple[Task, List[Record]]]:
        """One phase: submit within the window, take results as they land, poll the cluster every POLL_S."""
        waiting: Dict[frozenset, Deque[Flight]] = {}
        for task in tasks:
            flight = Flight(task, frozenset(task_resources(task, self.slot).items()))
            waiting.setdefault(flight.need, deque()).append(flight)
        flying: Dict[str, Flight] = {}
        done = self._inbox
        watchdog, next_poll = Watchdog(self.client, self.no_worker_limit), 0.0
        try:
            while flying or any(waiting.values()):
                self._top_up(waiting, flying, done, run_id)
                try:
                    item = done.get(timeout=max(0.0, next_poll - time.monotonic()))
                except queue.Empty:
                    item = None
                if (
                    item is not None and item[0] == "lost"
                ):  # (lost, worker, keys): before any re-run of those keys lands
                    for key in item[2]:
                        if key in flying:
                            flying[key].lost.append(item[1])
                elif item is not None:  # (done, future, result or exception)
                    flight = flying.pop(item[1].key, None)
                    if flight is not None:
                        records = self._landed(flight, item[1], item[2], flying, done, run_id, total)
                        if records is not None:
                            yield flight.task, records
                item = None  # released: the worker drops the result, the scheduler forgets the task
                if time.monotonic() >= next_poll:
                    yield from self._poll(waiting, flying, watchdog, total)
                    next_poll = time.monotonic() + POLL_S
        finally:
            if flying and self.client is not None and not _scheduler_gone(self.client):
                with contextlib.suppress(Exception):
                    self.client.cancel(
                        [f for f in (getattr(fl, "future", None) for fl in flying.values()) if f is not None]
                    )

    def _top_up(self, waiting, flying: Dict[str, "Flight"], done, run_id: str) -> None:
        window = max(MIN_WINDOW, WINDOW_PER_THREAD * self._slots)
        in_air = Counter(f.need for f in flying.values())
        for need, line in waiting.items():
            while line and in_air[need] < window:
                flight = line.popleft()
                state = None
                path = flight.task.checkpoint_path
                if flight.task.training and path is not None and path.is_file():  # an earlier run's (or a local run's)
                    state, flight.earlier = path.read_bytes(), True
                self._submit(flight, flying, done, run_id, state)
                in_air[need] += 1

    def _submit(
        self, flight: Flight, flying, done, run_id: str, state: Optional[bytes] = None, near: Optional[str] = None
    ) -> None:
        import dask

        task = flight.task
        if task.training and task.checkpoint_path is not None:
            task = dataclasses.replace(task, pause_after_s=self.chunk_s)
        key = f"attnbench-{run_id}-{task.keys[0]}" + (f"-e{flight.epoch}" if task.training else "")
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": "4GB"}):  # a checkpoint rides along
            fut = self.client.submit(
                run_task_on_worker,
                task,
                self.slot,
                run_id,
                self.lease_timeout,
                state,
                key=key,
                pure=False,
                resources=dict(flight.need) or None,
                workers=[near] if near else None,
                allow_other_workers=bool(near),
            )
        flight.future, flight.lost = fut, []
        flying[key] = flight
        fut.add_done_callback(self._fetched)  # one callback per future, not one background task per poll

    def _landed(self, flight: Flight, fut, out, flying, done, run_id: str, total: int) -> Optional[List[Record]]:
        """A finished future and its result: the records (annotated), or None when a training paused and goes on."""
        flight.future = None
        if isinstance(out, BaseException):  # KilledWorker (it took down several workers), cancelled, a worker-side bug
            if fut.status == "cancelled":  # the scheduler's loss cancels our futures: let it show
                time.sleep(POLL_S)
                self._check_scheduler(total)
            return failed_records(flight.task, out, "see the Dask worker logs")
        self._note(flight, out)
        if out.epoch:  # a training stretch that trained: from which epoch to which, where
            flight.chunks.append([out.from_epoch, out.epoch, out.worker])
        if out.state is not None:  # a training stretch: keep its checkpoint here, hand it to the next stretch
            write_checkpoint(flight.task, out.state)
            flight.epoch = out.epoch
            self._submit(flight, flying, done, run_id, out.state, near=out.worker)
            return None
        if flight.task.checkpoint_path is not None and all(r.ok for r in out.records):
            flight.task.checkpoint_path.unlink(missing_ok=True)  # the cell is done: its checkpoint has served
        return self._annotate(flight, out)

    @staticmethod
    def _note(flight: Flight, out: Outcome) -> None:
        """What the stretch that just landed says about how it started: from an earlier run's checkpoint,
        or again after its worker was lost (resumed from the epoch shipped last, or from scratch)."""
        if flight.task.training and flight.earlier and not flight.chunks and out.from_epoch:
            flight.notes.append(f"resumed from epoch {out.from_epoch} (checkpoint of an earlier run)")
            flight.resumed_from = out.from_epoch
        if flight.lost:
            who = f"worker {flight.lost[0]} was" if len(flight.lost) == 1 else f"workers {', '.join(flight.lost)} were"
            if flight.task.training:
                how = f"resumed from epoch {out.from_epoch}" if out.from_epoch else "re-run from scratch"
                flight.notes.append(f"{who} lost mid-training; {how} on {out.worker}")
                flight.resumed_from = out.from_epoch
            else:
                flight.notes.append(f"{who} lost while it held the task; re-run from scratch on {out.worker}")
            flight.attempts += len(flight.lost)
            flight.lost = []

    @staticmethod
    def _annotate(flight: Flight, out: Outcome) -> List[Record]:
        """Attempts, how it resumed, and (a training) its stretches and honest ``resumed_from_epoch``."""
        task = flight.task
        if not task.exclusive:
            return out.records
        records = []
        for r in out.records:
            info = {**r.executor, "attempt": flight.attempts}
            if flight.notes:
                info["restarted"] = "; ".join(flight.notes)
            if task.training:
                info["chunks"] = flight.chunks
                if task.checkpoint_path is not None:
                    info["checkpoint"] = str(task.checkpoint_path)
                if (
                    r.measurement is not None
                ):  # where it last resumed after an interruption, not where its last stretch began
                    stats = {**r.measurement.stats, "resumed_from_epoch": flight.resumed_from}
                    r = dataclasses.replace(r, measurement=dataclasses.replace(r.measurement, stats=stats))
            records.append(dataclasses.replace(r, executor=info, note="; ".join(filter(None, [r.note] + flight.notes))))
        return records

    def _poll(self, waiting, flying: Dict[str, Flight], watchdog: Watchdog, total: int):
        """Scheduler alive? Which of our tasks run where (and which lost their worker)? Stalled needs fail."""
        self._check_scheduler(total)
        try:
            with _quiet("distributed.client"):
                workers = live_workers(self.client)
                processing = self.client.processing()
        except (OSError, TimeoutError, AttributeError):  # the scheduler went mid-call: said on the next turn
            return
        self._slots = worker_threads(workers)
        running = []
        for worker, keys in sorted(processing.items()):
            for key in keys:
                flight = flying.get(key)
                if flight is not None:
                    running.append((flight.name, worker))
        self._progress(running_text(running, sum(len(line) for line in waiting.values())))
        stuck = watchdog.stalled(
            [f.need for f in flying.values()] + [n for n, line in waiting.items() if line], workers
        )
        for need in stuck:
            error = NoWorker(no_worker_message(dict(need), watchdog.limit))
            for key in [k for k, f in flying.items() if f.need == need]:
                flight = flying.pop(key)
                if flight.future is not None:
                    flight.future.cancel()
                    flight.future = None
                yield flight.task, failed_records(flight.task, error)
            line = waiting.get(need) or deque()
            while line:
                flight = line.popleft()
                yield flight.task, failed_records(flight.task, error)


dask_executor = DaskExecutor  # the name callers and docs/cluster.md use

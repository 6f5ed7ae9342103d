"""Issue #14: a real `dask scheduler` and `dask worker` processes, started and killed by the test.

Each case must end as documented, with every cell stored at most once and never stored as failed
for a fault that is not the cell's: a worker killed mid-timing (re-run elsewhere, says so), the
scheduler killed (SchedulerLost at once), no worker with the resource, all workers gone (the
watchdog fails the cells with the fix and the run ends).
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("distributed")

from attnbench.errors import SchedulerLost  # noqa: E402
from attnbench.executors import dask_executor, timing_lock_name  # noqa: E402
from attnbench.runner import cell_keys, make_tasks  # noqa: E402
from attnbench.suite import parse_suite, plan  # noqa: E402

pytestmark = pytest.mark.slow

TIMING = {"threads": 1, "warmup": 1, "rounds": 2, "min_time": 0.01, "min_iters": 2}
SUITE = {"name": "faults", "backbones": ["resnet18"], "modules": ["none", "se"], "input_size": 32,
         "metrics": ["params", "macs", "latency_cpu"], "latency": TIMING}
# The scheduler expires stale leases every second (the README's advice for external schedulers).
SCHEDULER_ENV = {"DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_VALIDATION_INTERVAL": "1s"}


class Cluster:
    """A scheduler and workers as separate processes; everything is killed at the end."""

    def __init__(self, tmp_path):
        self.tmp, self.procs, self.file = tmp_path, [], tmp_path / "scheduler.json"
        self.scheduler = self._start("distributed.cli.dask_scheduler", "--port", "0", "--no-dashboard",
                                     "--scheduler-file", str(self.file), env=SCHEDULER_ENV)
        deadline = time.monotonic() + 60
        while not self.file.exists() or not self.file.read_text().strip():
            assert time.monotonic() < deadline and self.scheduler.poll() is None, "scheduler did not start"
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written in one go, but give the writer a moment
        self.address = json.loads(self.file.read_text())["address"]

    def _start(self, module, *args, env=None):
        log = open(self.tmp / f"{module.rsplit('.', 1)[-1]}-{len(self.procs)}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, cwd=self.tmp)
        self.procs.append(proc)
        return proc

    def worker(self, *resources):
        extra = ["--resources", " ".join(resources)] if resources else []
        return self._start("distributed.cli.dask_worker", "--scheduler-file", str(self.file), "--nthreads", "1",
                           "--no-nanny", "--no-dashboard", *extra)

    def wait_for_workers(self, n):
        from distributed import Client

        with Client(self.address, timeout=30) as c:
            c.wait_for_workers(n, timeout=60)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def _tasks(spec):
    cells = plan(parse_suite(spec, "faults.yaml"))
    return make_tasks(cells, cell_keys(cells))


def _drain(executor, tasks, records=None, on_records=None):
    """What run_suite does with an executor's stream, minus the store: every record, in order."""
    records = [] if records is None else records
    for _, recs in executor(tasks):
        records += recs
        if on_records:
            on_records()
    return records


def _once_each(records, tasks):
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)), "a cell was stored twice"
    assert set(keys) <= {k for t in tasks for k in t.keys}


def test_no_worker_can_take_the_tasks_they_fail_with_the_fix_and_the_run_ends(cluster, tmp_path):
    """Missing resource (external scheduler: no no-workers-timeout of ours there), then all workers gone."""
    worker = cluster.worker()  # no latency_slot anywhere
    cluster.wait_for_workers(1)
    tasks = _tasks(SUITE)
    ex = dask_executor(scheduler=cluster.address, slot="resource", local_directory=tmp_path / "s", no_worker_limit=3)
    arrived = []
    records = _drain(ex, tasks, on_records=lambda: arrived.append(time.monotonic()))
    _once_each(records, tasks)
    assert len(records) == 6
    assert {(r.metric, r.status) for r in records} == {("params", "ok"), ("macs", "ok"), ("latency_cpu", "failed")}
    err = next(r.error for r in records if r.status == "failed")
    assert err["type"] == "NoWorker"
    assert err["message"] == ("no live Dask worker has the resource latency_slot=1 for 3 s; "
                              "start one worker per node with --resources latency_slot=1, or use --slot lock")
    # 4 count tasks, then the 3 s limit: the run ends soon after the last count, not never
    assert len(arrived) == 5 and arrived[-1] - arrived[-2] < 3 + 4, arrived

    worker.kill()
    worker.wait()
    t0 = time.monotonic()
    records = _drain(dask_executor(scheduler=cluster.address, local_directory=tmp_path / "s", no_worker_limit=3), tasks)
    took = time.monotonic() - t0
    _once_each(records, tasks)
    assert [r.status for r in records] == ["failed"] * 6
    assert {r.error["message"] for r in records} == {
        "no live Dask worker for 3 s (all workers gone); start workers (dask worker ADDRESS) and rerun with --resume"}
    assert took < 3 + 6, took


def test_killing_the_scheduler_ends_the_run_at_once_with_nothing_failed(cluster, tmp_path):
    cluster.worker()
    cluster.wait_for_workers(1)
    tasks = _tasks(dict(SUITE, backbones=["resnet18", "resnet34"], modules=["none", "se", "cbam"]))
    ex = dask_executor(scheduler=cluster.address, local_directory=tmp_path / "s", no_worker_limit=30)
    killed, records = [], []

    def kill_after_first():
        if not killed:
            cluster.scheduler.send_signal(signal.SIGKILL)
            killed.append(time.monotonic())

    with pytest.raises(SchedulerLost) as err:
        _drain(ex, tasks, records, kill_after_first)
    took = time.monotonic() - killed[0]
    message = str(err.value)
    assert message.startswith(f"lost the Dask scheduler at {cluster.address}: ")
    assert f"{len(records)} of 18 cells stored" in message and "rerun with --resume" in message and "\n" not in message
    assert err.value.exit_code == 3
    assert all(r.status == "ok" for r in records) and 1 <= len(records) < 18
    _once_each(records, tasks)
    assert took < 5, f"took {took:.1f} s to notice the scheduler was gone"


def test_worker_killed_mid_timing_reruns_elsewhere_and_says_so(cluster, tmp_path):
    from distributed import Client

    # enough rounds that the timing is still running when the test kills its worker
    spec = dict(SUITE, metrics=["latency_cpu"], latency=dict(TIMING, rounds=40, min_time=0.1))
    first, second = cluster.worker(), cluster.worker()
    cluster.wait_for_workers(2)
    tasks = _tasks(spec)
    ex = dask_executor(scheduler=cluster.address, local_directory=tmp_path / "s", no_worker_limit=30)
    pids = {}

    def kill_lock_holder():
        with Client(cluster.address, timeout=30) as c:
            deadline = time.monotonic() + 60
            name = timing_lock_name()

            def holders(dask_scheduler):  # read the scheduler's lease table; registering a Lock here would set its lease
                return len(dask_scheduler.extensions["semaphores"].leases.get(name, {}))

            while not c.run_on_scheduler(holders):
                assert time.monotonic() < deadline, "the timing never took its node's lock"
                time.sleep(0.1)
            (addr, keys), = [(w, ks) for w, ks in c.processing().items() if ks]
            pid = c.run(os.getpid, workers=[addr])[addr]
        os.kill(pid, signal.SIGKILL)
        pids["killed"], pids["at"] = pid, time.monotonic()

    import threading

    killer = threading.Thread(target=kill_lock_holder)
    killer.start()
    records = _drain(ex, tasks)
    killer.join()
    _once_each(records, tasks)
    assert [r.status for r in records] == ["ok", "ok"]
    survivor = ({first.pid, second.pid} - {pids["killed"]}).pop()
    for r in records:
        assert r.pid == survivor and r.executor["attempt"] == 2
        assert "was lost mid-task; re-run from scratch" in r.executor["restarted"] and r.note == r.executor["restarted"]
        # the dead holder's lease (5 s) expired within lease + validation interval (1 s) + polling
        assert r.executor["slot_wait_s"] < 9, r.executor


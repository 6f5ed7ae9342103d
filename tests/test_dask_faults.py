"""Issue #14: a real `dask scheduler` and `dask worker` processes, started and killed by the test.

Each case must end as documented, with every cell stored at most once and never stored as failed
for a fault that is not the cell's: a worker killed mid-timing (re-run elsewhere, says so), the
scheduler killed (SchedulerLost at once), no worker with the resource, all workers gone (the
watchdog fails the cells with the fix and the run ends).

Issue #23 (workers are `--no-nanny`, so nothing but attnbench sets their threads): every cell runs at the
workers' share of the node and its key says so; a worker killed mid-training is resumed on another worker,
in another folder, from the last epoch shipped to the coordinator; two runs on one scheduler never run a
count on a node while the other times there, and leave nothing behind on the scheduler.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from attnbench.errors import AttnBenchError, SchedulerLost  # noqa: E402
from attnbench.harness.dask.coordinator import dask_executor
from attnbench.harness.dask.options import timing_lock_name, usable_cpus  # noqa: E402
from attnbench.harness.env import fingerprint  # noqa: E402
from attnbench.harness.runner import run_suite  # noqa: E402
from attnbench.harness.tasks import cell_keys, make_tasks
from attnbench.suite.parse import parse_suite
from attnbench.suite.plan import plan  # noqa: E402

pytestmark = pytest.mark.slow

TIMING = {"threads": 1, "warmup": 1, "rounds": 2, "min_time": 0.01, "min_iters": 2}
SUITE = {
    "name": "faults",
    "backbones": ["resnet18"],
    "modules": ["none", "se"],
    "input_size": 32,
    "metrics": ["params", "macs", "latency_cpu"],
    "latency": TIMING,
}
# The scheduler expires stale leases every second (the README's advice for external schedulers).
SCHEDULER_ENV = {"DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_VALIDATION_INTERVAL": "1s"}


class Cluster:
    """A scheduler and workers as separate processes; everything is killed at the end."""

    def __init__(self, tmp_path):
        self.tmp, self.procs, self.file = tmp_path, [], tmp_path / "scheduler.json"
        self.scheduler = self._start(
            "distributed.cli.dask_scheduler",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(self.file),
            env=SCHEDULER_ENV,
        )
        deadline = time.monotonic() + 60
        while not self.file.exists() or not self.file.read_text().strip():
            assert time.monotonic() < deadline and self.scheduler.poll() is None, "scheduler did not start"
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written in one go, but give the writer a moment
        self.address = json.loads(self.file.read_text())["address"]

    def _start(self, module, *args, env=None, cwd=None):
        log = open(self.tmp / f"{module.rsplit('.', 1)[-1]}-{len(self.procs)}.log", "w")
        env = {k: v for k, v in {**os.environ, **(env or {})}.items() if not k.endswith("_NUM_THREADS")}
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd or self.tmp
        )
        self.procs.append(proc)
        return proc

    def worker(self, *resources, folder=None):
        """A `dask worker --no-nanny` (no OMP_NUM_THREADS from a nanny); ``folder``: its own working and local
        directory, as on another machine without a shared filesystem."""
        extra = ["--resources", " ".join(resources)] if resources else []
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            extra += ["--local-directory", str(folder / "local")]
        return self._start(
            "distributed.cli.dask_worker",
            "--scheduler-file",
            str(self.file),
            "--nthreads",
            "1",
            "--no-nanny",
            "--no-dashboard",
            *extra,
            cwd=folder,
        )

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
    assert err["message"] == (
        "no live Dask worker has the resource latency_slot=1 for 3 s; "
        "start one worker per node with --resources latency_slot=1, or use --slot lock"
    )
    # 4 count tasks, then the 3 s limit: the run ends soon after the last count, not never
    assert len(arrived) == 5 and arrived[-1] - arrived[-2] < 3 + 4, arrived

    # all workers gone mid-run: what is left fails with the fix, and the run ends
    killed = []

    def kill_after_first():
        if not killed:
            worker.kill()
            worker.wait()
            killed.append(time.monotonic())

    records = _drain(
        dask_executor(scheduler=cluster.address, local_directory=tmp_path / "s", no_worker_limit=3),
        tasks,
        on_records=kill_after_first,
    )
    took = time.monotonic() - killed[0]
    _once_each(records, tasks)
    assert len(records) == 6 and records[0].status == "ok"
    gone = [r for r in records if r.status == "failed"]
    assert len(gone) >= 2 and {r.error["message"] for r in gone} == {
        "no live Dask worker for 3 s (all workers gone); start workers (dask worker ADDRESS) and rerun with --resume"
    }
    assert took < 3 + 6, took

    # no worker at all when the run starts (batch jobs still queued): it waits the stated time, then one line, nothing run
    t0 = time.monotonic()
    with pytest.raises(AttnBenchError) as err:
        _drain(dask_executor(scheduler=cluster.address, local_directory=tmp_path / "s", worker_wait=2), tasks)
    assert str(err.value) == (
        f"no Dask worker joined the scheduler at {cluster.address} within 2 s; start workers "
        "(dask worker ADDRESS, or check your batch jobs with squeue) or give --worker-wait more "
        "seconds; nothing ran"
    )
    assert time.monotonic() - t0 < 2 + 5


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

            def holders(
                dask_scheduler,
            ):  # read the scheduler's lease table; registering a Lock here would set its lease
                return len(dask_scheduler.extensions["semaphores"].leases.get(name, {}))

            while not c.run_on_scheduler(holders):
                assert time.monotonic() < deadline, "the timing never took its node's lock"
                time.sleep(0.1)
            ((addr, keys),) = [(w, ks) for w, ks in c.processing().items() if ks]
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
        assert r.executor["restarted"].startswith("worker tcp://") and r.note == r.executor["restarted"]
        assert f"was lost while it held the task; re-run from scratch on {r.executor['worker']}" in r.note
        # the dead holder's lease (5 s) expired within lease + validation interval (1 s) + polling
        assert r.executor["slot_wait_s"] < 9, r.executor


COUNTS = ("params", "macs", "macs_train", "activations", "train_memory")


def _key_from_record(r):
    """Cell.key's formula on what the record itself says (config, env): thread count only where it matters."""
    env = {**fingerprint(r.env, threads=r.metric not in COUNTS), "module_package": r.env.get("module_package", "")}
    return hashlib.sha256(json.dumps({"cell": r.config, "env": env}, sort_keys=True, default=str).encode()).hexdigest()[
        :20
    ]


def _leftovers(address):
    """What a finished run left on the scheduler: tasks, variables, semaphores other than the per-node gate."""
    from distributed import Client

    def look(dask_scheduler):
        ext = dask_scheduler.extensions
        return (
            len(dask_scheduler.tasks),
            dict(ext["variables"].variables),
            sorted(
                n
                for n in ext["semaphores"].max_leases
                if not str(n).startswith(("attnbench-timing-", "attnbench-busy-"))
            ),
        )

    with Client(address, timeout=30) as c:
        return c.run_on_scheduler(look)


def test_no_nanny_workers_pin_threads_and_keys_match_records(cluster, tmp_path):
    """No nanny, no OMP_NUM_THREADS: torch would take every core in both workers. Counts, timings and trainings
    that set no threads run at the share (cores // 2 here), and each record's key is its own config and env."""
    cluster.worker("train_slot=1")
    cluster.worker("train_slot=1")
    cluster.wait_for_workers(2)
    share = max(1, usable_cpus() // 2)
    costs = parse_suite(
        dict(
            SUITE,
            backbones=["test_resnet"],
            metrics=["params", "latency_cpu"],
            latency={k: v for k, v in TIMING.items() if k != "threads"},
        ),
        str(tmp_path / "c.yaml"),
    )
    acc = parse_suite(
        {
            "name": "acc",
            "kind": "accuracy",
            "backbones": ["resnet18"],
            "modules": ["none"],
            "dataset": {"name": "digits", "train_subset": 40, "test_subset": 40},
            "training": {"epochs": 1, "batch_size": 20, "optimizer": "sgd", "lr": 0.05},
            "seeds": [0],
        },
        str(tmp_path / "a.yaml"),
    )
    records = []
    for suite, out in ((costs, "c"), (acc, "a")):
        result = run_suite(
            suite, tmp_path / out, executor=dask_executor(scheduler=cluster.address, local_directory=tmp_path / "s")
        )
        assert result.failed == 0, [r.error for r in result.records if r.error]
        records += result.records
    assert len(records) == 5
    assert {(r.metric, r.env["threads"], r.executor["node_share"]) for r in records} == {
        (m, share, share) for m in ("params", "latency_cpu", "accuracy")
    }
    assert {r.measurement.settings["threads"] for r in records if r.metric == "latency_cpu"} == {share}
    assert [r.stats["threads"] for r in records if r.metric == "accuracy"] == [share]
    assert [_key_from_record(r) for r in records] == [r.key for r in records]
    # counts are keyed without threads: the same keys as an in-process run of the same cells
    count_cells = [c for c in plan(costs) if c.metric in COUNTS]
    assert sorted(cell_keys(count_cells)) == sorted(r.key for r in records if r.metric in COUNTS)


def test_two_runs_on_one_scheduler_keep_counts_off_a_node_while_the_other_times(cluster, tmp_path):
    """Run A times; run B's counts, submitted while A holds the node, run only when no timing does; then the
    scheduler holds no task, no variable and no semaphore but the per-node gate."""
    from distributed import Client

    cluster.worker()
    cluster.worker()
    cluster.wait_for_workers(2)
    timed = parse_suite(
        dict(
            SUITE,
            backbones=["test_resnet", "test_efficientnet"],
            metrics=["latency_cpu"],
            latency=dict(TIMING, rounds=5, min_time=0.1),
        ),
        str(tmp_path / "a.yaml"),
    )
    counted = parse_suite(
        {
            "name": "b",
            "backbones": ["test_resnet"],
            "modules": ["none", "se"],
            "input_size": [[h, 32] for h in range(32, 38)],
            "metrics": ["params", "macs"],
        },
        str(tmp_path / "b.yaml"),
    )
    results = {}
    a = threading.Thread(
        target=lambda: results.setdefault(
            "a",
            run_suite(
                timed,
                tmp_path / "a",
                executor=dask_executor(scheduler=cluster.address, local_directory=tmp_path / "sa"),
            ),
        )
    )
    a.start()
    with Client(cluster.address, timeout=30) as c:

        def holders(dask_scheduler):
            return len(dask_scheduler.extensions["semaphores"].leases.get(timing_lock_name(), {}))

        deadline = time.monotonic() + 90
        while not c.run_on_scheduler(holders):
            assert time.monotonic() < deadline and a.is_alive(), "run A never took the node's timing lock"
            time.sleep(0.05)
    results["b"] = run_suite(
        counted, tmp_path / "b", executor=dask_executor(scheduler=cluster.address, local_directory=tmp_path / "sb")
    )
    a.join(timeout=180)
    ra, rb = results["a"], results["b"]
    assert ra.ok == 5 and rb.ok == 24 and ra.failed == rb.failed == 0  # test_efficientnet has a `native` row
    spans = [
        (min(r.started for r in g), max(r.ended for r in g))
        for g in ([r for r in ra.records if r.backbone == b] for b in ("test_resnet", "test_efficientnet"))
    ]
    for r in rb.records:
        for t0, t1 in spans:
            assert r.ended <= t0 or r.started >= t1, f"{r.backbone}/{r.label}/{r.metric} ran during a timing of run A"
    assert _leftovers(cluster.address) == (0, {}, [])


def test_killed_worker_training_resumes_from_the_shipped_epoch_without_a_shared_folder(cluster, tmp_path, monkeypatch):
    """Workers in folders of their own (no shared filesystem), the coordinator with a relative --out: the
    worker training a cell is killed after the coordinator holds a checkpoint; the other worker resumes from
    the last epoch shipped, ends bit-for-bit where an uninterrupted run ends, and the record says so."""
    from distributed import Client

    from attnbench.train.loop import train_cell

    first = cluster.worker("train_slot=1", folder=tmp_path / "node1")
    second = cluster.worker("train_slot=1", folder=tmp_path / "node2")
    cluster.wait_for_workers(2)
    (tmp_path / "coord").mkdir()
    monkeypatch.chdir(tmp_path / "coord")
    spec = {
        "name": "acc",
        "kind": "accuracy",
        "backbones": ["resnet18"],
        "modules": ["none"],
        "dataset": {"name": "digits", "train_subset": 100, "test_subset": 40},
        "training": {"epochs": 4, "batch_size": 20, "optimizer": "sgd", "lr": 0.05, "threads": 1},
        "seeds": [3],
    }
    suite = parse_suite(spec, "acc.yaml")
    (key,) = cell_keys(plan(suite))
    ckpt = Path("out/checkpoints") / f"{key}.pt"
    killed = {}

    def kill_trainer():
        """Kill the worker as soon as it starts the stretch from epoch 1: the coordinator holds that checkpoint."""
        with Client(cluster.address, timeout=30) as c:
            pids, deadline = c.run(os.getpid), time.monotonic() + 120
            while True:
                held = [w for w, ks in c.processing().items() for k in ks if str(k).endswith(f"{key}-e1")]
                if held:
                    break
                assert time.monotonic() < deadline, "the training never started its second epoch"
                time.sleep(0.01)
        assert ckpt.is_file()  # the coordinator wrote epoch 1's checkpoint before it sent the stretch on
        os.kill(pids[held[0]], signal.SIGKILL)
        killed["pid"] = pids[held[0]]

    killer = threading.Thread(target=kill_trainer)
    killer.start()
    result = run_suite(
        suite, "out", executor=dask_executor(scheduler=cluster.address, local_directory="scratch", chunk_s=0)
    )
    killer.join()
    (r,) = result.records
    whole = train_cell("resnet18", "none", {}, spec["dataset"], spec["training"], 3).stats
    assert r.ok and r.executor["attempt"] == 2 and r.stats["resumed_from_epoch"] == 1
    assert f"was lost mid-training; resumed from epoch 1 on {r.executor['worker']}" in r.note
    assert [c[:2] for c in r.executor["chunks"]] == [[0, 1], [1, 2], [2, 3], [3, 4]]  # the lost stretch ran again
    assert r.pid == ({first.pid, second.pid} - {killed["pid"]}).pop()
    assert r.stats["weights_sha1"] == whole["weights_sha1"] and r.stats["steps"] == whole["steps"] == 20
    assert [p["test_top1"] for p in r.stats["curve"]] == [p["test_top1"] for p in whole["curve"]]
    assert not ckpt.exists() and r.executor["checkpoint"] == str(ckpt.resolve())
    for node in ("node1", "node2"):  # nothing of the run's output landed where a worker runs
        assert not (tmp_path / node / "out").exists()

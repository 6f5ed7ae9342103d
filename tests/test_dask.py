"""Dask fan-out on a LocalCluster: same counts as in-process, never two timings at once on a node,
--slot resource works without a cluster of your own, trainings run in parallel; bad options are one line.
Issue #23: the coordinator keeps no background task per poll, says which cell runs where, leaves nothing on
the scheduler; keys and records agree on threads; a checkpoint of an earlier run follows the cell to a worker."""

import asyncio
import hashlib
import json
import os
import re
import socket
import threading
import time

import pytest

pytest.importorskip("distributed")

from attnbench.errors import AttnBenchError  # noqa: E402
from attnbench.harness.dask.coordinator import dask_executor, local_cluster, make_executor, running_text
from attnbench.harness.dask.options import (
    SLOT_RESOURCE,
    TRAIN_RESOURCE,
    check_dask_options,
    jobqueue_worker_args,
    node_shares,
    probe_scheduler,
    usable_cpus,
)
from attnbench.harness.env import fingerprint  # noqa: E402
from attnbench.harness.runner import run_suite  # noqa: E402
from attnbench.harness.tasks import cell_keys
from attnbench.suite.parse import parse_suite
from attnbench.suite.plan import plan  # noqa: E402

SUITE = {
    "name": "fan",
    "backbones": ["resnet18", "resnet34"],
    "modules": ["none", "se", "cbam"],
    "input_size": 32,
    "metrics": ["params", "macs", "latency_cpu"],
    "latency": {"threads": 1, "warmup": 1, "rounds": 3, "min_time": 0.05, "min_iters": 2},
}


def _counts(records):
    return {
        (r.backbone, r.label, r.metric): (r.measurement.value, r.measurement.stats)
        for r in records
        if r.metric in ("params", "macs")
    }


def _span(records):
    return min(r.started for r in records), max(r.ended for r in records)


def key_from_record(r):
    """A record's key worked out again from what the record itself says (its config and env): the formula
    of Cell.key, with the thread count only for metrics whose results depend on it (not counts)."""
    env = {**fingerprint(r.env, threads=r.metric not in COUNTS), "module_package": r.env.get("module_package", "")}
    blob = json.dumps({"cell": r.config, "env": env}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


COUNTS = ("params", "macs", "macs_train", "activations", "train_memory")
SHARE = max(1, usable_cpus() // 2)  # 2 one-thread workers on this machine: the torch threads each task gets


@pytest.fixture(scope="module")
def harness_cluster(tmp_path_factory):
    """The LocalCluster ``--executor dask --slot resource`` starts, shared by the tests below (workers import torch once)."""
    from distributed import Client

    cluster = local_cluster(2, "resource", tmp_path_factory.mktemp("scratch"))
    try:
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=120)
        yield cluster
    finally:
        cluster.close()


@pytest.mark.slow
def test_local_cluster_matches_in_process_and_serialises_timings(harness_cluster, tmp_path):
    suite = parse_suite(dict(SUITE, modules=["none", "se"]), "fan.yaml")
    local = run_suite(suite, tmp_path / "local")
    dist = run_suite(
        suite,
        tmp_path / "dask",
        executor=dask_executor(harness_cluster.scheduler_address, local_directory=tmp_path / "dask" / "scratch"),
    )
    assert local.failed == dist.failed == 0 and len(dist.records) == len(local.records) == 12
    assert _counts(dist.records) == _counts(local.records)
    assert sorted(r.key for r in dist.records) == sorted(r.key for r in local.records)  # each cell once
    timings = [r for r in dist.records if r.metric == "latency_cpu"]
    spans = sorted(_span([r for r in timings if r.backbone == b]) for b in SUITE["backbones"])
    assert spans[0][1] <= spans[1][0], f"two timing groups overlapped: {spans}"
    counts = [r for r in dist.records if r.metric != "latency_cpu"]
    assert max(r.ended for r in counts) <= spans[0][0], "a timing started before the counts had finished"
    # 8 counts on 2 one-thread workers: both worker processes took some (none ran in this process)
    assert len({r.pid for r in counts}) == 2 and local.records[0].pid not in {r.pid for r in dist.records}
    assert {(r.executor["slot"], r.executor["attempt"]) for r in timings} == {("lock", 1)}
    assert {r.executor["worker"] for r in counts} == {r.executor["worker"] for r in dist.records}  # where each ran
    # keys and records agree: worked out again from each record's own config and env, every key is the record's
    assert [key_from_record(r) for r in dist.records + local.records] == [r.key for r in dist.records + local.records]
    assert {r.env["threads"] for r in counts} == {SHARE} and {r.env["threads"] for r in timings} == {1}


@pytest.mark.slow
def test_slot_resource_works_on_a_local_cluster(harness_cluster, tmp_path):
    """--slot resource without --scheduler: the harness gives one worker latency_slot=1, so timings run there
    (this test goes the CLI's way, LocalCluster started by the executor; one worker keeps it cheap)."""
    from distributed import Client

    with Client(harness_cluster) as client:
        resources = [w["resources"] for w in client.scheduler_info(n_workers=-1)["workers"].values()]
    assert sorted(r.get(SLOT_RESOURCE, 0) for r in resources) == [0, 1] and all(
        r[TRAIN_RESOURCE] == 1 for r in resources
    )
    suite = parse_suite(dict(SUITE, backbones=["resnet18"], modules=["none", "se"]), "fan.yaml")
    result = run_suite(
        suite,
        tmp_path,
        executor=dask_executor(n_workers=1, slot="resource", local_directory=tmp_path / "scratch", no_worker_limit=20),
    )
    assert result.failed == 0 and result.ok == 6
    timings = [r for r in result.records if r.metric == "latency_cpu"]
    assert [r.executor["slot"] for r in timings] == ["latency_slot", "latency_slot"]


@pytest.mark.slow
def test_trainings_run_in_parallel_one_per_worker(harness_cluster, tmp_path):
    """Issue #11: 2 workers train 2 cells at the same time, each cell recorded once, marked as sharing the node."""
    suite = parse_suite(
        {
            "name": "par",
            "kind": "accuracy",
            "backbones": ["resnet18"],
            "modules": ["none"],
            "dataset": {"name": "digits", "train_subset": 200},
            "training": {"epochs": 1, "batch_size": 64, "optimizer": "adamw", "lr": 2e-3, "threads": 1},
            "seeds": [0, 1],
        },
        "par.yaml",
    )
    result = run_suite(
        suite, tmp_path, executor=dask_executor(harness_cluster.scheduler_address, local_directory=tmp_path / "s")
    )
    assert result.ok == 2 and result.failed == 0
    a, b = sorted(result.records, key=lambda r: r.started)
    assert len({a.key, b.key}) == 2 and a.pid != b.pid
    assert b.started < a.ended, f"trainings did not overlap: {a['started']}-{a['ended']} vs {b['started']}-{b['ended']}"
    for r in (a, b):
        assert r.executor["slot"] == "train_slot" and r.executor["node_shared"] is True


@pytest.mark.slow
def test_coordinator_keeps_no_task_per_poll_and_says_where_cells_run(harness_cluster, tmp_path):
    """Issue #23's root cause: waiting with distributed.wait(FIRST_COMPLETED, timeout) left an asyncio task per
    pending future behind on every poll, so tasks (and memory) grew as cells x polls. Now one done-callback per
    future and a window of tasks in the air: the client's loop holds a bounded number of tasks however long
    the run; the progress line names cells and workers; the scheduler is left with no task and no variable."""
    from distributed import Client

    sizes = [[h, 32] for h in range(32, 62)]  # 30 points x (none, se) x (params, macs) = 120 cells
    suite = parse_suite(
        {
            "name": "many",
            "backbones": ["test_resnet"],
            "modules": ["none", "se"],
            "input_size": sizes,
            "metrics": ["params", "macs"],
        },
        "many.yaml",
    )
    ex = dask_executor(harness_cluster.scheduler_address, local_directory=tmp_path / "s")
    texts, counts, stop = [], [], threading.Event()
    ex.on_progress = texts.append

    def count_loop_tasks():
        while not stop.is_set():
            client = ex.client
            if client is not None:
                try:
                    counts.append(len(asyncio.all_tasks(client.loop.asyncio_loop)))
                except RuntimeError:  # the set changed while read from this thread: next sample
                    pass
            time.sleep(0.05)

    sampler = threading.Thread(target=count_loop_tasks)
    sampler.start()
    try:
        result = run_suite(suite, tmp_path / "out", executor=ex)
    finally:
        stop.set()
        sampler.join()
    assert result.ok == 120 and result.failed == 0
    # 120 futures, ~2 polls a second for many seconds: the old loop reached thousands of tasks here
    assert len(counts) > 20 and max(counts) - min(counts) < 60, (min(counts), max(counts))
    assert any(
        re.match(r"\d on workers: test_resnet/(none|se)/(params|macs) @ \d\dx32 on 127\.0\.0\.1:\d+", t) for t in texts
    ), texts[-5:]
    assert all(len(t) < 200 for t in texts)

    def leftovers(dask_scheduler):
        ext = dask_scheduler.extensions
        return (
            sorted(str(k) for k in dask_scheduler.tasks),
            dict(ext["variables"].variables),
            sorted(
                n
                for n in ext["semaphores"].max_leases
                if not str(n).startswith(("attnbench-timing-", "attnbench-busy-"))
            ),
        )

    with Client(harness_cluster.scheduler_address) as client:
        assert client.run_on_scheduler(leftovers) == ([], {}, [])


@pytest.mark.slow
def test_checkpoint_of_an_earlier_run_follows_the_cell_to_a_worker(harness_cluster, tmp_path):
    """A training interrupted in-process after epoch 1 (its checkpoint in OUT/checkpoints) is resumed on a Dask
    worker from that epoch, shipped epoch by epoch through the coordinator, and ends bit-for-bit where an
    uninterrupted run ends; the record says so, and the checkpoint is gone once the cell is done."""
    from attnbench.train.loop import train_cell

    class Stop(Exception):
        pass

    def stop_after_1(point):
        if point["epoch"] == 1:
            raise Stop

    spec = {
        "name": "ck",
        "kind": "accuracy",
        "backbones": ["resnet18"],
        "modules": ["none"],
        "dataset": {"name": "digits", "train_subset": 60, "test_subset": 50},
        "training": {"epochs": 3, "batch_size": 16, "optimizer": "sgd", "lr": 0.05, "threads": 1},
        "seeds": [1],
    }
    suite = parse_suite(spec, str(tmp_path / "ck.yaml"))
    (cell,), out = plan(suite), tmp_path / "out"
    (key,) = cell_keys([cell])
    whole = train_cell("resnet18", "none", {}, cell.dataset, cell.training, 1).stats
    ckpt = out / "checkpoints" / f"{key}.pt"
    with pytest.raises(Stop):
        train_cell("resnet18", "none", {}, cell.dataset, cell.training, 1, checkpoint_path=ckpt, on_epoch=stop_after_1)
    assert ckpt.is_file()
    result = run_suite(
        suite,
        out,
        resume=True,
        executor=dask_executor(harness_cluster.scheduler_address, local_directory=tmp_path / "s", chunk_s=0),
    )
    (r,) = result.records
    assert r.ok and r.key == key and r.stats["weights_sha1"] == whole["weights_sha1"]
    assert r.stats["resumed_from_epoch"] == 1 and r.stats["steps"] == whole["steps"] == 9
    assert "resumed from epoch 1 (checkpoint of an earlier run)" in r.note
    assert [c[:2] for c in r.executor["chunks"]] == [[1, 2], [2, 3]]  # one stretch per epoch (chunk_s=0)
    assert r.executor["checkpoint"] == str(ckpt.resolve()) and not ckpt.exists()


@pytest.mark.slow
def test_checkpoint_shipped_by_a_worker_resumes_in_process(harness_cluster, tmp_path):
    """The other way round: the bytes a worker's training stretch ships (what the coordinator writes to
    OUT/checkpoints when a Dask run is interrupted) are resumed by a local --resume, bit-for-bit, and the record
    says from which epoch."""
    import dataclasses

    from distributed import Client

    from attnbench.harness.dask.worker import run_task_on_worker
    from attnbench.harness.tasks import make_tasks
    from attnbench.train.loop import train_cell

    spec = {
        "name": "back",
        "kind": "accuracy",
        "backbones": ["resnet18"],
        "modules": ["se"],
        "dataset": {"name": "digits", "train_subset": 60, "test_subset": 50},
        "training": {"epochs": 3, "batch_size": 16, "optimizer": "sgd", "lr": 0.05, "threads": 1},
        "seeds": [2],
    }
    suite, out = parse_suite(spec, str(tmp_path / "back.yaml")), tmp_path / "out"
    cells = plan(suite)
    (task,) = make_tasks(cells, cell_keys(cells), checkpoint_dir=out / "checkpoints", threads=1)
    with Client(harness_cluster.scheduler_address) as client:  # one stretch of one epoch on a worker
        shipped = client.submit(run_task_on_worker, dataclasses.replace(task, pause_after_s=0), pure=False).result()
    assert (shipped.from_epoch, shipped.epoch, shipped.records) == (0, 1, []) and len(shipped.state) > 10**6
    task.checkpoint_path.parent.mkdir(parents=True)
    task.checkpoint_path.write_bytes(shipped.state)
    (r,) = run_suite(suite, out, resume=True).records  # in-process
    whole = train_cell("resnet18", "se", {}, cells[0].dataset, cells[0].training, 2).stats
    assert r.ok and r.stats["resumed_from_epoch"] == 1 and r.stats["weights_sha1"] == whole["weights_sha1"]
    assert (
        task.checkpoint_path.is_absolute()
    )  # the task's own path; the record names it relative to OUT, no machine path
    assert r.note == f"resumed from epoch 1 (checkpoint checkpoints/{task.checkpoint_path.name})"
    assert not task.checkpoint_path.exists()


def test_node_shares_and_jobqueue_arguments():
    workers = {
        "a": {"host": "n1", "nthreads": 1},
        "b": {"host": "n1", "nthreads": 1},
        "c": {"host": "n2", "nthreads": 4},
        "d": {"host": "n3", "nthreads": 3},
    }
    # n1: 8 cores / 2 threads; n2: 16 / 4; n3: 2 cores for 3 threads is still 1 each
    assert node_shares(workers, {"a": 8, "b": 8, "c": 16, "d": 2}) == {"a": 4, "b": 4, "c": 4, "d": 1}
    # one word, so a job script's command line (joined with spaces, never quoted) keeps it whole
    assert jobqueue_worker_args() == ["--resources", "latency_slot=1,train_slot=1"]
    assert jobqueue_worker_args(latency_slot=0, train_slot=2, gpu=1) == ["--resources", "train_slot=2,gpu=1"]
    assert (
        running_text([("a/se/params", "tcp://10.0.0.5:4001"), ("b/none/macs", "tcp://10.0.0.6:4001")], 7)
        == "2 on workers: a/se/params on 10.0.0.5:4001 · b/none/macs on 10.0.0.6:4001"
    )
    assert running_text([], 3) == "3 queued, waiting for a worker"


def test_rows_timed_by_different_processes_say_which_process_timed_them():
    """A table whose timings come from several processes (a Dask run, or a run resumed on another executor)
    marks each timed row °N and names process N in its notes; timings of one process get no mark."""
    from attnbench.records.measurement import Measurement
    from attnbench.records.record import Record
    from attnbench.report import render_markdown

    def rec(backbone, label, metric, value, pid, executor):
        stats = (
            {"median_ms": value, "iqr_ms": 0.01, "runs": 10, "images_per_s": 1e3 / value}
            if metric == "latency_cpu"
            else {}
        )
        return Record(
            key=f"{backbone}-{label}-{metric}",
            suite="t",
            backbone=backbone,
            label=label,
            module=label,
            metric=metric,
            position=(0 if backbone == "resnet18" else 1, 0 if label == "none" else 1),
            config={"input_size": [64, 64], "batch_size": 1},
            status="ok",
            env={"threads": 1},
            measurement=Measurement(metric, value, "x", "test", {}, stats),
            host="n1",
            pid=pid,
            executor=executor,
        )

    dask = {"kind": "dask", "worker": "tcp://10.0.0.5:4001"}
    records = [
        rec("resnet18", "none", "params", 11.0, 7, {}),
        rec("resnet18", "se", "params", 11.1, 7, {}),
        rec("resnet18", "none", "latency_cpu", 5.0, 7, {}),
        rec("resnet18", "se", "latency_cpu", 5.5, 7, {}),
        rec("resnet34", "none", "latency_cpu", 9.0, 42, dask),
        rec("resnet34", "se", "latency_cpu", 9.9, 42, dask),
    ]
    md = render_markdown(records)
    labels = {
        (ln.split(" | ")[0].lstrip("| "), ln.split(" | ")[1]) for ln in md.splitlines() if ln.startswith("| resnet")
    }
    assert labels == {("resnet18", "none°1"), ("resnet18", "se°1"), ("resnet34", "none°2"), ("resnet34", "se°2")}
    assert (
        "- °N: the process that timed the row: °1 local process (pid 7 on n1); °2 Dask worker tcp://10.0.0.5:4001 "
        "(pid 42 on n1). Each timing group ran in one process; a Δ between rows of different processes is unpaired."
    ) in md
    one = render_markdown(records[:4])
    assert "°" not in one


@pytest.mark.parametrize(
    "args, words",
    [
        (("dask", None, 0, None), ["--workers 0", "at least 1"]),
        (("dask", None, -1, None), ["--workers -1", "at least 1"]),
        (("dask", "garbage", None, None), ["--scheduler 'garbage'", "tcp://HOST:PORT"]),
        (("dask", "foo://host:8786", None, None), ["unknown protocol 'foo'"]),
        (("dask", "tcp://host", None, None), ["missing port"]),
        (("dask", "tcp://h:8786", 3, None), ["--workers sizes the LocalCluster", "drop --workers"]),
        (("dask", None, None, "fast"), ["--slot 'fast'", "--slot lock"]),
        (
            ("local", "tcp://h:8786", None, None),
            ["--scheduler only applies to --executor dask; add --executor dask or drop it"],
        ),
        (("local", None, 2, "lock"), ["--workers, --slot only apply to --executor dask"]),
        (("spark", None, None, None), ["unknown executor 'spark'"]),
        (("local", None, None, None, 60.0), ["--worker-wait only applies to --executor dask"]),
        (("dask", "tcp://h:8786", None, None, 0.0), ["--worker-wait 0.0", "e.g. --worker-wait 1800"]),
        (("dask", "tcp://h:8786", None, None, float("nan")), ["--worker-wait nan"]),
    ],
)
def test_bad_dask_options_are_one_line(args, words):
    with pytest.raises(AttnBenchError) as err:
        check_dask_options(*args)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_good_dask_options_pass():
    for args in (
        ("local", None, None, None),
        ("dask", None, None, None),
        ("dask", "host:8786", None, "resource"),
        ("dask", "tcp://10.0.0.1:8786", None, "lock"),
        ("dask", None, 4, "resource"),
    ):
        check_dask_options(*args)
    assert make_executor("local", None, None, None, "unused") is None


def test_unreachable_scheduler_is_one_line_within_the_timeout():
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(AttnBenchError, match=rf"cannot reach the Dask scheduler at tcp://127.0.0.1:{port} within 2 s"):
        probe_scheduler(f"tcp://127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - t0 < 5


def test_malloc_trimming_is_relaxed_only_where_dask_set_it():
    import subprocess
    import sys

    code = "from attnbench.harness.dask.options import relax_malloc_trimming as r; print(r())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    dask_env = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(env, MALLOC_TRIM_THRESHOLD_="65536")
    )
    assert plain.stdout.strip() == "False" and dask_env.stdout.strip() == "True"

"""Dask fan-out on a LocalCluster: same counts as in-process, never two timings at once on a node,
--slot resource works without a cluster of your own, trainings run in parallel; bad options are one line."""
import socket
import time

import pytest

pytest.importorskip("distributed")

from attnbench.errors import AttnBenchError  # noqa: E402
from attnbench.executors import (SLOT_RESOURCE, TRAIN_RESOURCE, local_cluster, check_dask_options,  # noqa: E402
                                 dask_executor, make_executor, probe_scheduler)
from attnbench.runner import run_suite  # noqa: E402
from attnbench.suite import parse_suite  # noqa: E402

SUITE = {
    "name": "fan", "backbones": ["resnet18", "resnet34"], "modules": ["none", "se", "cbam"], "input_size": 32,
    "metrics": ["params", "macs", "latency_cpu"],
    "latency": {"threads": 1, "warmup": 1, "rounds": 3, "min_time": 0.05, "min_iters": 2},
}


def _counts(records):
    return {(r.backbone, r.label, r.metric): (r.measurement.value, r.measurement.stats)
            for r in records if r.metric in ("params", "macs")}


def _span(records):
    return min(r.started for r in records), max(r.ended for r in records)


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
    dist = run_suite(suite, tmp_path / "dask", executor=dask_executor(harness_cluster.scheduler_address,
                                                                      local_directory=tmp_path / "dask" / "scratch"))
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
    assert counts[0].executor == {}  # counts run anywhere: nothing to say


@pytest.mark.slow
def test_slot_resource_works_on_a_local_cluster(harness_cluster, tmp_path):
    """--slot resource without --scheduler: the harness gives one worker latency_slot=1, so timings run there
    (this test goes the CLI's way, LocalCluster started by the executor; one worker keeps it cheap)."""
    from distributed import Client

    with Client(harness_cluster) as client:
        resources = [w["resources"] for w in client.scheduler_info(n_workers=-1)["workers"].values()]
    assert sorted(r.get(SLOT_RESOURCE, 0) for r in resources) == [0, 1] and all(r[TRAIN_RESOURCE] == 1 for r in resources)
    suite = parse_suite(dict(SUITE, backbones=["resnet18"], modules=["none", "se"]), "fan.yaml")
    result = run_suite(suite, tmp_path, executor=dask_executor(n_workers=1, slot="resource",
                                                              local_directory=tmp_path / "scratch", no_worker_limit=20))
    assert result.failed == 0 and result.ok == 6
    timings = [r for r in result.records if r.metric == "latency_cpu"]
    assert [r.executor["slot"] for r in timings] == ["latency_slot", "latency_slot"]


@pytest.mark.slow
def test_trainings_run_in_parallel_one_per_worker(harness_cluster, tmp_path):
    """Issue #11: 2 workers train 2 cells at the same time, each cell recorded once, marked as sharing the node."""
    suite = parse_suite({
        "name": "par", "kind": "accuracy", "backbones": ["resnet18"], "modules": ["none"],
        "dataset": {"name": "digits", "train_subset": 200},
        "training": {"epochs": 1, "batch_size": 64, "optimizer": "adamw", "lr": 2e-3, "threads": 1},
        "seeds": [0, 1],
    }, "par.yaml")
    result = run_suite(suite, tmp_path, executor=dask_executor(harness_cluster.scheduler_address, local_directory=tmp_path / "s"))
    assert result.ok == 2 and result.failed == 0
    a, b = sorted(result.records, key=lambda r: r.started)
    assert len({a.key, b.key}) == 2 and a.pid != b.pid
    assert b.started < a.ended, f"trainings did not overlap: {a['started']}-{a['ended']} vs {b['started']}-{b['ended']}"
    for r in (a, b):
        assert r.executor["slot"] == "train_slot" and r.executor["node_shared"] is True


@pytest.mark.parametrize("args, words", [
    (("dask", None, 0, None), ["--workers 0", "at least 1"]),
    (("dask", None, -1, None), ["--workers -1", "at least 1"]),
    (("dask", "garbage", None, None), ["--scheduler 'garbage'", "tcp://HOST:PORT"]),
    (("dask", "foo://host:8786", None, None), ["unknown protocol 'foo'"]),
    (("dask", "tcp://host", None, None), ["missing port"]),
    (("dask", "tcp://h:8786", 3, None), ["--workers sizes the LocalCluster", "drop --workers"]),
    (("dask", None, None, "fast"), ["--slot 'fast'", "--slot lock"]),
    (("local", "tcp://h:8786", None, None), ["--scheduler only applies to --executor dask; add --executor dask or drop it"]),
    (("local", None, 2, "lock"), ["--workers, --slot only apply to --executor dask"]),
    (("spark", None, None, None), ["unknown executor 'spark'"]),
])
def test_bad_dask_options_are_one_line(args, words):
    with pytest.raises(AttnBenchError) as err:
        check_dask_options(*args)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_good_dask_options_pass():
    for args in (("local", None, None, None), ("dask", None, None, None), ("dask", "host:8786", None, "resource"),
                 ("dask", "tcp://10.0.0.1:8786", None, "lock"), ("dask", None, 4, "resource")):
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
    import os
    import subprocess
    import sys

    code = "from attnbench.executors import relax_malloc_trimming as r; print(r())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    dask_env = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(env, MALLOC_TRIM_THRESHOLD_="65536"))
    assert plain.stdout.strip() == "False" and dask_env.stdout.strip() == "True"

"""Issue #23: the Slurm recipe end to end, with dask-jobqueue's own test cluster (its job scripts run as local
processes, split on whitespace as a batch system's shell would pass them), and a quiet Dask run that prints
no traceback.

`attnbench run --scheduler ADDR` is started before any job has a worker (jobs queue) and waits for one; with
nothing joining it gives up after --worker-wait seconds with one line and nothing run.
"""

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("distributed")

from attnbench.harness.dask.options import SLOT_RESOURCE, TRAIN_RESOURCE, jobqueue_worker_args  # noqa: E402

pytestmark = pytest.mark.slow

SUITE = """
name: slurm
backbones: [test_resnet]
modules: [none, se]
input_size: 32
metrics: [params, latency_cpu]
latency: {threads: 1, warmup: 1, rounds: 2, min_time: 0.02, min_iters: 2}
"""


def _attnbench(args, cwd, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "attnbench", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.fixture
def jobqueue(tmp_path):
    """dask-jobqueue's LocalCluster with the README's worker arguments; no job submitted yet."""
    jq = pytest.importorskip("dask_jobqueue.local")
    cluster = jq.LocalCluster(
        cores=1,
        processes=1,
        memory="2GB",
        worker_extra_args=jobqueue_worker_args(),
        local_directory=str(tmp_path / "jobs"),
        scheduler_options={"dashboard_address": ":0"},
    )
    try:
        yield cluster
    finally:
        cluster.close()


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_waiting_for_queued_workers_gives_up_after_the_stated_timeout(jobqueue, tmp_path):
    (tmp_path / "slurm.yaml").write_text(SUITE)
    t0 = time.monotonic()
    proc = _attnbench(
        [
            "run",
            "-s",
            "slurm.yaml",
            "-o",
            "out",
            "--executor",
            "dask",
            "--scheduler",
            jobqueue.scheduler_address,
            "--worker-wait",
            "3",
            "-q",
        ],
        tmp_path,
    )
    out, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2, err
    assert lines == [
        f"error: no Dask worker joined the scheduler at {jobqueue.scheduler_address} within 3 s; start workers "
        "(dask worker ADDRESS, or check your batch jobs with squeue) or give --worker-wait more seconds; "
        "nothing ran"
    ], err
    assert not (tmp_path / "out" / "slurm.jsonl").exists() and time.monotonic() - t0 < 60


def test_slurm_recipe_runs_end_to_end_on_jobqueue_workers(jobqueue, tmp_path):
    """The job script carries the resources as one word; the run joins before the job's worker exists, waits,
    times on the worker's latency_slot, and prints no traceback or error line even from distributed."""
    from distributed import Client

    assert "--resources latency_slot=1,train_slot=1" in jobqueue.job_script()
    (tmp_path / "slurm.yaml").write_text(SUITE)
    proc = _attnbench(
        [
            "run",
            "-s",
            "slurm.yaml",
            "-o",
            "out",
            "--executor",
            "dask",
            "--scheduler",
            jobqueue.scheduler_address,
            "--slot",
            "resource",
            "--worker-wait",
            "120",
            "-q",
        ],
        tmp_path,
    )
    time.sleep(2)  # the run is connected and waiting: now the batch job starts
    jobqueue.scale(jobs=1)
    with Client(jobqueue.scheduler_address, timeout=30) as client:
        client.wait_for_workers(1, timeout=120)
        (worker,) = client.scheduler_info(n_workers=-1)["workers"].values()
        assert worker["resources"] == {SLOT_RESOURCE: 1, TRAIN_RESOURCE: 1}  # both reached `dask worker`
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert not any(w in err for w in ("Traceback", "ERROR", "CRITICAL", "TimeoutError")), err
    records = _records(tmp_path / "out" / "slurm.jsonl")
    assert [r["status"] for r in records] == ["ok"] * 4
    timings = [r for r in records if r["metric"] == "latency_cpu"]
    assert {r["executor"]["slot"] for r in timings} == {SLOT_RESOURCE} and {r["executor"]["kind"] for r in records} == {
        "dask"
    }
    assert out == ""  # -q: no table on stdout


def test_quiet_local_cluster_run_prints_no_traceback(tmp_path):
    """Timings on the LocalCluster the CLI starts: with -q the terminal gets the summary line and nothing from
    distributed (issue #23: a `variable_get TimeoutError` traceback per timing or training task)."""
    (tmp_path / "t.yaml").write_text(SUITE.replace("name: slurm", "name: t"))
    proc = _attnbench(["run", "-s", "t.yaml", "-o", "out", "--executor", "dask", "--workers", "2", "-q"], tmp_path)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    noisy = [ln for ln in err.splitlines() if any(w in ln for w in ("Traceback", "ERROR", "CRITICAL", "TimeoutError"))]
    assert noisy == [], err
    assert "t: 4 ok, 0 failed" in " ".join(err.split()) and out == ""  # the summary, however the console wrapped it

"""Dask fan-out: same counts as in-process, and never two timings at once on a node."""
import pytest

pytest.importorskip("distributed")

from attnbench.executors import dask_executor  # noqa: E402
from attnbench.runner import run_suite  # noqa: E402
from attnbench.suite import parse_suite  # noqa: E402

SUITE = {
    "name": "fan", "backbones": ["resnet18", "resnet34"], "modules": ["none", "se", "cbam"], "input_size": 32,
    "metrics": ["params", "flops", "latency_cpu"],
    "latency": {"threads": 1, "warmup": 1, "rounds": 3, "min_time": 0.05, "min_iters": 2},
}


def _counts(records):
    return {(r["backbone"], r["label"], r["metric"]): (r["measurement"]["value"], r["measurement"]["stats"])
            for r in records if r["metric"] in ("params", "flops")}


def test_local_cluster_matches_in_process_and_serialises_timings(tmp_path):
    suite = parse_suite(SUITE, "fan.yaml")
    local = run_suite(suite, tmp_path / "local")
    dist = run_suite(suite, tmp_path / "dask", executor=dask_executor(n_workers=2, local_directory=tmp_path / "dask" / "scratch"))
    assert local.failed == dist.failed == 0 and len(dist.records) == len(local.records) == 18
    assert _counts(dist.records) == _counts(local.records)
    assert {r["key"] for r in dist.records} == {r["key"] for r in local.records}
    groups = {}
    for r in dist.records:
        if r["metric"] == "latency_cpu":  # one interleaved group per backbone
            start, end = groups.get(r["backbone"], (r["started"], r["ended"]))
            groups[r["backbone"]] = (min(start, r["started"]), max(end, r["ended"]))
    spans = sorted(groups.values())
    assert len(spans) == 2
    assert spans[0][1] <= spans[1][0], f"two timing groups overlapped: {spans}"
    assert len({r["pid"] for r in dist.records}) >= 1 and all(r["pid"] != local.records[0]["pid"] for r in dist.records)


def test_impossible_resource_request_fails_fast_as_failed_cells(tmp_path):
    suite = parse_suite(dict(SUITE, backbones=["resnet18"], modules=["none", "se"]), "fan.yaml")
    ex = dask_executor(n_workers=1, local_directory=tmp_path / "scratch", slot="resource", no_workers_timeout="2s")
    result = run_suite(suite, tmp_path, executor=ex)
    by_metric = {}
    for r in result.records:
        by_metric.setdefault(r["metric"], set()).add(r["status"])
    assert by_metric == {"params": {"ok"}, "flops": {"ok"}, "latency_cpu": {"failed"}}
    err = next(r["error"] for r in result.records if r["status"] == "failed")
    assert "--resources latency_slot=1" in err["message"]
    assert result.exit_code == 1


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

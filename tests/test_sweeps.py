"""Sweeps: input_size / batch_size / runtime as suite axes; each point is its own cell with its own key."""

import pytest

from attnbench.harness.tasks import make_tasks
from attnbench.suite.load import load_suite
from attnbench.suite.model import Point
from attnbench.suite.parse import parse_suite
from attnbench.suite.plan import plan

ENV = {"torch": "x"}


def suite(**fields):
    data = {
        "name": "sw",
        "backbones": ["resnet18"],
        "modules": ["none", "se"],
        "metrics": ["params", "macs", "latency_cpu"],
    }
    data.update(fields)
    return parse_suite(data, "sw.yaml")


def test_a_list_is_a_grid_of_points():
    s = suite(input_size=[32, "48x64"], batch_size=[1, 4])
    assert s.all_points() == [Point((32, 32), 1), Point((32, 32), 4), Point((48, 64), 1), Point((48, 64), 4)]
    assert s.base == Point((32, 32), 1)
    cells = plan(s)
    # params and MACs per image depend on the input size only; timings on every axis
    by_metric = {
        m: [(c.input_size, c.batch_size, c.runtime) for c in cells if c.metric == m and c.variant.label == "se"]
        for m in ("params", "macs", "latency_cpu")
    }
    assert by_metric["params"] == by_metric["macs"] == [((32, 32), 1, "eager"), ((48, 64), 1, "eager")]
    assert by_metric["latency_cpu"] == [
        ((32, 32), 1, "eager"),
        ((32, 32), 4, "eager"),
        ((48, 64), 1, "eager"),
        ((48, 64), 4, "eager"),
    ]
    assert len(cells) == 2 * (2 + 2 + 4)
    keys = [c.key(ENV) for c in cells]
    assert len(set(keys)) == len(keys)
    assert any(c.name == "resnet18/se/latency_cpu @ 48x64 b4 eager" for c in cells)
    assert any(c.name == "resnet18/se/params @ 48x64" for c in cells)


def test_sweeps_are_a_union_of_one_axis_grids():
    s = suite(
        input_size=224,
        sweeps=[{"input_size": [112, 224, 448]}, {"batch_size": [1, 8]}, {"runtime": ["compile", "onnxruntime"]}],
    )
    assert [p.label for p in s.all_points()] == [
        "112x112 b1 eager",
        "224x224 b1 eager",
        "448x448 b1 eager",
        "224x224 b8 eager",
        "224x224 b1 compile",
        "224x224 b1 onnxruntime",
    ]
    cells = plan(s)
    assert sum(c.metric == "latency_cpu" for c in cells) == 2 * 6
    assert sum(c.metric == "macs" for c in cells) == 2 * 3  # runtime and batch do not change MACs per image


def test_timing_groups_are_interleaved_per_point():
    s = suite(batch_size=[1, 2], runtime=["eager", "onnxruntime"], metrics=["latency_cpu", "train_step_cpu"])
    cells = plan(s)
    tasks = make_tasks(cells, [c.key(ENV) for c in cells])
    groups = [(t.cells[0].metric, t.cells[0].point) for t in tasks]
    assert len(groups) == len(set(groups)) == 4 + 2  # a train step has no ONNX Runtime point
    for t in tasks:
        assert [c.variant.label for c in t.cells] == ["none", "se"]
        assert len({c.point for c in t.cells}) == 1


def test_eager_keys_did_not_change_and_runtime_is_in_the_key():
    one = plan(suite(metrics=["latency_cpu"]))
    two = plan(suite(metrics=["latency_cpu"], runtime=["eager", "compile"]))
    assert "runtime" not in one[0].config()  # stores written before runtimes existed keep their keys
    assert one[0].key(ENV) == two[0].key(ENV)
    assert two[-1].config()["runtime"] == "compile" and two[-1].key(ENV) != one[-1].key(ENV)


def test_legacy_compile_flag_is_the_compile_runtime():
    s = suite(metrics=["latency_cpu"], latency={"compile": True})
    assert {c.runtime for c in plan(s)} == {"compile"} and "compile" not in s.latency


def test_accuracy_suites_refuse_sweeps(tmp_path):
    from attnbench.errors import SuiteError

    with pytest.raises(SuiteError, match="sweeps and runtimes are for overhead suites"):
        parse_suite(
            {
                "kind": "accuracy",
                "backbones": ["resnet18"],
                "modules": ["none"],
                "dataset": "digits",
                "input_size": [8, 16],
            },
            "a.yaml",
        )


def test_regimes_suite_is_the_issue_grid():
    s = load_suite("regimes")
    assert s.backbones == ["resnet50"] and [v.label for v in s.variants if not v.auto] == [
        "none",
        "se",
        "cbam",
        "eca",
        "nonlocal",
    ]
    labels = [p.label for p in s.all_points()]
    for want in (
        "112x112 b1 eager",
        "224x224 b1 eager",
        "448x448 b1 eager",
        "224x224 b8 eager",
        "224x224 b1 compile",
        "224x224 b1 onnxruntime",
    ):
        assert want in labels

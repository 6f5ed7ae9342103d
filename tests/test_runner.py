"""The runner: how cells become tasks, what a failure is stored as, how a run ends."""

from pathlib import Path

import pytest

import attnbench
from attnbench.errors import RunAborted, Unsupported
from attnbench.harness.execute import execute
from attnbench.harness.runner import run_suite
from attnbench.harness.tasks import make_tasks
from attnbench.records.store import Store
from attnbench.registry import MODULES
from attnbench.suite.parse import parse_suite
from attnbench.suite.plan import plan

SUITE = {
    "name": "r",
    "backbones": ["resnet18", "resnet34"],
    "modules": ["none", "se"],
    "input_size": 32,
    "metrics": ["params", "macs", "latency_cpu"],
    "latency": {"threads": 1, "warmup": 1, "rounds": 2, "min_time": 0.01, "min_iters": 2},
}


def test_counts_are_single_tasks_and_timings_one_group_per_backbone():
    cells = plan(parse_suite(SUITE, "r.yaml"))
    tasks = make_tasks(cells, [f"k{i}" for i in range(len(cells))], checkpoint_dir=Path("ck"))
    shapes = [(t.cells[0].backbone, t.cells[0].metric, len(t.cells), t.grouped, t.exclusive) for t in tasks]
    assert shapes == [
        ("resnet18", "params", 1, False, False),
        ("resnet18", "params", 1, False, False),
        ("resnet18", "macs", 1, False, False),
        ("resnet18", "macs", 1, False, False),
        ("resnet18", "latency_cpu", 2, True, True),
        ("resnet34", "params", 1, False, False),
        ("resnet34", "params", 1, False, False),
        ("resnet34", "macs", 1, False, False),
        ("resnet34", "macs", 1, False, False),
        ("resnet34", "latency_cpu", 2, True, True),
    ]
    assert all(t.train_kwargs() == {} for t in tasks)  # only training cells checkpoint


def test_training_tasks_checkpoint_under_the_cell_key():
    suite = parse_suite(
        {
            "name": "a",
            "kind": "accuracy",
            "backbones": ["resnet18"],
            "modules": ["none"],
            "dataset": "digits",
            "training": {"epochs": 1},
            "seeds": [0, 1],
        },
        "a.yaml",
    )
    cells = plan(suite)
    tasks = make_tasks(cells, ["ka", "kb"], checkpoint_dir=Path("OUT/checkpoints"))
    assert [t.training for t in tasks] == [True, True]
    # absolute (issue #23): a worker started in another directory must not read it against its own
    assert tasks[1].train_kwargs() == {"checkpoint_path": Path("OUT/checkpoints/kb.pt").resolve()}


class KnownLimit:
    def __init__(self, channels):
        raise Unsupported("needs feature maps divisible by 8 (upstream limit)")


@pytest.fixture
def known_limit():
    attnbench.register("known_limit_test")(KnownLimit)
    yield
    MODULES.unregister("known_limit_test")


def test_unsupported_is_counted_apart_and_does_not_fail_the_run(tmp_path, known_limit):
    suite = parse_suite(
        {
            **SUITE,
            "name": "u",
            "backbones": ["resnet18"],
            "modules": ["none", "known_limit_test"],
            "metrics": ["params"],
        },
        "u.yaml",
    )
    result = run_suite(suite, tmp_path)
    assert (result.ok, result.failed, result.unsupported, result.exit_code) == (1, 0, 1, 0)
    rec = next(r for r in result.records if r.label == "known_limit_test")
    assert rec.status == "unsupported" and rec.error is None and "divisible by 8" in rec.note
    assert Store(tmp_path / "u.jsonl").done_keys() == {r.key for r in result.records}  # --resume will not retry it


def test_an_aborted_run_stores_no_failures_for_it_and_still_writes_the_table(tmp_path):
    suite = parse_suite({**SUITE, "name": "ab", "backbones": ["resnet18"], "metrics": ["params"]}, "ab.yaml")

    def executor(tasks):
        tasks = list(tasks)
        yield tasks[0], execute(tasks[0])
        raise RunAborted("scheduler tcp://x:8786 lost after 1 task; rerun with --resume to continue")

    result = run_suite(suite, tmp_path, executor=executor)
    assert result.exit_code == 3 and "lost after 1 task" in str(result.aborted)
    assert [r.status for r in Store(tmp_path / "ab.jsonl").records()] == ["ok"]
    assert "| resnet18 | none |" in (tmp_path / "ab.md").read_text()
    again = run_suite(suite, tmp_path, resume=True)
    assert again.reused == 1 and again.ok == 1 and again.exit_code == 0

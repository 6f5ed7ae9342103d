"""The result store: resume, kill -9, Ctrl-C, tables rebuilt from records alone."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from attnbench.harness.runner import run_suite
from attnbench.records.record import Record
from attnbench.records.store import Store, StoreWarning
from attnbench.suite.parse import parse_suite

SUITE = {
    "name": "store",
    "backbones": ["resnet18"],
    "modules": ["none", "se", "cbam", "nonlocal"],
    "input_size": 32,
    "metrics": ["params", "flops"],
}


def test_resume_skips_stored_cells(tmp_path):
    suite = parse_suite(SUITE, "store.yaml")
    first = run_suite(suite, tmp_path)
    assert first.ok == 8 and first.reused == 0
    table = (tmp_path / "store.md").read_text()
    (tmp_path / "store.md").unlink()
    again = run_suite(suite, tmp_path, resume=True)
    assert again.ok == 0 and again.reused == 8
    assert len(Store(tmp_path / "store.jsonl").records()) == 8
    assert (tmp_path / "store.md").read_text() == table  # rebuilt from the stored records alone


def test_ctrl_c_keeps_finished_cells(tmp_path):
    suite = parse_suite(SUITE, "store.yaml")

    def interrupt_after_three(task, records):
        if len(Store(tmp_path / "store.jsonl").records()) >= 3:
            raise KeyboardInterrupt

    r = run_suite(suite, tmp_path, on_done=interrupt_after_three)
    assert r.interrupted and r.exit_code == 130 and len(r.records) == 3
    assert "| resnet18 | none |" in (tmp_path / "store.md").read_text()
    r2 = run_suite(suite, tmp_path, resume=True)
    assert r2.reused == 3 and r2.ok == 5


def record(key, status="ok"):
    """The smallest record of the shape the store accepts."""
    return Record.from_dict(
        {
            "key": key,
            "suite": "x",
            "backbone": "resnet18",
            "label": "se",
            "module": "se",
            "metric": "params",
            "position": [0, 1],
            "config": {},
            "status": status,
            "measurement": {"metric": "params", "value": 1, "unit": "parameters", "method": "test"},
        }
    )


def test_torn_last_line_is_cut_before_appending(tmp_path):
    store = Store(tmp_path / "x.jsonl")
    store.append(record("a"))
    with store.path.open("a") as f:
        f.write('{"key": "b", "sta')  # kill -9 mid-write
    with pytest.warns(StoreWarning, match="skipped 1 line"):
        assert [r.key for r in store.records()] == ["a"]
    store.repair()
    store.append(record("c"))
    assert [r.key for r in store.records()] == ["a", "c"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_stores_every_cell_once(tmp_path):
    suite = tmp_path / "killme.yaml"
    suite.write_text(
        "name: killme\nbackbones: [resnet18, resnet34]\nmodules: [none, se, cbam, nonlocal]\ninput_size: 64\n"
        "metrics: [params, flops, latency_cpu]\nlatency: {threads: 1, warmup: 1, rounds: 3, min_time: 0.05}\n"
    )
    out = tmp_path / "res"
    store = out / "killme.jsonl"
    cmd = [sys.executable, "-m", "attnbench.cli", "run", "--suite", str(suite), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not store.exists() or store.read_text().count("\n") < 5):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stored_before = store.read_text().count("\n")
    assert 5 <= stored_before < 24, "the kill must land mid-run"
    p = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    keys = [json.loads(line)["key"] for line in store.read_text().splitlines() if line.strip()]
    assert len(keys) == 24 and len(set(keys)) == 24
    assert f"{stored_before} reused" in p.stderr.replace("\n", " ")

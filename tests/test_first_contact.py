"""First contact on any machine: the README's main job in fresh copies of this repository, beside each other.

A newcomer clones the repository (with its committed ``results/``) wherever they like -- a second clone, a git
worktree, a CI runner that keeps an old checkout -- and runs the main job; a results folder is copied to another
place and reported, compared and resumed there. None of it may depend on the folder the committed results were
produced in. The main job runs its counting cells (``-M params -M macs``): the same store, suite and identity
code paths as the timed run, in a minute.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COUNTS = ["-M", "params", "-M", "macs"]
pytestmark = pytest.mark.slow


def _tracked_files():
    """The repository as a clone of it would hold it: git's tracked files and the new ones git does not ignore,
    or (no git) the tree without build outputs."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
        files = [f for f in out.decode().split("\0") if f]
        if files:
            return files
    except (OSError, subprocess.CalledProcessError):
        pass
    skip = {".git", ".venv", "__pycache__", "history", "checkpoints", ".pytest_cache", ".benchmarks"}
    return [
        str(p.relative_to(REPO))
        for p in REPO.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(REPO).parts) and ".egg-info" not in str(p)
    ]


def clone(dest: Path) -> Path:
    for rel in _tracked_files():
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def attnbench(cwd: Path, *args):
    """``attnbench ARGS`` run from ``cwd`` with that copy's own code (not the installed checkout's)."""
    env = {**os.environ, "PYTHONPATH": str(cwd), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "attnbench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def records(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_main_job_in_two_clones_then_report_compare_and_resume_elsewhere(tmp_path):
    a, b = clone(tmp_path / "clone-a"), clone(tmp_path / "clone-b")
    # What the machine that produced the committed results left behind: records naming the other clone's
    # suite file by its absolute path (which exists here). Such an old store must not block this clone.
    store_b = b / "results" / "overhead.jsonl"
    old = records(store_b)
    for r in old:
        r["source"] = str(a / "suites" / "overhead.yaml")
        r.pop("suite_digest", None)
    store_b.write_text("".join(json.dumps(r) + "\n" for r in old))

    for where in (a, b):
        p = attnbench(where, "run", "--suite", "overhead", *COUNTS, "-q")
        assert p.returncode == 0, p.stderr[-2000:]
        assert "16 ok, 0 failed" in p.stderr
        new = records(where / "results" / "overhead.jsonl")
        assert len(new) == 16 and {r["status"] for r in new} == {"ok"}
        assert {r["source"] for r in new} == {"suites/overhead.yaml"} and len({r["suite_digest"] for r in new}) == 1
        text = (where / "results" / "overhead.jsonl").read_text()
        assert str(tmp_path) not in text and str(REPO) not in text  # no path of this machine in a record

    # The counts agree between the clones (same code, same machine).
    values = [{r["key"]: r["measurement"]["value"] for r in records(w / "results" / "overhead.jsonl")} for w in (a, b)]
    assert values[0] == values[1]

    # A results folder copied to a third place: report, compare and --resume there (run from the other clone).
    third = tmp_path / "elsewhere" / "results"
    shutil.copytree(a / "results", third, ignore=shutil.ignore_patterns("history"))
    p = attnbench(b, "report", str(third / "overhead.jsonl"), "--out", str(tmp_path / "report"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "report" / "overhead.md").read_text() == (a / "results" / "overhead.md").read_text()
    p = attnbench(b, "compare", str(b / "results" / "overhead.jsonl"), str(third / "overhead.jsonl"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| resnet50 | se | params | M parameters | 28.088 | 28.088 | +0.00% |" in p.stdout
    before = (third / "overhead.jsonl").read_text()
    p = attnbench(b, "run", "--suite", "overhead", *COUNTS, "--out", str(third), "--resume", "-q")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "0 ok, 0 failed, 0 skipped, 16 reused" in p.stderr
    assert (third / "overhead.jsonl").read_text() == before  # nothing re-measured, nothing rewritten


def test_another_suite_with_the_same_name_is_still_refused(tmp_path):
    a = clone(tmp_path / "clone")
    mine = tmp_path / "mine" / "overhead.yaml"  # another file named like the shipped suite, with other content
    mine.parent.mkdir()
    mine.write_text("name: overhead\nbackbones: [resnet18, resnet50]\nmodules: [none, eca]\nmetrics: [params, macs]\n")
    assert attnbench(a, "run", "--suite", "overhead", *COUNTS, "-b", "resnet18", "-q").returncode == 0
    p = attnbench(a, "run", "--suite", str(mine), "-M", "params", "-b", "resnet18", "--resume", "-q")
    assert p.returncode == 2
    line = p.stderr.strip().splitlines()[-1]
    assert "from suites/overhead.yaml" in line and "another 'name:'" in line

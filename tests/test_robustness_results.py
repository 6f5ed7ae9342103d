"""Nothing lost, nothing mislabelled (issue 20): reruns keep earlier stores, `compare --fail-above` fails
whenever it cannot vouch for the candidate, plugins that exit or print at run time fail their own
cells, validation bounded by cost, guarded output paths, typed store fields, signals, table escaping.
Every case runs the installed `attnbench` script in a subprocess."""

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import install_package
from test_robustness import SCRIPT, one_line_error, script

from attnbench.records.record import Record
from attnbench.records.store import Store

ROGUE_SRC = Path(__file__).parent / "rogue_pkg"
PARAMS_R18 = 11_689_512  # torchvision's / timm's ResNet-18


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def tiny(name, modules="[none, se]", extra=""):
    return f"name: {name}\nbackbones: [resnet18]\nmodules: {modules}\ninput_size: 32\nmetrics: [params]\n{extra}"


def lines_of(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def no_traceback(p):
    assert "Traceback" not in p.stdout + p.stderr, p.stderr


# --- 1. results never disappear -------------------------------------------------------------


def test_reruns_without_resume_keep_every_earlier_store_and_table(tmp_path):
    suite, out = write(tmp_path, "keep.yaml", tiny("keep")), tmp_path / "res"
    for i in range(3):
        p = script("run", "-s", suite, "-o", str(out), "-q")
        assert p.returncode == 0, p.stderr
        assert ("moved to" in p.stderr) == (i > 0)
    kept = sorted((out / "history").iterdir())
    assert len(kept) == 2  # three runs in one second: two distinct folders, neither overwritten
    for folder in kept:
        assert sorted(f.name for f in folder.iterdir()) == ["keep.csv", "keep.jsonl", "keep.md"]
        assert len(lines_of(folder / "keep.jsonl")) == 2
    starts = {r["started"] for f in kept for r in lines_of(f / "keep.jsonl")} | {
        r["started"] for r in lines_of(out / "keep.jsonl")
    }
    assert len(starts) == 6  # six cells measured, six records kept


def test_two_suite_files_with_one_name_never_share_a_store(tmp_path):
    a = write(tmp_path, "a.yaml", tiny("same"))
    b = write(tmp_path, "b.yaml", tiny("same", "[none, eca]"))
    out = tmp_path / "res"
    assert script("run", "-s", a, "-o", str(out), "-q").returncode == 0
    for extra in ([], ["--resume"]):
        line = one_line_error(script("run", "-s", b, "-o", str(out), "-q", *extra))
        assert "a.yaml" in line and "b.yaml" in line and "another 'name:'" in line
    assert sorted(r["label"] for r in lines_of(out / "same.jsonl")) == ["none", "se"]
    assert not (out / "history").exists()


# --- 2. compare --fail-above ----------------------------------------------------------------


def _rec(label, i, *, suite="gate", size=32, rounds=5, status="ok", value=None):
    m = {
        "metric": "latency_cpu",
        "value": value or 10.0 + i,
        "unit": "ms",
        "method": "test",
        "stats": {"median_ms": value or 10.0 + i, "iqr_ms": 0.1},
    }
    return Record.from_dict(
        {
            "key": f"{label}-{size}",
            "suite": suite,
            "backbone": "resnet18",
            "label": label,
            "module": label,
            "metric": "latency_cpu",
            "position": [0, i],
            "status": status,
            "config": {
                "backbone": "resnet18",
                "module": label,
                "label": label,
                "metric": "latency_cpu",
                "input_size": [size, size],
                "batch_size": 1,
                "latency": {"rounds": rounds},
            },
            "measurement": m if status == "ok" else None,
            "error": {"type": "RuntimeError", "message": "boom"} if status == "failed" else None,
        }
    )


def _store(tmp_path, name, records):
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"")
    Store(path).extend(records)
    return str(path)


REFERENCE = [("none", 0), ("se", 1)]


@pytest.mark.parametrize(
    "candidate,why",
    [
        (
            [_rec("none", 0), _rec("se", 1, status="failed")],
            "1 cell(s) failed in the candidate: resnet18/se/latency_cpu (RuntimeError)",
        ),
        ([_rec("none", 0)], "1 cell(s) missing from the candidate: resnet18/se/latency_cpu"),
        ([_rec("none", 0, size=64), _rec("se", 1, size=64)], "the stores share no cell"),
        (
            [_rec("none", 0, suite="other"), _rec("se", 1, suite="other")],
            "the stores hold different suites (gate vs other)",
        ),
        ([_rec("none", 0, rounds=10), _rec("se", 1, rounds=10)], "different settings: latency.rounds 5 vs 10"),
    ],
)
def test_fail_above_fails_when_it_cannot_vouch_for_the_candidate(tmp_path, candidate, why):
    a = _store(tmp_path, "a", [_rec(lb, i) for lb, i in REFERENCE])
    b = _store(tmp_path, "b", candidate)
    p = script("compare", a, b, "--fail-above", "5")
    assert p.returncode == 1, (p.returncode, p.stderr)
    no_traceback(p)
    assert p.stderr.count("error:") == 1 and why in p.stderr
    assert p.stdout.startswith("# compare")


def test_fail_above_passes_a_clean_candidate_and_refuses_an_empty_store(tmp_path):
    a = _store(tmp_path, "a", [_rec(lb, i) for lb, i in REFERENCE])
    b = _store(tmp_path, "b", [_rec(lb, i) for lb, i in REFERENCE])
    assert script("compare", a, b, "--fail-above", "5").returncode == 0
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for args in ([a, str(empty)], [str(empty), a]):
        assert (
            one_line_error(script("compare", *args, "--fail-above", "5"))
            == f"error: {empty} holds no records; compare needs a store written by `attnbench run`"
        )


# --- 3. plugins that exit or print while they run -------------------------------------------


@pytest.fixture(scope="module")
def rogue_env(tmp_path_factory):
    return {"PYTHONPATH": str(install_package(ROGUE_SRC, tmp_path_factory))}


def test_plugins_that_exit_or_print_fail_only_their_own_cells(rogue_env, tmp_path):
    suite = write(
        tmp_path,
        "rogue.yaml",
        "name: rogue\nbackbones: [resnet18]\n"
        "modules: [none, exit_forward, exit_text, exit_init, prints]\ninput_size: 32\n"
        "metrics: [params, macs, latency_cpu]\n"
        "latency: {threads: 1, warmup: 1, rounds: 2, min_time: 0.01, min_iters: 2}\n",
    )
    p = script("run", "-s", suite, "-o", str(tmp_path / "res"), env=rogue_env)
    no_traceback(p)
    assert p.returncode == 1 and "cell(s) failed" in p.stderr  # failed cells, not a run that ended
    assert p.stdout.startswith("# rogue") and "ROGUE" not in p.stdout
    assert "ROGUE PRINT" in p.stderr and "ROGUE FD1" in p.stderr
    got = {
        (r["label"], r["metric"]): (r["status"], (r["error"] or {}).get("type"), (r["error"] or {}).get("message", ""))
        for r in lines_of(tmp_path / "res" / "rogue.jsonl")
    }
    assert len(got) == 15
    for metric in ("params", "macs", "latency_cpu"):
        assert got[("none", metric)][0] == got[("prints", metric)][0] == "ok"
        assert got[("exit_init", metric)][:2] == ("failed", "ModuleDoesNotFit")
    for label in ("exit_forward", "exit_text"):
        for metric in ("params", "macs", "latency_cpu"):  # (params: when the build runs the module, it fails there)
            assert got[(label, metric)][:2] in (
                {("failed", "ModuleFailed")} | ({("ok", None)} if metric == "params" else set())
            )
    assert "SystemExit: rogue | gate gives up" in got[("exit_text", "macs")][2]
    (row,) = [ln for ln in p.stdout.splitlines() if ln.startswith("| resnet18 | exit_text |")]
    assert "failed (ModuleFailed)" in row


def test_measure_keeps_plugin_output_off_stdout_and_contains_exit(rogue_env):
    p = script("measure", "resnet18", "prints", "--input-size", "32", env=rogue_env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("resnet18 + prints") and "ROGUE" not in p.stdout and "ROGUE FD1" in p.stderr
    p = script("measure", "resnet18", "exit_text", "--input-size", "32", env=rogue_env)
    assert one_line_error(p).endswith("SystemExit: rogue | gate gives up")


# --- 4. validation bounded by cost ----------------------------------------------------------

BOMB = "[&a '" + "x" * 1000 + "', &b [" + ", ".join(["*a"] * 64) + "], [" + ", ".join(["*b"] * 64) + "]]"


@pytest.mark.parametrize(
    "extra,fld,problem",
    [
        ("backbones: [resnet18, resnet34, resnet18]\n", "backbones[2]", "names 'resnet18' again (backbones[0])"),
        ("modules: [none, se, {name: se2, module: se}]\n", "modules[2]", "measures the same as modules[1]"),
        ("module_options: {se: {reduction: -4}}\n", "module_options.se", "option 'reduction' must be a number > 0"),
        (
            "modules: [none, {name: e, module: eca, kernel_size: -3}]\n",
            "modules[1]",
            "option 'kernel_size' must be an integer >= 0",
        ),
        (
            "modules: [none, {name: nl, module: nonlocal, blocks: 0}]\n",
            "modules[1]",
            "option 'blocks' must be an integer > 0",
        ),
        ("backbone_options: {pretrained: true}\n", "backbone_options.pretrained", "never downloads weights"),
        (
            "backbone_options: {drop_ratee: 0.1}\n",
            "backbone_options.drop_ratee",
            "unexpected keyword argument 'drop_ratee'",
        ),
        ("backbone_options: {in_chans: 0}\n", "backbone_options.in_chans", "must be a positive integer"),
        (
            f"input_size: {list(range(1, 1001))}\nbatch_size: {list(range(1, 1001))}\n",
            "input_size",
            "plans 1,000,000 points (1,000 input_size x 1,000 batch_size x 1 runtime); a suite may plan at most 1,000",
        ),
        (
            f"metrics: [latency_cpu]\nsweeps: [{{input_size: {list(range(32, 1032))}}}, {{batch_size: {list(range(1, 1001))}}}]\n",
            "sweeps[0]",
            "plans 2,000 points (1,000 input_size x 1 batch_size x 1 runtime)",
        ),
        (
            f"metrics: [latency_cpu]\nmodules: [none, se, eca]\ninput_size: {list(range(32, 832))}\n",
            "input_size",
            "plans 2,400 timing cells (1 backbones x 3 modules x 800 input_size)",
        ),
        (f"description: {BOMB}\n", "<file>", "expands to more than 1,048,576 bytes of text"),
    ],
)
def test_suites_are_bounded_and_checked_at_load(tmp_path, extra, fld, problem):
    base = "backbones: [resnet18]\nmodules: [none, se]\ninput_size: 32\nmetrics: [params]\n"
    keys = {line.split(":")[0] for line in extra.splitlines()}
    text = "".join(line + "\n" for line in base.splitlines() if line.split(":")[0] not in keys) + extra
    path = write(tmp_path, "v.yaml", text)
    t0 = time.perf_counter()
    line = one_line_error(script("run", "-s", path, "-o", str(tmp_path / "res"), "-q"))
    assert time.perf_counter() - t0 < 60
    assert line.startswith(f"error: {path}: field {fld!r}: ") and problem in line, line
    assert len(line) < 400 and not (tmp_path / "res" / "suite.jsonl").exists()


def test_in_chans_sets_the_input_every_cell_gets(tmp_path):
    path = write(
        tmp_path,
        "gray.yaml",
        tiny("gray", extra="backbone_options: {in_chans: 1}\n").replace("metrics: [params]", "metrics: [params, macs]"),
    )
    p = script("run", "-s", path, "-o", str(tmp_path / "res"), "-q")
    assert p.returncode == 0, p.stderr
    recs = {(r["label"], r["metric"]): r for r in lines_of(tmp_path / "res" / "gray.jsonl")}
    assert all(r["status"] == "ok" for r in recs.values())
    # conv1 sees one channel instead of three: 64 x 7 x 7 x 2 fewer weights
    assert recs[("none", "params")]["measurement"]["value"] == PARAMS_R18 - 64 * 7 * 7 * 2


# --- 5. commands outside `run` guard their input and output ---------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(store, suite file) of a finished two-cell run."""
    tmp = tmp_path_factory.mktemp("store")
    suite = write(tmp, "small.yaml", tiny("small"))
    p = script("run", "-s", suite, "-o", str(tmp / "res"), "-q")
    assert p.returncode == 0, p.stderr
    return tmp / "res" / "small.jsonl", suite


def test_report_and_validate_into_unwritable_places(small, tmp_path):
    small_store = small[0]
    f = tmp_path / "afile"
    f.write_text("x")
    assert (
        one_line_error(script("report", str(small_store), "--out", str(f)))
        == f"error: --out {f} is a file, not a folder; give a folder for the results"
    )
    assert one_line_error(script("report", str(small_store), "--out", str(f / "sub"))).startswith(
        f"error: cannot write to --out {f / 'sub'}"
    )
    assert one_line_error(script("report", str(small_store), "--out", "/proc/attnbench-ro")).startswith(
        "error: cannot write to --out /proc/attnbench-ro"
    )
    partial = tmp_path / "partial"
    (partial / "small.csv").mkdir(parents=True)  # the .md can be written, the .csv cannot
    p = script("report", str(small_store), "--out", str(partial))
    assert p.returncode == 1 and p.stderr.startswith("error: not written: small.md/.csv") and p.stderr.count("\n") == 1
    no_traceback(p)
    t0 = time.perf_counter()
    assert (
        one_line_error(script("validate", "--out", str(f)))
        == f"error: --out {f} is a file, not a folder; give a folder for the results"
    )
    assert time.perf_counter() - t0 < 30  # refused before any model is built


@pytest.mark.parametrize(
    "args,start",
    [
        (["--input-size", "0"], "error: Invalid value for '--input-size'"),
        (["--input-size", "-5"], "error: Invalid value for '--input-size'"),
        (
            ["--input-size", "100000"],
            "error: --input-size 100000: batch 2 at 100000x100000 needs 223.5 GiB for the input alone",
        ),
        (["-O", "reduction=[1,2"], "error: option 'reduction=[1,2': the value not valid YAML at line 1"),
        (
            ["-O", "reduction=8", "-O", "reduction=4"],
            "error: option 'reduction' is given twice (-O reduction=4); give it once",
        ),
        (
            ["-O", "reduction=-4"],
            "error: module 'se': option 'reduction' must be a number > 0 (its default is 16), got -4",
        ),
    ],
)
def test_measure_refuses_bad_values_in_one_line(args, start):
    assert one_line_error(script("measure", "resnet18", "se", *args)).startswith(start)


# --- 6. stores with wrongly typed fields ----------------------------------------------------


def test_wrongly_typed_records_are_skipped_and_counted_everywhere(small, tmp_path):
    store = tmp_path / "small.jsonl"
    good = small[0].read_text()
    rec = json.loads(good.splitlines()[1])
    broken = []
    for path, value in (
        (("position",), ["a", "b"]),
        (("measurement", "value"), None),
        (("config",), None),
        (("backbone",), 7),
        (("config", "input_size"), "32"),
        (("measurement", "stats"), [1]),
        (("env",), None),
        (("error",), "x"),
    ):
        r = json.loads(json.dumps(rec))
        r["key"] = f"bad-{len(broken)}"
        target = r
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value
        broken.append(json.dumps(r))
    store.write_text(good + "\n".join(broken) + "\n")
    for args in (["report", str(store)], ["compare", str(store), str(store), "--fail-above", "5"]):
        p = script(*args, env={"PYTHONWARNINGS": "default"})
        no_traceback(p)
        assert p.returncode == 0, p.stderr
        assert p.stderr.count(f"skipped 8 line(s) of {store}") >= 1 and "| resnet18 | se |" in p.stdout
    p = script("run", "-s", small[1], "-o", str(tmp_path), "--resume", "-q", env={"PYTHONWARNINGS": "default"})
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("skipped 8 line(s)") == 1
    assert "0 ok, 0 failed, 0 skipped, 2 reused" in p.stderr


# --- 7. signals -----------------------------------------------------------------------------

LONG = (
    "backbones: [resnet18]\nmodules: [none, se]\ninput_size: 32\nmetrics: [params, latency_cpu]\n"
    "latency: {threads: 1, warmup: 1, rounds: 200, min_time: 0.05, min_iters: 2}\n"
)


def _start(*args):
    return subprocess.Popen([str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _handling_signals(proc, limit=30):
    """Wait until attnbench's own handlers are in place (SIGTERM caught, /proc/PID/status): a signal before
    that lands in the interpreter's start-up (site.py), before any attnbench code runs."""
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        try:
            mask = next(
                ln for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if ln.startswith("SigCgt:")
            )
        except (OSError, StopIteration):
            pytest.skip("no /proc/PID/status here")
        if int(mask.split()[1], 16) >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.005)
    raise AssertionError("attnbench never installed its signal handlers")


def _wait_for(store, n, proc, limit=90):
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        if store.exists() and store.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{store} never held {n} records")


def test_sigterm_mid_run_ends_with_one_line_the_table_and_143(tmp_path):
    suite, out = write(tmp_path, "term.yaml", "name: term\n" + LONG), tmp_path / "res"
    proc = _start("run", "-s", suite, "-o", str(out))
    _wait_for(out / "term.jsonl", 2, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert "| resnet18 | se |" in stdout and stdout.startswith("# term")
    assert "interrupted by SIGTERM: finished cells are stored" in stderr and "--resume" in stderr


def test_second_ctrl_c_leaves_no_stale_table_beside_the_new_store(tmp_path):
    suite, out = write(tmp_path, "twice.yaml", tiny("twice", "[none]")), tmp_path / "res"
    assert script("run", "-s", suite, "-o", str(out), "-q").returncode == 0
    old_md = (out / "twice.md").read_text()
    Path(suite).write_text("name: twice\n" + LONG)  # the same file, edited: now it times too
    proc = _start("run", "-s", suite, "-o", str(out), "-q")
    _wait_for(out / "twice.jsonl", 2, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert "interrupted by Ctrl-C" in stderr
    (kept,) = (out / "history").iterdir()
    assert (kept / "twice.md").read_text() == old_md  # the first run's table went with its store
    stored = {(r["label"], r["metric"]) for r in lines_of(out / "twice.jsonl")}
    assert {("none", "params"), ("se", "params")} <= stored
    md = out / "twice.md"
    assert not md.exists() or "| resnet18 | se |" in md.read_text()  # a table beside the store is the store's


@pytest.mark.parametrize("sig,code,name", [(signal.SIGINT, 130, "Ctrl-C (SIGINT)"), (signal.SIGTERM, 143, "SIGTERM")])
@pytest.mark.parametrize("after", [0.0, 1.5])  # importing attnbench's modules and torch; measuring
def test_a_signal_during_start_up_or_measure_is_one_line(sig, code, name, after):
    proc = _start("measure", "resnet50", "cbam", "--input-size", "320")
    _handling_signals(proc)
    time.sleep(after)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and stderr.strip().count("\n") == 0
    assert stderr.startswith(f"interrupted by {name}") and stdout == ""


# --- 8. labels and messages cannot break a table ----------------------------------------------


def test_pipes_and_line_breaks_in_labels_stay_in_their_cell(tmp_path):
    path = write(tmp_path, "pipes.yaml", tiny("pipes", '[none, {name: "se|r8\\nwide", module: se, reduction: 8}]'))
    p = script("run", "-s", path, "-o", str(tmp_path / "res"))
    assert p.returncode == 0, p.stderr
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("|")]
    cells = {len(re.split(r"(?<!\\)\|", ln)) for ln in rows}
    assert len(rows) == 4 and cells == {8}  # header, rule, two rows: 6 columns each
    assert r"| resnet18 | se\|r8 wide | block x8 |" in p.stdout
    p = script("compare", str(tmp_path / "res" / "pipes.jsonl"), str(tmp_path / "res" / "pipes.jsonl"))
    assert r"| resnet18 | se\|r8 wide | params |" in p.stdout

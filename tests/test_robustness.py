"""Every bad input and every fault ends in one clear line (issue: CLI, plugins, suites, output
folder, runaway cells): the installed command is run in a subprocess for usage errors."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import plugins_from
from torch import nn

import attnbench
from attnbench.errors import AttnBenchError, SuiteError
from attnbench.harness.execute import error_info
from attnbench.harness.runner import run_suite
from attnbench.records.store import FolderLock, Store, StoreWarning
from attnbench.registry import MODULES, PluginWarning
from attnbench.suite.load import load_suite
from attnbench.suite.parse import parse_suite

SCRIPT = Path(sys.executable).with_name("attnbench")  # the installed console script
TINY = {"name": "tiny", "backbones": ["resnet18"], "modules": ["none", "se"], "input_size": 32, "metrics": ["params"]}


def script(*args, env=None, cwd=None, timeout=120):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def one_line_error(p):
    """Exit 2, no traceback, and the first stderr line is the error."""
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    return p.stderr.splitlines()[0]


# --- 1. CLI usage ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,first_line",
    [
        (["list", "foo"], "error: Invalid value for 'what'"),
        (["run", "--bogus"], "error: No such option: --bogus"),
        (["run", "--suite"], "error: Option '--suite' requires an argument."),
        (["measure"], "error: Missing argument 'backbone'."),
        (["bogus"], "error: No such command 'bogus'."),
        (["measure", "resnet18", "--input-size", "x"], "error: Invalid value for '--input-size'"),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_usage(args, first_line):
    p = script(*args)
    assert one_line_error(p).startswith(first_line)
    assert "--help' for help." in p.stderr


@pytest.mark.parametrize("args", [[], ["list"]])
def test_bare_commands_show_help_and_exit_2(args):
    p = script(*args)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "Usage: attnbench" in p.stderr


def test_version_and_python_dash_m():
    p = script("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"attnbench {attnbench.__version__}"
    q = subprocess.run([sys.executable, "-m", "attnbench", "--version"], capture_output=True, text=True)
    assert q.returncode == 0 and q.stdout == p.stdout


# --- 2. plugins --------------------------------------------------------------------------


@pytest.fixture
def hostile(hostile_site, monkeypatch):
    with plugins_from(hostile_site, monkeypatch) as caught:
        yield MODULES.names(), [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]


def test_plugin_cannot_take_a_builtin_name(hostile):
    names, warned = hostile
    assert "se" in names and "attnbench-hostile-plugin:se" in names
    assert MODULES.provider("se")[0] == "attnbench"
    assert any("'se'" in w and "attnbench-hostile-plugin" in w and "attnbench" in w for w in warned)
    # The built-in keeps its numbers: SE on ResNet-18 = sum over 8 blocks of 2C^2/16 + C/16 + C.
    assert attnbench.attention_parameters(attnbench.build("resnet18", "se")) == 89_080
    # The plugin is still usable under its qualified name: one scale per channel, 8 blocks.
    assert attnbench.attention_parameters(attnbench.build("resnet18", "attnbench-hostile-plugin:se")) == 2 * (
        64 + 128 + 256 + 512
    )


def test_plugin_exit_on_import_is_contained(hostile):
    names, warned = hostile
    assert "exits" in names and not any("'exits'" in w for w in warned)  # listed from metadata, not imported yet
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(AttnBenchError, match="failed to import: SystemExit: hostile plugin exits on import"):
            MODULES.get("exits")
    assert [str(w.message) for w in caught if "'exits'" in str(w.message) and "SystemExit" in str(w.message)]
    assert "exits" not in MODULES.names()


def test_plugin_output_never_reaches_stdout_and_packages_are_recorded(hostile_site, tmp_path):
    env = {"PYTHONPATH": str(hostile_site)}
    p = script("list", "modules", "--details", env=env)
    assert p.returncode == 0 and "NOISY" not in p.stdout and "NOISY PLUGIN OUTPUT" in p.stderr
    listed = [line.split()[0] for line in p.stdout.splitlines()]
    assert "se" in listed and "attnbench-hostile-plugin:se" in listed and "noisy" in listed
    suite = tmp_path / "noisy.yaml"
    suite.write_text("name: noisy\nbackbones: [resnet18]\nmodules: [none, noisy]\ninput_size: 32\nmetrics: [params]\n")
    p = script("run", "--suite", str(suite), "--out", str(tmp_path / "res"), env=env)
    assert p.returncode == 0, p.stderr
    assert "NOISY" not in p.stdout and p.stdout.lstrip().startswith("# noisy")
    rec = [json.loads(line) for line in (tmp_path / "res" / "noisy.jsonl").read_text().splitlines()]
    plugin_row = next(r for r in rec if r["label"] == "noisy")
    assert plugin_row["env"]["module_package"] == "attnbench-hostile-plugin 0.2.0"
    assert plugin_row["env"]["plugins"] == {"attnbench-hostile-plugin": "0.2.0"}


def test_the_plugin_package_is_part_of_a_cells_key(hostile):
    from attnbench.harness.tasks import cell_keys
    from attnbench.suite.plan import plan

    suite = parse_suite({**TINY, "modules": ["se", "attnbench-hostile-plugin:se"]}, "k.yaml")
    cells = plan(suite)
    a, b = cell_keys(cells)
    assert a != b


# --- 3. validation at load time ----------------------------------------------------------


def _suite(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return str(p)


@pytest.mark.parametrize(
    "extra,field,problem",
    [
        ("latency: {threads: -1}\n", "latency.threads", "integer >= 1"),
        ("latency: {threads: 0}\n", "latency.threads", "integer >= 1"),
        ("latency: {min_time: .nan}\n", "latency.min_time", "finite number"),
        ("module_options: {se: {reducton: 8}}\n", "module_options.se", "does not accept options ['reducton']"),
        ("batch_size: 100000\ninput_size: 4096\n", "batch_size", "available"),
        ("timeout: -3\n", "timeout", "finite number > 0"),
    ],
)
def test_mistakes_are_found_at_load_time(tmp_path, extra, field, problem):
    path = _suite(tmp_path, "backbones: [resnet18]\nmodules: [none, se]\n" + extra)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{path}: field {field!r}:") and problem in str(info.value)


def test_alias_bomb_is_refused_fast_and_messages_stay_bounded(tmp_path):
    # nine levels of nine aliases each: 9**9 (387 million) nodes once expanded, a few hundred bytes on disk
    levels = "  l0: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
    )
    t0 = time.perf_counter()
    for where in (
        "description:\n" + levels,
        "modules:\n- none\n- name: x\n  module: se\n  junk:\n" + levels.replace("  l", "    l"),
    ):
        path = _suite(tmp_path, "backbones: [resnet18]\n" + where)
        with pytest.raises(SuiteError, match="expands to more than"):
            load_suite(path)
    assert time.perf_counter() - t0 < 5
    # a bad value is quoted in bounded form, however large
    path = _suite(tmp_path, "backbones: " + "x" * 100_000 + "\nmodules: [se]\n")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert len(str(info.value)) < 400


def test_binary_and_oversized_suite_files(tmp_path):
    with pytest.raises(SuiteError, match="not UTF-8"):
        load_suite(_suite(tmp_path, b"\x89PNG\r\n\x1a\n\xff\xfe", "b.yaml"))
    with pytest.raises(SuiteError, match="at most"):
        load_suite(_suite(tmp_path, "# " + "x" * (1 << 20) + "\n", "big.yaml"))


# --- 4. the per-cell guard ---------------------------------------------------------------


class Hang(nn.Module):
    def __init__(self, channels):
        super().__init__()

    def forward(self, x):
        while True:
            time.sleep(0.05)


class CpuOom(nn.Module):
    def __init__(self, channels):
        super().__init__()

    def forward(self, x):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"
        )


class StdGate(nn.Module):
    """SRM's style pooling without SRM's declared limit: the unbiased std of a 1x1 map is NaN."""

    def __init__(self, channels):
        super().__init__()

    def forward(self, x):
        return x * torch.sigmoid(x.flatten(2).std(dim=2))[..., None, None]


@pytest.fixture
def faulty_modules():
    attnbench.register("hang_test")(Hang)
    attnbench.register("cpu_oom_test")(CpuOom)
    attnbench.register("std_gate_test")(StdGate)
    yield
    MODULES.unregister("hang_test")
    MODULES.unregister("cpu_oom_test")
    MODULES.unregister("std_gate_test")


@pytest.mark.slow
def test_hung_oom_and_nan_cells_fail_alone(tmp_path, faulty_modules):
    suite = parse_suite(
        {
            "name": "guard",
            "backbones": ["resnet18"],
            "modules": ["none", "hang_test", "cpu_oom_test", "std_gate_test", "srm"],
            "input_size": 32,
            "metrics": ["macs", "latency_cpu"],
            "timeout": 10,
            "latency": {"threads": 1, "warmup": 1, "rounds": 2, "min_time": 0.01, "min_iters": 2},
        },
        "guard.yaml",
    )
    t0 = time.perf_counter()
    result = run_suite(suite, tmp_path)
    assert time.perf_counter() - t0 < 60
    errors = {(r.label, r.metric): (r.error or {}).get("type") for r in result.records}
    assert errors[("hang_test", "macs")] == "Timeout" and errors[("hang_test", "latency_cpu")] == "Timeout"
    assert (
        errors[("cpu_oom_test", "macs")] == "OutOfMemory" and errors[("cpu_oom_test", "latency_cpu")] == "OutOfMemory"
    )
    # an unbiased std of a 1x1 map (resnet18's res5 at 32x32) is NaN: never an ok number
    assert errors[("std_gate_test", "macs")] == "NonFiniteOutput"
    assert errors[("std_gate_test", "latency_cpu")] == "NonFiniteOutput"
    # SRM declares that limit (min_spatial 2): the cell is unsupported, with the reason, before any forward
    srm = [r for r in result.records if r.label == "srm"]
    assert srm and all(r.status == "unsupported" and "spatial" in (r.note or "") for r in srm), [
        (r.status, r.note) for r in srm
    ]
    assert errors[("none", "macs")] is None and errors[("none", "latency_cpu")] is None
    assert result.exit_code == 1


def test_cpu_allocation_failure_is_out_of_memory():
    info = error_info(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert info["type"] == "OutOfMemory" and info["message"].endswith("lower batch_size or input_size")
    assert error_info(MemoryError())["type"] == "OutOfMemory"


# --- 5. the output folder ----------------------------------------------------------------


def test_out_that_is_a_file_exits_2(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    p = script("run", "--suite", "smoke", "--out", str(f), "-q")
    assert one_line_error(p) == f"error: --out {f} is a file, not a folder; give a folder for the results"


def test_read_only_out_is_refused_before_any_work(tmp_path, monkeypatch):
    def refuse(self, data):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(AttnBenchError, match="cannot write to --out .*Read-only file system; give a writable folder"):
        run_suite(parse_suite(TINY, "tiny.yaml"), tmp_path / "ro")
    assert not (tmp_path / "ro" / "tiny.jsonl").exists()


def test_second_run_on_a_folder_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    with FolderLock(out):
        p = script("run", "--suite", "smoke", "--out", str(out), "-q")
    assert one_line_error(p).startswith(f"error: {out} is in use by another attnbench run (pid {os.getpid()})")
    with FolderLock(out):  # released: it can be taken again
        pass


def test_disk_full_mid_run_stops_cleanly_and_resume_recovers(tmp_path, monkeypatch):
    from attnbench.errors import OutputError

    suite = parse_suite({**TINY, "metrics": ["params", "macs"]}, "tiny.yaml")
    real_append, calls = Store.append, []

    def append(self, record):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, record)

    monkeypatch.setattr(Store, "append", append)
    result = run_suite(suite, tmp_path)
    assert isinstance(result.aborted, OutputError) and result.exit_code == 1
    assert "No space left on device" in str(result.aborted) and "--resume" in str(result.aborted)
    assert len(Store(tmp_path / "tiny.jsonl").records()) == 2
    monkeypatch.setattr(Store, "append", real_append)
    again = run_suite(suite, tmp_path, resume=True)
    assert again.reused == 2 and again.ok == 2 and again.exit_code == 0


# --- 6. reading stores -------------------------------------------------------------------


def test_foreign_and_binary_lines_are_skipped_with_one_counted_warning(tmp_path):
    run_suite(parse_suite(TINY, "tiny.yaml"), tmp_path)
    store = tmp_path / "tiny.jsonl"
    good = store.read_bytes()
    with store.open("ab") as f:
        f.write(b'{"key": "zz", "hello": "world"}\n\xff\xfe\x00binary\n{"key": "yy", "status": "ok", "metric": 3}\n')
    with pytest.warns(StoreWarning, match="skipped 3 line"):
        assert len(Store(store).latest()) == 2
    p = script("report", str(store))
    assert p.returncode == 0 and "| resnet18 | se |" in p.stdout
    p = script("compare", str(store), str(store))
    assert p.returncode == 0 and "| resnet18 | se | params |" in p.stdout
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\x00\xff" * 100)
    assert one_line_error(script("report", str(junk))) == f"error: {junk} holds no records"
    assert good  # the original records were untouched


# --- 8. a second Ctrl-C while the table is written ----------------------------------------


def test_interrupt_while_writing_the_table_leaves_it_whole(tmp_path, monkeypatch):
    import attnbench.report as report

    real = report.write_outputs

    def interrupted_write(*args):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C again during shutdown
        return real(*args)

    monkeypatch.setattr(report, "write_outputs", interrupted_write)
    result = run_suite(parse_suite(TINY, "tiny.yaml"), tmp_path)
    assert result.exit_code == 0 and not result.unwritten
    md = (tmp_path / "tiny.md").read_text()
    assert "| resnet18 | none |" in md and "| resnet18 | se |" in md

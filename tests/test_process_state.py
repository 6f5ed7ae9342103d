"""Plugins that change process state or raise what ends programs (issue 33): a cell or a check step whose
module changes process-wide state fails with one line naming the change, the state is put back and later
rows are unaffected; KeyboardInterrupt / GeneratorExit / BaseException / sys.exit(0) raised by a module fail
its cell, while a real Ctrl-C still stops the run."""

import gc
import io
import os
import signal
import sys
import textwrap

import pytest
import torch
from test_robustness import script
from torch import nn

import attnbench
from attnbench.check.checklist import run_check
from attnbench.guard import interrupts
from attnbench.guard.cell import Escaped, contained, deadline
from attnbench.guard.process_state import SETTINGS, StateChanged, Watch, snapshot, unchanged
from attnbench.harness.execute import execute
from attnbench.harness.runner import run_suite
from attnbench.harness.tasks import cell_keys, make_tasks
from attnbench.registry import MODULES
from attnbench.suite.parse import parse_suite
from attnbench.suite.plan import plan


@pytest.fixture(autouse=True)
def default_sigint():
    """Python's own Ctrl-C handler while each test runs: another test may have imported a library that replaces it
    (dask_jobqueue's runner installs `lambda *_: sys.exit()` at import), and these tests deliver real SIGINTs."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --- every setting a module can change is seen and put back --------------------------------------


def _hook():
    nn.modules.module.register_module_forward_hook(lambda m, i, o: None)


def _pre_hook():
    nn.modules.module.register_module_forward_pre_hook(lambda m, i: None)


def _mode():
    torch.overrides.TorchFunctionMode().__enter__()  # entered, never left


def _stderr_replaced():
    sys.stderr = io.StringIO()


CHANGES = {  # what a careless module does -> the setting that must be named
    "threads": (lambda: torch.set_num_threads(max(1, torch.get_num_threads() % 2 + 1)), "torch threads"),
    "dtype": (lambda: torch.set_default_dtype(torch.float64), "torch default dtype"),
    "device": (lambda: torch.set_default_device("meta"), "torch default device"),
    "grad": (lambda: torch.set_grad_enabled(False), "grad mode"),
    "anomaly": (lambda: torch.autograd.set_detect_anomaly(True), "anomaly detection"),
    "deterministic": (lambda: torch.use_deterministic_algorithms(True), "deterministic algorithms"),
    "matmul": (lambda: torch.set_float32_matmul_precision("medium"), "float32 matmul precision"),
    "cudnn": (
        lambda: setattr(torch.backends.cudnn, "benchmark", not torch.backends.cudnn.benchmark),
        "torch.backends.cudnn.benchmark",
    ),
    "autocast": (lambda: torch.set_autocast_enabled("cpu", True), "autocast on cpu"),
    "forward hook": (_hook, "global module hooks"),
    "pre hook": (_pre_hook, "global module hooks"),
    "function mode": (_mode, "torch function modes"),
    "cwd": (lambda: os.chdir("/"), "working folder"),
    "SIGINT ignored": (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN), "signal handlers"),
    "SIGTERM ignored": (lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN), "signal handlers"),
    "alarm": (lambda: signal.setitimer(signal.ITIMER_REAL, 100), "alarm timer"),
    "stderr replaced": (_stderr_replaced, "standard streams"),
    "gc off": (gc.disable, "garbage collector"),
    "switch": (lambda: sys.setswitchinterval(0.05), "thread switch interval"),
    "affinity": (lambda: os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}), "CPU affinity"),
    "umask": (lambda: os.umask(0o077), "umask"),
}


@pytest.mark.parametrize("case", CHANGES)
def test_watch_names_and_puts_back_each_change(case):
    change, name = CHANGES[case]
    if case == "affinity" and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: affinity cannot be narrowed")
    stderr = sys.stderr
    watch = Watch()
    before = snapshot()
    try:
        change()
    finally:
        changes = watch.check_items()
    assert sys.stderr is stderr
    assert [n for n, _ in changes] == [name], changes
    assert "could not be put back" not in changes[0][1]
    assert snapshot().keys() == before.keys()
    assert all(snapshot()[k] == v for k, v in before.items() if k not in ("standard streams",)), case
    assert watch.check() == []  # nothing left to put back


def test_a_closed_stdout_is_reopened_on_its_descriptor(tmp_path):
    fd = os.open(tmp_path / "out.txt", os.O_WRONLY | os.O_CREAT)
    f = open(fd, "w", encoding="utf-8", closefd=False)  # as Python's own sys.stdout: closing it keeps the descriptor
    old = sys.stdout
    sys.stdout = f
    try:
        watch = Watch()
        sys.stdout.close()
        assert watch.check() == ["standard streams: sys.stdout closed"]
        print("after", flush=True)  # a new text layer on the same descriptor
        assert sys.stdout is not f and not sys.stdout.closed
        again = Watch()
        sys.stdout.close()  # closed a second time: the replacement is watched like the original
        assert again.check() == ["standard streams: sys.stdout closed"]
        print("again", flush=True)
    finally:
        sys.stdout = old
        os.close(fd)
    assert (tmp_path / "out.txt").read_text() == "after\nagain\n"


def test_unchanged_raises_naming_the_change_and_the_module():
    threads = torch.get_num_threads()
    with pytest.raises(
        StateChanged,
        match=r"module 'x' changed process-wide state: torch default dtype torch.float32 "
        r"-> torch.float64; put back",
    ):
        with unchanged("module 'x'"):
            torch.set_default_dtype(torch.float64)
    assert torch.get_default_dtype() == torch.float32 and torch.get_num_threads() == threads


def test_every_setting_is_readable_here():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert set(snapshot()) == set(names)  # the main thread reads every one (signals and timers included)


# --- cells: the culprit fails alone, later rows are as if it never ran -----------------------------


class _Gate(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        self.act()
        return x * torch.sigmoid(self.logit)[None, :, None, None]


def _gate(name, action):
    return type(name, (_Gate,), {"act": staticmethod(action)})


def _raise(exc):
    def act():
        raise exc

    return act


ROGUES = {
    "threads_gate": _gate("ThreadsGate", lambda: torch.set_num_threads(1)),
    "dtype_gate": _gate("DtypeGate", lambda: torch.set_default_dtype(torch.float64)),
    "hook_gate": _gate("HookGate", _hook),
    "chdir_gate": _gate("ChdirGate", lambda: os.chdir("/")),
    "sigign_gate": _gate("SigignGate", lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)),
    "kbi_gate": _gate("KbiGate", _raise(KeyboardInterrupt)),
    "genexit_gate": _gate("GenExitGate", _raise(GeneratorExit)),
    "base_gate": _gate("BaseGate", _raise(BaseException("rogue base"))),
    "exit0_gate": _gate("Exit0Gate", _raise(SystemExit(0))),
}


@pytest.fixture
def rogues():
    for name, cls in ROGUES.items():
        attnbench.register(name, override=True)(cls)
    yield
    for name in ROGUES:
        MODULES.unregister(name)


def test_cells_that_change_state_or_escape_fail_alone_and_later_rows_are_unaffected(tmp_path, rogues):
    torch.set_num_threads(2)
    cwd, handler = os.getcwd(), signal.getsignal(signal.SIGINT)
    suite = parse_suite(
        {
            "name": "rogue",
            "backbones": ["resnet18"],
            "modules": ["none", *ROGUES, "se"],
            "input_size": 32,
            "metrics": ["macs"],
        },
        "rogue.yaml",
    )
    result = run_suite(suite, tmp_path)
    got = {r.label: r for r in result.records}
    assert not result.interrupted and result.exit_code == 1
    for label, change in (
        ("threads_gate", "torch threads 2 -> 1"),
        ("dtype_gate", "torch default dtype torch.float32 -> torch.float64"),
        ("hook_gate", "global module hooks none -> "),
        ("chdir_gate", "working folder "),
        ("sigign_gate", "signal handlers: SIGINT "),
    ):
        r = got[label]
        assert (r.status, r.error["type"]) == ("failed", "StateChanged"), (label, r.error)
        assert r.error["message"].startswith(f"module {label!r} changed process-wide state: {change}"), r.error
        assert r.env["threads"] == 2  # the count the cell started with, not the one the module left
    for label, what in (
        ("kbi_gate", "KeyboardInterrupt raised by the code (no Ctrl-C or SIGTERM reached the process)"),
        ("genexit_gate", "GeneratorExit"),
        ("base_gate", "BaseException: rogue base"),
        ("exit0_gate", "SystemExit (exit status 0)"),
    ):
        assert (got[label].status, got[label].error["type"]) == ("failed", "ModuleFailed"), (label, got[label].error)
        assert got[label].error["message"].endswith(what), got[label].error
    # rows after the culprits are measured as if they never ran: the same numbers as a run without them
    clean = parse_suite(
        {"name": "clean", "backbones": ["resnet18"], "modules": ["none", "se"], "input_size": 32, "metrics": ["macs"]},
        "clean.yaml",
    )
    alone = {r.label: r for r in run_suite(clean, tmp_path / "clean").records}
    assert got["se"].ok and got["none"].ok and got["se"].env["threads"] == 2
    assert (got["se"].value, got["none"].value) == (alone["se"].value, alone["none"].value)
    assert (torch.get_num_threads(), torch.get_default_dtype(), os.getcwd()) == (2, torch.float32, cwd)
    assert signal.getsignal(signal.SIGINT) is handler
    assert not nn.modules.module._global_forward_hooks


def test_a_timing_groups_culprit_fails_at_warm_up_and_the_others_keep_their_threads(tmp_path, rogues):
    suite = parse_suite(
        {
            "name": "rt",
            "backbones": ["resnet18"],
            "modules": ["none", "dtype_gate", "se"],
            "input_size": 32,
            "metrics": ["latency_cpu"],
            "latency": {"threads": 2, "warmup": 1, "rounds": 2, "min_time": 0.01, "min_iters": 3},
        },
        "rt.yaml",
    )
    got = {r.label: r for r in run_suite(suite, tmp_path).records}
    assert got["dtype_gate"].error["type"] == "StateChanged", got["dtype_gate"].error
    assert "variant" not in got["dtype_gate"].error["message"]  # the label is the module: named once
    assert got["none"].ok and got["se"].ok
    assert got["se"].measurement.settings["threads"] == 2 and got["se"].env["threads"] == 2
    assert torch.get_default_dtype() == torch.float32


def test_a_real_signal_still_stops_the_run(tmp_path):
    class SignalsItself(_Gate):
        def act(self):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, delivered by the OS while the module runs
            for _ in range(10_000):  # the handler runs at the next bytecode boundary
                pass

    attnbench.register("signals_itself", override=True)(SignalsItself)
    try:
        suite = parse_suite(
            {
                "name": "sig",
                "backbones": ["resnet18"],
                "modules": ["none", "signals_itself"],
                "input_size": 32,
                "metrics": ["macs"],
            },
            "sig.yaml",
        )
        cells = [c for c in plan(suite) if c.variant.label == "signals_itself"]
        (task,) = make_tasks(cells, cell_keys(cells))
        with pytest.raises(KeyboardInterrupt):  # out of the cell's boundary: not a failed record
            execute(task)
        with pytest.raises(KeyboardInterrupt):  # and out of the run (here from the module's check, before any cell)
            run_suite(suite, tmp_path)
    finally:
        MODULES.unregister("signals_itself")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_is_signal_tells_a_delivered_signal_from_a_raised_one():
    assert not interrupts.is_signal(GeneratorExit()) and not interrupts.is_signal(SystemExit(0))
    with interrupts.watching():
        assert not interrupts.is_signal(KeyboardInterrupt())  # no signal arrived: code raised it
        with pytest.raises(KeyboardInterrupt) as info:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # the handler runs at the next bytecode boundary
                pass
        assert interrupts.is_signal(info.value)
    assert contained(KeyboardInterrupt()) is False  # nothing watching: a plain KeyboardInterrupt may be Ctrl-C


def test_deadline_turns_an_escape_into_its_units_failure():
    with interrupts.watching():
        for exc, text in (
            (KeyboardInterrupt(), "KeyboardInterrupt raised by the code (no Ctrl-C or SIGTERM reached the process)"),
            (SystemExit(0), "SystemExit (exit status 0)"),
            (GeneratorExit(), "GeneratorExit"),
            (SystemExit("bye"), "SystemExit: bye"),
            (BaseException("odd"), "BaseException: odd"),
        ):
            with pytest.raises(Escaped) as info:
                with deadline(5, "step x"):
                    raise exc
            assert str(info.value).startswith(f"{text} in step x; raise an Exception for an error")


# --- `attnbench check`: a module that changes state fails `process`, the process is as before -------


@pytest.mark.parametrize(
    "name,change",
    [
        ("threads_gate", "torch threads"),
        ("hook_gate", "global module hooks"),
        ("chdir_gate", "working folder"),
        ("sigign_gate", "signal handlers"),
    ],
)
def test_check_fails_a_module_that_changes_state_and_leaves_the_process_as_it_was(name, change, rogues):
    before = snapshot()
    report = run_check(name, "")
    (process,) = [r for r in report.results if r.name == "process"]
    assert process.status == "FAIL" and process.detail.startswith(
        f"changes process-wide state for every later run: {change}"
    )
    assert "(in shape at 14x14)" in process.detail and report.exit_code == 1
    assert [r.name for r in report.failed] == ["process"]  # each step ran in the state the check found
    now = snapshot()
    assert all(now[k] == v for k, v in before.items() if k != "standard streams")


@pytest.mark.parametrize("name", ["kbi_gate", "exit0_gate", "genexit_gate"])
def test_check_fails_a_module_that_escapes_instead_of_ending(name, rogues):
    report = run_check(name, "")
    shape = report.get("shape")
    assert shape.status == "FAIL" and "in check at 14x14;" in shape.detail and report.exit_code == 1


def test_check_passes_process_for_a_clean_module():
    assert run_check("se", "").get("process").status == "pass"


ROGUE_FILE = textwrap.dedent("""
    import sys
    import torch
    from torch import nn

    class _Gate(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.logit = nn.Parameter(torch.zeros(channels))

        def gate(self, x):
            return x * torch.sigmoid(self.logit)[None, :, None, None]

    class ClosesStdout(_Gate):
        def forward(self, x):
            sys.stdout.close()
            return self.gate(x)

    class ExitsZero(_Gate):
        def forward(self, x):
            sys.exit(0)
    """)


@pytest.mark.parametrize("cls,failed", [("ClosesStdout", "process"), ("ExitsZero", "shape")])
def test_check_cli_reports_a_module_that_closes_stdout_or_exits_0(tmp_path, cls, failed):
    path = tmp_path / "rogue_check.py"
    path.write_text(ROGUE_FILE)
    p = script("check", f"{path}:{cls}", "-b", "")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stdout.startswith(f"attnbench check {path}:{cls}")  # the report reaches stdout whole
    assert f"  FAIL  {failed}" in p.stdout and p.stdout.rstrip().endswith("-> exit 1")


def test_a_plugin_import_that_changes_state_is_refused(tmp_path, monkeypatch):
    pkg = tmp_path / "stateful_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import torch\ntorch.set_num_threads(1)\nfrom torch.nn import Identity as Gate\n")
    dist = tmp_path / "stateful_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: stateful-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[attnbench.modules]\nstateful = stateful_plugin:Gate\n")
    torch.set_num_threads(2)
    monkeypatch.syspath_prepend(str(tmp_path))
    MODULES.reload()
    try:
        with pytest.warns(
            UserWarning,
            match=r"importing stateful_plugin:Gate changed process-wide state: torch "
            r"threads 2 -> 1",
        ):
            with pytest.raises(attnbench.errors.AttnBenchError, match="failed to import: StateChanged"):
                MODULES.get("stateful")
        assert torch.get_num_threads() == 2
    finally:
        monkeypatch.undo()
        MODULES.reload()


def test_cells_overlapping_in_one_process_are_not_blamed_for_each_others_changes():
    import threading

    from attnbench.guard.process_state import alone

    blamed, threads, both = [], torch.get_num_threads(), threading.Barrier(2)

    def cell(n):  # two cells of a multi-threaded Dask worker, each pinning its own thread count
        with alone():
            try:
                with unchanged(f"cell {n}"):
                    both.wait()  # both cells run
                    torch.set_num_threads(n)
                    both.wait()
            except StateChanged as exc:
                blamed.append(str(exc))

    workers = [threading.Thread(target=cell, args=(n,)) for n in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert blamed == []
    torch.set_num_threads(threads)
    with alone(), pytest.raises(StateChanged, match="cell 3 changed process-wide state: torch threads"):
        with unchanged("cell 3"):  # alone again: blamed
            torch.set_num_threads(threads + 1)

"""A third-party plugin package, pip-installed from tests/plugin_pkg, next to a broken one."""

import os
import subprocess
import sys
import warnings

import pytest

from attnbench import attention_parameters, build
from attnbench.harness.runner import run_suite
from attnbench.registry import PluginWarning
from attnbench.suite.parse import parse_suite


def test_plugin_is_discovered_and_broken_one_warns_when_used(with_plugin):
    """Names come from entry-point metadata: discovery imports nothing and warns nothing; a broken entry warns
    once, the first time it is used, and is unknown from then on."""
    import attnbench
    from attnbench.errors import UnknownNameError
    from attnbench.registry import MODULES

    assert not [w for w in with_plugin if issubclass(w.category, PluginWarning)]
    assert {"demo_gate", "demo_explode", "demo_broken", "se", "cbam", "nonlocal"} <= set(attnbench.list_modules())
    assert MODULES.provider("demo_broken") == ("attnbench-demo-plugin", "0.1.0")  # from metadata, no import
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with pytest.raises(
                UnknownNameError,
                match="its plugin failed to import: ImportError: attnbench_demo.broken is broken on purpose",
            ):
                attnbench.get_module("demo_broken")
    warned = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert len(warned) == 1 and "demo_broken" in warned[0] and "attnbench-demo-plugin" in warned[0]
    assert "demo_broken" not in attnbench.list_modules() and "demo_gate" in attnbench.list_modules()


def test_plugin_builds_into_resnet18(with_plugin):
    m = build("resnet18", "demo_gate")
    assert attention_parameters(m) == 2 * (64 + 128 + 256 + 512)  # one gate per BasicBlock, C params each


def test_plugin_in_a_suite_and_a_crashing_forward_fails_alone(with_plugin, tmp_path):
    suite = parse_suite(
        {
            "name": "plug",
            "backbones": ["resnet18"],
            "modules": ["none", "demo_gate", "demo_explode", "se"],
            "input_size": 32,
            "metrics": ["params", "macs", "latency_cpu"],
            "latency": {"threads": 1, "warmup": 1, "rounds": 2, "min_time": 0.01, "min_iters": 2},
        },
        "plug.yaml",
    )
    result = run_suite(suite, tmp_path)
    status = {(r.label, r.metric): r.status for r in result.records}
    assert len(status) == 12
    assert status.pop(("demo_explode", "params")) == "failed"  # a model that cannot run has no count either
    assert status.pop(("demo_explode", "macs")) == "failed"
    assert status.pop(("demo_explode", "latency_cpu")) == "failed"
    assert set(status.values()) == {"ok"}  # every other cell
    assert result.failed == 3 and result.exit_code == 1
    md = (tmp_path / "plug.md").read_text()
    assert "| resnet18 | demo_gate | block x8 | 11.691 | +1,920 |" in md
    # the note names the module, its site, the plugin's own file:line and the original error
    assert (
        "- failed resnet18/demo_explode/macs: ModuleFailed: attention module 'demo_explode' at layer1.0 (64 channels, "
        "input (1, 64, 8, 8)), attnbench_demo/gate.py:19: RuntimeError: demo_explode: forward raised on purpose" in md
    )


def test_cli_lists_plugin_names_without_importing_and_details_import(plugin_site):
    env = dict(os.environ, PYTHONPATH=str(plugin_site))
    p = subprocess.run(
        [sys.executable, "-m", "attnbench.cli", "list", "modules"], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0 and "warning" not in p.stderr  # nothing imported, so nothing to warn about
    assert {"demo_gate", "demo_broken", "se"} <= set(p.stdout.split())
    d = subprocess.run(
        [sys.executable, "-m", "attnbench.cli", "list", "modules", "--details"], capture_output=True, text=True, env=env
    )
    assert d.returncode == 0 and d.stderr.count("skipped module plugin 'demo_broken'") == 1
    lines = {line.split()[0]: line for line in d.stdout.splitlines()}
    assert (
        lines["demo_gate"] == "demo_gate  attnbench-demo-plugin 0.1.0  attnbench_demo.gate:DemoGate  DemoGate(channels)"
    )
    assert lines["demo_broken"].endswith(
        "attnbench_demo.broken:Broken  failed to import: ImportError: attnbench_demo.broken is broken on purpose"
    )


def test_a_plugin_package_is_imported_only_when_used(plugin_site):
    """Listing names, planning a suite of other modules and reading providers import no plugin package."""
    code = (
        "import sys, attnbench\n"
        "from attnbench.registry import MODULES\n"
        "names = attnbench.list_modules(); MODULES.provider('demo_gate'); MODULES.plugin_packages()\n"
        "print('demo_gate' in names, 'attnbench_demo' in sys.modules)\n"
        "attnbench.get_module('demo_gate')\n"
        "print('attnbench_demo.gate' in sys.modules, 'attnbench_demo.broken' in sys.modules)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(plugin_site))
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "False", "True", "False"]


def test_cli_adds_a_plugin_to_a_suite_run(plugin_site, tmp_path):
    """`run --suite S --add-module NAME` puts a registered module into the table without a YAML file of its own."""
    suite = tmp_path / "tiny.yaml"
    suite.write_text("name: tiny\nbackbones: [resnet18]\nmodules: [none, se]\ninput_size: 32\nmetrics: [params]\n")
    env = dict(os.environ, PYTHONPATH=str(plugin_site))
    run = [sys.executable, "-m", "attnbench.cli", "run", "--suite", str(suite), "--out", str(tmp_path / "res"), "-q"]
    p = subprocess.run(run + ["--add-module", "demo_gate"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "res" / "tiny.md").read_text()
    assert "| resnet18 | demo_gate | block x8 | 11.691 | +1,920 |" in md  # one weight per channel: 2*(64+128+256+512)
    again = subprocess.run(run + ["--add-module", "se"], capture_output=True, text=True, env=env)
    assert again.returncode == 2 and again.stderr.strip() == (
        "error: --add-module se: suite 'tiny' already lists it; drop --add-module (--module se runs it alone)"
    )
    missing = subprocess.run(run + ["-m", "demo_gate"], capture_output=True, text=True, env=env)
    assert (
        missing.returncode == 2 and "a registered module it lacks joins with --add-module demo_gate" in missing.stderr
    )

"""A third-party plugin package, pip-installed from tests/plugin_pkg, next to a broken one."""
import os
import subprocess
import sys

from attnbench import attention_parameters, build
from attnbench.registry import PluginWarning
from attnbench.runner import run_suite
from attnbench.suite import parse_suite


def test_plugin_is_discovered_and_broken_one_warns(with_plugin):
    warned = [str(w.message) for w in with_plugin if issubclass(w.category, PluginWarning)]
    assert len(warned) == 1
    assert "demo_broken" in warned[0] and "broken on purpose" in warned[0] and "attnbench-demo-plugin" in warned[0]
    import attnbench

    names = attnbench.list_modules()
    assert {"demo_gate", "demo_explode", "se", "cbam", "nonlocal"} <= set(names) and "demo_broken" not in names


def test_plugin_builds_into_resnet18(with_plugin):
    m = build("resnet18", "demo_gate")
    assert attention_parameters(m) == 2 * (64 + 128 + 256 + 512)  # one gate per BasicBlock, C params each


def test_plugin_in_a_suite_and_a_crashing_forward_fails_alone(with_plugin, tmp_path):
    suite = parse_suite({
        "name": "plug", "backbones": ["resnet18"], "modules": ["none", "demo_gate", "demo_explode", "se"],
        "input_size": 32, "metrics": ["params", "macs", "latency_cpu"],
        "latency": {"threads": 1, "warmup": 1, "rounds": 2, "min_time": 0.01, "min_iters": 2},
    }, "plug.yaml")
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
    assert "- failed resnet18/demo_explode/macs: ModuleFailed: attention module 'demo_explode' at layer1.0 (64 channels, " \
           "input (1, 64, 8, 8)), attnbench_demo/gate.py:19: RuntimeError: demo_explode: forward raised on purpose" in md


def test_cli_lists_plugin_and_warns_once(plugin_site):
    env = dict(os.environ, PYTHONPATH=str(plugin_site))
    p = subprocess.run([sys.executable, "-m", "attnbench.cli", "list", "modules"], capture_output=True, text=True, env=env)
    assert p.returncode == 0
    assert "demo_gate" in p.stdout.split() and "se" in p.stdout.split()
    assert p.stderr.count("skipped module plugin 'demo_broken'") == 1

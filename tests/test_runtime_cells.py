"""Runtimes inside the harness: a runtime that changes the numbers fails its cell before any timing,
a missing runtime makes its cells skipped with the install hint, and the rest of the group is timed."""

import sys

import pytest
import torch
from torch import nn

from attnbench.harness.runner import run_suite
from attnbench.measures.timing.network import measure_latency
from attnbench.measures.timing.settings import LatencySettings
from attnbench.suite.parse import parse_suite


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


class ExportsDifferently(Tiny):
    """Eager and the exported graph compute different functions (the exporter sees the flag)."""

    def forward(self, x):
        y = super().forward(x)
        return y * 2 if torch.onnx.is_in_onnx_export() else y


def test_a_runtime_that_changes_the_output_fails_and_is_never_timed():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    errors = {}
    settings = LatencySettings(
        input_size=(8, 8), threads=1, warmup=1, rounds=2, min_time=0.01, min_iters=2, runtime="onnxruntime"
    )
    out = measure_latency(
        {"ok": Tiny(), "liar": ExportsDifferently()},
        settings,
        on_error=lambda label, exc: errors.setdefault(label, exc),
    )
    assert set(out) == {"ok"} and type(errors["liar"]).__name__ == "OutputMismatch"
    stats = out["ok"].stats
    assert stats["prepare_s"] > 0 and stats["runtime_info"]["runtime"] == "onnxruntime"
    assert len(stats["rounds_ms"]) == 2 and all(len(r) >= 2 for r in stats["rounds_ms"])  # raw samples, per round


def test_missing_runtime_cells_are_skipped_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    suite = parse_suite(
        {
            "name": "rt",
            "backbones": ["resnet18"],
            "modules": ["none", "se"],
            "input_size": 32,
            "runtime": ["eager", "onnxruntime"],
            "metrics": ["params", "latency_cpu"],
            "latency": {"threads": 1, "warmup": 1, "rounds": 2, "min_time": 0.01, "min_iters": 2},
        },
        "rt.yaml",
    )
    result = run_suite(suite, tmp_path)
    by_runtime = {}
    for r in result.records:
        by_runtime.setdefault((r.metric, r.config.get("runtime", "eager")), set()).add(r.status)
    assert by_runtime == {
        ("params", "eager"): {"ok"},
        ("latency_cpu", "eager"): {"ok"},
        ("latency_cpu", "onnxruntime"): {"skipped"},
    }
    assert result.exit_code == 0
    skipped = [r for r in result.records if r.status == "skipped"]
    assert all("pip install 'attnbench[onnx]'" in r.note for r in skipped)
    md = (tmp_path / "rt.md").read_text()
    assert "## 32x32 b1 onnxruntime" in md and "attnbench[onnx]" in md


def test_tensorrt_is_a_gpu_runtime():
    from attnbench.errors import SuiteError, Unsupported
    from attnbench.measures.runtimes import check_available

    with pytest.raises(Unsupported, match="CUDA only"):
        check_available("tensorrt", "cpu")
    with pytest.raises(SuiteError, match="tensorrt is a GPU runtime: add latency_gpu"):
        parse_suite(
            {
                "name": "t",
                "backbones": ["resnet18"],
                "modules": ["none"],
                "runtime": "tensorrt",
                "metrics": ["latency_cpu"],
            },
            "t.yaml",
        )
    s = parse_suite(
        {
            "name": "t",
            "backbones": ["resnet18"],
            "modules": ["none"],
            "runtime": ["eager", "tensorrt"],
            "metrics": ["latency_cpu", "latency_gpu"],
        },
        "t.yaml",
    )
    from attnbench.suite.plan import plan

    assert sorted((c.metric, c.runtime) for c in plan(s)) == [
        ("latency_cpu", "eager"),
        ("latency_gpu", "eager"),
        ("latency_gpu", "tensorrt"),
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_gpu_runtimes_skip_cleanly_without_cuda(tmp_path):
    suite = parse_suite(
        {
            "name": "g",
            "backbones": ["resnet18"],
            "modules": ["none", "se"],
            "input_size": 32,
            "runtime": ["onnxruntime", "tensorrt"],
            "metrics": ["latency_gpu"],
        },
        "g.yaml",
    )
    result = run_suite(suite, tmp_path)
    assert result.exit_code == 0 and {r.status for r in result.records} == {"skipped"} and len(result.records) == 4

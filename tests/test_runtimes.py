"""attnbench.measures.runtimes: each runtime's output is checked against eager before it can be timed.

Tiny models at threads 1: these check behaviour (close outputs, honest failures), not speed.
"""

import json
import sys

import pytest
import torch
from torch import nn

from attnbench.errors import ModuleDoesNotFit, Unsupported
from attnbench.guard.cell import NonFiniteOutput
from attnbench.measures.runtimes import (
    ATOL,
    RTOL,
    RUNTIMES,
    ConversionFailed,
    OutputMismatch,
    RuntimeMissing,
    check_available,
    prepare,
)

PACKAGE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def needs(runtime):
    """Skip when the runtime's package is not installed here."""
    if runtime == "onnxruntime":
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnx")
    if runtime in PACKAGE:
        pytest.importorskip(PACKAGE[runtime])


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def tiny_input():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


class TwoFaced(nn.Module):
    """Doubles its output while being exported, traced or compiled, and only then: what a runtime
    runs is then not what eager runs, and prepare() must say so."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        building = torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling() or torch.jit.is_tracing()
        return y * 2 if building else y


class MakesNaN(nn.Module):
    def forward(self, x):
        return torch.log(x - x.max() - 1)  # log of a negative number


class NoOnnxOp(nn.Module):
    def forward(self, x):
        return torch.special.bessel_j0(x)  # no ONNX translation, no OpenVINO conversion rule


RUNTIME_PARAMS = ["eager", pytest.param("compile", marks=pytest.mark.slow), "onnxruntime", "openvino"]


@pytest.mark.parametrize("runtime", RUNTIME_PARAMS)
def test_runtime_output_is_close_to_eager(runtime):
    needs(runtime)
    model, x = tiny_net(), tiny_input()
    with torch.inference_mode():
        reference = model.eval()(x)
    prepared = prepare(runtime, model, x, threads=1)
    out = prepared.step()
    assert isinstance(out, torch.Tensor) and out.shape == reference.shape
    assert torch.allclose(out, reference, atol=ATOL, rtol=RTOL)
    info = prepared.info
    assert info["runtime"] == runtime and info["threads"] == 1 and info["device"] == "cpu"
    assert info["tolerance"] == {"atol": ATOL, "rtol": RTOL}
    assert 0.0 <= info["max_abs_diff"] <= ATOL + RTOL * float(reference.abs().max())
    assert prepared.prepare_s >= 0.0
    json.dumps(info)  # stored with the measurement


def test_onnxruntime_records_exporter_and_session_settings():
    needs("onnxruntime")
    info = prepare("onnxruntime", tiny_net(), tiny_input(), threads=1).info
    assert info["exporter"] == "torch.onnx.export(dynamo=True)" and info["opset"] == 20
    assert info["provider"] == "CPUExecutionProvider" and info["intra_op_threads"] == 1
    assert info["inter_op_threads"] == 1 and info["graph_optimization"] == "ORT_ENABLE_ALL"


def test_openvino_runs_fp32_at_the_given_thread_count():
    needs("openvino")
    properties = prepare("openvino", tiny_net(), tiny_input(), threads=1).info["properties"]
    assert properties["INFERENCE_PRECISION_HINT"] == "f32" and properties["INFERENCE_NUM_THREADS"] == 1
    assert properties["PERFORMANCE_HINT"] == "LATENCY"


def test_resnet18_under_onnxruntime_matches_eager():
    needs("onnxruntime")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    prepared = prepare("onnxruntime", model, torch.randn(1, 3, 32, 32), threads=1)
    assert prepared.info["max_abs_diff"] < ATOL


@pytest.mark.parametrize("runtime", [pytest.param("compile", marks=pytest.mark.slow), "onnxruntime", "openvino"])
def test_runtime_that_computes_something_else_is_refused(runtime):
    needs(runtime)
    with pytest.raises(OutputMismatch, match=f"runtime {runtime} differs from eager on TwoFaced: max abs diff"):
        prepare(runtime, TwoFaced(), tiny_input(), threads=1)


@pytest.mark.slow
def test_compile_captures_every_model_past_dynamos_recompile_limit():
    """Models compiled in one process all enter dynamo through the same code; past its recompile
    limit torch.compile would run them eager. Each prepared model must still be compiled."""
    import torch._dynamo

    with torch._dynamo.config.patch(recompile_limit=1):
        for width in (4, 5, 6):
            model = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))
            prepared = prepare("compile", model, torch.randn(2, 4), threads=1)
            assert prepared.info["graphs"] >= 1


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime"])
def test_nan_model_is_a_non_finite_output(runtime):
    needs(runtime)
    with pytest.raises(NonFiniteOutput, match="NaN"):
        prepare(runtime, MakesNaN(), tiny_input(), threads=1)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_model_that_cannot_be_exported_fails_on_one_line_naming_the_op(runtime):
    needs(runtime)
    with pytest.raises(ConversionFailed) as caught:
        prepare(runtime, NoOnnxOp(), tiny_input(), threads=1)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"runtime {runtime}") and "bessel_j0" in message
    assert isinstance(caught.value, ModuleDoesNotFit)


@pytest.mark.parametrize(
    "runtime, package, extra",
    [
        ("onnxruntime", "onnxruntime", "onnx"),
        ("onnxruntime", "onnxscript", "onnx"),
        ("openvino", "openvino", "openvino"),
    ],
)
def test_missing_package_names_its_install_command(monkeypatch, runtime, package, extra):
    monkeypatch.setitem(sys.modules, package, None)  # import now raises ModuleNotFoundError
    hint = f"{package} is not installed; pip install 'attnbench[{extra}]'"
    with pytest.raises(RuntimeMissing) as caught:
        check_available(runtime)
    assert str(caught.value) == hint
    with pytest.raises(RuntimeMissing, match="pip install"):
        prepare(runtime, tiny_net(), tiny_input(), threads=1)


def test_onnxruntime_on_cuda_without_its_provider_is_missing(monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(RuntimeMissing, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        check_available("onnxruntime", "cuda")


def test_openvino_on_cuda_is_unsupported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(Unsupported, match="openvino runs on the CPU"):
        check_available("openvino", "cuda")


def test_unknown_runtime_is_a_value_error():
    with pytest.raises(ValueError, match="unknown runtime 'tvm'"):
        check_available("tvm")
    with pytest.raises(ValueError):
        prepare("tvm", tiny_net(), tiny_input(), threads=1)


def test_runtime_names_match_the_metric_table():
    from attnbench.core.metrics import RUNTIMES as METRIC_RUNTIMES

    assert RUNTIMES == METRIC_RUNTIMES == ("eager", "compile", "onnxruntime", "openvino", "tensorrt")


def test_module_imports_without_the_optional_packages():
    """Importing attnbench.measures.runtimes must not import onnx, onnxruntime or openvino."""
    import subprocess

    code = (
        "import sys; import attnbench.measures.runtimes; "
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnxscript', 'openvino') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

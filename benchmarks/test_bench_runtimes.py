"""pytest-benchmark: ResNet-50 forward under ONNX Runtime against eager PyTorch, same input and threads.

    python -m pytest benchmarks/test_bench_runtimes.py --benchmark-only

Both calls come from attnbench.measures.runtimes.prepare, so the ONNX Runtime one has been checked against eager
before it is timed. Speed lives here, not in tests/: nothing is asserted about time.
"""

import pytest
import timm
import torch

from attnbench.guard.threads import fixed_threads
from attnbench.measures.runtimes import prepare

THREADS = 2
SHAPE = (1, 3, 224, 224)  # batch 1: the deployment case the runtimes are built for


@pytest.fixture(scope="module")
def resnet50_and_input():
    torch.manual_seed(0)
    return timm.create_model("resnet50", pretrained=False), torch.randn(*SHAPE)


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime"])
def test_resnet50_runtime(benchmark, resnet50_and_input, runtime):
    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    model, x = resnet50_and_input
    benchmark.group = f"resnet50 forward {SHAPE}, {THREADS} threads"
    with fixed_threads(THREADS):  # eager's threads; ONNX Runtime carries its own count in the session
        prepared = prepare(runtime, model, x, THREADS)
        benchmark.extra_info.update(prepare_s=round(prepared.prepare_s, 3), **prepared.info)
        benchmark(prepared.step)

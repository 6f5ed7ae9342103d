"""pytest-benchmark: forward cost of each first-party module alone, at a mid-network shape.

    python -m pytest benchmarks --benchmark-only --benchmark-sort=mean

Speed lives here, not in tests/: nothing is asserted about time.
"""
import pytest
import torch

from attnbench import get_module
from attnbench.measures.flops import count_flops

MODULES = ["se", "cbam", "nonlocal", "eca", "eca_mlp", "gc", "sk", "coord", "simam", "triplet", "bam", "srm",
           "ge_theta", "ese", "sge"]
SHAPE = (8, 256, 28, 28)  # ResNet-50 res3 at 224x224, batch 8


@pytest.mark.parametrize("name", MODULES)
def test_module_forward(benchmark, name):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    module = get_module(name)(SHAPE[1]).eval()
    x = torch.randn(*SHAPE)
    benchmark.group = f"module forward {SHAPE}"
    benchmark.extra_info["flops_per_image"] = count_flops(module, x[:1]).total
    with torch.inference_mode():
        benchmark(module, x)

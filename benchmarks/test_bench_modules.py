"""pytest-benchmark: forward cost of each first-party module alone, at a mid-network shape.

    python -m pytest benchmarks --benchmark-only --benchmark-sort=mean

Speed lives here, not in tests/: nothing is asserted about time.
"""

from importlib.metadata import distribution

import pytest
import torch

from attnbench import get_module
from attnbench.measures.flops import count_flops


def first_party_modules():
    """attnbench's own modules from its entry points, minus the timm: wrappers (as tests/formulas.py;
    benchmarks/ cannot import tests/), so a new module is benchmarked without editing this file."""
    return sorted(
        ep.name
        for ep in distribution("attnbench").entry_points
        if ep.group == "attnbench.modules"
        and ep.value.startswith("attnbench.modules.")
        and not ep.value.startswith("attnbench.modules.timm_attn:")
    )


MODULES = first_party_modules()
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

"""Counts in peer tools' conventions, worked out by hand from each tool's rules (measures/conventions.py cites the
source of each). The tools themselves are not dependencies; the README lists the cross-check against them."""
import subprocess
import sys

import pytest
import torch
from torch import nn

from attnbench.errors import UnknownNameError
from attnbench.measures.conventions import CONVENTIONS, convention, count_as, measure_as


def small():
    """(1, 3, 6, 6) -> conv 3->8 3x3 (bias) -> BN(8) -> ReLU -> global avg pool -> Linear 8->4.
    Conv output 8*36 = 288 elements; its multiply-adds 288 * 27 = 7,776."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


X = torch.randn(1, 3, 6, 6)
PARAMS = (3 * 9 * 8 + 8) + 16 + (8 * 4 + 4)  # 268


@pytest.mark.parametrize("name,by_kind", [
    # thop 0.0.23: conv cin*out*(k + bias); BN 4/element; ReLU 1/element; pool (36 + 1) per output; Linear 2*in - 1
    ("thop-0.0.23", {"conv": 3 * 288 * (9 + 1), "bn": 4 * 288, "relu": 288, "pool": 37 * 8, "linear": 15 * 4}),
    # thop 0.0.31: conv out*(cin*k + bias); BN 2/element; ReLU 0; pool (36 + 1) per output; Linear in/output
    ("thop-0.0.31", {"conv": 288 * (27 + 1), "bn": 2 * 288, "zero": 0, "pool": 37 * 8, "linear": 8 * 4}),
    # thop 0.1.1: conv out*cin*k (no bias); BN 2/element x2 (affine); ReLU 0; pool (36/1 + 1) per output; Linear in
    ("thop-0.1.1", {"conv": 288 * 27, "bn": 4 * 288, "zero": 0, "pool": 37 * 8, "linear": 8 * 4}),
    # ptflops 2019: conv MACs + a bias per output; BN 2 (affine); ReLU 1/element; pool its input's elements; Linear
    ("ptflops-0.1", {"conv": 7776 + 288, "bn": 2 * 288, "relu": 288, "pool": 288, "linear": 32}),
])
def test_each_tools_rules_by_hand(name, by_kind):
    c = count_as(small(), X, name)
    assert c.by_kind == by_kind and c.ops == sum(by_kind.values()) and c.params == PARAMS
    assert count_as(small(), X.repeat(3, 1, 1, 1), name).ops == c.ops  # per image


def test_conv_fc_and_fvcore():
    assert count_as(small(), X, "conv-fc").ops == 7776 + 32
    # fvcore's own handles: conv (bias not counted), BN 2 per element in eval (affine), adaptive pool, linear
    assert count_as(small(), X, "fvcore").ops == 7776 + 2 * 288 + 288 + 32


class SharedRelu(nn.Module):
    """torchvision's blocks: one nn.ReLU called twice."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.relu(x)[:, :2])


def test_thop_0_0_23_keeps_a_modules_last_call():
    x = torch.randn(1, 4, 3, 3)
    assert count_as(SharedRelu(), x, "thop-0.0.23").ops == 2 * 9  # the second call's input only
    assert count_as(SharedRelu(), x, "ptflops-0.1").ops == 4 * 9 + 2 * 9  # every call


def test_thop_0_0_23_sums_in_float32():
    # 4097 * 4097 = 16,785,409 multiply-adds: not a float32 number (its neighbours are 16,785,408 and 16,785,410)
    x = torch.randn(1, 1, 4097, 4097)
    assert count_as(nn.Conv2d(1, 1, 1, bias=False), x, "thop-0.0.23").ops == 16_785_408
    assert count_as(nn.Conv2d(1, 1, 1, bias=False), x, "thop-0.1.1").ops == 16_785_409


class Gate(nn.Module):
    """SGE-style: a module without a rule holding its own parameters, around one that has a rule."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 4, 1, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return x * self.pool(x) * self.weight


def test_which_parameters_each_tool_counts():
    x = torch.randn(1, 4, 3, 3)
    assert count_as(Gate(), x, "thop-0.0.31").params == 0  # only modules it has a rule for
    assert count_as(Gate(), x, "thop-0.0.23").params == 0  # only leaf modules: Gate has a child
    assert count_as(Gate(), x, "ptflops-0.1").params == 4  # every parameter


class MeanGate(nn.Module):
    def forward(self, x):
        return x * x.mean((2, 3), keepdim=True) * x.amax(dim=(2, 3), keepdim=True)


def test_functional_pools_are_invisible_unless_counted_as_modules():
    x = torch.randn(1, 4, 5, 5)
    assert count_as(MeanGate(), x, "ptflops-0.1").ops == 0
    assert count_as(MeanGate(), x, "ptflops-0.1", pools_as_modules=True).ops == 2 * 100  # two pools, 100 inputs each
    assert count_as(MeanGate(), x, "thop-0.0.23", pools_as_modules=True).ops == (25 + 1) * 4  # avg only; max is 0
    with pytest.raises(ValueError, match="module-hook conventions"):
        count_as(MeanGate(), x, "fvcore", pools_as_modules=True)


def test_names_aliases_and_a_clear_error():
    assert convention("thop").name == "thop-0.1.1" and convention("ptflops").name == "ptflops-0.1"
    assert set(CONVENTIONS) == {"thop-0.0.23", "thop-0.0.31", "thop-0.1.1", "ptflops-0.1", "fvcore", "conv-fc"}
    with pytest.raises(UnknownNameError, match="unknown convention 'thop-9'; did you mean"):
        convention("thop-9")
    m = measure_as(small(), X, "ptflops")
    assert (m.metric, m.value, m.settings["convention"], m.stats["params"]) == ("macs_as_ptflops-0.1", 9248, "ptflops-0.1", PARAMS)


def test_timms_fused_norm_counts_as_the_norm_it_is():
    """timm's BatchNormAct2d is a BatchNorm2d subclass with its activation inside: both are counted."""
    from timm.layers import BatchNormAct2d

    x = torch.randn(1, 8, 4, 4)
    c = count_as(BatchNormAct2d(8, act_layer=nn.ReLU6), x, "thop-0.0.23")
    assert c.by_kind == {"bn": 4 * 128, "relu": 128} and c.params == 16


def test_measure_as_on_the_command_line():
    out = subprocess.run([sys.executable, "-m", "attnbench", "measure", "resnet18", "se", "--input-size", "64",
                          "--as", "ptflops", "--as", "thop-0.0.23"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "as ptflops-0.1 (" in out.stdout and "as thop-0.0.23 (" in out.stdout and "G(2^30)" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "attnbench", "measure", "resnet18", "--as", "thopp"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown convention 'thopp'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1

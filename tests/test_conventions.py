"""Counts in peer tools' conventions, worked out by hand from each tool's rules (measures/conventions.py cites the
source of each). The tools themselves are not dependencies: tests/test_peer_tools.py compares against them where
they are installed, and benchmarks/peer_audit.py reruns the whole audit."""

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
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


X = torch.randn(1, 3, 6, 6)
PARAMS = (3 * 9 * 8 + 8) + 16 + (8 * 4 + 4)  # 268


@pytest.mark.parametrize(
    "name,by_kind",
    [
        # thop 0.0.23: conv cin*out*(k + bias); BN 4/element; ReLU 1/element; pool (36 + 1) per output; Linear 2*in - 1
        ("thop-0.0.23", {"conv": 3 * 288 * (9 + 1), "bn": 4 * 288, "relu": 288, "pool": 37 * 8, "linear": 15 * 4}),
        # thop 0.0.31: conv out*(cin*k + bias); BN 2/element; ReLU 0; pool (36 + 1) per output; Linear in/output
        ("thop-0.0.31", {"conv": 288 * (27 + 1), "bn": 2 * 288, "zero": 0, "pool": 37 * 8, "linear": 8 * 4}),
        # thop 0.1.1: conv out*cin*k (no bias); BN 2/element x2 (affine); ReLU 0; pool (36/1 + 1) per output; Linear in
        ("thop-0.1.1", {"conv": 288 * 27, "bn": 4 * 288, "zero": 0, "pool": 37 * 8, "linear": 8 * 4}),
        # ptflops 2019: conv MACs + a bias per output; BN 2 (affine); ReLU 1/element; pool its input's elements; Linear
        ("ptflops-0.1", {"conv": 7776 + 288, "bn": 2 * 288, "relu": 288, "pool": 288, "linear": 32}),
        # ultralytics-thop 2.2.3: conv out*cin*k (no bias); BN 2/element x2 (affine); ReLU, Flatten, the Sequential 0;
        # adaptive pool: the inputs it adds (1*8*6*6) + one divide per output (8); Linear in/output
        ("ultralytics-thop", {"conv": 7776, "bn": 4 * 288, "zero": 0, "pool": 288 + 8, "linear": 32}),
        # ptflops 0.7.5 (pytorch): conv + bias; BN 2 (affine); ReLU and pool by their hooks (output / input elements) *and*
        # by the F.relu / F.adaptive_avg_pool2d their forwards call (input elements); Linear (in*out + bias)*batch
        (
            "ptflops-0.7",
            {"conv": 7776 + 288, "bn": 2 * 288, "relu": 288, "pool": 288, "functional": 288 + 288, "linear": 8 * 4 + 4},
        ),
        # ptflops 0.7.5 (aten): aten.convolution (weights x output positions + bias per output) and aten.addmm only
        ("ptflops-0.7-aten", {"conv": 8 * 27 * 36 + 288, "linear": 8 * 4 + 4}),
    ],
)
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
    assert count_as(nn.Conv2d(1, 1, 1, bias=False), x, "thop-0.1.1").ops == 16_785_409  # 0.1.1 adds the root's own


def test_where_each_thop_starts_its_sum():
    """thop 0.0.31 sums from the root's children (a bare layer counts 0); 0.1.1 adds the root's own ops but still
    takes parameters from the children only."""
    x = torch.randn(1, 2, 3, 3)
    conv = nn.Conv2d(2, 4, 1, bias=False)  # 9 positions x 4 outputs x 2 inputs = 72 multiply-adds, 8 parameters
    assert (count_as(conv, x, "thop-0.0.31").ops, count_as(conv, x, "thop-0.0.31").params) == (0, 0)
    assert (count_as(conv, x, "thop-0.1.1").ops, count_as(conv, x, "thop-0.1.1").params) == (72, 0)
    assert (
        count_as(nn.Sequential(conv), x, "thop-0.1.1").ops,
        count_as(nn.Sequential(conv), x, "thop-0.1.1").params,
    ) == (72, 8)


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
    for name in ("ptflops-0.1", "ptflops-0.7", "ptflops-0.7-aten", "ultralytics-thop"):
        assert count_as(Gate(), x, name).params == 4  # every parameter


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
    # a bare tool name is what pip installs under it today: thop 0.1.1, ptflops 0.7.5 (its default backend)
    assert convention("thop").name == "thop-0.1.1" and convention("ptflops").name == "ptflops-0.7"
    assert convention("ultralytics-thop-2.2.3").name == "ultralytics-thop"
    assert set(CONVENTIONS) == {
        "thop-0.0.23",
        "thop-0.0.31",
        "thop-0.1.1",
        "ultralytics-thop",
        "ptflops-0.1",
        "ptflops-0.7",
        "ptflops-0.7-aten",
        "fvcore",
        "conv-fc",
    }
    with pytest.raises(UnknownNameError, match="unknown convention 'thop-9'; did you mean"):
        convention("thop-9")
    m = measure_as(small(), X, "ptflops-0.1")
    assert (m.metric, m.value, m.settings["convention"], m.stats["params"]) == (
        "macs_as_ptflops-0.1",
        9248,
        "ptflops-0.1",
        PARAMS,
    )


def fused():
    """conv 3->8 1x1 (no bias) + timm's BatchNormAct2d(8, ReLU6): a BatchNorm2d *subclass* whose drop (Identity)
    and act (ReLU6) are children. (1, 3, 4, 4): 16 positions, conv output 128 elements, 384 multiply-adds."""
    from timm.layers import BatchNormAct2d

    return nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), BatchNormAct2d(8, act_layer=nn.ReLU6))


@pytest.mark.parametrize(
    "name,ops,params",
    [
        # exact-type tables: no rule for BatchNormAct2d; 0.0.23 hooks leaves only (BatchNormAct2d has children) and
        # counts every leaf's parameters, so its 16 are lost; the ReLU6 child is a leaf with a rule: 1/element
        ("thop-0.0.23", 384 + 128, 24),
        # 0.0.31 / 0.1.1: the descent goes into BatchNormAct2d (no rule) and finds ReLU6 (0) and Identity (no rule)
        ("thop-0.0.31", 384, 24),
        ("thop-0.1.1", 384, 24),
        # ultralytics-thop walks the MRO to _NormBase: BN 2/element x2 (affine); every parameter
        ("ultralytics-thop", 384 + 4 * 128, 40),
        # ptflops 0.1 tests isinstance(BatchNorm2d): BN 2/element (affine), and its ReLU6 child 1/element
        ("ptflops-0.1", 384 + 2 * 128 + 128, 40),
        # ptflops 0.7: exact type, so no BN; the descent stops at ReLU6 (1/element); F.batch_norm and ReLU6's
        # F.hardtanh are not among the functions it patches
        ("ptflops-0.7", 384 + 128, 40),
        ("ptflops-0.7-aten", 384, 40),
    ],
)
def test_timms_fused_norm_as_each_tool_matches_it(name, ops, params):
    c = count_as(fused(), torch.randn(1, 3, 4, 4), name)
    assert (c.ops, c.params) == (ops, params)


def test_a_rule_not_replicated_refuses_in_one_line():
    from attnbench.errors import Unsupported

    rnn = nn.Sequential(nn.GRU(4, 4))
    for name in ("thop-0.0.31", "thop-0.1.1", "ultralytics-thop", "ptflops-0.7"):
        with pytest.raises(
            Unsupported,
            match=r"counts 0 \(GRU\) with its .*RNN.* rules?, which attnbench does not "
            r"replicate; run the tool itself",
        ):
            count_as(rnn, torch.randn(1, 2, 4), name)
    assert count_as(rnn, torch.randn(1, 2, 4), "thop-0.0.23").ops == 0  # 0.0.23 has no RNN rule: 0, as the tool

    class Einsum(nn.Module):
        def forward(self, x):
            return torch.einsum("nchw,nchw->nchw", x, x)

    with pytest.raises(Unsupported, match="einsum"):
        count_as(Einsum(), torch.randn(1, 2, 3, 3), "ultralytics-thop")
    # where the tool's own rule fails (thop 0.1.1 indexes the shape with Softmax's dim, None by default), so do we
    with pytest.raises(Unsupported, match=r"thop 0.1.1.* fails on 0 \(Softmax\): TypeError"):
        count_as(nn.Sequential(nn.Softmax()), torch.randn(2, 3), "thop-0.1.1")


class Products(nn.Module):
    """Matrix products written three ways: ptflops 0.7 patches torch.bmm and Tensor.matmul (not ``@``); ultralytics-
    thop counts all three (its TorchFunctionMode sees ``@`` as Tensor.matmul) -- outside any module with a rule."""

    def forward(self, x):  # x: (1, 2, 3, 3) -> a (2, 3, 3) batch of 3x3 matrices
        a = x[0]
        return (torch.bmm(a, a) + a.matmul(a) + (a @ a))[None]


def test_functional_products_as_each_tool_sees_them():
    x = torch.randn(1, 2, 3, 3)
    per_product = 2 * 3 * 3 * 3  # 2 matrices x 3x3 outputs x 3 terms
    assert count_as(Products(), x, "ultralytics-thop").ops == 3 * per_product
    # ptflops 0.7: torch.bmm and Tensor.matmul (the first operand's elements x the second's last axis); ``@`` and ``+``
    # are Tensor.__matmul__ / __add__, which it does not patch
    assert count_as(Products(), x, "ptflops-0.7").ops == 2 * per_product
    assert count_as(Products(), x, "thop-0.1.1").ops == 0  # module hooks only
    assert count_as(Products(), x, "ptflops-0.7-aten").ops == 3 * per_product  # aten.bmm, and mm/bmm for matmul


def test_measure_as_on_the_command_line():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "attnbench",
            "measure",
            "resnet18",
            "se",
            "--input-size",
            "64",
            "--as",
            "ptflops",
            "--as",
            "thop-0.0.23",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "as ptflops-0.7 (" in out.stdout and "as thop-0.0.23 (" in out.stdout and "G(2^30)" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "attnbench", "measure", "resnet18", "--as", "thopp"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        bad.returncode == 2 and "unknown convention 'thopp'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    )

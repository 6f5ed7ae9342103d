"""Memory traffic (bytes read + written per operator) and operator calls, worked out by hand from shapes.

The model (attnbench/measures/traffic.py, docs/cost-model.md): every operator reads each distinct element of
its tensor arguments once (weights included, read again by every call) and writes its outputs once; nothing
stays cached between operators; views move nothing; in-place operators write once. float32: 4 bytes/element.
Every expected count below is written from the layers' shapes, operator by operator, not from the counter.
"""

import pytest
import torch
from timm.models.resnet import BasicBlock
from torch import nn

from attnbench import build, count_flops
from attnbench.measures.flops import measure_flops
from attnbench.measures.macs_dispatch import count_forward_macs
from attnbench.measures.traffic import footprint
from attnbench.modules.cbam import CBAM
from attnbench.modules.non_local import NonLocalBlock
from attnbench.modules.se import SqueezeExcite
from attnbench.records.record import read_measurement

F32 = 4


def linear_elements(n, i, o):
    """addmm: reads bias (o), input (n x i), weight (i x o, through the free transpose t()); writes n x o."""
    return (o + n * i + i * o) + n * o


def se_elements(c, r, hw, n=1):
    h = c // r
    return (
        (n * c * hw + n * c)  # mean over H, W: reads the map, writes C
        + linear_elements(n, c, h)  # fc1
        + 2 * n * h  # ReLU in place: reads and writes its C/r once
        + linear_elements(n, h, c)  # fc2
        + 2 * n * c  # sigmoid
        + (n * c * hw + n * c + n * c * hw)
    )  # x * s: the map, the (N, C, 1, 1) gate (broadcast, stored once), the output


def cbam_elements(c, r, hw, k):
    h = c // r
    mlp = linear_elements(1, c, h) + 2 * h + linear_elements(1, h, c)
    channel = (
        (c * hw + c)
        + mlp  # mean + MLP
        + (c * hw + c)
        + mlp  # amax + the same MLP (its weights read again)
        + 3 * c
        + 2 * c  # add, sigmoid
        + (2 * c * hw + c)
    )  # x * gate
    spatial = (
        (c * hw + hw) * 2  # amax and mean over channels (keepdim): read the map, write H x W each
        + 4 * hw  # cat: reads both, writes 2 x H x W
        + (2 * hw + 2 * k * k + hw)  # conv 2->1, k x k, no bias
        + (hw + 4 + hw)  # eval BatchNorm(1): input, weight, bias, running mean, running var; output
        + 2 * hw  # sigmoid
        + (2 * c * hw + hw)
    )  # x * gate
    return channel + spatial


def nonlocal_elements(c, hw):
    i = c // 2
    conv_in = c * hw + i * c + i + i * hw  # theta / phi / g: read x, weight, bias; write C' x HW
    return (
        3 * conv_in
        + (2 * i * hw + hw * hw)  # bmm(theta^T, phi): the transposes and flattens are views
        + 2 * hw * hw  # softmax
        + (hw * hw + hw * i + hw * i)  # bmm(affinity, g^T)
        + (i * hw + c * i + c + c * hw)  # W: 1x1 conv C'->C (the transpose + reshape before it are views)
        + (c * hw + 4 * c + c * hw)  # BatchNorm
        + 3 * c * hw
    )  # residual add (out of place)


def basic_block_elements(c, hw):
    conv = c * hw + 9 * c * c + c * hw  # 3x3 conv without bias: input, weight, output
    bn = c * hw + 4 * c + c * hw
    relu = 2 * c * hw  # in place: read and write the map once
    add = 3 * c * hw  # x += shortcut, in place: reads both, writes x once
    return 2 * conv + 2 * bn + 2 * relu + add


def test_lone_se_block_by_hand():
    mc = count_forward_macs(SqueezeExcite(32, reduction=4), torch.randn(1, 32, 5, 5))
    assert mc.bytes == F32 * se_elements(32, 4, 25) == 12_704
    params = 32 * 8 + 8 + 8 * 32 + 32  # the two linears' weights and biases, each read once
    assert mc.bytes_params == F32 * params
    assert mc.bytes_written == F32 * (32 + 8 + 8 + 32 + 32 + 32 * 25)


def test_operator_calls_of_an_se_block_by_hand():
    # mean; fc1 = t (a view of the weight) + addmm; relu_; fc2 = t + addmm; sigmoid; s[:, :, None, None] = two
    # unsqueeze views; mul: 10 calls, of which the two t and two unsqueeze move nothing
    mc = count_forward_macs(SqueezeExcite(32, reduction=4), torch.randn(1, 32, 5, 5))
    assert (mc.operators, mc.operators_no_traffic) == (10, 4)
    assert mc.bytes_by_operator == {
        "mean": F32 * (800 + 32),
        "addmm": F32 * (linear_elements(1, 32, 8) + linear_elements(1, 8, 32)),
        "relu_": F32 * 16,
        "sigmoid": F32 * 64,
        "mul": F32 * (800 + 32 + 800),
    }


def test_lone_cbam_block_by_hand():
    mc = count_forward_macs(CBAM(32, reduction=4, kernel_size=7), torch.randn(1, 32, 5, 5))
    assert mc.bytes == F32 * cbam_elements(32, 4, 25, 7) == 33_616


def test_lone_nonlocal_block_by_hand():
    mc = count_forward_macs(NonLocalBlock(8), torch.randn(1, 8, 3, 3))
    assert mc.bytes == F32 * nonlocal_elements(8, 9) == 5_760
    # a batch of two doubles every activation term, not the weights
    two = count_forward_macs(NonLocalBlock(8), torch.randn(2, 8, 3, 3))
    weights = 3 * (8 * 4 + 4) + (4 * 8 + 8) + 4 * 8
    assert two.bytes == 2 * mc.bytes - F32 * weights


def test_resnet_basic_block_by_hand():
    c, side = 16, 6
    mc = count_forward_macs(BasicBlock(c, c), torch.randn(1, c, side, side))
    assert mc.bytes == F32 * basic_block_elements(c, side * side) == 53_504
    assert mc.bytes_params == F32 * (2 * 9 * c * c + 2 * 4 * c)  # two conv weights, two BatchNorms' four vectors
    # conv1, bn1 (an empty allocation + native_batch_norm), relu_, conv2, bn2 (the same two), add_, relu_
    assert (mc.operators, mc.operators_no_traffic) == (9, 2)


def test_se_resnet18_adds_exactly_its_blocks_traffic():
    """The whole-network Δ of SE-ResNet-18 is the sum of its eight SE blocks' traffic at their shapes (timm's
    ResNet-18 at 224: two blocks per stage at 64 x 56², 128 x 28², 256 x 14², 512 x 7²), and is what the
    record attributes to the attached modules; each block adds SE's 10 operator calls."""
    x = torch.randn(1, 3, 224, 224)
    bare, se = count_flops(build("resnet18"), x), count_flops(build("resnet18", "se"), x)
    blocks = F32 * sum(2 * se_elements(c, 16, side * side) for c, side in ((64, 56), (128, 28), (256, 14), (512, 7)))
    assert se.bytes - bare.bytes == se.bytes_attention == sum(se.bytes_sites.values()) == blocks
    assert se.operators - bare.operators == se.operators_attention == 8 * 10
    assert bare.bytes_attention == 0 and bare.bytes_sites == {}


def test_views_are_free_and_copies_are_not():
    class Reshapes(nn.Module):
        def forward(self, x):
            a = x.transpose(1, 2)  # a view
            b = a.reshape(x.shape[0], -1)  # not viewable: clone (copy) + _unsafe_view (free)
            return b.view(-1) * 2.0  # a view, then mul reads 24 and writes 24

    mc = count_forward_macs(Reshapes(), torch.randn(2, 3, 4))
    assert mc.bytes == F32 * (2 * 24 + 2 * 24)
    assert mc.bytes_by_operator == {"clone": F32 * 48, "mul": F32 * 48}


def test_broadcast_and_expanded_arguments_count_their_stored_elements():
    assert footprint(torch.randn(4, 1).expand(4, 1000)) == F32 * 4
    assert footprint(torch.randn(3, 5)[:, 1]) == F32 * 3
    assert footprint(torch.empty(0, 7)) == 0

    class Twice(nn.Module):
        def forward(self, x):
            return x * x  # one tensor passed twice: read once

    assert count_forward_macs(Twice(), torch.randn(10)).bytes == F32 * (10 + 10)


def test_in_place_writes_once_and_out_arguments_are_not_read():
    class InPlace(nn.Module):
        def forward(self, x):
            y = x.clone()  # 2 x 6
            y.add_(1.0)  # reads y, writes y: 2 x 6
            torch.mul(x, 3.0, out=y)  # reads x, writes y: 2 x 6
            return y.zero_()  # writes y without reading it: 6

    mc = count_forward_macs(InPlace(), torch.randn(6))
    assert mc.bytes == F32 * (12 + 12 + 12 + 6)


def test_pooling_indices_are_written_at_their_own_size():
    # CPU max-pooling under no_grad still writes int64 indices: 8 bytes each
    mc = count_forward_macs(nn.MaxPool2d(2), torch.randn(1, 2, 4, 4))
    outputs = 2 * 2 * 2
    assert mc.bytes == F32 * 32 + (F32 + 8) * outputs


def test_the_macs_record_carries_traffic_operators_and_intensity():
    m = measure_flops(build("resnet18", "cbam", input_size=64), torch.randn(1, 3, 64, 64))
    s = m.stats
    assert s["bytes"] == s["bytes_read"] + s["bytes_written"] and s["bytes_params"] < s["bytes_read"]
    assert s["intensity"] == pytest.approx(m.value / s["bytes"])
    assert s["bytes_attention"] == sum(s["bytes_sites"].values()) > 0 and len(s["bytes_sites"]) == 8
    assert s["operators"] > s["operators_attention"] > 0 and s["operators_no_traffic"] < s["operators"]
    assert sum(s["bytes_by_operator"].values()) == s["bytes"]
    assert "no cache between operators" in m.method
    back = read_measurement(m.to_dict())  # typed by records.STATS_TYPES: reads back as written
    assert back.stats["bytes"] == s["bytes"] and back.stats["bytes_sites"] == s["bytes_sites"]


def test_a_mistyped_traffic_stat_is_a_foreign_record():
    from attnbench.records.record import ForeignRecord

    m = {"metric": "macs", "value": 1.0, "unit": "MACs", "method": "x", "settings": {}, "stats": {"bytes": "many"}}
    with pytest.raises(ForeignRecord):
        read_measurement(m)


def test_measure_prints_traffic_operators_and_intensity(capsys):
    """`attnbench measure`: the attached SE blocks' traffic is the hand-derived sum over ResNet-18's eight blocks."""
    from test_cli import cli

    code, out, _ = cli(["measure", "resnet18", "se", "--input-size", "224"], capsys)
    assert code == 0
    blocks = F32 * sum(2 * se_elements(c, 16, side * side) for c, side in ((64, 56), (128, 28), (256, 14), (512, 7)))
    assert f"  attention {blocks / 1e6:,.2f} MB, 80 operator calls" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("memory traffic "))
    assert "no cache between operators" in line and "MACs/byte" in line and "operator calls" in line

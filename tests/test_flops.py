"""MAC counts worked out by hand (1 multiply-add = 1; rules in attnbench/measures/macs_rules.py)."""

import timm
import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from torch import nn

from attnbench import build, count_flops
from attnbench.measures.flops import measure_flops
from attnbench.measures.macs_rules import rule_of
from attnbench.modules.cbam import CBAM
from attnbench.modules.non_local import NonLocalBlock
from attnbench.modules.se import SqueezeExcite


def se_block_macs(c, r, h, w):
    """pool (C*H*W inputs) + fc1 (C*C/r) + ReLU (C/r) + fc2 (C/r*C) + sigmoid (C) + scale (C*H*W)."""
    return c * h * w + c * (c // r) + c // r + (c // r) * c + c + c * h * w


def test_single_se_block_by_hand():
    fc = count_flops(SqueezeExcite(32, reduction=4), torch.randn(1, 32, 5, 5))
    assert fc.total == se_block_macs(32, 4, 5, 5) == 2152 == fc.dispatch_total
    assert fc.conv_linear_matmul == fc.fvcore == 2 * 32 * 8  # the two linears (biases folded in)
    assert fc.elementwise == 800 + 8 + 32 + 800 and fc.norm == 0
    assert fc.by_operator == {"linear": 512, "mean": 800, "relu_": 8, "sigmoid": 32, "mul": 800}
    assert fc.unhandled == {} and fc.counters_agree and fc.counter_difference == ""


def test_single_cbam_block_by_hand():
    c, hidden, hw, k = 32, 8, 25, 7
    chw = c * hw
    channel = 2 * chw + 2 * (2 * c * hidden + hidden) + c + c + chw  # mean, amax, 2x MLP, add, sigmoid, mul
    spatial = 2 * chw + 2 * k * k * hw + hw + hw + chw  # amax+mean over C, conv, BN (eval: 1/element), sigmoid, mul
    fc = count_flops(CBAM(c, reduction=4, kernel_size=k), torch.randn(1, c, 5, 5))
    assert fc.total == channel + spatial == 8404 == fc.dispatch_total
    assert fc.conv_linear_matmul == 4 * c * hidden + 2 * k * k * hw and fc.norm == hw
    assert fc.fvcore == 4 * c * hidden + 2 * k * k * hw + 2 * hw  # fvcore's own BN rule: 2 per element (affine)


def test_single_nonlocal_block_by_hand():
    c, i, hw = 8, 4, 9
    convs = 3 * i * c * hw + c * i * hw
    bmms = hw * i * hw + hw * hw * i
    expected = convs + bmms + c * hw + hw * hw + c * hw  # + BN (eval: 1/element) + softmax + residual add
    fc = count_flops(NonLocalBlock(c), torch.randn(1, c, 3, 3))
    assert fc.total == expected == 2025 == fc.dispatch_total


def test_resnet50_by_the_rules_and_fvcores_own_total():
    x = torch.randn(1, 3, 224, 224)
    ref = FlopCountAnalysis(timm.create_model("resnet50").eval(), x)
    ref.unsupported_ops_warnings(False)
    theirs = ref.by_operator()
    fc = count_flops(build("resnet50"), x)
    assert fc.fvcore == ref.total() == 4_111_512_576  # fvcore's own total, unmodified
    assert fc.conv_linear_matmul == theirs["conv"] + theirs["linear"] == 4_089_184_256
    assert fc.norm * 2 == theirs["batch_norm"]  # eval BN: 1 per element here, 2 (affine) in fvcore
    assert fc.by_operator["max_pool2d"] == 64 * 56 * 56 * 3 * 3 == 1_806_336  # stem pool: 56x56 outputs x 3x3 window
    assert fc.by_operator["adaptive_avg_pool2d"] == theirs["adaptive_avg_pool2d"] == 2048 * 7 * 7
    # old 4,127,443,456 - 11,113,984 (BN 2 -> 1 per element) + 1,003,520 (max-pool 802,816 -> 1,806,336)
    assert fc.total == fc.dispatch_total == 4_117_332_992
    assert fc.unhandled == {}


def test_se_resnet50_delta_includes_elementwise_work():
    x = torch.randn(1, 3, 224, 224)
    base, se = count_flops(build("resnet50"), x), count_flops(build("resnet50", "se"), x)
    delta = se.conv_linear_matmul - base.conv_linear_matmul
    assert (
        delta == sum(3 * [2 * 256 * 16] + 4 * [2 * 512 * 32] + 6 * [2 * 1024 * 64] + 3 * [2 * 2048 * 128]) == 2_514_944
    )
    # 16 SE blocks at their stage resolutions: 56, 28, 14, 7
    stages = [(3, 256, 56), (4, 512, 28), (6, 1024, 14), (3, 2048, 7)]
    by_hand = sum(n * se_block_macs(c, 16, s, s) for n, c, s in stages)
    assert se.total - base.total == by_hand == se.attention == 13_569_712
    assert se.total - base.total > 5 * delta  # the paper's 3.86 -> 3.87 GFLOPs, not the linears' +0.06%
    assert se.counters_agree


def test_eca_by_hand_ours_and_timms():
    from attnbench import get_module

    c, hw, k = 64, 25, 3  # k = 3 at C = 64
    expected = c * hw + c * k + c + c * hw  # pool, 1-D conv over the C positions, sigmoid, scale (expand_as is free)
    for name in ("eca", "timm:eca"):
        fc = count_flops(get_module(name)(c), torch.randn(1, c, 5, 5))
        assert (fc.total, fc.dispatch_total, fc.unhandled) == (expected, expected, {}), name


class GlobalAvgPool(nn.Module):
    def forward(self, x):
        return F.avg_pool2d(x, x.shape[2:])  # kernel read from the input's shape, not a constant


def test_windowed_pools_count_output_times_window():
    cases = [  # (module, input, output elements x window, worked out by hand)
        (nn.MaxPool2d(3, 2, 1), (1, 64, 112, 112), 64 * 56 * 56 * 9),  # ResNet-50's stem pool at 224
        (nn.MaxPool2d(3, 1, 1), (1, 8, 10, 10), 8 * 10 * 10 * 9),  # 3x3 stride 1: 9 per output, ~9x the input
        (nn.AvgPool2d(3, 1), (1, 8, 10, 10), 8 * 8 * 8 * 9),  # no padding: 8x8 outputs
        (GlobalAvgPool(), (2, 16, 7, 7), 2 * 16 * 1 * 49),  # global pooling: each input once
        (nn.AdaptiveAvgPool2d(1), (2, 16, 7, 7), 2 * 16 * 49),  # a reduction: each input once
        (nn.AdaptiveAvgPool2d(3), (1, 16, 7, 7), 16 * 9 * 9),  # windows [0,3) [2,5) [4,7): 3+3+3 per dim
    ]
    for module, shape, expected in cases:
        fc = count_flops(module, torch.randn(*shape))
        assert (fc.total, fc.dispatch_total, fc.unhandled) == (expected, expected, {}), module


class EveryOperator(nn.Module):
    """The operators issue #9 names; x is (1, 2, 4, 8): batch 1, 2 heads, 4 tokens, 8 features."""

    def forward(self, x):
        a = F.scaled_dot_product_attention(x, x, x)
        c = torch.where(a.eq(0), a, a.masked_fill(a.gt(0), 0.0))
        s = (c.square() + c.erf()).cumsum(-1)
        v, mu = torch.var_mean(s, -1)
        u = torch.addcmul(torch.lerp(v, mu, 0.5), v, mu)
        picked = x[:, :, torch.tensor([0, 2])], x.gather(-1, torch.zeros(1, 2, 4, 1, dtype=torch.long))
        return u, s.logsumexp(-1), picked, x.sort(-1).values, x.topk(2, -1).values, x.cummax(-1).values


def test_every_operator_is_counted_or_listed():
    fc = count_flops(EveryOperator(), torch.randn(1, 2, 4, 8))
    n, rows = 64, 8  # elements of x and of every (1, 2, 4, 8) intermediate; rows = 1 * 2 * 4
    assert fc.by_operator == {
        "scaled_dot_product_attention": 2 * (4 * 4 * 8 + 4 * 4 * 8) + 2 * 4 * 4,  # per head QK^T, AV + softmax
        "eq": n,
        "gt": n,
        "masked_fill": n,
        "where": n,
        "square": n,
        "erf": n,
        "add": n,
        "cumsum": n,
        "logsumexp": n,
        "var_mean": 2 * n,  # two statistics per input element
        "lerp": rows,
        "addcmul": rows,  # on the (1, 2, 4) statistics
        "sort": n * 3,
        "topk": n * 1,  # n x ceil(log2 8) along the sorted dim; n x max(1, ceil(log2 k=2))
    }
    assert fc.conv_linear_matmul == 512 and fc.total == fc.dispatch_total == 1520
    assert rule_of("index") == rule_of("gather") == "free"  # indexing moves data: free by the stated rule
    assert fc.unhandled == {"aten::cummax": 1, "aten.cummax": 1}  # no rule: listed by both counters
    assert "cummax" in fc.counter_difference


# Registry entries that cannot run as a bare module on (1, 64, 14, 14) even with the site's feat_size, with timm's reason.
UNSUPPORTED_AT_14 = {
    "timm:ge": "act_layer",  # timm 1.0.31 passes act_layer to ConvMlp twice
    "timm:halo": "needs feature maps divisible by block_size 8",  # 14 is not a multiple of 8
}


def test_no_operator_left_unhandled_in_any_registry_entry():
    from formulas import SITE_CONTEXT

    import attnbench
    from attnbench.attach.placement import declared_context
    from attnbench.harness.execute import error_info

    left, failures = {}, {}
    for name in attnbench.list_modules():
        try:
            factory = attnbench.get_module(name)  # with the site context its factory names, as attach passes it
            context = {k: v for k, v in SITE_CONTEXT.items() if k in declared_context(factory)}
            fc = count_flops(factory(64, **context), torch.randn(1, 64, 14, 14))
        except Exception as exc:
            failures[name] = error_info(exc)["message"]
            continue  # only the expected failures below, each with its reason
        if fc.unhandled or not fc.counters_agree:
            left[name] = (fc.unhandled, fc.counter_difference)
    assert left == {}
    assert set(failures) == set(UNSUPPORTED_AT_14), failures
    for name, reason in UNSUPPORTED_AT_14.items():
        assert reason in failures[name], (name, failures[name])


def test_measurement_is_in_macs_with_both_counters():
    m = measure_flops(SqueezeExcite(32, reduction=4), torch.randn(1, 32, 5, 5))
    assert (m.metric, m.value, m.unit) == ("macs", 2152, "MACs")
    assert m.stats["conv_linear_matmul"] + m.stats["elementwise"] + m.stats["norm"] == m.value
    assert (m.stats["dispatch_total"], m.stats["counters_agree"], m.stats["fvcore"]) == (2152, True, 512)
    assert "counter_difference" not in m.stats

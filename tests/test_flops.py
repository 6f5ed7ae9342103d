"""FLOP counts worked out by hand (1 multiply-add = 1 FLOP; element-wise ops counted)."""
import timm
import torch
from fvcore.nn import FlopCountAnalysis

from attnbench import build, count_flops
from attnbench.modules.cbam import CBAM
from attnbench.modules.non_local import NonLocalBlock
from attnbench.modules.se import SqueezeExcite


def se_block_flops(c, r, h, w):
    """pool (C*H*W inputs) + fc1 (C*C/r) + ReLU (C/r) + fc2 (C/r*C) + sigmoid (C) + scale (C*H*W)."""
    return c * h * w + c * (c // r) + c // r + (c // r) * c + c + c * h * w


def test_single_se_block_by_hand():
    fc = count_flops(SqueezeExcite(32, reduction=4), torch.randn(1, 32, 5, 5))
    assert fc.total == se_block_flops(32, 4, 5, 5) == 2152
    assert fc.fvcore == 2 * 32 * 8  # fvcore alone sees only the two linears
    assert fc.elementwise == 800 + 8 + 32 + 800
    assert fc.by_operator == {"linear": 512, "mean": 800, "relu_": 8, "sigmoid": 32, "mul": 800}
    assert fc.unhandled == {}


def test_single_cbam_block_by_hand():
    c, hidden, hw, k = 32, 8, 25, 7
    chw = c * hw
    channel = 2 * chw + 2 * (2 * c * hidden + hidden) + c + c + chw  # mean, amax, 2x MLP, add, sigmoid, mul
    spatial = 2 * chw + 2 * k * k * hw + 2 * hw + hw + chw  # amax+mean over C, conv, BN (eval, affine), sigmoid, mul
    fc = count_flops(CBAM(c, reduction=4, kernel_size=k), torch.randn(1, c, 5, 5))
    assert fc.total == channel + spatial == 8429
    assert fc.fvcore == 4 * c * hidden + 2 * k * k * hw + 2 * hw


def test_single_nonlocal_block_by_hand():
    c, i, hw = 8, 4, 9
    convs = 3 * i * c * hw + c * i * hw
    bmms = hw * i * hw + hw * hw * i
    expected = convs + bmms + 2 * c * hw + hw * hw + c * hw  # + BN(eval, affine) + softmax + residual add
    fc = count_flops(NonLocalBlock(c), torch.randn(1, c, 3, 3))
    assert fc.total == expected == 2097


def test_fvcore_part_of_resnet50_equals_fvcores_own_total():
    x = torch.randn(1, 3, 224, 224)
    ref = FlopCountAnalysis(timm.create_model("resnet50").eval(), x)
    ref.unsupported_ops_warnings(False)
    fc = count_flops(build("resnet50"), x)
    assert fc.fvcore == ref.total() == 4_111_512_576
    assert fc.unhandled == {}


def test_se_resnet50_delta_includes_elementwise_work():
    x = torch.randn(1, 3, 224, 224)
    base, se = count_flops(build("resnet50"), x), count_flops(build("resnet50", "se"), x)
    fvcore_delta = se.fvcore - base.fvcore
    assert fvcore_delta == sum(3 * [2 * 256 * 16] + 4 * [2 * 512 * 32] + 6 * [2 * 1024 * 64] + 3 * [2 * 2048 * 128]) == 2_514_944
    # 16 SE blocks at their stage resolutions: 56, 28, 14, 7
    stages = [(3, 256, 56), (4, 512, 28), (6, 1024, 14), (3, 2048, 7)]
    by_hand = sum(n * se_block_flops(c, 16, s, s) for n, c, s in stages)
    assert se.total - base.total == by_hand == se.attention == 13_569_712
    assert se.total - base.total > 5 * fvcore_delta  # the paper's 3.86 -> 3.87 GFLOPs, not fvcore's +0.06%


def test_eca_by_hand_ours_and_timms():
    from attnbench import get_module

    c, hw, k = 64, 25, 3  # k = 3 at C = 64
    expected = c * hw + c * k + c + c * hw  # pool, 1-D conv over the C positions, sigmoid, scale (expand_as is free)
    for name in ("eca", "timm:eca"):
        fc = count_flops(get_module(name)(c), torch.randn(1, c, 5, 5))
        assert (fc.total, fc.unhandled) == (expected, {}), name


def test_no_operator_left_unhandled_in_any_registry_entry():
    import attnbench

    left = {}
    for name in attnbench.list_modules():
        try:
            unhandled = count_flops(attnbench.get_module(name)(64), torch.randn(1, 64, 14, 14)).unhandled
        except Exception:
            continue  # entries that cannot run are listed with their reasons in test_zoo_modules

        if unhandled:
            left[name] = unhandled
    assert left == {}

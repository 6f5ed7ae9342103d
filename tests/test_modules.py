"""One module at a time: exact parameter counts at non-default settings, forward passes computed by
hand, the shared building blocks of attnbench/modules/common.py. Every-module checks: test_zoo_modules.py."""

import pytest
import torch
from formulas import cbam_params, eca_kernel, nonlocal_params, se_params, triplet_params

from attnbench import count_params, get_module
from attnbench.modules.cbam import CBAM
from attnbench.modules.common import SpatialGate, make_divisible
from attnbench.modules.non_local import NonLocalBlock
from attnbench.modules.se import SqueezeExcite
from attnbench.modules.triplet import TripletAttention


def test_se_512_has_33312_parameters_not_the_tutorials_33792():
    assert count_params(SqueezeExcite(512, reduction=16)) == 33_312 == se_params(512, 16)


@pytest.mark.parametrize("c,r", [(64, 16), (256, 16), (2048, 16), (96, 8), (24, 16)])
def test_se_parameter_formula(c, r):
    assert count_params(SqueezeExcite(c, reduction=r)) == se_params(c, r)


@pytest.mark.parametrize("c,r,k", [(256, 16, 7), (64, 16, 3), (512, 8, 7)])
def test_cbam_parameter_formula(c, r, k):
    assert count_params(CBAM(c, reduction=r, kernel_size=k)) == cbam_params(c, r, k)


def test_nonlocal_1024_parameters():
    assert count_params(NonLocalBlock(1024)) == nonlocal_params(1024) == 2_101_760
    assert count_params(NonLocalBlock(256, inter_channels=64)) == nonlocal_params(256, 64)


@pytest.mark.parametrize("train", [False, True])
def test_nonlocal_is_identity_at_init(train):
    torch.manual_seed(0)
    block = NonLocalBlock(32).train(train)
    x = torch.randn(2, 32, 7, 5)
    assert torch.equal(block(x), x)


def test_se_matches_hand_computation():
    torch.manual_seed(0)
    se = SqueezeExcite(8, reduction=4)
    x = torch.randn(2, 8, 3, 3)
    s = x.mean(dim=(2, 3))
    h = torch.relu(s @ se.fc1.weight.T + se.fc1.bias)
    g = torch.sigmoid(h @ se.fc2.weight.T + se.fc2.bias)
    torch.testing.assert_close(se(x), x * g[:, :, None, None])


def _spatial_gate_by_hand(gate, x):
    """max and mean over dim 1 -> conv -> BN (eval: running stats) -> sigmoid -> scale, from the weights."""
    pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
    z = torch.nn.functional.conv2d(pooled, gate.conv.weight, padding=gate.conv.padding)
    bn = gate.bn
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    return x * torch.sigmoid(z)


def test_cbam_gates_channel_then_spatial():
    torch.manual_seed(0)
    m = CBAM(8, reduction=2).eval()
    x = torch.randn(1, 8, 6, 6)
    mlp = m.channel.mlp
    xc = x * torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
    torch.testing.assert_close(m(x), _spatial_gate_by_hand(m.spatial, xc))


def test_triplet_rotates_and_averages_three_gates():
    torch.manual_seed(0)
    m = TripletAttention(kernel_size=3).eval()
    with torch.no_grad():  # distinct BN statistics per branch, so a swapped branch shows
        for i, gate in enumerate((m.cw, m.hc, m.hw)):
            gate.bn.running_mean.fill_(0.1 * i)
            gate.bn.running_var.fill_(1.0 + i)
    x = torch.randn(2, 5, 6, 7)
    cw = _spatial_gate_by_hand(m.cw, x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)  # H in the channel role
    hc = _spatial_gate_by_hand(m.hc, x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)  # W in the channel role
    torch.testing.assert_close(m(x), (cw + hc + _spatial_gate_by_hand(m.hw, x)) / 3)
    assert count_params(m) == triplet_params(3) == 60


def test_shared_spatial_gate_keeps_both_modules_checkpoint_keys():
    # CBAM and Triplet share common.SpatialGate; their state_dict names stay what they were before the refactor.
    gate = ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    assert [k for k in CBAM(8).state_dict() if k.startswith("spatial.")] == [f"spatial.{k}" for k in gate]
    assert list(TripletAttention().state_dict()) == [f"{b}.{k}" for b in ("cw", "hc", "hw") for k in gate]
    assert type(CBAM(8).spatial) is type(TripletAttention().hw) is SpatialGate


def test_make_divisible_is_timms():
    from timm.layers import make_divisible as timm_make_divisible

    for divisor in (4, 8):
        for v in [c / 8 for c in range(1, 1025)] + list(range(1, 100)):  # every C/8 up to C=1024
            assert make_divisible(v, divisor) == timm_make_divisible(v, divisor), (v, divisor)
    assert make_divisible(9) == 16  # 72/8: rounding down to 8 would lose more than 10%


def test_eca_kernel_sizes_follow_the_paper():
    assert [eca_kernel(c) for c in (64, 128, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 5, 7]
    assert [count_params(get_module("eca")(c)) for c in (64, 128, 2048)] == [3, 5, 7]
    assert count_params(get_module("eca")(256, kernel_size=9)) == 9


def test_eca_mlp_matches_timms_ecam():
    for c in (64, 72, 144, 256, 1000):  # 72, 144: where a floor-based rounding differs from timm's make_divisible
        assert count_params(get_module("eca_mlp")(c)) == count_params(get_module("timm:ecam")(c))


def test_simam_by_hand():
    x = torch.randn(1, 3, 4, 5)
    mu = x.mean((2, 3), keepdim=True)
    var = ((x - mu) ** 2).sum((2, 3), keepdim=True) / (4 * 5 - 1)
    expected = x * torch.sigmoid((x - mu) ** 2 / (4 * (var + 1e-4)) + 0.5)
    torch.testing.assert_close(get_module("simam")(3)(x), expected)

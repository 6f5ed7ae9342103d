"""Built-in modules: exact parameter counts from the papers' formulas, behaviour, gradients."""
import pytest
import torch

from attnbench import count_params, get_module
from attnbench.modules.cbam import CBAM
from attnbench.modules.non_local import NonLocalBlock
from attnbench.modules.se import SqueezeExcite


def se_params(c, r):
    return 2 * c * (c // r) + c // r + c  # two FCs' weights, plus their biases


def test_se_512_has_33312_parameters_not_the_tutorials_33792():
    assert count_params(SqueezeExcite(512, reduction=16)) == 33_312 == se_params(512, 16)


@pytest.mark.parametrize("c,r", [(64, 16), (256, 16), (2048, 16), (96, 8), (24, 16)])
def test_se_parameter_formula(c, r):
    assert count_params(SqueezeExcite(c, reduction=r)) == se_params(c, r)


@pytest.mark.parametrize("c,r,k", [(256, 16, 7), (64, 16, 3), (512, 8, 7)])
def test_cbam_parameter_formula(c, r, k):
    # SE-style shared MLP + k*k*2 conv weights (no bias) + BatchNorm(1) weight and bias
    assert count_params(CBAM(c, reduction=r, kernel_size=k)) == se_params(c, r) + 2 * k * k + 2


def test_nonlocal_1024_parameters():
    c, i = 1024, 512
    formula = 3 * (c * i + i) + (i * c + c) + 2 * c
    assert formula == 2_101_760
    assert count_params(NonLocalBlock(1024)) == formula


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


def test_cbam_gates_channel_then_spatial():
    torch.manual_seed(0)
    m = CBAM(8, reduction=2).eval()
    x = torch.randn(1, 8, 6, 6)
    mlp = m.channel.mlp
    xc = x * torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
    pooled = torch.cat([xc.amax(1, keepdim=True), xc.mean(1, keepdim=True)], 1)
    expected = xc * torch.sigmoid(m.spatial.bn(m.spatial.conv(pooled)))
    torch.testing.assert_close(m(x), expected)


@pytest.mark.parametrize("name", ["se", "cbam", "nonlocal"])
def test_builtin_modules_keep_shape_and_pass_gradients(name):
    torch.manual_seed(0)
    m = get_module(name)(64)
    if name == "nonlocal":  # the zero-initialised BN would block gradients to theta/phi/g on step 0
        torch.nn.init.ones_(m.bn.weight)
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname

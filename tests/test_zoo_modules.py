"""Every first-party module: exact parameter count from its paper's formula, shape, gradients;
every registry entry (timm's included) built into resnet18 and run, failures listed with reasons."""
import math

import pytest
import torch

import attnbench
from attnbench import build, count_params, get_module
from attnbench.modules.eca import adaptive_kernel
from attnbench.modules.timm_attn import TIMM_NAMES
from attnbench.runner import error_info

FIRST_PARTY = ["se", "cbam", "nonlocal", "eca", "eca_mlp", "gc", "sk", "coord", "simam", "triplet", "bam", "srm",
               "ge_theta", "ese", "sge"]


def formula(name, c):
    h16 = c // 16
    if name == "eca":
        return adaptive_kernel(c)
    if name == "eca_mlp":
        hidden, k = max(8, int(c / 8 + 4) // 8 * 8), max(3, adaptive_kernel(c))
        return 2 * hidden + hidden * k + 1
    if name == "gc":
        return (c + 1) + (c * h16 + h16) + 2 * h16 + (h16 * c + c)
    if name == "sk":
        g, d = math.gcd(32, c), max(c // 16, 32)
        return 2 * (c * (c // g) * 9 + 2 * c) + (c * d + 2 * d) + 2 * (d * c + c)
    if name == "coord":
        m = max(8, c // 32)
        return (c * m + m) + 2 * m + 2 * (m * c + c)
    if name == "simam":
        return 0
    if name == "triplet":
        return 3 * (2 * 7 * 7 + 2)
    if name == "bam":
        channel = (c * h16 + h16) + 2 * h16 + (h16 * c + c)
        spatial = (c * h16 + h16) + 2 * h16 + 2 * (h16 * h16 * 9 + h16 + 2 * h16) + (h16 + 1)
        return channel + spatial
    if name == "srm":
        return 4 * c
    if name == "ge_theta":
        return 3 * (9 * c + 2 * c)  # extent 8: three stride-2 depthwise 3x3 convs + BN
    if name == "ese":
        return c * c + c
    if name == "sge":
        return 2 * math.gcd(64, c)
    if name == "se":
        return 2 * c * h16 + h16 + c
    if name == "cbam":
        return 2 * c * h16 + h16 + c + 2 * 49 + 2
    if name == "nonlocal":
        return 4 * c * (c // 2) + 3 * (c // 2) + c + 2 * c
    raise KeyError(name)


def test_first_party_modules_are_registered():
    assert set(FIRST_PARTY) <= set(attnbench.list_modules())
    assert len(attnbench.list_modules()) >= 20


@pytest.mark.parametrize("name", FIRST_PARTY)
@pytest.mark.parametrize("c", [64, 256, 2048])
def test_exact_parameter_count(name, c):
    assert count_params(get_module(name)(c)) == formula(name, c)


def test_eca_kernel_sizes_follow_the_paper():
    assert [adaptive_kernel(c) for c in (64, 128, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 5, 7]
    assert count_params(get_module("eca")(256, kernel_size=9)) == 9


def test_eca_mlp_matches_timms_ecam():
    for c in (64, 256, 1000):
        assert count_params(get_module("eca_mlp")(c)) == count_params(get_module("timm:ecam")(c))


@pytest.mark.parametrize("name", FIRST_PARTY)
def test_shape_and_gradient_flow(name):
    torch.manual_seed(0)
    m = get_module(name)(64)
    with torch.no_grad():  # move zero-initialised gates (GC, SGE, Non-Local) off their identity start
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 64, 14, 14, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_simam_by_hand():
    x = torch.randn(1, 3, 4, 5)
    mu = x.mean((2, 3), keepdim=True)
    var = ((x - mu) ** 2).sum((2, 3), keepdim=True) / (4 * 5 - 1)
    expected = x * torch.sigmoid((x - mu) ** 2 / (4 * (var + 1e-4)) + 0.5)
    torch.testing.assert_close(get_module("simam")(3)(x), expected)


def test_timm_names_are_the_ones_get_attn_accepts():
    import inspect
    import re

    from timm.layers import get_attn

    accepted = set(re.findall(r"attn_type == '(\w+)'", inspect.getsource(get_attn)))
    assert accepted == set(TIMM_NAMES)
    assert {f"timm:{n}" for n in TIMM_NAMES} <= set(attnbench.list_modules())


# Entries that cannot run in resnet18 at 64x64, with the reason the harness reports.
UNSUPPORTED_AT_64 = {
    "timm:ge": "ConvMlp.__init__() got multiple values for argument 'act_layer'",  # timm 1.0.31 bug
    "timm:bottleneck": "A concrete feature size matching expected input (H, W) is required",
    "timm:halo": "AssertionError with no message at timm/layers/halo_attn.py",  # H, W must divide by the block size
    "timm:bat": "AssertionError with no message at timm/layers/non_local_attn.py",  # likewise (block size 7)
}


def test_every_registry_entry_in_resnet18():
    failures = {}
    for name in attnbench.list_modules():
        try:
            model = build("resnet18", name).eval()
            with torch.no_grad():
                assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
        except Exception as exc:
            failures[name] = error_info(exc)["message"]
    assert set(failures) == set(UNSUPPORTED_AT_64), failures
    for name, reason in UNSUPPORTED_AT_64.items():
        assert reason in failures[name], (name, failures[name])


@pytest.mark.parametrize("backbone,placement,sites", [
    ("mobilenetv3_large_100", "block", 15), ("efficientnet_b0", "block", 16), ("regnety_002", "block", 13),
    ("gernet_s", "block", 14), ("convnext_nano", "stage", 4),
])
def test_attachment_beyond_resnet(backbone, placement, sites):
    m = build(backbone, "eca")
    a = m.attnbench_attachment
    assert a.placement == placement and len(a.sites) == sites
    with torch.no_grad():
        assert m.eval()(torch.randn(1, 3, 96, 96)).shape == (1, 1000)


def test_native_se_is_replaced_and_counted():
    base, ours = build("efficientnet_b0"), build("efficientnet_b0", "simam")
    assert ours.attnbench_attachment.replaced == 16  # every MBConv block had timm's SE
    native = sum(p.numel() for n, p in base.named_parameters() if ".se." in n)
    assert count_params(ours) == count_params(base) - native

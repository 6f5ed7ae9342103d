"""Every first-party module: exact parameter count from its paper's formula, shape, gradients;
every registry entry (timm's included) built into resnet18 and run, failures listed with reasons."""

import pytest
import torch
from formulas import FORMULAS, SITE_CONTEXT, first_party_modules

import attnbench
from attnbench import build, count_params, get_module
from attnbench.attach.placement import declared_context
from attnbench.errors import Unsupported
from attnbench.harness.execute import error_info
from attnbench.modules.timm_attn import TIMM_NAMES

FIRST_PARTY = first_party_modules()  # read from attnbench's entry points, not written out here


def test_every_first_party_module_has_a_formula():
    # a new entry point in pyproject.toml fails here until tests/formulas.py has its formula
    assert set(FIRST_PARTY) == set(FORMULAS), "add the missing module's formula to tests/formulas.py"
    assert set(FIRST_PARTY) <= set(attnbench.list_modules())
    assert {"se", "cbam", "nonlocal", "eca", "triplet"} <= set(FIRST_PARTY)


def make(name, c):
    """The module at ``c`` channels, with the site context its factory names (formulas.SITE_CONTEXT)."""
    factory = get_module(name)
    return factory(c, **{k: v for k, v in SITE_CONTEXT.items() if k in declared_context(factory)})


@pytest.mark.parametrize("name", FIRST_PARTY)
@pytest.mark.parametrize("c", [64, 256, 2048])
def test_exact_parameter_count(name, c):
    assert count_params(make(name, c)) == FORMULAS[name](c)


@pytest.mark.parametrize("name", FIRST_PARTY)
def test_shape_and_gradient_flow(name):
    torch.manual_seed(0)
    m = make(name, 64)
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


def test_timm_names_are_the_ones_get_attn_accepts():
    import inspect
    import re

    from timm.layers import get_attn

    accepted = set(re.findall(r"attn_type == '(\w+)'", inspect.getsource(get_attn)))
    assert accepted == set(TIMM_NAMES)
    assert {f"timm:{n}" for n in TIMM_NAMES} <= set(attnbench.list_modules())


# Entries that cannot run in resnet18 at 64x64, with the reason the harness reports.
UNSUPPORTED_AT_64 = {  # known, checked upstream limits: stored as `unsupported`, never as a crash
    "timm:ge": "passes act_layer to ConvMlp twice",  # timm 1.0.31 constructor bug
    "timm:halo": "divisible by block_size 8; this site is 4x4",  # resnet18's res5 at 64x64
    "timm:bat": "divisible by block_size 7; this site is 16x16",
    "timm:lambda": "needs out_channels == channels; this site maps 256 -> 512",
}


def test_every_registry_entry_in_resnet18():
    unsupported, failures = {}, {}
    for name in attnbench.list_modules():
        try:
            model = build("resnet18", name, input_size=64).eval()
            with torch.no_grad():
                assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
        except Unsupported as exc:
            unsupported[name] = str(exc)
        except Exception as exc:
            failures[name] = error_info(exc)["message"]
    assert failures == {}
    assert set(unsupported) == set(UNSUPPORTED_AT_64), unsupported
    for name, reason in UNSUPPORTED_AT_64.items():
        assert reason in unsupported[name], (name, unsupported[name])


@pytest.mark.parametrize(
    "backbone,placement,sites",
    [  # ECA-Net's MobileNetV2 layout in inverted residuals: output
        ("mobilenetv3_large_100", "output", 15),
        ("efficientnet_b0", "output", 16),
        ("regnety_002", "block", 13),
        ("gernet_s", "block", 14),
        ("convnext_nano", "stage", 4),
    ],
)
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

"""Attachment to timm backbones: exact counts against timm's own models and the papers."""

import pytest
import timm
import torch
from formulas import nonlocal_params, se_params

import attnbench
from attnbench import attention_parameters, build, count_params
from attnbench.attach.backbone import AttentionSlot
from attnbench.errors import AttnBenchError, ModuleDoesNotFit, UnknownNameError


def test_builtins_are_listed():
    assert {"se", "cbam", "nonlocal"} <= set(attnbench.list_modules())


def test_se_resnet50_equals_timm_seresnet50():
    ours = count_params(build("resnet50", "se"))
    assert ours == count_params(timm.create_model("seresnet50", pretrained=False)) == 28_088_024


def test_se_resnet101_equals_timm_seresnet101():
    assert count_params(build("resnet101", "se")) == count_params(timm.create_model("seresnet101")) == 49_326_872


def test_cbam_resnet50_matches_paper():
    # SE-ResNet-50 plus 7*7*2 conv weights + 2 BatchNorm parameters in each of the 16 blocks
    assert count_params(build("resnet50", "cbam")) == 28_088_024 + 16 * 100 == 28_089_624


def test_baseline_is_timm_resnet50():
    m = build("resnet50")
    assert count_params(m) == count_params(timm.create_model("resnet50")) == 25_557_032
    assert attention_parameters(m) == 0 and m.attnbench_attachment.placement == "none"


def test_se_sits_where_timm_puts_it_and_computes_the_same():
    """Same weights in timm's seresnet50 and our resnet50+se give the same outputs."""
    torch.manual_seed(0)
    ours, ref = build("resnet50", "se").eval(), timm.create_model("seresnet50").eval()
    state = {k.replace(".se.attn.", ".se."): v for k, v in ours.state_dict().items()}
    ref_state = ref.state_dict()
    assert set(state) == set(ref_state)
    ref.load_state_dict({k: v.reshape(ref_state[k].shape) for k, v in state.items()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    assert isinstance(ours.layer3[2].se, AttentionSlot)
    assert len(ours.attnbench_attachment.sites) == 16


def test_nonlocal_default_is_one_block_after_res4():
    m = build("resnet50", "nonlocal", init="train")  # the training init: Non-Local's zero BN, the identity
    a = m.attnbench_attachment
    assert a.placement == "stage" and a.stages == [3] and a.sites == ["layer3.attn5"]
    assert attention_parameters(m) == 2_101_760  # C = 1024 at res4
    assert count_params(m) == 25_557_032 + 2_101_760
    m.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # identity at init: the whole network is unchanged
        torch.testing.assert_close(m(x), _copy_into_baseline(m)(x))


def _copy_into_baseline(m):
    base = build("resnet50").eval()
    state = {k.replace("layer3.", "layer3.", 1): v for k, v in m.state_dict().items() if ".attn" not in k}
    base.load_state_dict(state)
    return base


def test_nonlocal_stages_and_blocks():
    m = build("resnet50", "nonlocal", nonlocal_stages=[2, 3], nonlocal_blocks=2)
    a = m.attnbench_attachment
    assert a.stages == [2, 3]
    assert a.sites == ["layer2.attn1", "layer2.attn3", "layer3.attn3", "layer3.attn5"]
    assert attention_parameters(m) == 2 * nonlocal_params(512) + 2 * nonlocal_params(1024)


def test_plain_plugin_constructor_gets_no_timm_keywords():
    class Gate(torch.nn.Module):
        def __init__(self, channels):  # no device/dtype: timm's keywords are adapted away
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(channels))

        def forward(self, x):
            return x * self.w[None, :, None, None]

    attnbench.register("test_gate")(Gate)
    try:
        m = build("resnet18", "test_gate")
        assert attention_parameters(m) == 2 * (64 + 128 + 256 + 512)
        assert m.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
        stage = build("resnet18", "test_gate", placement="stage", stages=[4])
        assert attention_parameters(stage) == 512
    finally:
        attnbench.registry.MODULES.unregister("test_gate")


def test_shape_changing_module_is_rejected_clearly():
    attnbench.register("test_halver")(lambda channels: torch.nn.Conv2d(channels, channels // 2, 1))
    try:
        m = build("resnet18", "test_halver")
        with pytest.raises(ModuleDoesNotFit, match="test_halver.*must keep the"):
            m(torch.randn(1, 3, 32, 32))
    finally:
        attnbench.registry.MODULES.unregister("test_halver")


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UnknownNameError, match=r"unknown module 'sse'; did you mean 'se'"):
        build("resnet18", "sse")
    with pytest.raises(UnknownNameError, match=r"unknown backbone 'resnet5'; did you mean .*'resnet50'"):
        build("resnet5", "se")


def test_bad_options_and_placements():
    with pytest.raises(AttnBenchError, match="module 'se' does not accept options \\['ratio'\\]"):
        build("resnet18", "se", ratio=4)
    with pytest.raises(ModuleDoesNotFit, match="stage 9 does not exist: this backbone has stages 1..4"):
        build("resnet18", "nonlocal", stages=[9])
    with pytest.raises(ModuleDoesNotFit, match="per-block placement.*use placement: stage"):
        build("convnext_nano", "se", placement="block")
    # without an explicit placement, a family with no per-block hook gets the module after every stage
    m = build("convnext_nano", "se")
    a = m.attnbench_attachment
    assert a.placement == "stage" and a.stages == [1, 2, 3, 4]
    assert a.sites == ["stages.0.attn", "stages.1.attn", "stages.2.attn", "stages.3.attn"]
    assert attention_parameters(m) == sum(se_params(c) for c in (80, 160, 320, 640))

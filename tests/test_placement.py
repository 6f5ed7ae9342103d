"""conv placement (SKNet's layout), stages for block modules, context keywords, bare/native baselines."""

import re

import pytest
import timm
import torch
from formulas import (
    RESNET50_STAGES,
    coord_params,
    gc_params,
    ge_theta_params,
    resnet50_ge_theta_params,
    se_params,
    sk_resnet_params,
    triplet_params,
)

import attnbench
from attnbench import attention_parameters, build, count_params
from attnbench.attach.backbone import AttentionSlot, describe, native_attention
from attnbench.errors import AttnBenchError, ModuleDoesNotFit, Unsupported
from attnbench.registry import get_module

RESNET50 = 25_557_032
WIDTHS50 = [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3  # bottleneck 3x3 widths, res2..res5


def test_sknet50_is_timms_skresnext50_weight_for_weight():
    ours = build("resnext50_32x4d", "sk").eval()
    ref = timm.create_model("skresnext50_32x4d").eval()
    assert count_params(ours) == count_params(ref) == 27_479_784  # SKNet paper: 27.5M
    assert ours.attnbench_attachment.placement == "conv" and len(ours.attnbench_attachment.sites) == 16
    state, selects = {}, {}
    for k, v in ours.state_dict().items():
        k = re.sub(r"conv2\.attn\.branches\.(\d)\.0\.", r"conv2.paths.\1.conv.", k)
        k = re.sub(r"conv2\.attn\.branches\.(\d)\.1\.", r"conv2.paths.\1.bn.", k)
        k = k.replace("conv2.attn.fuse.0.", "conv2.attn.fc_reduce.").replace("conv2.attn.fuse.1.", "conv2.attn.bn.")
        k = re.sub(
            r"^(layer\d\.\d+)\.(conv|bn)([13])\.",
            lambda m: f"{m[1]}.conv{m[3]}.{'conv' if m[2] == 'conv' else 'bn'}.",
            k,
        )
        if ".conv2.attn.select." in k:
            selects.setdefault(k.split(".conv2.")[0], []).append(v)
        else:
            state[k] = v
    for block, ws in selects.items():  # timm's fc_select stacks the branches' C rows
        state[f"{block}.conv2.attn.fc_select.weight"] = torch.cat(ws)
    ref.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_sk_on_a_plain_resnet50_is_the_sk_authors_sk_resnet():
    """A dense 3x3 becomes the SK authors' SK-ResNet unit (PytorchInsight resnet_sk.py): the dense conv stays as
    one branch beside a 32-group one, d = C/16 -- their table's 26.15M, not two grouped convs (15.3M)."""
    m = build("resnet50", "sk")
    removed = sum(9 * w * w + 2 * w for w in WIDTHS50)  # the 3x3 conv and its BN, per block
    assert attention_parameters(m) == sum(sk_resnet_params(w) for w in WIDTHS50)
    assert count_params(m) == RESNET50 - removed + sum(sk_resnet_params(w) for w in WIDTHS50) == 26_154_496
    assert describe(m.attnbench_attachment.as_dict()) == "conv x16"
    unit = m.layer2[0].conv2.attn
    assert unit.variant == "sk-resnet" and [b[0].groups for b in unit.branches] == [1, 32]
    assert [b[0].dilation for b in unit.branches] == [(1, 1), (1, 1)] and unit.fuse[0].out_channels == 128 // 16
    assert type(m.layer2[0].bn2).__name__ == "Identity"  # SK brings its own BN + ReLU, as timm's skresnet
    assert build("resnext50_32x4d", "sk").layer2[0].conv2.attn.variant == "sknet"  # a grouped 3x3: SKNet's unit


def test_sk_resnet101_is_the_sk_authors_count():
    widths = [64] * 3 + [128] * 4 + [256] * 23 + [512] * 3
    resnet101 = count_params(timm.create_model("resnet101"))
    extra = sum(sk_resnet_params(w) - 9 * w * w - 2 * w for w in widths)
    assert count_params(build("resnet101", "sk")) == resnet101 + extra == 45_678_112  # PytorchInsight: 45.68M


def test_sk_in_basic_blocks_takes_width_and_stride():
    m = build("resnet18", "sk").eval()
    a = m.attnbench_attachment
    assert a.sites[:3] == ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1"]
    conv = m.layer2[0].conv1.attn.branches[0][0]
    assert (conv.in_channels, conv.out_channels, conv.stride, conv.groups) == (64, 128, (2, 2), 1)
    assert attention_parameters(m) == sum(
        sk_resnet_params(c, c_in)
        for c, c_in in [(64, 64)] * 2 + [(128, 64), (128, 128), (256, 128), (256, 256), (512, 256), (512, 512)]
    )
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_bottleneck_attention_gets_feat_size_at_the_suite_input_size():
    def botnet_params(feat):  # qkv 1x1 C->3C (no bias) + relative position tables (2H-1 + 2W-1) x C/4 heads
        return 3 * 512 * 512 + 2 * (2 * feat - 1) * 128

    m = build("resnet50", "timm:bottleneck").eval()
    assert describe(m.attnbench_attachment.as_dict()) == "conv, stage 4 x3"  # BoTNet: last stage only
    assert attention_parameters(m) == sum(botnet_params(f) for f in (14, 7, 7))
    assert count_params(m) == RESNET50 - 3 * 9 * 512 * 512 + attention_parameters(m)  # its BN + ReLU stay
    with torch.no_grad():
        assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    m = build("resnet50", "timm:bottleneck", input_size=256)
    assert attention_parameters(m) == sum(botnet_params(f) for f in (16, 8, 8))


def test_halo_attention_runs_in_the_last_stage():
    m = build("resnet50", "timm:halo", block_size=7).eval()  # 14x14 and 7x7 at 224 divide by 7
    assert m.attnbench_attachment.sites == ["layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"]
    with torch.no_grad():
        assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


class PositionGate(torch.nn.Module):
    """A position-attention plugin: a learned (C, H, W) map, so it must know its feature size."""

    seen = []

    def __init__(self, channels, feat_size, stage, block_index, out_channels, stride):
        super().__init__()
        self.seen.append((stage, block_index, feat_size, out_channels, stride))
        self.pos = torch.nn.Parameter(torch.zeros(channels, *feat_size))

    def forward(self, x):
        return x * torch.sigmoid(self.pos)


def test_context_keywords_reach_a_factory_that_names_them():
    attnbench.register("test_pos")(PositionGate)
    try:
        PositionGate.seen.clear()
        m = build("resnet18", "test_pos", input_size=(160, 128), stages=[2, 3])
        assert PositionGate.seen == [
            (2, 0, (20, 16), 128, 1),
            (2, 1, (20, 16), 128, 1),
            (3, 0, (10, 8), 256, 1),
            (3, 1, (10, 8), 256, 1),
        ]
        assert attention_parameters(m) == 2 * 128 * 20 * 16 + 2 * 256 * 10 * 8
        assert describe(m.attnbench_attachment.as_dict()) == "block, stages 2,3 x4"
        with pytest.raises(AttnBenchError, match=r"options \['stage'\] of module 'test_pos' are filled by attnbench"):
            build("resnet18", "test_pos", stage=1)
    finally:
        attnbench.registry.MODULES.unregister("test_pos")


def test_conv_placement_refuses_what_cannot_fit():
    with pytest.raises(
        ModuleDoesNotFit,
        match=r"cannot replace layer2.0.conv1 \(64->128 channels, stride 2\): "
        r"its factory takes no 'out_channels'",
    ):
        build("resnet18", "se", placement="conv")
    # a family with no such conv is a stated limit (unsupported, counted apart), not a crash
    with pytest.raises(
        Unsupported,
        match="placement 'conv' replaces the 3x3 conv of timm's ResNet/ResNeXt blocks, and 'convnext_nano' has none",
    ):
        build("convnext_nano", "sk")


def test_gc_takes_gcnet_layout_c3_to_c5():
    m = build("resnet50", "gc")  # default: GCNet's c3-c5 = stages 2, 3, 4
    expected = sum(gc_params(4 * w) for w in WIDTHS50[3:])
    assert attention_parameters(m) == expected and count_params(m) == RESNET50 + expected == 28_078_773
    assert describe(m.attnbench_attachment.as_dict()) == "block, stages 2,3,4 x13"
    every = build("resnet18", "gc", stages="all")
    assert describe(every.attnbench_attachment.as_dict()) == "block x8"
    assert attention_parameters(every) == sum(2 * gc_params(c) for c in (64, 128, 256, 512))


def _timm_native_params(backbone):
    """Parameters of timm's own SE modules in timm's own model (the reference for 'bare')."""
    from timm.models._efficientnet_blocks import SqueezeExcite

    model = timm.create_model(backbone)
    return count_params(model), sum(count_params(m) for m in model.modules() if isinstance(m, SqueezeExcite))


@pytest.mark.parametrize(
    "backbone,total,native,sites",
    [("efficientnet_b0", 5_288_548, 636_540, 16), ("mobilenetv3_large_100", 5_483_032, 1_512_280, 8)],
)
def test_none_is_bare_native_is_timms(backbone, total, native, sites):
    assert _timm_native_params(backbone) == (total, native)
    bare, built = build(backbone), build(backbone, "native")
    assert count_params(built) == total and count_params(bare) == total - native
    assert native_attention(backbone) == {"type": "SqueezeExcite", "label": "SE", "sites": sites, "params": native}
    assert describe(bare.attnbench_attachment.as_dict()) == f"bare: native SE x{sites} removed"
    assert describe(built.attnbench_attachment.as_dict()) == f"as built: native SE x{sites}"
    # a stage module is added to the bare backbone, or beside the native SE when asked
    nl, kept = build(backbone, "nonlocal"), build(backbone, "nonlocal", keep_native=True)
    assert count_params(nl) - count_params(bare) == count_params(kept) - total == attention_parameters(nl) > 0
    assert describe(kept.attnbench_attachment.as_dict()).endswith(", native SE kept")


def test_se_rows_on_efficientnet_cost_what_se_costs():
    native = [m for m in timm.create_model("efficientnet_b0").modules() if type(m).__name__ == "SqueezeExcite"]
    widths = [m.conv_reduce.in_channels for m in native]  # timm's own expanded widths at its SE sites
    ours = build("efficientnet_b0", "se")
    assert count_params(ours) - 4_652_008 == sum(se_params(c) for c in widths)
    assert describe(ours.attnbench_attachment.as_dict()) == "block x16 (native SE x16 removed)"


def test_seresnet50_bare_is_resnet50():
    assert count_params(build("seresnet50")) == count_params(timm.create_model("resnet50")) == RESNET50
    assert count_params(build("seresnet50", "native")) == 28_088_024
    assert native_attention("resnet50") is None
    with pytest.raises(AttnBenchError, match="keep_native applies to conv, stage, after_conv"):
        build("seresnet50", "cbam", keep_native=True)


@pytest.mark.parametrize(
    "record,text",
    [
        (None, "—"),
        ({"placement": "none", "sites": 0}, "—"),
        ({"placement": "conv", "sites": 3, "stages": [4], "native": None}, "conv, stage 4 x3"),
        (
            {"placement": "stage", "sites": 1, "stages": [3], "native": "SE", "native_kept": 16},
            "stage 3, native SE kept",
        ),
        ({"placement": "stage", "sites": 4, "stages": [2, 3]}, "stages 2,3 x4"),
        ({"placement": "block", "sites": 15, "stages": None, "replaced": 8}, "block x15 (native attention x8 removed)"),
    ],
)
def test_describe(record, text):
    assert describe(record) == text


def _site_channels(model):
    from attnbench.attach.backbone import AttentionSlot

    return [m.channels for m in model.modules() if isinstance(m, AttentionSlot)]


def test_simam_goes_after_the_spatial_conv_as_its_official_code():
    """SimAM's networks/imagenet/resnet.py: Sequential(conv2, simam) in every BasicBlock and Bottleneck -- after the
    3x3 conv, before its BN, on the block's width (not at the end of the branch on 4x the channels)."""
    from attnbench import count_flops

    m = build("resnet50", "simam").eval()
    assert m.attnbench_attachment.placement == "after_conv"
    assert m.attnbench_attachment.sites[:2] == ["layer1.0.conv2.attn", "layer1.1.conv2.attn"]
    assert isinstance(m.layer1[0].conv2.layer, torch.nn.Conv2d) and isinstance(m.layer1[0].bn2, torch.nn.BatchNorm2d)
    assert _site_channels(m) == WIDTHS50
    # per site: mean, sub, pow, sum, div, +0.5, sigmoid, mul over C*H*W (8) and /n, +lambda, *4 over C (3)
    sides = [56] * 3 + [28] * 4 + [14] * 6 + [7] * 3
    by_hand = sum(8 * w * s * s + 3 * w for w, s in zip(WIDTHS50, sides))
    assert count_flops(m, torch.randn(1, 3, 224, 224)).attention == by_hand == 11_050_048
    r18 = build("resnet18", "simam")
    assert (
        r18.attnbench_attachment.sites[0] == "layer1.0.conv2.attn"
    )  # BasicBlock: its second 3x3, as the official code
    mb = build("mobilenetv2_100", "simam")
    assert mb.attnbench_attachment.sites[:2] == ["blocks.0.0.conv_dw.attn", "blocks.1.0.conv_dw.attn"]


def test_a_placement_left_out_of_some_stages_leaves_their_layers_unwrapped():
    m = build("resnet50", "simam", stages=[4])
    assert m.attnbench_attachment.sites == ["layer4.0.conv2.attn", "layer4.1.conv2.attn", "layer4.2.conv2.attn"]
    assert type(m.layer3[0].conv2) is torch.nn.Conv2d and count_params(m) == RESNET50


def _mbv2_blocks():
    model = timm.create_model("mobilenetv2_100")
    blocks = [m for m in model.modules() if type(m).__name__ in ("InvertedResidual", "DepthwiseSeparableConv")]
    out = [m.bn3.num_features if hasattr(m, "bn3") else m.bn2.num_features for m in blocks]
    hidden = [m.conv_pw.out_channels for m in blocks if type(m).__name__ == "InvertedResidual"]
    return count_params(model), out, hidden


def test_eca_and_triplet_follow_the_projection_in_mobilenetv2():
    """ECA-Net's eca_mobilenetv2.py and Triplet's MODELS/mobilenet.py: the module after the pw-linear conv + BN of
    every block (the t=1 block too), on the block's output channels."""
    total, out, _ = _mbv2_blocks()
    for name in ("eca", "triplet"):
        m = build("mobilenetv2_100", name)
        a = m.attnbench_attachment
        assert a.placement == "output" and len(a.sites) == 17 == len(out)
        assert a.sites[:2] == ["blocks.0.0.bn2.attn", "blocks.1.0.bn3.attn"]
        assert _site_channels(m) == out == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
    assert (
        count_params(build("mobilenetv2_100", "triplet")) == total + 17 * triplet_params() == 3_509_972
    )  # README: 3.51 M
    # ResNets: the end of the residual branch, as before (ECA-Net's eca_resnet.py, Triplet's MODELS/resnet.py)
    assert build("resnet50", "eca").attnbench_attachment.sites[0] == "layer1.0.se"
    # an explicit placement still goes where it is asked: the SE slot on the expanded channels
    assert build("mobilenetv2_100", "eca", placement="block").attnbench_attachment.sites[1] == "blocks.1.0.se"


def test_eca_kernel_in_mobilenetv2_is_the_official_models():
    """ECA-Net's eca_mobilenetv2.py (the eca_mobilenetv2_k13 model): k = 1 in the blocks with c < 96 output channels,
    3 from 96 on -- not the paper's adaptive 3/5. ResNets keep the adaptive rule (ECA-ResNet-50: 86)."""
    total, out, _ = _mbv2_blocks()
    m = build("mobilenetv2_100", "eca")
    kernels = [s.attn.conv.kernel_size[0] for s in m.modules() if isinstance(s, AttentionSlot)]
    assert kernels == [1 if c < 96 else 3 for c in out] == [1] * 10 + [3] * 7
    assert attention_parameters(m) == 10 * 1 + 7 * 3 == 31
    assert count_params(m) == total + 31 == 3_504_903  # the official model's count (thop 0.0.23 on eca_mobilenet_v2)
    assert attention_parameters(build("resnet50", "eca")) == 3 * 5 + 4 * 5 + 6 * 5 + 3 * 7  # adaptive k over 256..2048
    assert attention_parameters(build("mobilenetv2_100", "eca", kernel_size=5)) == 17 * 5  # an explicit k wins


def test_ge_theta_default_is_the_released_global_extent():
    """hujie-frank/GENet RN50-GEP.prototxt: per block one depthwise conv with a kernel the size of the block's map
    (56, 28, 14, 7 at 224) + BN; 31,106,600 parameters on ResNet-50. extent=8 is the paper's strided variant."""
    m = build("resnet50", "ge_theta")
    assert count_params(m) == resnet50_ge_theta_params() == 31_106_600
    assert describe(m.attnbench_attachment.as_dict()) == "block x16"
    gather = m.layer4[0].se.attn.gather[0]
    assert (gather.kernel_size, gather.groups, gather.bias) == ((7, 7), 2048, None)
    with torch.no_grad():
        assert m.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    widths = [c for n, c, _ in RESNET50_STAGES for _ in range(n)]
    assert count_params(build("resnet50", "ge_theta", extent=8)) == RESNET50 + sum(
        ge_theta_params(c, extent=8) for c in widths
    )
    with pytest.raises(ValueError, match="needs the site's feat_size"):
        get_module("ge_theta")(64)


def test_coordinate_attention_skips_the_block_without_expansion_as_mbv2_ca():
    """houqb/CoordAttention mbv2_ca.py: CA after the depthwise conv + BN + ReLU6 of every block with
    expand_ratio != 1; the first (t=1) block has none."""
    total, _, hidden = _mbv2_blocks()
    m = build("mobilenetv2_100", "coord")
    assert len(m.attnbench_attachment.sites) == 16 and m.attnbench_attachment.sites[0] == "blocks.1.0.se"
    assert _site_channels(m) == hidden
    assert count_params(m) == total + sum(coord_params(c) for c in hidden) == 3_950_648  # README: 3.95M


def test_block_kinds_and_placement_per_kind():
    from attnbench.attach.placement import block_kinds, resolve_placement
    from attnbench.errors import ModuleDoesNotFit

    assert block_kinds(timm.create_model("resnet18")) == ["basic"]
    assert block_kinds(timm.create_model("resnext50_32x4d")) == ["resnext"]
    assert block_kinds(timm.create_model("mobilenetv2_100")) == ["depthwise_separable", "inverted_residual"]
    spec = {"inverted_residual": "output", "depthwise_separable": None, "default": "block"}
    assert resolve_placement(spec, ["basic"], "m") == ("block", ())
    assert resolve_placement(spec, ["depthwise_separable", "inverted_residual"], "m") == (
        "output",
        ("depthwise_separable",),
    )
    assert resolve_placement("conv", ["basic"], "m") == ("conv", ())
    with pytest.raises(ModuleDoesNotFit, match="asks for placements"):
        resolve_placement({"basic": "block", "bottleneck": "conv"}, ["basic", "bottleneck"], "m")
    with pytest.raises(Unsupported, match="placement 'after_conv' goes after"):
        build("convnext_nano", "simam", placement="after_conv")
    # without blocks it knows, a module goes after every stage, as block modules do
    assert describe(build("convnext_nano", "simam").attnbench_attachment.as_dict()) == "stages 1,2,3,4"

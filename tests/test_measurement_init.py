"""Measured models carry real activations: no attention site sees a constant input, a module that computes something
else under export or compile fails the runtime's equivalence check wherever it sits, and training keeps the
training init (timm's zero_init_last)."""

import pytest
import torch
from torch import nn

import attnbench
from attnbench import build
from attnbench.attach.backbone import AttentionSlot
from attnbench.attach.initialise import MEASUREMENT_SCALE, measurement_init


def test_the_rule_turns_exactly_the_zero_weights_non_zero():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)
    untouched = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("1.weight", "2."))}
    sge = attnbench.get_module("sge")(64)  # SGE's per-group scale starts at 0 (the official init)
    assert measurement_init(model) == ["1.weight", "2.weight"] and measurement_init(sge) == ["weight"]
    assert torch.equal(model[1].weight, torch.full((3,), MEASUREMENT_SCALE)) and torch.all(
        sge.weight == MEASUREMENT_SCALE
    )
    assert model[2].weight.abs().min() > 0 and model[2].bias.abs().min() > 0  # PyTorch's default conv init
    assert all(torch.equal(model.state_dict()[k], v) for k, v in untouched.items())


def test_timms_zero_init_last_is_what_the_rule_finds():
    m = build("resnet50", "se")
    a = m.attnbench_attachment
    assert (a.init, a.reinitialised) == ("measurement", 16)  # bn3 of every bottleneck
    assert all(
        torch.equal(b.bn3.weight.detach(), torch.full_like(b.bn3.weight, MEASUREMENT_SCALE))
        for layer in (m.layer1, m.layer4)
        for b in layer
    )
    trained = build("resnet50", "se", init="train")
    assert trained.attnbench_attachment.as_dict()["init"] == "train" and not trained.layer1[0].bn3.weight.any()
    assert build("resnet50", "gc").attnbench_attachment.reinitialised == 16 + 13  # and GCNet's zero last conv x13


class Probe(nn.Module):
    """Records what reaches its site; in place of a conv it is one (it must keep the conv's width and stride)."""

    seen = []

    def __init__(self, channels, out_channels=0, stride=1):
        super().__init__()
        out = out_channels or channels
        self.conv = nn.Conv2d(channels, out, 3, stride, 1, bias=False) if (out != channels or stride != 1) else None

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.conv(x) if self.conv is not None else x


def constant_sites(backbone, placement, init="measurement"):
    """Sites whose input is constant: over the whole tensor, across the two images, or over space in more than
    half of its channels."""
    attnbench.register("test_probe")(Probe)
    try:
        torch.manual_seed(0)
        model = build(backbone, "test_probe", placement=placement, stages="all", input_size=64, init=init).eval()
        sites = [m.site for m in model.modules() if isinstance(m, AttentionSlot)]
        Probe.seen.clear()
        with torch.no_grad():
            model(torch.randn(2, 3, 64, 64))
    finally:
        attnbench.registry.MODULES.unregister("test_probe")
    assert len(Probe.seen) == len(sites) > 0
    bad = []
    for site, x in zip(sites, Probe.seen):
        flat = x.flatten(2)
        flat_channels = (flat.std(-1) == 0).float().mean() if flat.shape[-1] > 1 else torch.tensor(0.0)
        if float(x.std()) == 0 or torch.equal(x[0], x[1]) or float(flat_channels) > 0.5:
            bad.append(site)
    return bad


@pytest.mark.parametrize(
    "backbone,placement",
    [
        ("resnet50", "block"),
        ("resnet50", "after_conv"),
        ("resnet50", "conv"),
        ("resnet50", "stage"),
        ("resnet18", "block"),
        ("resnet18", "output"),
        ("resnext50_32x4d", "block"),
        ("mobilenetv2_100", "block"),
        ("mobilenetv2_100", "output"),
        ("mobilenetv2_100", "after_conv"),
        ("regnety_002", "block"),
        ("convnext_nano", "stage"),
    ],
)
def test_every_attention_site_sees_a_non_constant_input(backbone, placement):
    assert constant_sites(backbone, placement) == []


def test_under_the_training_init_every_resnet_block_site_sees_zeros():
    """Why measured models are re-initialised: with zero_init_last the residual branch is 0 where SE/CBAM/ECA sit."""
    assert len(constant_sites("resnet50", "block", init="train")) == 16


def test_records_say_measurement_and_training_builds_with_the_training_init(monkeypatch):
    from attnbench.harness.execute import build_cell_model
    from attnbench.suite.parse import parse_suite
    from attnbench.suite.plan import plan
    from attnbench.train import loop as train

    cell = next(
        c
        for c in plan(
            parse_suite(
                {"name": "t", "backbones": ["resnet18"], "modules": ["se"], "input_size": 32, "metrics": ["params"]},
                "t.yaml",
            )
        )
        if c.variant.module == "se"
    )
    assert build_cell_model(cell).attnbench_attachment.as_dict()["init"] == "measurement"

    seen = {}

    class Stop(Exception):
        pass

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(train, "build", spy)
    with pytest.raises(Stop):
        train.train_cell(
            "resnet18",
            "se",
            {},
            {"name": "digits", "train_subset": 60, "test_subset": 50},
            {"epochs": 1, "batch_size": 16, "threads": 1},
            seed=0,
        )
    assert seen["init"] == "train"


def _exporting():
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


class ThreeTimesWhenExported(Probe):
    """Eager: the identity (in place of a conv: a conv). Exported or compiled: three times that."""

    def forward(self, x):
        y = self.conv(x) if self.conv is not None else x
        return y * 3 if _exporting() else y


def _prepare(runtime, placement, init):
    from attnbench.measures.runtimes import prepare

    attnbench.register("test_liar")(ThreeTimesWhenExported)
    try:
        torch.manual_seed(0)
        model = build("resnet10t", "test_liar", placement=placement, input_size=32, init=init)
        return prepare(runtime, model, torch.randn(1, 3, 32, 32), threads=1)
    finally:
        attnbench.registry.MODULES.unregister("test_liar")


def _available(runtime):
    from attnbench.errors import RuntimeMissing
    from attnbench.measures.runtimes import check_available

    try:
        check_available(runtime)
    except RuntimeMissing as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("runtime", ["onnxruntime", "compile"])
def test_a_module_that_lies_under_export_fails_equivalence_in_every_placement(runtime):
    from attnbench.measures.runtimes import OutputMismatch

    _available(runtime)
    for placement in ("block", "stage", "conv"):
        with pytest.raises(OutputMismatch, match=f"runtime {runtime} differs from eager"):
            _prepare(runtime, placement, "measurement")


def test_under_the_training_init_the_lie_passes_where_the_branch_is_zero():
    """The same module passes onnxruntime's check on block and conv placements when the residual branch is zeroed."""
    _available("onnxruntime")
    for placement in ("block", "conv"):
        assert _prepare("onnxruntime", placement, "train").info["max_abs_diff"] < 1e-6

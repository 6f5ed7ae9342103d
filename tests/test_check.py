"""`attnbench check`: a clean module passes, each broken fixture fails its one check and only that one;
errors inside an attached module name the module, the site and the plugin's line; hidden state is flagged."""
import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

import attnbench
from attnbench.attach import ModuleFailed, build
from attnbench.check import FAIL, PASS, SKIP, check_binding, render_check, run_check
from attnbench.errors import AttnBenchError
from attnbench.guard import CellTimeout
from attnbench.measures.params import measure_params
from attnbench.registry import MODULES

HERE = Path(__file__).parent / "check_modules"
CLEAN, BROKEN = f"{HERE / 'clean.py'}", f"{HERE / 'broken.py'}"


def statuses(report):
    return {r.name: r.status for r in report.results}


def test_clean_gate_passes_with_exact_cost():
    report = run_check(f"{CLEAN}:CleanGate", "", {})
    assert report.exit_code == 0 and not report.failed
    assert SKIP not in statuses(report).values()
    # 1x1 convs 64->16 and 16->64 with biases: 2*64*16 + 16 + 64 = 2,128 parameters.
    # MACs at 1x64x14x14: mean 12,544 + conv 1,024 + ReLU 16 + conv 1,024 + sigmoid 64 + scale 12,544 = 27,216.
    assert report.get("cost").detail == "2,128 parameters, 27,216 MACs at 1x64x14x14"
    assert report.get("kind").detail.startswith("gate: output = input x g")


def test_clean_residual_transform_passes_and_is_named_so():
    report = run_check(f"{CLEAN}:CleanResidual", "", {"branches": 2})
    assert report.exit_code == 0, render_check(report)
    assert report.get("binding").detail == "in_chs=64, branches=2"
    # two depthwise 3x3 convs: 2 * (64*9 + 64) = 1,280 parameters; 2 * 64*196*9 = 225,792 MACs, plus five
    # element-wise ops of 64*196 = 12,544 each (0 + b1, + b2, * scale, ones_like * f, x + ...): 288,512.
    assert report.get("cost").detail == "1,280 parameters, 288,512 MACs at 1x64x14x14"
    assert report.get("kind").detail.startswith("transform with its own residual")


@pytest.mark.parametrize("name", ["se", "nonlocal"])
def test_builtin_modules_pass(name):
    report = run_check(name, "", {})
    assert not report.failed, render_check(report)


def test_nonlocal_is_a_residual_that_is_identity_at_init():
    kind = run_check("nonlocal", "", {}).get("kind").detail
    assert "own residual" in kind and "equals its input at init" in kind


@pytest.mark.parametrize("cls, check", [
    ("WrongFirstParameter", "binding"), ("ChangesShape", "shape"), ("ListOfConvs", "state"),
    ("TensorAttribute", "state"), ("WritesInput", "input"), ("NaNAtOnePixel", "finite"),
    ("UnusedParameter", "gradients"), ("BatchNorm1dGate", "train batch 1"), ("NoiseInEval", "deterministic"),
    ("FourierFilter", "macs"), ("MaskOnCpu", "device"),
])
def test_each_defect_fails_its_one_check(cls, check):
    report = run_check(f"{BROKEN}:{cls}", "", {})
    assert [r.name for r in report.failed] == [check], render_check(report)
    assert report.exit_code == 1 and report.failed[0].advice


def test_failure_details_name_the_culprit():
    state = run_check(f"{BROKEN}:ListOfConvs", "", {})
    # two Conv2d(64, 64, 1): 2 * (64*64 + 64) = 8,320 elements parameters() cannot see
    assert state.get("state").detail.endswith("convs[0] (Conv2d), convs[1] (Conv2d); 8,320 elements")
    assert statuses(state)["macs"] == SKIP and statuses(state)["device"] == SKIP  # consequences, not new defects
    grads = run_check(f"{BROKEN}:UnusedParameter", "", {}).get("gradients")
    assert grads.detail == "no gradient reaches temperature"
    line = inspect.getsourcelines(_broken("BatchNorm1dGate").forward)[1] + 1
    assert f"(at check_modules/broken.py:{line})" in run_check(f"{BROKEN}:BatchNorm1dGate", "", {}).get("train batch 1").detail


def test_binding_flags_parameters_that_are_not_channel_counts():
    class Triplet(nn.Module):
        def __init__(self, no_spatial=False):
            super().__init__()

    result = check_binding(Triplet, 64, {})
    assert result.status == FAIL and "'no_spatial' (default False)" in result.detail
    for name in ("channels", "channel", "in_chs", "dim", "gate_channels", "inplanes", "C", "c1", "num_features"):
        factory = eval(f"lambda {name}, reduction=16: None")
        assert check_binding(factory, 64, {"reduction": 8}).status == PASS, name
    assert check_binding(lambda channels: None, 64, {"reduction": 8}).fatal  # cannot be called: nothing else runs


def test_unloadable_target_is_one_line_error():
    with pytest.raises(AttnBenchError, match=r"cannot load .*NoSuchClass.*path/to/file.py:Class"):
        run_check(f"{BROKEN}:NoSuchClass", "", {})
    with pytest.raises(AttnBenchError, match="unknown module 'sse'"):
        run_check("sse", "", {})


def _broken(name):
    from attnbench.check import load_factory

    return load_factory(f"{BROKEN}:{name}")[0]


def test_on_backbone_clean_gate_costs_by_hand():
    report = run_check(f"{CLEAN}:CleanGate", "resnet18", {}, input_size=64)
    assert report.exit_code == 0, render_check(report)
    # ResNet-18 blocks: 2 each at C = 64, 128, 256, 512; maps 16, 8, 4, 2 px at a 64 px input.
    # params per block C^2/2 + 5C/4: C^2/2 over 8 blocks = 64^2 + 128^2 + 256^2 + 512^2 = 348,160,
    # 5C/4 over 8 blocks = 2 * 960 * 5/4 = 2,400: 350,560.
    # MACs per block 2*C*H*W + C^2/2 + 5C/4: 34,896 + 24,736 + 41,280 + 135,808 = 236,720, x2 = 473,440.
    assert report.get("on resnet18").detail == ("block x8: +350,560 parameters, +473,440 MACs in the attached "
                                                "modules at 64x64")
    assert "check:CleanGate" not in MODULES.names()  # the temporary registration is gone


def test_on_backbone_names_the_site_and_plugin_line():
    report = run_check(f"{BROKEN}:FixedWidth", "resnet18", {}, input_size=64)
    assert [r.name for r in report.failed] == ["on resnet18"]
    line = inspect.getsourcelines(_broken("FixedWidth").forward)[1] + 1
    assert report.failed[0].detail == (
        f"attention module 'check:FixedWidth' at layer2.0 (128 channels, input (1, 128, 8, 8)), check_modules/broken.py:"
        f"{line}: RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x128 and 64x64)")


class _Timeout(nn.Module):
    def __init__(self, channels):
        super().__init__()

    def forward(self, x):
        raise CellTimeout("cell ran past its timeout")


def test_slot_keeps_harness_errors_and_wraps_plugin_errors():
    attnbench.register("check-timeout", override=True)(_Timeout)
    attnbench.register("check-fixed", override=True)(_broken("FixedWidth"))
    try:
        with pytest.raises(CellTimeout):  # the deadline's error passes through unchanged
            build("resnet18", "check-timeout").eval()(torch.randn(1, 3, 32, 32))
        with pytest.raises(ModuleFailed, match=r"'check-fixed' at layer2\.0 \(128 channels, input \(1, 128, 4, 4\)\)"):
            build("resnet18", "check-fixed").eval()(torch.randn(1, 3, 32, 32))
    finally:
        MODULES.unregister("check-timeout")
        MODULES.unregister("check-fixed")


def test_params_record_flags_hidden_state():
    attnbench.register("check-list", override=True)(_broken("ListOfConvs"))
    try:
        stats = measure_params(build("resnet18", "check-list")).stats
    finally:
        MODULES.unregister("check-list")
    assert stats["attention"] == 0 and stats["hidden_state"] == ["convs[0]", "convs[1]"]
    # two Conv2d(C, C, 1) per block, 2 blocks at each C: 2 * sum(2 * (C^2 + C)) over C = 64, 128, 256, 512
    assert stats["hidden_numel"] == 2 * sum(2 * (c * c + c) for c in (64, 128, 256, 512)) == 1_396_480
    assert "hidden_state" not in measure_params(build("resnet18", "se")).stats


def test_render_lists_fix_and_exit():
    text = render_check(run_check(f"{BROKEN}:WritesInput", "", {}))
    assert "  FAIL  input          forward writes into its input" in text
    assert "fix: compute out of place" in text and text.endswith("-> exit 1")

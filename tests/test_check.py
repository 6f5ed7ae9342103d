"""`attnbench check`: a clean module passes, each broken fixture fails its one check and only that one;
errors inside an attached module name the module, the site and the plugin's line; hidden state is flagged."""

import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

import attnbench
from attnbench.attach.backbone import ModuleFailed, build
from attnbench.check.checklist import FAIL, PASS, SKIP, check_binding, render_check, run_check
from attnbench.errors import AttnBenchError
from attnbench.guard.cell import CellTimeout
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


@pytest.mark.parametrize(
    "name", ["se", "nonlocal", "simam", "sge", "srm", "bam", "sk", "timm:sk", "timm:halo", "timm:bat", "timm:ge"]
)
def test_builtin_modules_pass(name):
    """Our own modules pass our own check: those that cannot run everywhere declare it (min_spatial,
    min_train_batch, Unsupported for a site) and the check skips those cases with the reason."""
    report = run_check(name, "", {})
    assert not report.failed and report.exit_code == 0, render_check(report)


@pytest.mark.parametrize(
    "name, skipped",
    [
        ("simam", "1x1 (declares min_spatial 2 (the official code divides by H*W - 1: NaN at 1x1): 1x1 is below it)"),
        ("srm", "1x1 (declares min_spatial 2"),
        ("timm:bat", "15x9 (unsupported: timm's bat needs feature maps divisible by block_size 7; this site is 15x9"),
    ],
)
def test_declared_limits_are_skipped_with_the_reason(name, skipped):
    assert f"; skipped {skipped}" in run_check(name, "", {}).get("shape").detail


def test_nonlocal_is_a_residual_that_is_identity_at_init():
    kind = run_check("nonlocal", "", {}).get("kind").detail
    assert "own residual" in kind and "equals its input at init" in kind


@pytest.mark.parametrize(
    "cls, check",
    [
        ("WrongFirstParameter", "binding"),
        ("ChangesShape", "shape"),
        ("ListOfConvs", "state"),
        ("TensorAttribute", "state"),
        ("WritesInput", "input"),
        ("NaNAtOnePixel", "finite"),
        ("UnusedParameter", "gradients"),
        ("BatchNorm1dGate", "train batch 1"),
        ("NoiseInEval", "deterministic"),
        ("FourierFilter", "macs"),
        ("MaskOnCpu", "device"),
        ("MixesBatch", "batch"),
        ("BatchMeanGate", "batch"),
        ("ReturnsTuple", "shape"),
        ("BadLimit", "limits"),
    ],
)
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
    assert (
        f"(at check_modules/broken.py:{line})"
        in run_check(f"{BROKEN}:BatchNorm1dGate", "", {}).get("train batch 1").detail
    )


def test_binding_flags_parameters_that_are_not_channel_counts():
    class Triplet(nn.Module):
        def __init__(self, no_spatial=False):
            super().__init__()

    result = check_binding(Triplet, 64, {})
    assert result.status == FAIL and "'no_spatial' (default False)" in result.detail
    for name in ("channels", "channel", "in_chs", "dim", "gate_channels", "inplanes", "C", "c1", "num_features"):
        factory = eval(f"lambda {name}, reduction=16: None")
        assert check_binding(factory, 64, {"reduction": 8}).status == PASS, name
    with pytest.raises(AttnBenchError, match=r"does not accept options \['reduction'\].*fix -O"):
        check_binding(lambda channels: None, 64, {"reduction": 8})  # the command line's fault, not the module's


def test_unloadable_target_is_one_line_error():
    with pytest.raises(AttnBenchError, match=r"cannot load .*NoSuchClass.*path/to/file.py:Class"):
        run_check(f"{BROKEN}:NoSuchClass", "", {})
    with pytest.raises(AttnBenchError, match="unknown module 'sse'"):
        run_check("sse", "", {})


def _broken(name):
    from attnbench.check.checklist import load_factory

    return load_factory(f"{BROKEN}:{name}")[0]


def test_on_backbone_clean_gate_costs_by_hand():
    report = run_check(f"{CLEAN}:CleanGate", "resnet18", {}, input_size=64)
    assert report.exit_code == 0, render_check(report)
    # ResNet-18 blocks: 2 each at C = 64, 128, 256, 512; maps 16, 8, 4, 2 px at a 64 px input.
    # params per block C^2/2 + 5C/4: C^2/2 over 8 blocks = 64^2 + 128^2 + 256^2 + 512^2 = 348,160,
    # 5C/4 over 8 blocks = 2 * 960 * 5/4 = 2,400: 350,560.
    # MACs per block 2*C*H*W + C^2/2 + 5C/4: 34,896 + 24,736 + 41,280 + 135,808 = 236,720, x2 = 473,440.
    assert report.get("on resnet18").detail == (
        "block x8: +350,560 parameters, +473,440 MACs in the attached modules at 64x64"
    )
    assert "check:CleanGate" not in MODULES.names()  # the temporary registration is gone


def test_on_backbone_names_the_site_and_plugin_line():
    report = run_check(f"{BROKEN}:FixedWidth", "resnet18", {}, input_size=64)
    assert [r.name for r in report.failed] == ["on resnet18"]
    line = inspect.getsourcelines(_broken("FixedWidth").forward)[1] + 1
    assert report.failed[0].detail == (
        f"attention module 'check:FixedWidth' at layer2.0 (128 channels, input (1, 128, 8, 8)), check_modules/broken.py:"
        f"{line}: RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x128 and 64x64)"
    )


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


# ---- issue 21 / issue 20 item 5: what check now catches, and what it blames on the command line ----------


def test_batch_dependence_is_caught_and_the_plugin_warning_shown_once():
    report = run_check(f"{BROKEN}:MixesBatch", "", {})
    batch = report.get("batch")
    assert batch.status == FAIL and "when the other sample changes" in batch.detail and "at batch 1" in batch.detail
    assert "explicit dim other than 0" in batch.advice
    line = inspect.getsourcelines(_broken("MixesBatch").forward)[1] + 2  # the F.softmax line
    shown = [r.detail for r in report.results if r.name == "warning"]
    assert len(shown) == 1 and shown[0].startswith("UserWarning: Implicit dimension choice for softmax")
    assert f"(at check_modules/broken.py:{line};" in shown[0]
    assert not [r for r in run_check(f"{CLEAN}:CleanGate", "", {}).results if r.name == "warning"]


def test_tuple_output_is_one_shape_defect_with_a_fix():
    report = run_check(f"{BROKEN}:ReturnsTuple", "", {})
    shape = report.get("shape")
    assert shape.detail.startswith("14x14: returned a tuple of 2 ((2, 64, 14, 14), (2, 64, 1, 1)) for (2, 64, 14, 14)")
    assert "return only the features" in shape.advice
    assert {statuses(report)[n] for n in ("gradients", "batch", "macs", "device", "kind")} == {SKIP}


def test_hung_forward_ends_as_one_failure_within_its_timeout():
    import time

    t0 = time.monotonic()
    report = run_check(f"{BROKEN}:SlowForward", "resnet18", {}, timeout=1)
    assert time.monotonic() - t0 < 15  # the forward sleeps 60 s
    assert [r.name for r in report.failed] == ["shape"] and report.exit_code == 1
    assert report.failed[0].detail.startswith("14x14: the forward ran past the timeout (1 s)")
    assert "raise --timeout" in report.failed[0].advice
    assert statuses(report)["on resnet18"] == SKIP and statuses(report)["gradients"] == SKIP


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"channels": -8}, r"--channels must be an integer from 1 to 65,536, got -8"),
        ({"channels": 0}, r"--channels must be"),
        ({"input_size": 0}, r"--input-size must be an integer from 1"),
        ({"timeout": 0}, r"--timeout must be a positive number"),
        ({"backbone": "resnet181"}, r"unknown backbone 'resnet181'"),
        ({"options": {"reducton": 8}}, r"does not accept options \['reducton'\]"),
        ({"options": {"placement": "slot"}}, r"placement='slot' is not one of block, "),
    ],
)
def test_command_line_values_are_the_callers_error(kwargs, match):
    kwargs = {"backbone": "", "options": {}, **kwargs}
    with pytest.raises(AttnBenchError, match=match):
        run_check("se", kwargs.pop("backbone"), kwargs.pop("options"), **kwargs)


def test_cli_blames_the_command_line_with_exit_2_and_one_line():
    import subprocess
    import sys

    bad = subprocess.run(
        [sys.executable, "-m", "attnbench.cli", "check", "se", "--channels", "-8", "--timeout", "5"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == "error: --channels must be an integer from 1 to 65,536, got -8"


@pytest.mark.parametrize(
    "cls, advice",
    [
        (
            "NoChannelParam",
            "NoChannelParam(kernel_size=3) takes no channel count: register an adapter that drops it, "
            "`lambda channels, **kw: NoChannelParam(**kw)`",
        ),
        ("NeedsOutWidth", "register an adapter: `lambda channels, **kw: NeedsOutWidth(channels, oup=channels, **kw)`"),
        (
            "KeywordOnly",
            "register an adapter: `lambda channels, **kw: KeywordOnly(dim=channels, block_size=<block_size>, "
            "**kw)` (fill in the <placeholders>)",
        ),
        (
            "WrongFirstParameter",
            "register an adapter: `lambda channels, **kw: WrongFirstParameter(channels=channels, **kw)`",
        ),
    ],
)
def test_adapter_advice_fits_the_signature(cls, advice):
    binding = run_check(f"{BROKEN}:{cls}", "", {}).get("binding")
    assert binding.status == FAIL and binding.advice == advice
    assert binding.fatal == (cls in ("NeedsOutWidth", "KeywordOnly"))  # these cannot be called with channels alone


def test_residual_after_a_gate_is_a_residual_not_a_gate():
    report = run_check(f"{CLEAN}:ResidualGate", "", {})
    assert report.exit_code == 0 and report.get("kind").detail.startswith("transform with its own residual")


def test_data_movement_is_free_and_unknown_operators_are_not_called_too_low_for_sure():
    report = run_check(f"{CLEAN}:UnfoldGate", "", {})
    assert report.exit_code == 0, render_check(report)
    # MACs at 1x64x14x14 by the rules, im2col and linspace free: patches x ramp 64*9*196 = 112,896, their mean over
    # the 9 = 112,896 (1 per input element), 1x1 conv 64*64*196 + bias = 802,816, sigmoid 12,544, x * g 12,544;
    # the ramp's reshape is free: 112,896 + 112,896 + 802,816 + 12,544 + 12,544 = 1,053,696.
    assert report.get("cost").detail == "4,160 parameters, 1,053,696 MACs at 1x64x14x14"
    macs = run_check(f"{BROKEN}:FourierFilter", "", {}).get("macs").detail
    assert "may be too low" in macs and "would be too low" not in macs


def test_declared_limits_pass_and_a_malformed_one_fails():
    report = run_check(f"{CLEAN}:DeclaresLimits", "", {})
    assert report.exit_code == 0, render_check(report)
    assert (
        report.get("train batch 1").status == SKIP
        and "train mode runs at batch 2" in report.get("train batch 1").detail
    )
    assert report.get("shape").detail.endswith(
        "skipped 1x1 (declares min_spatial 2 (unbiased std over H*W; BatchNorm over pooled features): 1x1 is below it)"
    )
    assert (
        run_check(f"{BROKEN}:BadLimit", "", {}).get("limits").detail
        == "malformed declaration: min_spatial must be a positive int, got 0"
    )


# ---- the same verdicts in suites: rows, marks, load errors -------------------------------------


@pytest.fixture
def registered():
    names = []

    def reg(name, cls, where=BROKEN):
        from attnbench.check.checklist import load_factory

        attnbench.register(name, override=True)(load_factory(f"{where}:{cls}")[0])
        names.append(name)
        return name

    yield reg
    for n in names:
        MODULES.unregister(n)


def _run(tmp_path, modules, metrics, input_size=32, batch_size=1):
    from attnbench.harness.runner import run_suite
    from attnbench.suite.parse import parse_suite

    suite = parse_suite(
        {
            "name": "chk",
            "backbones": ["resnet18"],
            "modules": ["none", *modules],
            "input_size": input_size,
            "batch_size": batch_size,
            "metrics": metrics,
        },
        "chk.yaml",
    )
    result = run_suite(suite, tmp_path)
    return {(r.label, r.metric): r for r in result.records}, (tmp_path / "chk.md").read_text(), result


def test_params_only_suite_has_no_row_for_a_module_that_cannot_run(registered, tmp_path):
    registered("chk-fixed", "FixedWidth")  # runs at 64 channels only: layer2 (128) raises
    records, md, result = _run(tmp_path, ["chk-fixed"], ["params"])
    assert records[("none", "params")].status == "ok"
    failed = records[("chk-fixed", "params")]
    assert (
        failed.status == "failed"
        and failed.error["type"] == "ModuleFailed"
        and "layer2.0 (128 channels" in failed.error["message"]
    )
    assert result.exit_code == 1 and "| resnet18 | chk-fixed | " in md and "failed (ModuleFailed)" in md


def test_rows_of_a_module_that_fails_check_carry_the_mark(registered, tmp_path):
    registered("chk-nan", "NaNAtOnePixel")  # fine at 64 px (layer4 is 2x2), NaN at 1x1: check fails it
    registered("chk-list", "ListOfConvs")
    records, md, _ = _run(tmp_path, ["chk-nan", "chk-list"], ["params", "train_memory"], input_size=64, batch_size=2)
    assert records[("chk-nan", "params")].status == "ok"
    assert records[("chk-nan", "params")].stats["check_failed"] == "finite: NaN/inf in the output at 1x1"
    assert "| resnet18 | chk-nan✗ |" in md and "| resnet18 | none |" in md
    assert "- ✗ chk-nan: `attnbench check chk-nan` fails (finite: NaN/inf in the output at 1x1)" in md
    # hidden state is recorded with train_memory too, where it is counted as saved activations
    assert records[("chk-list", "train_memory")].stats["hidden_numel"] == 1_396_480
    assert "| resnet18 | chk-list§✗ |" in md
    assert (
        "state parameters() cannot see: 1,396,480 elements (convs[0], convs[1]); 'saved for backward' counts them "
        "as activations." in md
    )


def test_suite_respects_declared_limits(registered, tmp_path):
    registered("chk-limits", "DeclaresLimits", CLEAN)
    records, md, result = _run(tmp_path, ["chk-limits"], ["params", "train_memory"], input_size=32, batch_size=1)
    spatial = records[("chk-limits", "params")]  # resnet18 at 32 px: layer4 sees 1x1
    assert spatial.status == "unsupported" and spatial.note.startswith(
        "module 'chk-limits' declares min_spatial 2 (unbiased std over H*W; BatchNorm over pooled features): 1x1 is "
        "below it at layer4.0.se (input 32x32)"
    )
    batch = records[("chk-limits", "train_memory")]
    assert (
        batch.status == "unsupported"
        and "declares min_train_batch 2" in batch.note
        and "batch 1 is below it" in batch.note
    )
    assert result.exit_code == 0 and "✗" not in md  # a documented limit is not a defect


def test_suite_reports_every_unusable_module_at_once_with_its_index(registered):
    from attnbench.errors import SuiteError
    from attnbench.suite.parse import parse_suite

    registered("chk-out", "NeedsOutWidth")
    registered("chk-kw", "KeywordOnly")
    with pytest.raises(SuiteError) as err:
        parse_suite({"backbones": ["resnet18"], "modules": ["none", "se", "chk-out", "chk-kw", "sse"]}, "s.yaml")
    text = str(err.value)
    assert text.startswith(
        "s.yaml: field 'modules': 3 module entries cannot be used: modules[2]: module 'chk-out' "
        "cannot be called as factory(channels, **options): missing a required argument: 'oup'; "
        "register an adapter: `lambda channels, **kw: NeedsOutWidth(channels, oup=channels, **kw)`; "
        "modules[3]: module 'chk-kw' cannot be called"
    )
    assert "; modules[4]: unknown module 'sse'" in text and "\n" not in text

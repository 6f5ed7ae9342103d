"""Issue 32: what real plugin packages (fightingcv-attention, MONAI, smp, ultralytics) showed, each edge on the
smallest local fixture (tests/check_modules/edges.py): every row right or marked, advice that fits the failure,
no false alarm on sound state, messages at the plugin's own line, records the store reads back, plugins in a
suite from the command line, and plugin packages imported only when used."""

import inspect
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import install_package, plugins_from

import attnbench
from attnbench.attach.backbone import ModuleFailed, build
from attnbench.attach.contract import ALIASED_ADVICE, hidden_state, looks_like_channels
from attnbench.check.checklist import (
    FAIL,
    PASS,
    SKIP,
    _Maker,
    check_binding,
    load_factory,
    render_check,
    run_check,
    site_advice,
)
from attnbench.check.verdicts import suite_verdicts
from attnbench.errors import SuiteError
from attnbench.guard.cell import as_unsupported
from attnbench.records.record import ForeignRecord, Record, readable, record_line
from attnbench.records.store import Store
from attnbench.registry import MODULES, PluginWarning

HERE = Path(__file__).parent / "check_modules"
EDGES, BROKEN = f"{HERE / 'edges.py'}", f"{HERE / 'broken.py'}"


def _cls(name, where=EDGES):
    return load_factory(f"{where}:{name}")[0]


def _line(name, offset, where=EDGES):
    """The line ``offset`` lines below ``def forward`` of a fixture (1 = its first body line)."""
    return inspect.getsourcelines(_cls(name, where).forward)[1] + offset


@pytest.fixture
def registered():
    names = []

    def reg(name, cls, where=EDGES):
        attnbench.register(name, override=True)(_cls(cls, where))
        names.append(name)
        return name

    yield reg
    for n in names:
        MODULES.unregister(n)


def _run(tmp_path, modules, metrics, input_size=64, batch_size=1):
    from attnbench.harness.runner import run_suite
    from attnbench.suite.parse import parse_suite

    suite = parse_suite(
        {
            "name": "edge",
            "backbones": ["resnet18"],
            "modules": ["none", *modules],
            "input_size": input_size,
            "batch_size": batch_size,
            "metrics": metrics,
            "latency": {"threads": 1, "warmup": 1, "rounds": 2, "min_time": 0.01, "min_iters": 2},
        },
        "edge.yaml",
    )
    result = run_suite(suite, tmp_path)
    return {(r.label, r.metric): r for r in result.records}, (tmp_path / "edge.md").read_text(), result


# ---- 1. an output a block cannot add into: caught alone, in the network and in a params-only suite ---------


def test_expanded_output_fails_one_check_that_names_its_forward():
    report = run_check(f"{EDGES}:ExpandedGate", "resnet18", {}, input_size=64)
    assert [r.name for r in report.failed] == ["output"], render_check(report)
    out = report.get("output")
    # g is (2, 64) contiguous: g[:, :, None, None].expand_as(x) has strides (64, 1, 0, 0)
    assert out.detail == (
        f"returns an expand()-style view whose elements share memory (strides (64, 1, 0, 0) at 14x14), "
        f"from check_modules/edges.py:{_line('ExpandedGate', 0)}: a block's in-place `x += shortcut` "
        "cannot write into it, so it cannot run inside a ResNet"
    )
    assert out.advice == ALIASED_ADVICE
    assert report.get("on resnet18").status == SKIP and "shares memory" in report.get("on resnet18").detail


def test_expanded_output_has_no_confident_row_in_a_params_only_suite(registered, tmp_path):
    registered("edge-expand", "ExpandedGate")
    records, md, result = _run(tmp_path, ["edge-expand"], ["params"])
    assert records[("none", "params")].status == "ok"
    failed = records[("edge-expand", "params")]
    assert failed.status == "failed" and failed.error["type"] == "ModuleFailed"
    # resnet18 at 64 px: layer1 sees 16x16 maps; the meta forward's output keeps the expanded strides
    assert failed.error["message"].startswith(
        f"attention module 'edge-expand' at layer1.0 (64 channels, input (1, 64, 16, 16)), check_modules/edges.py:"
        f"{_line('ExpandedGate', 0)}: returned an expand()-style view whose elements share memory (strides "
        "(64, 1, 0, 0)); return a tensor with its own memory"
    )
    assert result.exit_code == 1 and "failed (ModuleFailed)" in md


def test_an_error_raised_in_the_backbone_names_module_site_and_plugin_line(registered, tmp_path):
    """IntegerOutput keeps the shape; timm's `x += shortcut` then fails in timm's code, outside the module."""
    registered("edge-int", "IntegerOutput")
    records, md, _ = _run(tmp_path, ["edge-int"], ["macs"])
    error = records[("edge-int", "macs")].error
    assert error["type"] == "RuntimeError"
    assert re.match(
        r"in layer1\.0 at timm/models/resnet\.py:\d+, after attention module 'edge-int' at layer1\.0 "
        rf"\(64 channels; forward at check_modules/edges\.py:{_line('IntegerOutput', 0)}\): result type",
        error["message"],
    ), error["message"]
    report = run_check(f"{EDGES}:IntegerOutput", "resnet18", {}, input_size=64)
    network = report.get("on resnet18")
    assert network.status == FAIL and network.detail.startswith("in layer1.0 at timm/models/resnet.py:")
    assert f"forward at check_modules/edges.py:{_line('IntegerOutput', 0)})" in network.detail


def test_suite_verdict_runs_the_module_in_its_network(registered):
    """A module that passes every module-alone check but cannot run at a site of the suite's backbone: the verdict
    every ok row carries names the site and the plugin line (FixedWidth hard-codes 64: layer2 has 128)."""
    from attnbench.harness.tasks import cell_keys  # noqa: F401 -- the runner's import of check stays valid
    from attnbench.suite.parse import parse_suite
    from attnbench.suite.plan import plan

    registered("edge-fixed", "FixedWidth", BROKEN)
    suite = parse_suite(
        {
            "name": "v",
            "backbones": ["resnet18"],
            "modules": ["none", "edge-fixed", "se"],
            "input_size": 32,
            "metrics": ["params"],
        },
        "v.yaml",
    )
    verdicts = suite_verdicts(plan(suite))
    assert set(verdicts) == {"edge-fixed"}  # se passes alone and in the network; 'none' is never checked
    assert verdicts["edge-fixed"] == (
        "in resnet18 at 32x32: attention module 'edge-fixed' at layer2.0 (128 channels, input (1, 128, 4, 4)), "
        f"check_modules/broken.py:{_line('FixedWidth', 1, BROKEN)}: RuntimeError: mat1 and mat2 shapes cannot be "
        "multiplied (1x128 and 64x64)"
    )


# ---- 2. advice that fits the failure ----------------------------------------------------------------


def test_own_block_size_gets_size_advice_alone_and_at_a_site():
    shape = run_check(f"{EDGES}:EvenMaps", "", {}).get("shape")
    assert shape.status == FAIL
    assert shape.advice.startswith("it runs at 14x14 but not at 7x7, 15x9, 1x1 (64 channels): take every H and W")
    assert "derive every width" not in shape.advice
    make = _Maker(_cls("EvenMaps"), 64, {})
    at_site = site_advice(make, ModuleFailed("x", 128, (1, 128, 7, 7)), 30)
    assert at_site.startswith("it runs alone at 14x14 but not at the site's 7x7: take every H and W")


def test_hard_coded_width_gets_width_advice_alone_and_at_a_site():
    shape = run_check(f"{EDGES}:HardCodedWidth", "", {}).get("shape")
    assert shape.status == FAIL and shape.advice.startswith(
        "it runs at its default width 512 but not at 64 channels: derive every width from `channels`"
    )
    assert "min_spatial" not in shape.advice
    network = run_check(f"{BROKEN}:FixedWidth", "resnet18", {}, input_size=64).get("on resnet18")
    assert network.advice.startswith("it runs alone at 64 channels but not at the site's 128: derive every width")


def test_an_aliased_output_at_a_site_gets_the_aliasing_advice():
    make = _Maker(_cls("ExpandedGate"), 64, {})
    assert (
        site_advice(
            make, ModuleFailed(f"... returned an expand()-style view ...; {ALIASED_ADVICE}", 64, (1, 64, 16, 16)), 30
        )
        == ALIASED_ADVICE
    )


def test_monai_style_signature_gets_an_adapter_that_works(registered):
    for name, channel_like in (
        ("spatial_dims", False),
        ("dims", True),
        ("kernel_size", False),
        ("num_heads", False),
        ("in_channels", True),
        ("ndim", False),
        ("dim", True),
    ):
        param = inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        assert looks_like_channels(param) == channel_like, name
    binding = check_binding(_cls("SpatialDimsFirst"), 64, {})
    assert binding.status == FAIL and binding.fatal
    assert binding.advice == (
        "register an adapter: `lambda channels, **kw: SpatialDimsFirst(spatial_dims=2, in_channels=channels, **kw)`"
    )
    adapter = eval(binding.advice.split("`")[1], {"SpatialDimsFirst": _cls("SpatialDimsFirst")})
    attnbench.register("edge-monai", override=True)(adapter)
    try:
        assert run_check("edge-monai", "", {}).exit_code == 0  # the advice, taken literally, passes
    finally:
        MODULES.unregister("edge-monai")


def test_a_missing_option_is_fixed_with_the_option_not_an_adapter(registered):
    binding = run_check(f"{EDGES}:NeedsReduction", "", {}).get("binding")
    assert binding.status == FAIL and binding.fatal
    assert binding.advice == (
        "NeedsReduction needs 'reduction' with no default: give it as options (`-O "
        "reduction=<reduction>`; in a suite, the module's options), or register an adapter that "
        "fills it"
    )
    assert run_check(f"{EDGES}:NeedsReduction", "", {"reduction": 4}).exit_code == 0
    from attnbench.suite.parse import parse_suite

    registered("edge-red", "NeedsReduction")
    with pytest.raises(
        SuiteError,
        match=re.escape("(`-O reduction=<reduction>`; in a suite `{module: edge-red, reduction: <reduction>}`)"),
    ):
        parse_suite({"backbones": ["resnet18"], "modules": ["none", "edge-red"]}, "s.yaml")
    parse_suite({"backbones": ["resnet18"], "modules": ["none", {"module": "edge-red", "reduction": 4}]}, "s.yaml")


# ---- 3. sound state is not an alarm ----------------------------------------------------------------


def test_an_empty_placeholder_tensor_is_not_hidden_state():
    module = _cls("PlaceholderState")(64)
    assert hidden_state(module) == []
    module.kept = torch.zeros(3)  # one that holds something still is
    assert [p for p, _ in hidden_state(module)] == ["kept"]
    report = run_check(f"{EDGES}:PlaceholderState", "", {})
    assert report.exit_code == 0 and report.get("state").status == PASS, render_check(report)


# ---- 4. a plugin's own BatchNorm1d is not the 1x1-map limit --------------------------------------------


def test_batchnorm_limit_only_where_batch_one_reaches_a_one_by_one_map():
    def bn(size):
        return ValueError(f"Expected more than 1 value per channel when training, got input size torch.Size({size})")

    assert isinstance(as_unsupported(bn([1, 512, 1, 1]), 1, (32, 32)), attnbench.errors.Unsupported)
    assert str(as_unsupported(bn([1, 512, 1, 1]), 1, (32, 32))).startswith(
        "BatchNorm cannot train on one value per channel (batch 1 at 32x32 reaches a 1x1 map: BatchNorm input "
        "[1, 512, 1, 1])"
    )
    pooled = bn([1, 64])  # BatchNorm1d over pooled (N, C) features: the module's own
    assert as_unsupported(pooled, 1, (64, 64)) is pooled
    wrapped = ModuleFailed(
        f"attention module 'x' at layer1.0 (64 channels, input (1, 64, 16, 16)), gate.py:9: {pooled}"
    )
    assert as_unsupported(wrapped, 1, (64, 64)) is wrapped


def test_a_plugins_batchnorm1d_fails_its_training_cells_with_its_own_line(registered, tmp_path):
    """A training step (timed: the path that took every BatchNorm refusal for the 1x1-map limit) and saved memory."""
    registered("edge-bn1d", "BatchNorm1dGate", BROKEN)
    records, md, _ = _run(tmp_path, ["edge-bn1d"], ["train_step_cpu", "train_memory"], input_size=64, batch_size=1)
    line = f"check_modules/broken.py:{_line('BatchNorm1dGate', 1, BROKEN)}"
    for metric in ("train_step_cpu", "train_memory"):
        assert records[("none", metric)].status == "ok"  # resnet18 at 64 px trains at batch 1: its maps end at 2x2
        cell = records[("edge-bn1d", metric)]
        assert cell.status == "failed" and cell.error["type"] == "ModuleFailed", (metric, cell.note)
        assert line in cell.error["message"] and "torch.Size([1, 64])" in cell.error["message"]
    assert "reaches a 1x1 map" not in md


# ---- 5. the harness never writes a record it refuses to read -----------------------------------------


def test_activations_of_a_model_fvcore_cannot_trace_are_stored_and_read_back(registered, tmp_path):
    registered("edge-list", "ListOfConvs", BROKEN)  # convs in a plain list: fvcore's TorchScript trace refuses them
    records, md, result = _run(tmp_path, ["edge-list"], ["activations"], input_size=32)
    cell = records[("edge-list", "activations")]
    assert cell.status == "ok" and cell.stats["fvcore"] is None and cell.stats["fvcore_error"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a skipped line would warn
        stored = Store(tmp_path / "edge.jsonl").records()
    assert len(stored) == 2 and {r.label for r in stored} == {"none", "edge-list"}
    assert "resnet18/edge-list/activations: fvcore could not trace it, so its fvcore column is —" in md


def test_a_record_the_reader_would_refuse_is_stored_as_a_failure_that_says_why(tmp_path):
    from attnbench.records.measurement import Measurement

    base = Record(
        key="k",
        suite="s",
        backbone="resnet18",
        label="x",
        module="x",
        metric="params",
        position=(0, 1),
        config={},
        status="ok",
        measurement=Measurement("params", 1.0, "params", "count"),
    )
    assert readable(base) is base
    wrong = Record(
        **{**base.__dict__, "measurement": Measurement("params", 1.0, "params", "count", stats={"median_ms": "fast"})}
    )
    with pytest.raises(ForeignRecord) as why:  # what the store's reader says of that line
        Record.from_dict(json.loads(record_line(wrong)))
    bad = readable(wrong)
    assert bad.status == "failed" and bad.measurement is None and bad.error["type"] == "UnreadableRecord"
    assert f"would not read back ({why.value})" in bad.error["message"]
    store = Store(tmp_path / "s.jsonl")
    store.append(bad)
    assert [r.error for r in store.records()] == [bad.error]


# ---- 6. messages at the plugin's own line; check lists only the checked module's warnings ----------------


def test_an_error_inside_a_library_names_the_plugin_line_that_called_it(registered):
    line = _line("UsesLibrary", 1)  # the fakelib.rearrange(...) call
    shape = run_check(f"{EDGES}:UsesLibrary", "", {}).get("shape")
    assert "ValueError: cannot apply pattern 'b c h w -> b c (h w)'" in shape.detail
    assert f"(at check_modules/edges.py:{line})" in shape.detail and "fakelib" not in shape.detail
    registered("edge-lib", "UsesLibrary")
    with pytest.raises(ModuleFailed) as exc:
        build("resnet18", "edge-lib").eval()(torch.randn(1, 3, 32, 32))
    assert f", check_modules/edges.py:{line}: ValueError" in str(exc.value) and "fakelib" not in str(exc.value)


def test_check_lists_warnings_of_the_checked_package_only(hostile_site):
    env = dict(os.environ, PYTHONPATH=str(hostile_site))
    clean = subprocess.run(
        [sys.executable, "-m", "attnbench.cli", "check", f"{HERE / 'clean.py'}:CleanGate", "-b", ""],
        capture_output=True,
        text=True,
        env=env,
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert " warning " not in clean.stdout and "NOISY" not in clean.stdout
    own = subprocess.run(
        [sys.executable, "-m", "attnbench.cli", "check", "noisy", "-b", ""], capture_output=True, text=True, env=env
    )
    assert (
        "info  warning        FutureWarning: NOISY PLUGIN WARNING on import (at attnbench_hostile/noisy.py:8)"
        in own.stdout
    )


# ---- 7. a plugin in a table from the command line; one warning per name collision ----------------------


def test_two_plugins_with_one_name_warn_once(plugin_site, tmp_path_factory, monkeypatch):
    twin = install_package(Path(__file__).parent / "twin_pkg", tmp_path_factory)
    monkeypatch.syspath_prepend(str(twin))
    with plugins_from(plugin_site, monkeypatch) as caught:
        warned = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
        assert warned == [
            "attnbench: module name 'demo_gate' is registered by attnbench-demo-plugin, attnbench-twin-plugin: "
            "listed as attnbench-demo-plugin:demo_gate, attnbench-twin-plugin:demo_gate (rename the entry "
            "point to avoid this)"
        ]
        names = MODULES.names()
        assert "demo_gate" not in names and {
            "attnbench-demo-plugin:demo_gate",
            "attnbench-twin-plugin:demo_gate",
        } <= set(names)
        with pytest.raises(attnbench.errors.UnknownNameError, match="registered by several packages"):
            MODULES.get("demo_gate")
        twin_gate = MODULES.get("attnbench-twin-plugin:demo_gate")
        assert sum(p.numel() for p in twin_gate(64).parameters()) == 2 * 64  # the twin's two weights per channel
    env = dict(os.environ, PYTHONPATH=f"{plugin_site}:{twin}")
    p = subprocess.run(
        [sys.executable, "-m", "attnbench.cli", "list", "modules"], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0 and p.stderr.count("is registered by") == 1


def test_the_tutorial_plugin_example_is_described_truly(tmp_path):
    """The plugin tutorial's MyGate (logit 0, scale 2) equals its input at init because its gate is exactly 1 there."""
    readme = (Path(__file__).parents[1] / "docs" / "writing-a-plugin.md").read_text()
    code = readme.split("# my_gates/gate.py\n", 1)[1].split("```", 1)[0]
    (tmp_path / "gate.py").write_text(code)
    report = run_check(f"{tmp_path / 'gate.py'}:MyGate", "", {})
    assert report.exit_code == 0, render_check(report)
    kind = report.get("kind").detail
    assert kind.startswith("gate: output = input x g; equals its input at init (its gate is exactly 1 there)")
    assert "zero-initialised" not in kind

"""Suite files: validation errors name the file and the field; planning is deterministic."""

import pytest

from attnbench.errors import SuiteError, UnknownNameError
from attnbench.suite.load import list_suites, load_suite
from attnbench.suite.plan import plan

GOOD = """
name: tiny
backbones: [resnet18]
modules: [none, se, {name: se-r8, module: se, reduction: 8}]
module_options: {se: {reduction: 16}}
input_size: 32x48
metrics: [params, flops]
"""


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_shipped_suites_load():
    assert {"overhead", "smoke"} <= set(list_suites())
    s = load_suite("overhead")
    assert s.backbones == ["resnet18", "resnet50"]
    assert [v.label for v in s.variants] == ["none", "native", "se", "cbam", "nonlocal"]
    assert [v.label for v in s.variants if v.auto] == ["native"]  # planned only where a backbone ships attention
    assert (
        s.metrics == ["params", "macs", "latency_cpu", "attention_cpu"]
        and s.input_size == (224, 224)
        and s.batch_size == 1
    )
    assert s.latency["target"] == 1.0 and s.latency["max_time"] == 30
    # 2 backbones x 4 modules x 3 metrics, plus attention_cpu for the 3 modules (none has no module to time alone)
    assert len(plan(s)) == 2 * 4 * 3 + 2 * 3


def test_variants_and_plan(tmp_path):
    s = load_suite(write(tmp_path, GOOD))
    assert [(v.label, v.module, v.options) for v in s.variants if not v.auto] == [
        ("none", "none", {}),
        ("se", "se", {"reduction": 16}),
        ("se-r8", "se", {"reduction": 8}),
    ]
    cells = plan(s)
    assert [c.name for c in cells][:3] == ["resnet18/none/params", "resnet18/se/params", "resnet18/se-r8/params"]
    keys = {c.key({"torch": "x"}) for c in cells}
    assert len(keys) == len(cells)  # every cell has its own key
    assert cells[0].key({"torch": "x"}) != cells[0].key({"torch": "y"})  # and the env is part of it


@pytest.mark.parametrize(
    "text,field,problem",
    [
        ("backbones: resnet18\nmodules: [se]\n", "backbones", "non-empty list"),
        ("backbones: [resnet18]\nmodules: [sse]\n", "modules[0]", "unknown module 'sse'; did you mean 'se'"),
        ("backbones: [resnet5]\nmodules: [se]\n", "backbones[0]", "unknown backbone 'resnet5'"),
        (
            "backbones: [resnet18]\nmodules: [se]\nmetrics: [params, latncy_cpu]\n",
            "metrics[1]",
            "did you mean 'latency_cpu'",
        ),
        (
            "backbones: [resnet18]\nmodules: [se]\ninput_size: [1, 0, 3]\n",
            "input_size[1]",
            "positive int, 'HxW' or [height, width]",
        ),
        (
            "backbones: [resnet18]\nmodules: [se]\ninput_size: 32x\n",
            "input_size",
            "positive int, 'HxW' or [height, width]",
        ),
        ("backbones: [resnet18]\nmodules: [se]\ninput_size: [64, 64]\n", "input_size", "names a size twice"),
        ("backbones: [resnet18]\nmodules: [se]\nbatch_size: [1, 0]\n", "batch_size[1]", "positive integer"),
        ("backbones: [resnet18]\nmodules: [se]\nruntime: [eager, onnx]\n", "runtime[1]", "did you mean 'onnxruntime'"),
        ("backbones: [resnet18]\nmodules: [se]\nsweeps: [{resolution: [1]}]\n", "sweeps[0].resolution", "unknown axis"),
        ("backbones: [resnet18]\nmodules: [se]\nsweeps: []\n", "sweeps", "non-empty list"),
        (
            "backbones: [resnet18]\nmodules: [se]\nruntime: [eager, compile]\nlatency: {amp: bf16}\n",
            "latency.amp",
            "eager runtime only",
        ),
        ("backbones: [resnet18]\nmodules: [se]\nbatch_size: 0\n", "batch_size", "positive integer"),
        ("backbones: [resnet18]\nmodules: [se]\nbackbone: [x]\n", "backbone", "did you mean 'backbones'"),
        ("backbones: [resnet18]\nmodules: [se, se]\n", "modules[1]", "duplicate module label"),
        (
            "backbones: [resnet18]\nmodules: [se]\nlatency: {rounds: 3, thread: 2}\n",
            "latency.thread",
            "unknown setting",
        ),
        (
            "backbones: [resnet18]\nmodules: [se]\nmodule_options: {cbam: {reduction: 8}}\n",
            "module_options.cbam",
            "names no module",
        ),
        ("backbones: [resnet18\nmodules: [se]\n", "<file>", "not valid YAML at line"),
        ("- just a list\n", "<file>", "YAML mapping"),
    ],
)
def test_malformed_suites_name_file_and_field(tmp_path, text, field, problem):
    path = write(tmp_path, text, "broken.yaml")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: field {field!r}:") and problem in msg
    assert "\n" not in msg


def test_unknown_suite_name():
    with pytest.raises(UnknownNameError, match="unknown suite 'overhed'; did you mean 'overhead'"):
        load_suite("overhed")


def test_native_row_only_for_backbones_that_ship_attention():
    from attnbench.suite.parse import parse_suite

    s = parse_suite(
        {"name": "n", "backbones": ["resnet18", "efficientnet_b0"], "modules": ["none", "se"], "metrics": ["params"]},
        "n.yaml",
    )
    assert [(c.backbone, c.variant.label) for c in plan(s)] == [
        ("resnet18", "none"),
        ("resnet18", "se"),
        ("efficientnet_b0", "none"),
        ("efficientnet_b0", "native"),
        ("efficientnet_b0", "se"),
    ]

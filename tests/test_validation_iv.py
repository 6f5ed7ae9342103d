"""Validation, families, busy machines, compare and locales (issue 33): every bad suite value is refused at
load time with one line naming the field; transformer, MLP and HRNet backbones say why a module cannot go
on them; a sweep with no Δ draws (or skips) its plot; a Δ shown as "not supported" says why; compare's units
match its numbers; a non-UTF-8 locale degrades the output instead of a traceback."""

import json
import os
import re
import subprocess
import warnings
from pathlib import Path

import pytest
from test_robustness import SCRIPT, script

import attnbench
from attnbench.core.stats import MIN_PAIRS
from attnbench.errors import AttnBenchError, SuiteError, Unsupported
from attnbench.guard.cell import as_unsupported
from attnbench.records.store import Store
from attnbench.report import write_outputs
from attnbench.report.compare import compare_rows, render_compare_rows
from attnbench.report.tables import render_markdown
from attnbench.suite.load import load_suite, read_yaml
from attnbench.suite.parse import parse_suite

RESULTS = Path(__file__).resolve().parents[1] / "results"
BASE = {"name": "v", "backbones": ["resnet18"], "modules": ["none", "se"], "input_size": 32, "metrics": ["params"]}
ACCURACY = {
    "name": "a",
    "kind": "accuracy",
    "backbones": ["resnet18"],
    "modules": ["none", "se"],
    "dataset": "cifar10",
    "training": {"epochs": 1},
}


# --- validation: every wrong value is refused when the suite is read ------------------------------


@pytest.mark.parametrize("field", ["latency", "module_options", "backbone_options"])
@pytest.mark.parametrize("value", [0, [], "", False, 3, ["a"], "x"])
def test_a_mapping_field_of_another_type_is_refused_even_when_falsy(field, value):
    with pytest.raises(SuiteError, match=rf"field '{field}': must .*, got {re.escape(repr(value))}$"):
        parse_suite({**BASE, field: value}, "v.yaml")


@pytest.mark.parametrize("value", [0, [], "", False, ["epochs"]])
def test_training_of_another_type_is_refused_even_when_falsy(value):
    with pytest.raises(SuiteError, match=r"field 'training': must be a mapping"):
        parse_suite({**ACCURACY, "training": value}, "a.yaml")


def test_null_mappings_are_empty():
    s = parse_suite({**BASE, "latency": None, "module_options": None, "backbone_options": None}, "v.yaml")
    assert (s.latency, s.backbone_options) == ({}, {})


@pytest.mark.parametrize(
    "text,field,lines",
    [
        ("name: v\nbackbones: [resnet18]\nmodules: [none, se]\nmodules: [none, eca]\n", "modules", (3, 4)),
        ("name: v\nbackbones: [resnet18]\nmodules: [none, se]\nlatency: {threads: 1, threads: 2}\n", "threads", (4, 4)),
        (
            "name: v\nbackbones: [resnet18]\nmodules:\n  - {module: se, reduction: 8, reduction: 4}\n",
            "reduction",
            (4, 4),
        ),
    ],
)
def test_duplicate_yaml_keys_are_refused(tmp_path, text, field, lines):
    p = tmp_path / "dup.yaml"
    p.write_text(text)
    with pytest.raises(SuiteError, match=rf"field '{field}': is given twice \(lines {lines[0]} and {lines[1]}\)"):
        load_suite(str(p))
    assert read_yaml("a: 1\n'1': 2\n1: 3\n", "x") == {"a": 1, "1": 2, 1: 3}  # a string key and an int key differ


@pytest.mark.parametrize(
    "options,problem",
    [
        ({"stages": []}, "stages must be a rule"),
        ({"stages": [0]}, "stage 0 is not a 1-based stage number"),
        ({"stages": [2, 2]}, "names a stage twice"),
        ({"stages": "sideways"}, "stages 'sideways' is not one of"),
        ({"stages": [True]}, "stage True is not"),
        ({"stages": [9]}, "stage 9 does not exist"),
        ({"placement": "sideways"}, "placement='sideways' is not one of"),
        ({"placement": 3}, "placement=3 is not one of"),
        ({"placement": ""}, "placement='' is not one of"),
        ({"placement": {"basic": "sideways"}}, "is not one of"),
    ],
)
def test_attachment_options_are_checked_at_load_time(options, problem):
    with pytest.raises(SuiteError, match=r"field 'modules\[1\]': .*" + problem.replace("[", r"\[")):
        parse_suite({**BASE, "modules": ["none", {"module": "nonlocal", **options}]}, "v.yaml")
    with pytest.raises(AttnBenchError, match=problem.replace("[", r"\[")):  # and by build(), for the API
        attnbench.build("resnet18", "nonlocal", input_size=32, **options)


@pytest.mark.parametrize("label", ["native", "none", "baseline"])
def test_a_module_cannot_take_a_baselines_label(label):
    with pytest.raises(SuiteError, match=rf"the label '{label}' is reserved for the"):
        parse_suite({**BASE, "modules": [{"name": label, "module": "se"}, "eca"]}, "v.yaml")
    assert [v.label for v in parse_suite({**BASE, "modules": ["baseline", "se"]}, "v.yaml").variants] == [
        "baseline",
        "se",
    ]


def test_a_long_suite_name_is_one_line(tmp_path):
    p = tmp_path / "long.yaml"
    p.write_text(f"name: {'a' * 300}\nbackbones: [resnet18]\nmodules: [none, se]\ninput_size: 32\nmetrics: [params]\n")
    r = script("run", "-s", str(p), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: {p}: field 'name': is 300 characters long") and len(r.stderr.splitlines()) == 1


def test_description_must_be_text():
    with pytest.raises(SuiteError, match=r"field 'description': must be text"):
        parse_suite({**BASE, "description": ["a", "b"]}, "v.yaml")


# --- families: transformers, MLPs and HRNet say why, in one line -----------------------------------


@pytest.mark.parametrize("backbone", ["vit_tiny_patch16_224", "mixer_s16_224"])
def test_a_fixed_size_backbone_at_another_size_is_refused_at_load_time(backbone):
    with pytest.raises(
        SuiteError,
        match=rf"field 'input_size': backbone '{backbone}' takes only 224x224 inputs as timm "
        r"builds it .* not 32x32; use input_size 224x224, or backbone_options img_size",
    ):
        parse_suite({**BASE, "backbones": ["resnet18", backbone]}, "v.yaml")
    parse_suite({**BASE, "backbones": [backbone], "input_size": 224}, "v.yaml")


@pytest.mark.parametrize(
    "backbone,why",
    [
        (
            "vit_tiny_patch16_224",
            r"VisionTransformer feeds blocks\.\d+\.attn a 3-D tensor \(1, 197, 192\) \(tokens\?\)",
        ),
        ("mixer_s16_224", r"MlpMixer feeds blocks\.\d+\.attn a 3-D tensor \(1, 196, 512\)"),
        (
            "swin_tiny_patch4_window7_224",
            r"SwinTransformer feeds layers\.\d\.attn channels-last maps \(1, \d+, \d+, \d+\)",
        ),
        ("hrnet_w18_small", r"HighResolutionNet's feature_info names 'stem', which is not one of its modules"),
    ],
)
def test_modules_on_non_convolutional_backbones_are_unsupported_with_the_reason(backbone, why):
    for module in ("se", "nonlocal"):
        with pytest.raises(Unsupported, match=why):
            attnbench.build(backbone, module, input_size=224)
    attnbench.build(backbone, "none", input_size=224)  # the backbone itself is fine


# --- busy machines: no Δ to draw, Δ not supported ----------------------------------------------------


def _lines(name):
    return [json.loads(ln) for ln in (RESULTS / f"{name}.jsonl").read_text().splitlines() if ln.strip()]


def _store(tmp_path, name, lines):
    p = tmp_path / f"{name}.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return Store(p).latest()


def test_a_sweep_with_no_delta_writes_its_table_and_no_empty_plot(tmp_path):
    lines = _lines("regimes")
    for r in lines:  # every baseline failed (a busy machine): no Δ anywhere
        if r["module"] == "none":
            r.update(status="failed", measurement=None, error={"type": "Timeout", "message": "busy"})
    paths = write_outputs(_store(tmp_path, "nodelta", lines), tmp_path / "out", "nodelta")
    assert "plot" not in paths and (tmp_path / "out" / "nodelta.md").is_file()
    lines = _lines("regimes")
    for r in list(lines):  # a second backbone whose every timing failed: its panels say so, the first draws
        r2 = json.loads(json.dumps(r))
        r2.update(backbone="resnet34", key=r["key"] + "b", position=[1, r["position"][1]])
        if r2["metric"] in ("latency_cpu", "macs"):
            r2.update(status="failed", measurement=None, error={"type": "Timeout", "message": "busy"})
        lines.append(r2)
    paths = write_outputs(_store(tmp_path, "half", lines), tmp_path / "out", "half")
    assert paths["plot"].is_file()


def test_a_delta_that_cannot_be_computed_says_why(tmp_path):
    lines = _lines("overhead")
    for r in lines:  # rounds of two calls: fewer pairs than a paired Δ takes per round
        stats = (r.get("measurement") or {}).get("stats") or {}
        if "rounds_ms" in stats and r["metric"] == "latency_cpu":
            stats["rounds_ms"] = [x[:2] for x in stats["rounds_ms"]]
            if stats.get("rounds_wait"):
                stats["rounds_wait"] = [x[:2] for x in stats["rounds_wait"]]
    md = render_markdown(_store(tmp_path, "short", lines), "short")
    assert "| not supported |" in md
    assert (
        f"- Δ not supported: resnet18 latency_cpu: se, cbam, nonlocal: every round timed at most 2 call pair(s), "
        f"fewer than the {MIN_PAIRS} a round needs for a paired Δ; raise latency.min_iters to {MIN_PAIRS}"
    ) in md
    assert "Δ not supported" not in render_markdown(Store(RESULTS / "overhead.jsonl").latest(), "overhead")


def test_the_shipped_suites_time_enough_pairs_per_round_for_a_delta():
    from attnbench.suite.load import list_suites

    for name in list_suites():
        s = load_suite(name, check_names=False)
        if any(m.startswith(("latency", "train_step")) for m in s.metrics):
            assert s.latency.get("min_iters", MIN_PAIRS) >= MIN_PAIRS, name


def test_backbone_options_are_in_the_settings_line(tmp_path):
    lines = [r for r in _lines("overhead") if r["backbone"] == "resnet18"]
    for r in lines:
        r["config"]["backbone_options"] = {"drop_rate": 0.1, "in_chans": 3}
    md = render_markdown(_store(tmp_path, "opts", lines), "opts")
    assert "backbones built with drop_rate=0.1 in_chans=3" in md.split("\n\n")[1]


# --- compare: units of the numbers shown, why a band is missing, seeds -----------------------------------


def test_compare_shows_units_as_its_numbers_are_scaled_and_says_why_a_band_is_missing():
    recs = Store(RESULTS / "overhead.jsonl").latest()
    text = render_compare_rows(compare_rows(recs, recs), "a", "b")
    rows = {tuple(c.strip() for c in ln.split("|")[1:4]): ln for ln in text.splitlines() if ln.startswith("| resnet")}
    assert "| M parameters | 11.690 | 11.690 |" in rows[("resnet18", "none", "params")]
    assert "| GMACs | 1.821 | 1.821 |" in rows[("resnet18", "none", "macs")]
    assert "| ms (median) |" in rows[("resnet18", "se", "latency_cpu")]
    assert "no raw samples" not in text
    disturbed = [json.loads(json.dumps(r.to_dict())) for r in recs if r.metric == "latency_cpu"][:1]
    for r in disturbed:  # every call waited for a CPU 90% of its time
        r["measurement"]["stats"]["rounds_wait"] = [[0.9] * len(x) for x in r["measurement"]["stats"]["rounds_ms"]]
    from attnbench.records.record import Record

    busy = [Record.from_dict(r) for r in disturbed]
    (row,) = compare_rows(busy, busy)
    assert row.delta.method == "raw samples kept, but no round of undisturbed calls on one side: no band"


def test_compare_shows_the_seed_of_each_accuracy_row():
    recs = Store(RESULTS / "accuracy.jsonl").latest()
    text = render_compare_rows(compare_rows(recs, recs), "a", "b")
    assert "| backbone | module | metric | seed | unit |" in text
    seeds = [ln.split("|")[4].strip() for ln in text.splitlines() if ln.startswith("| resnet18 | none | accuracy")]
    assert seeds == ["0", "1", "2"]
    assert "one training run a side (seed 0)" in text and "no raw samples" not in text


# --- locales: output degrades, files stay UTF-8 ----------------------------------------------------

LOCALES = [
    {"PYTHONIOENCODING": "ascii"},
    {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"},
    {"LC_ALL": "POSIX"},
    {"PYTHONIOENCODING": "latin-1"},
]


@pytest.mark.parametrize("env", LOCALES, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_a_non_utf8_locale_degrades_output_and_keeps_files_utf8(tmp_path, env):
    env = {k: v for k, v in os.environ.items() if k not in ("LANG", "LC_ALL", "LC_CTYPE")} | env
    for args in (
        ["report", str(RESULTS / "overhead.jsonl"), "-o", str(tmp_path)],
        ["report", str(RESULTS / "overhead.jsonl"), "-o", str(tmp_path), "--format", "latex"],
        ["compare", str(RESULTS / "overhead.jsonl"), str(RESULTS / "overhead.jsonl")],
        ["run", "-s", "nonexistent-Δ"],
    ):
        p = subprocess.run(
            [str(SCRIPT), *args], capture_output=True, env={**env, "PYTHONWARNINGS": "ignore"}, timeout=120
        )
        p.stdout, p.stderr = (b.decode("latin-1") for b in (p.stdout, p.stderr))  # whatever the locale wrote
        assert "Traceback" not in p.stdout + p.stderr and "UnicodeEncodeError" not in p.stderr, (args, p.stderr)
        assert p.returncode == (2 if args[0] == "run" else 0), (args, p.stderr)
    assert (tmp_path / "overhead.md").read_bytes() == (RESULTS / "overhead.md").read_bytes()  # UTF-8, byte for byte


def test_ascii_output_uses_look_alikes():
    p = script("report", str(RESULTS / "overhead.jsonl"), "-o", "/tmp", env={"PYTHONIOENCODING": "ascii"})
    assert p.returncode == 0 and "| dparams |" in p.stdout and "d CPU latency %" in p.stdout


# --- training limits: batch 1 at a 1x1 map is unsupported, and only that --------------------------------


def test_batchnorm_at_one_value_per_channel_is_unsupported_only_at_a_real_1x1_map():
    from attnbench.attach.backbone import ModuleFailed

    msg = "ValueError: Expected more than 1 value per channel when training, got input size torch.Size([1, 512, 1, 1])"
    assert isinstance(as_unsupported(ValueError(msg), 1, (32, 32)), Unsupported)  # the backbone's own BN at 1x1
    at_site = ModuleFailed(f"attention module 'x' at layer4.1: {msg}", 512, (1, 512, 1, 1))
    assert isinstance(as_unsupported(at_site, 1, (32, 32)), Unsupported)  # the module's BN at a 1x1 site: the setting
    pooled = ModuleFailed(f"attention module 'x' at layer1.0: {msg.replace('512', '64')}", 64, (1, 64, 16, 16))
    assert as_unsupported(pooled, 1, (64, 64)) is pooled  # it pooled a 16x16 map itself: its own failure


def test_batch_1_at_a_1x1_map_is_unsupported_and_a_modules_pooled_batchnorm_is_its_failure(tmp_path):
    from torch import nn

    from attnbench.harness.runner import run_suite
    from attnbench.registry import MODULES

    class SeWithBatchNorm(nn.Module):
        """SE whose excitation normalises the pooled (N, C, 1, 1) features with a BatchNorm2d."""

        def __init__(self, channels):
            super().__init__()
            self.fc, self.bn = nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels)

        def forward(self, x):
            return x * self.bn(self.fc(x.mean((2, 3), keepdim=True))).sigmoid()

    attnbench.register("se_with_bn", override=True)(SeWithBatchNorm)
    try:
        got = {}
        for size in (32, 64):
            suite = parse_suite(
                {
                    **BASE,
                    "name": f"bn{size}",
                    "modules": ["none", "se_with_bn"],
                    "input_size": size,
                    "metrics": ["macs_train", "train_memory"],
                },
                "bn.yaml",
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got.update({(size, r.label, r.metric): r for r in run_suite(suite, tmp_path / str(size)).records})
    finally:
        MODULES.unregister("se_with_bn")
    for metric in ("macs_train", "train_memory"):
        r = got[(32, "none", metric)]  # resnet18's last map at 32x32 is 1x1: BatchNorm cannot train at batch 1 there
        assert r.status == "unsupported" and r.note.startswith(
            "BatchNorm cannot train on one value per channel (batch 1 "
            "at 32x32 reaches a 1x1 map: BatchNorm input [1, 512, 1, 1])"
        )
        assert got[(64, "none", metric)].ok
        own = got[(64, "se_with_bn", metric)]  # its own pooled BatchNorm at layer1 (16x16): its failure, with its line
        assert (own.status, own.error["type"]) == ("failed", "ModuleFailed")
        assert "at layer1.0 (64 channels, input (1, 64, 16, 16)), tests/test_validation_iv.py:" in own.error["message"]

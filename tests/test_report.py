"""Reports are pure functions of the records they are given: tables, notes, compare, CSV, migration."""

import pytest

from attnbench.records.measurement import Measurement
from attnbench.records.record import SCHEMA, ForeignRecord, Record
from attnbench.report import flat_records, render_compare, render_markdown
from attnbench.report.notes import environment_line, settings_line


def rec(label, metric, value=None, status="ok", position=(0, 0), stats=None, size=(64, 64), batch=1, **kw):
    module = "none" if label == "none" else label
    m = None if value is None else Measurement(metric, value, "x", "test", {}, stats or {})
    return Record(
        key=f"{label}-{metric}",
        suite="t",
        backbone="resnet18",
        label=label,
        module=module,
        metric=metric,
        position=position,
        config={"input_size": list(size), "batch_size": batch},
        status=status,
        measurement=m,
        **{"env": {"torch": "2.x", "threads": 2}, **kw},
    )


def rows(md):
    return {ln.split(" | ")[1]: ln for ln in md.splitlines() if ln.startswith("| resnet18")}


def test_deltas_are_against_the_bare_none_row():
    md = render_markdown(
        [
            rec("none", "params", 1_000_000, position=(0, 0)),
            rec("se", "params", 1_250_000, position=(0, 1)),
            rec("none", "macs", 2e9, position=(0, 0), stats={"conv_linear_matmul": 1.5e9}),
            rec("se", "macs", 2.2e9, position=(0, 1), stats={"conv_linear_matmul": 1.5e9}),
        ]
    )
    r = rows(md)
    assert "| 1.000 | — | — | 2.000 | — | 1.500 |" in r["none"]
    assert "| 1.250 | +250,000 | +25.00% | 2.200 | +10.00% | 1.500 |" in r["se"]
    assert "GMACs" in md and "GFLOPs" not in md


def test_unhandled_operators_are_marked_and_named():
    md = render_markdown(
        [
            rec("none", "macs", 2e9),
            rec("odd", "macs", 2.1e9, position=(0, 1), stats={"unhandled": {"aten::cumsum": 2}}),
        ]
    )
    assert "| 2.100‡ |" in rows(md)["odd"]
    assert "‡ operators with no counting rule, so not in these MACs: aten::cumsum (resnet18/odd)." in md


def test_failed_unsupported_and_skipped_rows_say_why():
    md = render_markdown(
        [
            rec("none", "params", 10),
            rec(
                "bad", "params", status="failed", position=(0, 1), error={"type": "Timeout", "message": "ran past 5 s"}
            ),
            rec(
                "ge", "params", status="unsupported", position=(0, 2), note="timm 1.0.31's ge raises in its constructor"
            ),
            rec("none", "latency_gpu", status="skipped", note="no CUDA device here"),
        ]
    )
    r = rows(md)
    assert "failed (Timeout)" in r["bad"] and "unsupported" in r["ge"] and "skipped" in r["none"]
    assert "- failed resnet18/bad/params: Timeout: ran past 5 s" in md
    assert "- unsupported resnet18/ge: timm 1.0.31's ge raises in its constructor" in md
    assert "- skipped latency_gpu: no CUDA device here" in md


def test_settings_line_comes_from_the_records():
    line = settings_line([rec("none", "params", 1, size=(112, 96)), rec("none", "latency_cpu", 3.0, batch=8)])
    assert line.startswith("Settings: input 112x96 / 64x64, counts per image, batch 8 for timings")
    assert "224" not in line


def test_environment_line_names_plugins():
    r = rec("x", "params", 1, env={"torch": "2.x", "plugins": {"my-gates": "0.3"}})
    assert environment_line([r]) == "Environment: torch 2.x, plugins my-gates 0.3."


def test_compare_matches_cells_by_backbone_label_metric():
    a = [rec("none", "params", 100), rec("se", "params", 120, position=(0, 1))]
    b = [rec("none", "params", 100), rec("se", "params", 90, position=(0, 1))]
    md = render_compare(a, b)
    assert "| resnet18 | se | params | M parameters | 0.000 | 0.000 | -25.00% |" in md  # the unit of the numbers shown


def test_csv_has_one_row_per_record_with_its_status():
    df = flat_records(
        [
            rec("none", "params", 1),
            rec("se", "params", status="failed", position=(0, 1), error={"type": "E", "message": "m"}),
        ]
    )
    assert list(df["status"]) == ["ok", "failed"] and list(df["error"]) == ["", "E: m"]


def test_schema_1_records_are_migrated_and_foreign_ones_refused():
    old = {
        "key": "k",
        "suite": "s",
        "backbone": "resnet50",
        "label": "se",
        "module": "se",
        "metric": "flops",
        "options": {},
        "position": [0, 1],
        "config": {"metric": "flops"},
        "status": "ok",
        "measurement": {
            "metric": "flops",
            "value": 4141013168,
            "unit": "FLOPs (multiply-adds)",
            "method": "fvcore",
            "settings": {},
            "stats": {"fvcore": 4114027520},
        },
        "error": None,
        "note": "",
        "attachment": None,
        "env": {},
        "host": "h",
        "pid": 1,
        "started": 0,
        "ended": 1,
    }
    r = Record.from_dict(old)
    assert r.schema == SCHEMA and r.metric == "macs" and r.value == 4141013168 and r.position == (0, 1)
    assert Record.from_dict(r.to_dict()) == r  # round trip
    for bad in (
        {"key": "k"},
        {**old, "status": "weird"},
        {**old, "schema": 99},
        {**old, "measurement": None},
        {**old, "status": "failed", "error": None},
        [1, 2],
    ):
        with pytest.raises(ForeignRecord):
            Record.from_dict(bad)


def test_rows_whose_parameters_hide_compute_are_marked():
    md = render_markdown(
        [
            rec("none", "params", 100, stats={"attention": 0}),
            rec("none", "macs", 1e9, stats={"attention": 0}),
            rec(
                "lst",
                "params",
                100,
                position=(0, 1),
                stats={"attention": 0, "hidden_numel": 8320, "hidden_state": ["layer1.0.x.convs[0]"]},
            ),
            rec("lst", "macs", 1.1e9, position=(0, 1), stats={"attention": 1000}),
            rec("free", "params", 100, position=(0, 2), stats={"attention": 0}),
            rec("free", "macs", 1.2e9, position=(0, 2), stats={"attention": 5000}),
        ]
    )
    assert "| resnet18 | lst§ |" in md and "| resnet18 | free§ |" in md and "| resnet18 | none |" in md
    assert "- § resnet18/lst: state parameters() cannot see: 8,320 elements (layer1.0.x.convs[0])." in md
    assert "- § resnet18/free: no registered parameters, 5,000 MACs inside the module." in md

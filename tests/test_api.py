"""attnbench from Python: load stores into Results (pandas, LaTeX, HTML, notebooks), `--format`, and run()."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from html import escape
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest

import attnbench
from attnbench.api import Results, _Part
from attnbench.records.measurement import Measurement
from attnbench.records.record import Record
from attnbench.records.store import Store
from attnbench.report.formats import render_report
from attnbench.report.latex import tex
from attnbench.report.markdown import md_row
from attnbench.report.markup import Table, parse, split_row

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
STORES = sorted(RESULTS.glob("*.jsonl"))
HOSTILE = "a_b%c&d#e$f\\g{h}i|j\nk ü 中 [x] --~^<>\"'`"


def rec(label, metric, value=None, status="ok", position=(0, 0), stats=None, backbone="resnet18", **kw):
    module = "none" if label == "none" else "se"
    m = None if value is None else Measurement(metric, value, "x", "test", {}, stats or {})
    return Record(
        key=f"{backbone}-{label}-{metric}",
        suite="t",
        backbone=backbone,
        label=label,
        module=module,
        metric=metric,
        position=position,
        config={"input_size": [64, 64], "batch_size": 1},
        status=status,
        measurement=m,
        **{"env": {"torch": "2.x", "threads": 2}, **kw},
    )


def test_committed_stores_exist():
    assert {p.stem for p in STORES} >= {"overhead", "regimes", "accuracy", "zoo"}


@pytest.mark.parametrize("store", STORES, ids=lambda p: p.stem)
def test_table_is_the_report_byte_for_byte(store):
    res = attnbench.load(store)
    assert res.stores == [store.stem] and len(res) == len(Store(store).latest())
    assert res.table() == (RESULTS / f"{store.stem}.md").read_text()
    assert res._repr_markdown_() == res.table()


@pytest.mark.parametrize("store", STORES, ids=lambda p: p.stem)
def test_to_pandas_values_are_the_records_exactly(store):
    records = {r.key: r for r in Store(store).latest()}
    df = attnbench.load(store).to_pandas()
    assert len(df) == len(records) and df["key"].is_unique
    for row in df.itertuples(index=False):
        r = records[row.key]
        assert (row.backbone, row.label, row.module, row.metric, row.status) == (
            r.backbone,
            r.label,
            r.module,
            r.metric,
            r.status,
        )
        if r.value is None:
            assert math.isnan(row.value)
        else:
            assert row.value == r.value and row.unit == r.measurement.unit  # exact, not rounded
        size = r.config.get("input_size") or [224, 224]
        assert (row.input_h, row.input_w, row.input_size) == (size[0], size[1], f"{size[0]}x{size[1]}")
        assert row.env_torch == r.env.get("torch") and row.env_threads == r.env.get("threads")
        if r.metric == "accuracy":
            assert row.seed == r.seed


def test_count_deltas_are_exact_against_the_none_row():
    df = attnbench.load(RESULTS / "overhead.jsonl").to_pandas()
    records = Store(RESULTS / "overhead.jsonl").latest()
    value = {(r.backbone, r.label, r.metric): r.value for r in records}
    counts = df[df.metric.isin(["params", "macs"]) & (df.label != "none")]
    assert len(counts) == 12
    for row in counts.itertuples():
        v, b = value[(row.backbone, row.label, row.metric)], value[(row.backbone, "none", row.metric)]
        assert row.baseline == "none" and row.delta == v - b and row.delta_pct == (v - b) / b * 100
        assert row.delta_method == "exact" and math.isnan(row.delta_pct_low) and pd.isna(row.paired)
    se = df[(df.backbone == "resnet18") & (df.label == "se") & (df.metric == "params")].iloc[0]
    assert se.delta == 89_080  # SE on ResNet-18: sum over 8 blocks of 2*C*C/16 + C/16 + C (formulas.se_params)


def test_timing_deltas_carry_the_tables_interval_and_pairing():
    res = attnbench.load(RESULTS / "overhead.jsonl")
    df = res.to_pandas()
    (table,) = [b for b in parse(res.table()) if isinstance(b, Table) and "Δ CPU latency % [95% CI]" in b.header]
    column = table.header.index("Δ CPU latency % [95% CI]")
    rows = {(c[0], c[1]): c for c in table.rows}
    lat = df[(df.metric == "latency_cpu") & (df.label != "none")]
    assert len(lat) == 6
    for row in lat.itertuples():
        cell = rows[(row.backbone, row.label)][column]
        assert cell == f"{row.delta_pct:+.2f}% [{row.delta_pct_low:+.1f}, {row.delta_pct_high:+.1f}]"
        assert row.paired and row.delta_pct_low < row.delta_pct < row.delta_pct_high
        assert row.delta_low < row.delta < row.delta_high  # added ms, paired over the same rounds
        assert "paired" in row.delta_method and row.marks == ""


def test_accuracy_rows_carry_the_welch_delta_of_their_row():
    df = attnbench.load(RESULTS / "accuracy.jsonl").to_pandas()
    md = (RESULTS / "accuracy.md").read_text()
    cbam = df[(df.label == "cbam")]
    assert len(cbam) == 3 and set(cbam.seed) == {0, 1, 2} and cbam.delta.nunique() == 1
    d = cbam.iloc[0]
    assert f"{d.delta:+.2f} [{d.delta_low:+.2f}, {d.delta_high:+.2f}]" in md and d.baseline == "none"
    top1 = {r.seed: r.value for r in Store(RESULTS / "accuracy.jsonl").latest() if r.label == "cbam"}
    assert dict(zip(cbam.seed, cbam.value)) == top1


def test_schema_1_stores_are_read(tmp_path):
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
        "env": {"torch": "1.13"},
        "host": "h",
        "pid": 1,
        "started": 0,
        "ended": 1,
    }
    base = {
        **old,
        "key": "b",
        "label": "none",
        "module": "none",
        "position": [0, 0],
        "measurement": {**old["measurement"], "value": 4111514624},
    }
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(base) + "\n" + json.dumps(old) + "\n")
    df = attnbench.load(path).to_pandas()
    assert list(df.metric) == ["macs", "macs"] and list(df.value) == [4111514624, 4141013168]
    assert df.delta.iloc[1] == 4141013168 - 4111514624 and df.env_torch.iloc[0] == "1.13"


def test_a_folder_loads_every_store_and_errors_name_the_path(tmp_path):
    res = attnbench.load(RESULTS)
    assert res.stores == [p.stem for p in STORES]
    assert len(res.to_pandas()) == sum(len(Store(p).latest()) for p in STORES)
    with pytest.raises(attnbench.AttnBenchError, match="no result store at .*nope.jsonl"):
        attnbench.load(tmp_path / "nope.jsonl")
    with pytest.raises(attnbench.AttnBenchError, match="holds no result stores"):
        attnbench.load(tmp_path)


def test_where_selects_and_keeps_the_baselines():
    res = attnbench.load(RESULTS / "overhead.jsonl")
    sel = res.where(backbone="resnet50", module=["se", "cbam"], metric=["params", "latency_cpu"])
    assert {(r.label, r.metric) for r in sel.records} == {
        (m, k) for m in ("none", "se", "cbam") for k in ("params", "latency_cpu")
    }
    assert {r.backbone for r in sel.records} == {"resnet50"}
    table = sel.table()
    assert "| resnet50 | se | block x16 | 28.088 | +2,530,992 | +9.90% | 39.07 (1.32) | +3.87% [+3.3, +4.4] |" in table
    alone = res.where(backbone="resnet50", module="se", metric="params", baselines=False)
    assert [(r.label, r.metric) for r in alone.records] == [("se", "params")]
    assert alone.to_pandas().delta.iloc[0] == 2_530_992  # Δ from the whole store, even without its baseline row
    assert len(res.where(input_size=224)) == len(res.where(input_size="224x224")) == len(res) == 30
    assert len(res.where(input_size=(160, 160))) == 0
    with pytest.raises(attnbench.AttnBenchError, match="input_size"):
        res.where(input_size="big")


def test_load_and_tables_never_import_torch():
    code = (
        "import sys, attnbench; r = attnbench.load('results'); r.table(); r.to_pandas(); r.to_latex(); "
        "r._repr_html_(); r.table('json'); r.where(backbone='resnet50').table(); "
        "print(sorted(m for m in ('torch', 'timm', 'fvcore') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- LaTeX ---------------------------------------------------------------------------------------


def test_tex_escapes_every_special_character():
    assert tex("_%&#$") == r"\_\%\&\#\$"
    assert tex("\\{}") == r"\textbackslash{}\{\}"
    assert tex("|<>~^") == r"\textbar{}\textless{}\textgreater{}\textasciitilde{}\textasciicircum{}"
    assert tex("a\nb\r\nc\td") == "a b c d"  # a line break cannot end a table row
    assert tex("[x]") == "{[}x{]}"  # a bracket after \\ would be read as its optional argument
    assert tex("a--b``c''") == "a-{}-b`{}`c'{}'"  # no en-dash or quote ligatures in a label
    assert tex("üé") == r'\"{u}\'{e}' and tex("Δ±") == r"$\Delta$$\pm$"
    assert tex("中\x07") == r"{\ttfamily[U+4E2D]}{\ttfamily[U+0007]}"
    assert tex('"') == r"{\ttfamily\char34}"


def test_markdown_rows_read_back_exactly():
    for cells in (["a", "b"], ["x |y", "a\\", "\\|", "", " sp ", "end\\"], ["|", "||", HOSTILE]):
        assert split_row(md_row(cells)) == [" ".join(str(c).splitlines()) for c in cells]


def _marked_records():
    return [
        rec("none", "macs", 2e9, stats={"conv_linear_matmul": 1.5e9}),
        rec(
            "odd", "macs", 2.1e9, position=(0, 1), stats={"conv_linear_matmul": 1.5e9, "unhandled": {"aten::cumsum": 2}}
        ),
        rec("none", "latency_cpu", 3.0, stats={"iqr_ms": 0.1, "images_per_s": 333.3}),
        rec("odd", "latency_cpu", 3.5, position=(0, 1), stats={"iqr_ms": 0.5, "images_per_s": 285.7, "unstable": True}),
    ]


def test_latex_is_booktabs_with_aligned_numbers_and_marks_as_footnotes():
    records = _marked_records()
    latex = render_report(records, "marks", "latex")
    assert latex.count(r"\toprule") == latex.count(r"\midrule") == latex.count(r"\bottomrule") == 1
    assert r"\begin{tabular}{@{}l l l r@{}l r@{}l r@{}l r@{}l r@{}l r@{}l@{}}" in latex  # numbers split at the point
    assert r"2 & .100$^{\ddagger}$" in latex and r"3 & .50 (0.50)$^{\dagger}$" in latex
    assert r"+5 & .00\%" in latex and r"+16 & .67\%" in latex  # Δ% of MACs and latency vs `none`
    notes = latex[latex.index(r"\begin{minipage}") :]
    assert r"$^{\ddagger}$ operators with no counting rule, so not in these MACs: aten::cumsum" in notes
    assert r"$^{\dagger}$ IQR above 10\% of the median" in notes
    df = Results([_Part("marks", None, tuple(records), tuple(records))]).to_pandas()
    assert dict(zip(df.label + "/" + df.metric, df.marks))["odd/macs"] == "‡"
    assert dict(zip(df.label + "/" + df.metric, df.marks))["odd/latency_cpu"] == "†"


def test_every_mark_becomes_a_superscript_symbol():
    from attnbench.report.latex import _cell, superscript

    assert superscript("§✗°2¶†‡") == r"$^{\S\times\circ 2\P\dagger\ddagger}$"
    assert _cell("se§✗°2", False, True) == (r"se$^{\S\times\circ 2}$", ["§", "✗", "°2"])
    assert _cell("not supported¶", True, False) == (r"\multicolumn{2}{c}{not supported$^{\P}$}", ["¶"])
    assert (
        _cell("+1.25% [-0.3, +2.0] (unpaired)¶", True, False)[0] == r"+1 & .25\% {[}$-$0.3, +2.0{]} (unpaired)$^{\P}$"
    )
    assert _cell("-1,234 (+56)", True, False)[0] == r"$-$1,234 &  (+56)"  # an integer, then its rest


def _hostile_records():
    return [
        rec("none", "params", 1_000_000, backbone=HOSTILE),
        rec(HOSTILE, "params", 1_250_000, position=(0, 1), backbone=HOSTILE),
        rec(
            "bad",
            "params",
            status="failed",
            position=(0, 2),
            backbone=HOSTILE,
            error={"type": "ValueError", "message": HOSTILE},
        ),
    ]


def test_hostile_labels_are_escaped_everywhere():
    latex = render_report(_hostile_records(), "t_1%&#", "latex")
    body = "\n".join(ln for ln in latex.splitlines() if not ln.startswith("%"))
    escaped = tex(HOSTILE)
    assert escaped in body and r"t\_1\%\&\#" in body
    for raw in ("a_b", "c&d", "d#e", "e$f", "{h}", "i|j", "中", "[x]"):
        assert raw not in body.replace(escaped, "")  # nothing of the label is left unescaped
    html = Results([_Part("t", None, tuple(_hostile_records()), tuple(_hostile_records()))])._repr_html_()
    assert "<td" in html and f"<td style=\"text-align:left\">{escape(' '.join(HOSTILE.splitlines()))}</td>" in html


def _pdflatex(tmp_path, fragment, name="t"):
    (tmp_path / f"{name}-table.tex").write_text(fragment)
    (tmp_path / f"{name}.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n"
        "\\usepackage[paperwidth=60cm,paperheight=80cm,margin=1cm]{geometry}\n"
        f"\\begin{{document}}\n\\input{{{name}-table.tex}}\n\\end{{document}}\n"
    )
    out = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", f"{name}.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = (tmp_path / f"{name}.log").read_text(errors="replace")
    assert out.returncode == 0, log[-3000:]
    assert "Missing character" not in log and "Undefined control sequence" not in log
    return tmp_path / f"{name}.pdf"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (texlive-latex-recommended)")
def test_latex_compiles_with_pdflatex(tmp_path):
    for store in STORES:
        _pdflatex(tmp_path, attnbench.load(store).to_latex(), store.stem)
    from attnbench.report.compare import compare_rows
    from attnbench.report.formats import render_compare_as

    a, b = Store(RESULTS / "overhead.jsonl").latest(), Store(RESULTS / "regimes.jsonl").latest()
    _pdflatex(tmp_path, render_compare_as(compare_rows(a, b), "a_1.jsonl", "b%2.jsonl", "latex", 5), "compare")
    _pdflatex(tmp_path, render_report(_marked_records(), "marks", "latex"), "marks")
    pdf = _pdflatex(tmp_path, render_report(_hostile_records(), "t_1%&#", "latex"), "hostile")
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
        assert "%c&d#e$f\\g{h}i|j k" in text and "[U+4E2D]" in text and "[x] --" in text


# ---- --format ------------------------------------------------------------------------------------


def test_report_and_compare_print_every_format(tmp_path, capsys):
    from test_cli import cli

    code, md, _ = cli(["report", str(RESULTS / "overhead.jsonl"), "--out", str(tmp_path)], capsys)
    assert code == 0 and md == (RESULTS / "overhead.md").read_text() + "\n"
    assert (tmp_path / "overhead.md").read_text() == (RESULTS / "overhead.md").read_text()
    res = attnbench.load(RESULTS / "overhead.jsonl")
    outs = {}
    for fmt in ("latex", "csv", "json"):
        code, outs[fmt], err = cli(
            ["report", str(RESULTS / "overhead.jsonl"), "--out", str(tmp_path), "--format", fmt], capsys
        )
        assert code == 0, err
    assert outs["latex"] == res.to_latex()
    frame = res.to_pandas()
    from_csv = pd.read_csv(StringIO(outs["csv"]))
    from_json = pd.DataFrame(json.loads(outs["json"]))
    assert list(from_csv.columns) == list(from_json.columns) == list(frame.columns)
    for other in (from_csv, from_json):  # the same cells, values and intervals, unrounded
        for col in ("value", "delta", "delta_pct", "delta_pct_low", "delta_pct_high"):
            assert other[col].astype(float).equals(frame[col].astype(float)), col
        assert list(other.key) == list(frame.key)
    assert (tmp_path / "overhead.md").read_text() == (RESULTS / "overhead.md").read_text()  # files do not change

    a, b = str(RESULTS / "overhead.jsonl"), str(RESULTS / "regimes.jsonl")
    code, cmp_md, _ = cli(["compare", a, b], capsys)
    code, cmp_csv, _ = cli(["compare", a, b, "--format", "csv"], capsys)
    code, cmp_json, _ = cli(["compare", a, b, "--format", "json"], capsys)
    code, cmp_tex, _ = cli(["compare", a, b, "--format", "latex"], capsys)
    md_rows = [split_row(ln) for ln in cmp_md.splitlines() if ln.startswith("| resnet")]
    table = pd.read_csv(StringIO(cmp_csv))
    assert len(table) == len(json.loads(cmp_json)) == len(md_rows) == cmp_tex.count(r" \\") - 1  # the header row
    assert table.delta_pct.notna().sum() > 0
    for row, cells in zip(table.itertuples(), md_rows):  # the same cells, in the same order
        assert cells[:3] == [row.backbone, row.label, row.metric]
        assert cells[-2] == (f"{row.delta_pct:+.2f}%" if not math.isnan(row.delta_pct) else "—")
    code, _, err = cli(["report", a, "--format", "xml"], capsys)
    assert code == 2 and "xml" in err


# ---- run -----------------------------------------------------------------------------------------

TINY = {"name": "tiny", "backbones": ["resnet18"], "modules": ["none", "se"], "input_size": 32, "metrics": ["params"]}


def test_run_a_dict_suite_returns_its_results(tmp_path):
    res = attnbench.run(TINY, out=tmp_path, progress=False)
    assert res.run.ok == 2 and res.run.exit_code == 0 and res.stores == ["tiny"]
    assert res.table() == (tmp_path / "tiny.md").read_text()
    df = res.to_pandas()
    assert list(df.label) == ["none", "se"] and df.delta.iloc[1] == 89_080  # SE-ResNet-18, reduction 16
    again = attnbench.run(TINY, out=tmp_path, resume=True, progress=False)
    assert again.run.reused == 2 and again.run.ok == 0
    more = attnbench.run(TINY, out=tmp_path, resume=True, progress=False, metrics=["params", "macs"])
    assert more.run.reused == 2 and more.run.ok == 2  # an override is validated like the file, and adds cells

    from attnbench.suite.parse import parse_suite

    suite = parse_suite(TINY, "tiny.yaml")
    only = attnbench.run(suite, out=tmp_path / "obj", only_modules=["se"], progress=False)
    assert [r.label for r in only.records] == ["se"] and suite.only_modules == []  # the caller's Suite is untouched


def test_run_raises_the_command_lines_errors(tmp_path):
    with pytest.raises(attnbench.AttnBenchError, match="unknown backbone 'resnet19'"):
        attnbench.run(TINY, out=tmp_path, only_backbones=["resnet19"])
    with pytest.raises(attnbench.AttnBenchError, match="field 'metricz': unknown field; did you mean 'metrics'"):
        attnbench.run("overhead", out=tmp_path, metricz=["params"])
    with pytest.raises(attnbench.AttnBenchError, match="<suite dict>: field 'backbones'"):
        attnbench.run({**TINY, "backbones": "resnet18"}, out=tmp_path)
    with pytest.raises(attnbench.AttnBenchError, match="unknown suite 'overheed'"):
        attnbench.run("overheed", out=tmp_path)
    with pytest.raises(attnbench.AttnBenchError, match="latency_from .*no such result store"):
        attnbench.run(TINY, out=tmp_path, latency_from=tmp_path / "none.jsonl")
    assert not (tmp_path / "tiny.jsonl").exists()  # before any work


def test_sigterm_stops_a_run_with_what_it_stored(tmp_path, monkeypatch):
    extend = Store.extend

    def then_terminate(self, records):
        extend(self, records)
        os.kill(os.getpid(), signal.SIGTERM)  # raised (as the CLI's) after the record is written

    monkeypatch.setattr(Store, "extend", then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="run again with resume=True") as info:
        attnbench.run({**TINY, "modules": ["none", "se", "cbam"]}, out=tmp_path, progress=False)
    assert info.value.signum == signal.SIGTERM
    assert len(info.value.results.records) == 1 and len(Store(tmp_path / "tiny.jsonl").records()) == 1
    assert "| resnet18 | none |" in (tmp_path / "tiny.md").read_text()
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are put back


def test_the_example_runs(tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "overhead_to_paper.py"),
            str(RESULTS / "overhead.jsonl"),
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "overhead-latency-vs-macs.png").stat().st_size > 10_000
    tex_table = (tmp_path / "overhead-table.tex").read_text()
    assert r"\toprule" in tex_table and "+3 & .63\\% {[}+3.4, +3.8{]}" in tex_table
    assert "added ms" not in tex_table  # filtered to params, MACs and latency
    assert out.stdout.startswith("# overhead")

"""Stores edited by hand (issue 33): every field the report, compare and --resume read is type-checked when a
store is read, so a damaged line is read or refused (counted, skipped) -- never a crash in a table. Each stats,
config, settings, env, attachment and executor entry of the committed stores is set to each wrong type (deleted,
null, text, list, mapping, negative, NaN, bool) and every output is rendered from the result."""

import json
import math
import warnings
from pathlib import Path

import pytest

from attnbench.harness.runner import run_suite
from attnbench.records.store import Store
from attnbench.report import write_outputs
from attnbench.report.compare import compare_rows
from attnbench.report.formats import render_compare_as, render_report
from attnbench.report.gate import comparability_problems, gate
from attnbench.report.notes import contention_line
from attnbench.suite.parse import parse_suite

RESULTS = Path(__file__).resolve().parents[1] / "results"
DELETE = object()
BAD = {
    "deleted": DELETE,
    "null": None,
    "text": "x",
    "list": [1],
    "mapping": {"a": 1},
    "negative": -3,
    "nan": float("nan"),
    "bool": True,
}
BULK = (
    "by_op",
    "by_operator",
    "bytes_by_operator",
    "bytes_sites",
    "by_dtype",
    "runtime_info",
    "options",
    "backbone_options",
    "unhandled",
    "plugins",
)  # free-form tables of names: their entries are never read alone


def entry_paths(record):
    """Every (container..., key) path of a record's mappings, one level into nested mappings and list items."""
    out = []
    m = record.get("measurement") or {}
    for k, v in (m.get("stats") or {}).items():
        out.append(("measurement", "stats", k))
        if k in BULK:
            continue
        if isinstance(v, dict):
            out += [("measurement", "stats", k, s) for s in v]
        if isinstance(v, list) and v and isinstance(v[0], dict):
            out += [("measurement", "stats", k, 0, s) for s in v[0]]
    out += [("measurement", k) for k in m if k != "stats"]
    out += [("measurement", "settings", k) for k in (m.get("settings") or {})]
    for k, v in (record.get("config") or {}).items():
        out.append(("config", k))
        if isinstance(v, dict) and k not in BULK:
            out += [("config", k, s) for s in v]
    for k in ("env", "attachment", "executor", "error"):
        out += [(k, s) for s in (record.get(k) or {})]
    return out + [(k,) for k in record]


def mutate(record, path, value):
    d = record
    for p in path[:-1]:
        d = d[p]
    if value is DELETE:
        del d[path[-1]]
    else:
        d[path[-1]] = value


def mutated_stores(lines):
    """Copies of the store in which each row (the lines of one backbone, label and metric: an accuracy row's
    seeds together, so a value no seed has is met too) has at most one entry damaged -- in every line of the row
    that holds it -- until every entry found in any line was damaged once: few renders, every entry covered."""
    rows = {}
    for i, r in enumerate(lines):
        rows.setdefault((r.get("backbone"), r.get("label"), r.get("metric")), []).append(i)
    holders = {}
    for row, members in enumerate(rows.values()):
        for i in members:
            for path in entry_paths(lines[i]):
                holders.setdefault(path, {}).setdefault(row, []).append(i)
    rounds = []  # each: row -> (path, the row's lines holding it)
    for n, (path, where) in enumerate(holders.items()):
        order = list(where)
        order = order[n % len(order) :] + order[: n % len(order)]  # rows taken in turn
        row, free = next(((row, rnd) for row in order for rnd in rounds if row not in rnd), (order[0], None))
        if free is None:
            free = {}
            rounds.append(free)
        free[row] = (path, where[row])
    for rnd in rounds:
        damaged = {i: path for path, members in rnd.values() for i in members}
        yield [(json.loads(json.dumps(r)), damaged.get(i)) for i, r in enumerate(lines)]


def render_everything(path: Path, out: Path):
    records = Store(path).latest()
    if not records:
        return
    write_outputs(records, out, path.stem, ())
    for fmt in ("csv", "json", "latex"):
        render_report(records, path.stem, fmt, ())
    rows = compare_rows(records, records)
    for fmt in ("markdown", "csv"):
        render_compare_as(rows, "a", "b", fmt, 5.0)
    comparability_problems(records, records, rows)
    gate(records, records, rows, 5.0)
    contention_line(records)
    Store(path).done_keys(records)


@pytest.mark.parametrize("store", ["overhead", "accuracy", "regimes"])
@pytest.mark.parametrize("bad", list(BAD))
def test_every_wrongly_typed_entry_is_read_or_refused_never_a_crash(tmp_path, store, bad):
    lines = [json.loads(ln) for ln in (RESULTS / f"{store}.jsonl").read_text().splitlines() if ln.strip()]
    if store == "regimes":
        lines = lines[::2]  # every metric and point is still there; half the renders
    damaged = 0
    for i, batch in enumerate(mutated_stores(lines)):
        edited = []
        for r, path in batch:
            if path is not None:
                mutate(r, path, BAD[bad])
                damaged += 1
            edited.append(r)
        p = tmp_path / f"{store}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in edited))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                render_everything(p, tmp_path / "out")
            except Exception as exc:  # name the damaged entries: the test's own message says what to type-check
                raise AssertionError(
                    f"round {i}: {type(exc).__name__}: {exc}; damaged {bad}: {[path for _, path in batch if path]}"
                ) from exc
    assert damaged >= len({p for r in lines for p in entry_paths(r)})  # every entry damaged at least once


def test_a_hand_edited_store_resumes_refusing_what_it_cannot_read(tmp_path):
    suite = parse_suite(
        {
            "name": "he",
            "backbones": ["resnet18"],
            "modules": ["none", "se", "eca"],
            "input_size": 32,
            "metrics": ["params", "macs"],
        },
        "he.yaml",
    )
    first = run_suite(suite, tmp_path)
    assert first.ok == 6
    store = tmp_path / "he.jsonl"
    lines = [json.loads(ln) for ln in store.read_text().splitlines()]
    lines[1]["measurement"]["stats"]["attention"] = "many"  # se params: a stat of another type
    lines[3]["attachment"] = {"sites": 8}  # none macs... an attachment without its placement
    lines[4]["config"]["input_size"] = [32, "x"]
    lines[5]["env"]["plugins"] = ["not", "a", "mapping"]
    store.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.warns(UserWarning, match="skipped 4 line"):
        again = run_suite(suite, tmp_path, resume=True)
    assert (again.reused, again.ok, again.failed) == (2, 4, 0)  # the refused cells were measured again
    assert {r.status for r in again.records} == {"ok"} and len(again.records) == 6


def test_a_valid_last_line_without_its_newline_is_kept(tmp_path):
    suite = parse_suite(
        {"name": "nl", "backbones": ["resnet18"], "modules": ["none", "se"], "input_size": 32, "metrics": ["params"]},
        "nl.yaml",
    )
    run_suite(suite, tmp_path)
    store = tmp_path / "nl.jsonl"
    store.write_bytes(store.read_bytes().rstrip(b"\n"))  # an editor that strips the final newline
    Store(store).repair()
    assert store.read_bytes().endswith(b"}\n") and len(Store(store).records()) == 2
    again = run_suite(suite, tmp_path, resume=True)
    assert (again.reused, again.ok) == (2, 0)
    store.write_bytes(store.read_bytes() + b'{"key": "torn", "sta')  # a torn line is still cut
    Store(store).repair()
    assert len(store.read_bytes().splitlines()) == 2 and math.isfinite(Store(store).records()[0].value)

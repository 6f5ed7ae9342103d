"""Records as tidy data frames: one row per cell and metric (``Results.to_pandas()``, ``report --format csv|json``),
and one row per matched cell of a comparison (``compare --format csv|json``).

Every number is the record's own (``value`` is ``Record.value``, unrounded) or is computed by the functions the
tables use (Δ and its interval: ``tables.delta_interval`` / ``delta_ms``; accuracy: ``accuracy.accuracy_rows``), so
a frame and a table never disagree. The columns are fixed and documented in docs/python-api.md (COLUMNS below);
``env_*`` columns follow, one per environment field the records carry.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from ..core import stats as st
from ..core.metrics import spec
from ..records.record import Record
from ..suite.model import Point
from .accuracy import accuracy_rows, convergence_notes
from .cells import at_point, contended, delta_interval, delta_ms, record_order, record_point
from .compare import CompareRow
from .markdown import CONTENDED, FAILS_CHECK, UNCOUNTED, UNSEEN, UNSTABLE
from .notes import failed_check, unseen_state, where

UNCONVERGED = "‡"  # the accuracy table's mark on a verdict whose baseline had not converged

COLUMNS = [
    "store",
    "suite",
    "backbone",
    "label",
    "module",
    "where",
    "input_size",
    "input_h",
    "input_w",
    "batch_size",
    "runtime",
    "seed",
    "metric",
    "kind",
    "value",
    "unit",
    "iqr",
    "value_low",
    "value_high",
    "baseline",
    "delta",
    "delta_low",
    "delta_high",
    "delta_pct",
    "delta_pct_low",
    "delta_pct_high",
    "paired",
    "delta_method",
    "status",
    "marks",
    "note",
    "error",
    "key",
    "host",
    "pid",
    "started",
    "ended",
    "executor",
]
# Environment fields every frame has as env_<name> columns (others the records carry follow, sorted).
ENV_COLUMNS = [
    "attnbench",
    "torch",
    "timm",
    "fvcore",
    "python",
    "platform",
    "device",
    "device_name",
    "cpu",
    "cpu_count",
    "threads",
    "dtype",
    "date",
    "module_package",
    "plugins",
]
COMPARE_COLUMNS = [
    "backbone",
    "label",
    "metric",
    "input_size",
    "batch_size",
    "runtime",
    "seed",
    "unit",
    "a_status",
    "b_status",
    "a_value",
    "b_value",
    "delta_pct",
    "delta_low",
    "delta_high",
    "delta_method",
    "contended",
    "regression",
    "a_key",
    "b_key",
]


def _baselines(context: Sequence[Record]) -> Dict[Tuple[str, str, Point], Record]:
    """(backbone, metric, point) -> the bare `none` record a Δ is taken against; as in the tables, the last
    such row in suite order."""
    return {(r.backbone, r.metric, record_point(r)): r for r in sorted(context, key=record_order) if r.module == "none"}


def _row_cells(rows: Dict[Tuple[str, str], List[Record]], rec: Record) -> Dict[str, Record]:
    """The record's table row at its point: metric -> record of the same backbone and label."""
    p = record_point(rec)
    return {r.metric: r for r in rows.get((rec.backbone, rec.label), ()) if at_point(r, p)}


def cell_marks(rec: Record, base: Optional[Record], row: Dict[str, Record]) -> str:
    """The marks the tables print on this cell and on its row's label (see the table notes): § state or
    compute parameters() cannot see, ✗ the module fails `attnbench check`, ‡ operators without a counting
    rule (or counters that differ), † unstable timing, ¶ timed while other processes took the CPU."""
    stats = rec.stats if rec.value is not None else {}
    marks = (UNSEEN if unseen_state(row) else "") + (
        FAILS_CHECK if failed_check(row) or rec.stats.get("check_failed") else ""
    )
    if spec(rec.metric).kind == "count" and (stats.get("unhandled") or stats.get("counters_agree") is False):
        marks += UNCOUNTED
    if stats.get("unstable"):
        marks += UNSTABLE
    if spec(rec.metric).kind == "timing" and (
        contended(rec) or (base is not None and base is not rec and contended(base))
    ):
        marks += CONTENDED
    return marks


def _delta(rec: Record, base: Optional[Record]) -> Dict[str, Any]:
    """Δ vs the baseline record, as the tables compute it: exact for counts; for timings the interval over the
    interleaved rounds (paired within one timing group, Welch's otherwise) when both keep raw samples."""
    out: Dict[str, Any] = {}
    if base is None or base is rec or rec.value is None or base.value is None:
        return out
    v, b = rec.value, base.value
    out.update(baseline=base.label, delta=v - b, delta_pct=(v - b) / b * 100 if b else None)
    kind = spec(rec.metric).kind
    if kind == "count":
        out["delta_method"] = "exact"
        return out
    if kind != "timing":
        out["delta_method"] = "difference"
        return out
    ci = delta_interval(rec, base)
    if ci is None:
        out["delta_method"] = (
            "raw samples kept, but no round of undisturbed calls on one side"
            if rec.stats.get("rounds_ms") and base.stats.get("rounds_ms")
            else "no raw samples"
        )
    else:
        out.update(
            delta_pct=ci.pct, delta_pct_low=ci.low, delta_pct_high=ci.high, paired=ci.paired, delta_method=ci.method
        )
    d = delta_ms(rec, base)
    if d is not None:
        out.update(delta=d.mean, delta_low=d.low, delta_high=d.high)
        if ci is None:
            out["paired"] = d.paired
    return out


def _accuracy_deltas(context: Sequence[Record], overhead: Sequence[Record]) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """(backbone, label) -> the accuracy table's Δtop-1 (difference of seed means, Welch's interval) and its ‡."""
    rows = accuracy_rows(context, overhead)
    unconverged = {bb for bb, text in convergence_notes(rows).items() if st.NOT_CONVERGED in text}
    out = {}
    for r in rows:
        d = r["delta"]
        if d is None:
            continue
        out[(r["backbone"], r["label"])] = {
            "baseline": r["base"]["label"],
            "delta": d.diff,
            "delta_low": d.low,
            "delta_high": d.high,
            "paired": False,
            "delta_method": "welch over seeds (difference of means)",
            "marks": UNCONVERGED if r["backbone"] in unconverged else "",
        }
    return out


def tidy_frame(
    records: Sequence[Record],
    context: Optional[Sequence[Record]] = None,
    overhead: Sequence[Record] = (),
    store: str = "",
    stats: bool = False,
) -> pd.DataFrame:
    """One row per record (a cell and its metric), in table order; Δ against the baselines in ``context``
    (default: the records themselves), so a filtered selection keeps its Δ. ``stats`` adds every scalar stat
    of the measurement as a ``stat_<name>`` column."""
    context = list(records) if context is None else list(context)
    bases = _baselines(context)
    acc = _accuracy_deltas(context, overhead) if any(r.metric == "accuracy" for r in records) else {}
    by_row: Dict[Tuple[str, str], List[Record]] = {}
    for r in context:
        by_row.setdefault((r.backbone, r.label), []).append(r)
    rows: List[Dict[str, Any]] = []
    env_keys: Dict[str, None] = {}  # ordered sets of the keys seen
    stat_keys: Dict[str, None] = {}
    for r in sorted(records, key=record_order):
        p, m = record_point(r), r.measurement
        s = spec(r.metric)
        base = bases.get((r.backbone, r.metric, p))
        row = dict.fromkeys(COLUMNS)
        row.update(
            store=store,
            suite=r.suite,
            backbone=r.backbone,
            label=r.label,
            module=r.module,
            where=where({r.metric: r}),
            input_size=f"{p.input_size[0]}x{p.input_size[1]}",
            input_h=p.input_size[0],
            input_w=p.input_size[1],
            batch_size=p.batch_size,
            runtime=p.runtime,
            seed=r.seed,
            metric=r.metric,
            kind=s.kind,
            value=r.value,
            unit=m.unit if m is not None else s.unit,
            status=r.status,
            note=r.note,
            error=f"{r.error['type']}: {r.error['message']}" if r.error else "",
            key=r.key,
            host=r.host,
            pid=r.pid,
            started=r.started,
            ended=r.ended,
            executor=(r.executor or {}).get("kind", "local"),
        )
        if r.value is not None:
            row.update(iqr=r.stats.get("iqr_ms"), value_low=r.stats.get("low_ms"), value_high=r.stats.get("high_ms"))
        marks = cell_marks(r, base, _row_cells(by_row, r))
        if s.kind == "accuracy":
            extra = dict(acc.get((r.backbone, r.label), {}))
            marks += extra.pop("marks", "")
            row.update(extra)
        else:
            row.update(_delta(r, base))
        row["marks"] = marks
        for k, v in r.env.items():
            if k == "plugins":
                row["env_plugins"] = ", ".join(f"{d} {ver}" for d, ver in sorted((v or {}).items()))
            elif not isinstance(v, (dict, list)):
                row[f"env_{k}"] = v
                env_keys[k] = None
        if stats:
            for k, v in r.stats.items():
                if not isinstance(v, (dict, list)):
                    row[f"stat_{k}"] = v
                    stat_keys[k] = None
        rows.append(row)
    extra_env = sorted(k for k in env_keys if k not in ENV_COLUMNS)
    columns = COLUMNS + [f"env_{k}" for k in ENV_COLUMNS + extra_env] + [f"stat_{k}" for k in sorted(stat_keys)]
    frame = pd.DataFrame(rows, columns=columns)
    for col in (
        "value",
        "iqr",
        "value_low",
        "value_high",
        "delta",
        "delta_low",
        "delta_high",
        "delta_pct",
        "delta_pct_low",
        "delta_pct_high",
    ):
        frame[col] = frame[col].astype("float64")
    for col in ("input_h", "input_w", "batch_size", "seed", "pid"):
        frame[col] = frame[col].astype("Int64")
    frame["paired"] = frame["paired"].astype("boolean")
    return frame


def compare_frame(rows: Sequence[CompareRow], fail_above: Optional[float] = None) -> pd.DataFrame:
    """One row per cell matched between run A and run B (``compare``): both values, B vs A in % with the noise
    band, whether a side was contended, and with ``fail_above`` whether the cell is a regression."""
    out = []
    for row in rows:
        unit = next((r.measurement.unit for r in (row.a, row.b) if r is not None and r.measurement is not None), "")
        d = row.delta
        out.append(
            {
                "backbone": row.backbone,
                "label": row.label,
                "metric": row.metric,
                "input_size": f"{row.point.input_size[0]}x{row.point.input_size[1]}",
                "batch_size": row.point.batch_size,
                "runtime": row.point.runtime,
                "seed": row.seed,
                "unit": unit,
                "a_status": row.a.status if row.a is not None else "missing",
                "b_status": row.b.status if row.b is not None else "missing",
                "a_value": row.a.value if row.a is not None else None,
                "b_value": row.b.value if row.b is not None else None,
                "delta_pct": d.pct if d is not None else None,
                "delta_low": d.low if d is not None else None,
                "delta_high": d.high if d is not None else None,
                "delta_method": d.method if d is not None else None,
                "contended": row.contended,
                "regression": row.regression_above(fail_above) if fail_above is not None else None,
                "a_key": row.a.key if row.a is not None else None,
                "b_key": row.b.key if row.b is not None else None,
            }
        )
    frame = pd.DataFrame(out, columns=COMPARE_COLUMNS)
    for col in ("a_value", "b_value", "delta_pct", "delta_low", "delta_high"):
        frame[col] = frame[col].astype("float64")
    frame["batch_size"] = frame["batch_size"].astype("Int64")
    frame["seed"] = frame["seed"].astype("Int64")
    frame["regression"] = frame["regression"].astype("boolean")
    return frame


def frame_json(frame: pd.DataFrame) -> str:
    """The frame as a JSON list of row objects, every float as Python writes it (exact; pandas' own to_json
    rounds to 10 digits), a missing value as null."""

    def plain(v):
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return None
        return v.item() if hasattr(v, "item") else v

    rows = [{k: plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
    return json.dumps(rows, indent=1, ensure_ascii=False) + "\n"


def frame_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False)

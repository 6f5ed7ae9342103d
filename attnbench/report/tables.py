"""Pure functions from records to tables (markdown, CSV); no measuring, no clock.

``attnbench report`` rebuilds the same bytes from the store alone, so everything shown --
the environment line included -- comes from the records.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd

DASH = "—"
UNSTABLE = "†"

# metric -> [(column header, kind)] ; kinds: value / delta_abs / delta_pct / spread / throughput / fvcore
COLUMNS: Dict[str, List[Tuple[str, str]]] = {
    "params": [("params (M)", "value"), ("Δparams", "delta_abs"), ("Δparams %", "delta_pct")],
    "flops": [("GFLOPs", "value"), ("ΔGFLOPs %", "delta_pct"), ("fvcore GFLOPs", "fvcore")],
    "latency_cpu": [("CPU ms, median (IQR)", "spread"), ("Δ CPU latency %", "delta_pct"), ("CPU img/s", "throughput")],
    "train_step_cpu": [("CPU train step ms (IQR)", "spread"), ("Δ CPU train %", "delta_pct")],
    "latency_gpu": [("GPU ms, median (IQR)", "spread"), ("Δ GPU latency %", "delta_pct"), ("GPU img/s", "throughput")],
    "train_step_gpu": [("GPU train step ms (IQR)", "spread"), ("Δ GPU train %", "delta_pct")],
    "memory_gpu": [("peak GPU MiB", "value"), ("Δ GPU memory %", "delta_pct")],
}
SCALE = {"params": 1e6, "flops": 1e9}
ENV_FIELDS = [("torch", "torch"), ("timm", "timm"), ("fvcore", "fvcore"), ("device", "device_name"),
              ("threads", "threads"), ("dtype", "dtype"), ("date", "date")]


def record_order(rec: dict) -> tuple:
    """Suite order: backbone, module variant, metric, seed -- the same for every table and the CSV."""
    return rec["position"][0], rec["position"][1], rec["metric"], rec["config"].get("seed") or 0


def _value(rec: dict) -> Optional[float]:
    m = rec.get("measurement") if rec and rec.get("status") == "ok" else None
    return None if m is None else float(m["value"])


def _pct(v: float, base: float) -> str:
    return f"{(v - base) / base * 100:+.2f}%" if base else DASH


def _fmt(metric: str, v: float) -> str:
    if metric == "params":
        return f"{v / 1e6:.3f}"
    if metric == "flops":
        return f"{v / 1e9:.3f}" if v >= 1e9 else f"{v / 1e9:.4f}"
    return f"{v:.2f}" if v < 100 else f"{v:.1f}"


def _status_text(rec: Optional[dict]) -> str:
    if rec is None:
        return DASH
    if rec["status"] == "failed":
        return f"failed ({rec['error']['type']})"
    if rec["status"] == "skipped":
        return "skipped"
    return DASH


def _cell(kind: str, metric: str, rec: Optional[dict], base: Optional[dict]) -> str:
    v = _value(rec)
    if v is None:
        return _status_text(rec) if kind in ("value", "spread") else DASH
    stats = rec["measurement"].get("stats", {})
    if kind == "value":
        return _fmt(metric, v)
    if kind == "spread":
        mark = UNSTABLE if stats.get("unstable") else ""
        return f"{_fmt(metric, v)} ({stats.get('iqr_ms', float('nan')):.2f}){mark}"
    if kind == "throughput":
        return f"{stats['images_per_s']:.1f}"
    if kind == "fvcore":
        return _fmt(metric, stats["fvcore"])
    bv = _value(base)
    if bv is None or rec is base:
        return DASH
    if kind == "delta_abs":
        return f"{int(v - bv):+,}"
    return _pct(v, bv)


def environment_line(records: Sequence[dict]) -> str:
    parts = []
    for label, key in ENV_FIELDS:
        vals = []
        for r in records:
            v = (r.get("env") or {}).get(key)
            if v is not None and str(v) not in vals:
                vals.append(str(v))
        if vals:
            parts.append(f"{label} {' / '.join(vals)}")
    return "Environment: " + ", ".join(parts) + "."


def _settings_line(records: Sequence[dict]) -> str:
    cfg = records[0]["config"]
    h, w = cfg["input_size"]
    out = [f"input {h}x{w}", f"batch {cfg['batch_size']} for timings (FLOPs per image)"]
    timed = [r for r in records if r.get("measurement") and "rounds" in r["measurement"].get("settings", {})]
    if timed:
        s = timed[0]["measurement"]["settings"]
        out.append(f"{s['rounds']} interleaved rounds x >= {s['min_time']} s per variant, warm-up {s['warmup']}")
    return "Settings: " + ", ".join(out) + "."


def where(cells: Dict[str, dict]) -> str:
    """Where the module sits, from any record of the row: 'block x16', 'stages 1,2,3', ..."""
    attach = next((c["attachment"] for c in cells.values() if c.get("attachment")), None)
    if not attach:
        return DASH
    if attach["placement"] == "none":
        return "—"
    if attach["placement"] == "stage":
        text = f"stage{'s' if len(attach['stages'] or []) > 1 else ''} {','.join(map(str, attach['stages'] or []))}"
        return text if attach["sites"] == len(attach["stages"] or []) else f"{text} (x{attach['sites']})"
    replaced = f", replaces {attach['replaced']} native" if attach.get("replaced") else ""
    return f"block x{attach['sites']}{replaced}"


def _table(rows: Dict[Tuple[str, str], Dict[str, dict]], metrics: List[str]) -> List[str]:
    baselines = {b: cells for (b, _), cells in rows.items() if any(c["module"] == "none" for c in cells.values())}
    header = ["backbone", "module", "where"] + [h for m in metrics for h, _ in COLUMNS[m]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for (backbone, label), cells in rows.items():
        base = baselines.get(backbone, {})
        vals = [backbone, label, where(cells)]
        for m in metrics:
            vals += [_cell(kind, m, cells.get(m), base.get(m)) for _, kind in COLUMNS[m]]
        lines.append("| " + " | ".join(vals) + " |")
    return lines


def render_markdown(records: Sequence[dict], title: Optional[str] = None) -> str:
    """A row per (backbone, module), Δ against that backbone's 'none' row; one table per
    backbone when there are three or more backbones, else one table."""
    if not records:
        return f"# {title or 'attnbench'}\n\nNo records.\n"
    records = sorted(records, key=record_order)
    metrics = [m for m in COLUMNS if any(r["metric"] == m for r in records)]
    rows: Dict[Tuple[str, str], Dict[str, dict]] = {}
    for r in records:
        rows.setdefault((r["backbone"], r["label"]), {})[r["metric"]] = r
    lines = [f"# {title or records[0]['suite']}", "", environment_line(records), _settings_line(records),
             "FLOPs: one multiply-add = one FLOP; total = fvcore's count + element-wise/reduction ops "
             "(1 per output / input element); 'fvcore GFLOPs' is fvcore alone.", ""]
    backbones = list(dict.fromkeys(b for b, _ in rows))
    if len(backbones) >= 3:
        for b in backbones:
            lines += [f"## {b}", ""] + _table({k: v for k, v in rows.items() if k[0] == b}, metrics) + [""]
        lines.pop()
    else:
        lines += _table(rows, metrics)
    notes = []
    if any((r.get("measurement") or {}).get("stats", {}).get("unstable") for r in records):
        notes.append(f"{UNSTABLE} IQR above 10% of the median: unstable timing, rerun on a quieter machine.")
    for r in records:
        if r["status"] == "failed":
            notes.append(f"failed {r['backbone']}/{r['label']}/{r['metric']}: {r['error']['type']}: {r['error']['message']}")
    skipped = sorted({r["note"] for r in records if r["status"] == "skipped"})
    for note in skipped:
        which = sorted({r["metric"] for r in records if r["status"] == "skipped" and r["note"] == note})
        notes.append(f"skipped {', '.join(which)}: {note}")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def flat_records(records: Sequence[dict]) -> pd.DataFrame:
    rows = []
    for r in sorted(records, key=record_order):
        m = r.get("measurement") or {}
        row = {k: r.get(k) for k in ("suite", "backbone", "label", "module", "metric", "status", "key")}
        row.update({"value": m.get("value"), "unit": m.get("unit"), "method": m.get("method")})
        for k, v in (m.get("stats") or {}).items():
            if not isinstance(v, (dict, list)):
                row[k] = v
        row["error"] = f"{r['error']['type']}: {r['error']['message']}" if r.get("error") else ""
        row.update({f"env_{k}": v for k, v in (r.get("env") or {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def render_compare(a: Sequence[dict], b: Sequence[dict], name_a: str = "A", name_b: str = "B") -> str:
    """Δ between two runs, matched on (backbone, module label, metric)."""
    def index(recs):
        return {(r["backbone"], r["label"], r["metric"]): r for r in recs}

    ia, ib = index(a), index(b)
    lines = [f"# compare {name_a} -> {name_b}", "", "| backbone | module | metric | unit | A | B | Δ % |", "|---|---|---|---|---:|---:|---:|"]
    for key in [k for k in ia if k in ib] + [k for k in ib if k not in ia]:
        ra, rb = ia.get(key), ib.get(key)
        va, vb = _value(ra), _value(rb)
        unit = ((ra or rb).get("measurement") or {}).get("unit", "")
        fa = _fmt(key[2], va) if va is not None else _status_text(ra)
        fb = _fmt(key[2], vb) if vb is not None else _status_text(rb)
        delta = _pct(vb, va) if va is not None and vb is not None else DASH
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {unit} | {fa} | {fb} | {delta} |")
    return "\n".join(lines) + "\n"

"""Pure functions from records to tables (markdown, CSV); no measuring, no clock.

``attnbench report`` rebuilds the same bytes from the store alone, so everything shown --
the environment line included -- comes from the records.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from ..metrics import SPECS, spec
from ..records import Record

DASH = "—"
UNSTABLE = "†"
UNCOUNTED = "‡"
UNSEEN = "§"
ENV_FIELDS = [("torch", "torch"), ("timm", "timm"), ("fvcore", "fvcore"), ("device", "device_name"),
              ("threads", "threads"), ("dtype", "dtype"), ("date", "date")]
MACS_NOTE = ("MACs: one multiply-add = 1 MAC (the SE, CBAM and ECA papers call this a FLOP); convolutions, linears and "
             "matmuls as fvcore counts them, plus element-wise, reduction, pooling and normalisation work by the rules in "
             "the README; 'conv/linear GMACs' is the style-independent part alone.")


def record_order(rec: Record) -> tuple:
    """Suite order: backbone, module variant, metric, seed -- the same for every table and the CSV."""
    return rec.position[0], rec.position[1], rec.metric, rec.seed or 0


def _pct(v: float, base: float) -> str:
    return f"{(v - base) / base * 100:+.2f}%" if base else DASH


def _fmt(metric: str, v: float) -> str:
    scale = spec(metric).scale
    if scale == 1e6:
        return f"{v / 1e6:.3f}"
    if scale == 1e9:
        return f"{v / 1e9:.3f}" if v >= 1e9 else f"{v / 1e9:.4f}"
    return f"{v:.2f}" if v < 100 else f"{v:.1f}"


def _cell(kind: str, metric: str, rec: Optional[Record], base: Optional[Record]) -> str:
    v = rec.value if rec is not None else None
    if v is None:
        return (rec.status_text() if rec is not None else DASH) if kind in ("value", "spread") else DASH
    stats = rec.stats
    if kind == "value":
        return _fmt(metric, v) + (UNCOUNTED if stats.get("unhandled") or stats.get("counters_agree") is False else "")
    if kind == "spread":
        mark = UNSTABLE if stats.get("unstable") else ""
        return f"{_fmt(metric, v)} ({stats.get('iqr_ms', float('nan')):.2f}){mark}"
    if kind == "throughput":
        return f"{stats['images_per_s']:.1f}"
    if kind.startswith("part:"):
        part = stats.get(kind[5:])
        return _fmt(metric, part) if part is not None else DASH
    bv = base.value if base is not None else None
    if bv is None or rec is base:
        return DASH
    if kind == "delta_abs":
        return f"{int(v - bv):+,}"
    return _pct(v, bv)


def environment_line(records: Sequence[Record]) -> str:
    parts = []
    for label, key in ENV_FIELDS:
        vals = []
        for r in records:
            v = r.env.get(key)
            if v is not None and str(v) not in vals:
                vals.append(str(v))
        if vals:
            parts.append(f"{label} {' / '.join(vals)}")
    plugins = sorted({f"{d} {v}" for r in records for d, v in (r.env.get("plugins") or {}).items()})
    if plugins:
        parts.append(f"plugins {', '.join(plugins)}")
    return "Environment: " + ", ".join(parts) + "."


def _distinct(values) -> str:
    return " / ".join(dict.fromkeys(str(v) for v in values))


def settings_line(records: Sequence[Record]) -> str:
    """What the numbers depend on, read from the records (input, batch, timing protocol)."""
    sizes = _distinct(f"{r.config['input_size'][0]}x{r.config['input_size'][1]}" for r in records if "input_size" in r.config)
    out = [f"input {sizes}"] if sizes else []
    if any(spec(r.metric).kind == "count" for r in records):
        out.append("counts per image")
    timed = [r for r in records if spec(r.metric).kind in ("timing", "memory")]
    if timed:
        out.append(f"batch {_distinct(r.config.get('batch_size') for r in timed)} for timings")
        measured = [r.measurement.settings for r in timed if r.measurement is not None and "rounds" in r.measurement.settings]
        if measured:
            s = measured[0]
            extras = [k for k in ("amp", "channels_last", "compile") if s.get(k)]
            out.append(f"{s['rounds']} interleaved rounds x >= {s['min_time']} s per variant, warm-up {s['warmup']}"
                       + (f", {', '.join(f'{k} {s[k]}' for k in extras)}" if extras else ""))
    return "Settings: " + ", ".join(out) + "."


def where(cells: Dict[str, Record]) -> str:
    """Where the module sits, from any record of the row."""
    from ..attach import describe

    attach = next((c.attachment for c in cells.values() if c.attachment), None)
    return describe(attach) if attach else DASH


def unseen_state(cells: Dict[str, Record]) -> str:
    """Why a row's parameter count may mislead: state parameters() cannot see, or no parameters
    but compute inside the attached module (parameter-free by design, or hidden state)."""
    params, macs = cells.get("params"), cells.get("macs")
    if params is None or params.value is None or params.module in ("none", "native"):
        return ""
    if params.stats.get("hidden_numel"):
        return f"state parameters() cannot see: {params.stats['hidden_numel']:,} elements ({', '.join(params.stats['hidden_state'][:3])})"
    if params.stats.get("attention") == 0 and macs is not None and macs.value is not None and macs.stats.get("attention"):
        return f"no registered parameters, {macs.stats['attention']:,} MACs inside the module"
    return ""


def _is_bare_baseline(rec: Record) -> bool:
    return rec.module == "none"


def _table(rows: Dict[Tuple[str, str], Dict[str, Record]], metrics: List[str]) -> List[str]:
    baselines = {b: cells for (b, _), cells in rows.items() if any(_is_bare_baseline(c) for c in cells.values())}
    header = ["backbone", "module", "where"] + [h for m in metrics for h, _ in spec(m).columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for (backbone, label), cells in rows.items():
        base = baselines.get(backbone, {})
        vals = [backbone, label + (UNSEEN if unseen_state(cells) else ""), where(cells)]
        for m in metrics:
            vals += [_cell(kind, m, cells.get(m), base.get(m)) for _, kind in spec(m).columns]
        lines.append("| " + " | ".join(vals) + " |")
    return lines


def render_markdown(records: Sequence[Record], title: Optional[str] = None) -> str:
    """A row per (backbone, module), Δ against that backbone's bare 'none' row; one table per
    backbone when there are three or more backbones, else one table."""
    if not records:
        return f"# {title or 'attnbench'}\n\nNo records.\n"
    records = sorted(records, key=record_order)
    metrics = [m for m in SPECS if any(r.metric == m for r in records) and spec(m).columns]
    rows: Dict[Tuple[str, str], Dict[str, Record]] = {}
    for r in records:
        rows.setdefault((r.backbone, r.label), {})[r.metric] = r
    lines = [f"# {title or records[0].suite}", "", environment_line(records), settings_line(records)]
    if any(spec(m).scale == 1e9 for m in metrics):
        lines.append(MACS_NOTE)
    lines.append("Δ: against the same backbone's `none` row, the bare backbone (native attention removed where it has any); "
                 "a `native` row is timm's model as built, so its Δ is what the native attention costs.")
    lines.append("")
    backbones = list(dict.fromkeys(b for b, _ in rows))
    if len(backbones) >= 3:
        for b in backbones:
            lines += [f"## {b}", ""] + _table({k: v for k, v in rows.items() if k[0] == b}, metrics) + [""]
        lines.pop()
    else:
        lines += _table(rows, metrics)
    notes = _notes(records)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _notes(records: Sequence[Record]) -> List[str]:
    notes = []
    if any(r.stats.get("unstable") for r in records):
        notes.append(f"{UNSTABLE} IQR above 10% of the median: unstable timing, rerun on a quieter machine.")
    uncounted: Dict[str, set] = {}
    for r in records:
        for op in r.stats.get("unhandled") or {}:
            uncounted.setdefault(op, set()).add(f"{r.backbone}/{r.label}")
    if uncounted:
        ops = "; ".join(f"{op} ({', '.join(sorted(rows))})" for op, rows in sorted(uncounted.items()))
        notes.append(f"{UNCOUNTED} operators with no counting rule, so not in these MACs: {ops}.")
    for r in records:
        if r.stats.get("counters_agree") is False and not r.stats.get("unhandled"):
            notes.append(f"{UNCOUNTED} {r.backbone}/{r.label}: the two MAC counters differ: {r.stats.get('counter_difference', '?')}.")
    rows: Dict[Tuple[str, str], Dict[str, Record]] = {}
    for r in records:
        rows.setdefault((r.backbone, r.label), {})[r.metric] = r
    for (backbone, label), cells in rows.items():
        why = unseen_state(cells)
        if why:
            notes.append(f"{UNSEEN} {backbone}/{label}: {why}.")
    for r in records:
        if r.status == "failed":
            notes.append(f"failed {r.backbone}/{r.label}/{r.metric}: {r.error['type']}: {r.error['message']}")
    for status in ("unsupported", "skipped"):
        for note in sorted({r.note for r in records if r.status == status}):
            which = sorted({f"{r.backbone}/{r.label}" if status == "unsupported" else r.metric
                            for r in records if r.status == status and r.note == note})
            notes.append(f"{status} {', '.join(which)}: {note}")
    return notes


def flat_records(records: Sequence[Record]) -> pd.DataFrame:
    rows = []
    for r in sorted(records, key=record_order):
        m = r.measurement
        row = {"suite": r.suite, "backbone": r.backbone, "label": r.label, "module": r.module, "metric": r.metric,
               "status": r.status, "key": r.key, "value": m.value if m else None, "unit": m.unit if m else None,
               "method": m.method if m else None}
        for k, v in r.stats.items():
            if not isinstance(v, (dict, list)):
                row[k] = v
        row["where"] = where({r.metric: r})
        row["error"] = f"{r.error['type']}: {r.error['message']}" if r.error else ""
        row["note"] = r.note
        row.update({f"env_{k}": v for k, v in r.env.items() if not isinstance(v, dict)})
        rows.append(row)
    return pd.DataFrame(rows)


def render_compare(a: Sequence[Record], b: Sequence[Record], name_a: str = "A", name_b: str = "B") -> str:
    """Δ between two runs, matched on (backbone, module label, metric)."""
    def index(recs):
        return {(r.backbone, r.label, r.metric): r for r in recs}

    ia, ib = index(a), index(b)
    lines = [f"# compare {name_a} -> {name_b}", "", "| backbone | module | metric | unit | A | B | Δ % |", "|---|---|---|---|---:|---:|---:|"]
    for key in [k for k in ia if k in ib] + [k for k in ib if k not in ia]:
        ra, rb = ia.get(key), ib.get(key)
        va, vb = (ra.value if ra else None), (rb.value if rb else None)
        unit = next((r.measurement.unit for r in (ra, rb) if r is not None and r.measurement is not None), "")
        fa = _fmt(key[2], va) if va is not None else (ra.status_text() if ra else DASH)
        fb = _fmt(key[2], vb) if vb is not None else (rb.status_text() if rb else DASH)
        delta = _pct(vb, va) if va is not None and vb is not None else DASH
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {unit} | {fa} | {fb} | {delta} |")
    return "\n".join(lines) + "\n"

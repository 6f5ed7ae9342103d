"""Pure functions from records to tables (markdown, CSV); no measuring, no clock.

``attnbench report`` rebuilds the same bytes from the store alone, so everything shown --
the environment line included -- comes from the records.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from ..metrics import RUNTIMES, SPECS, spec
from ..records import Record
from ..stats import RatioInterval, paired_ratio_interval, unpaired_ratio_interval
from ..suite import Point

DASH = "—"
UNSTABLE = "†"
UNCOUNTED = "‡"
UNSEEN = "§"
ENV_FIELDS = [("torch", "torch"), ("timm", "timm"), ("fvcore", "fvcore"), ("device", "device_name"),
              ("threads", "threads"), ("dtype", "dtype"), ("date", "date")]
MACS_NOTE = ("MACs: one multiply-add = 1 MAC (the SE, CBAM and ECA papers call this a FLOP); convolutions, linears and "
             "matmuls as fvcore counts them, plus element-wise, reduction, pooling and normalisation work by the rules in "
             "the README; 'conv/linear GMACs' is the style-independent part alone.")


MEMORY_NOTE = ("Memory: 'act.' counts the elements of every operator output that is a new tensor in one eval forward "
               "(views and in-place outputs allocate nothing and count 0), per image; 'conv/linear act.' is fvcore's own count "
               "(conv, linear, matmul outputs only). 'saved for backward' is the bytes of the tensors autograd saves in one "
               "training forward (saved-tensor hooks, each storage once, parameters and buffers excluded), per image.")


def record_point(rec: Record) -> Point:
    """The (input size, batch, runtime) a record was measured at (runtime: eager when absent)."""
    size = rec.config.get("input_size") or (224, 224)
    return Point((int(size[0]), int(size[1])), int(rec.config.get("batch_size") or 1), rec.config.get("runtime", "eager"))


def point_order(p: Point) -> tuple:
    """Sweeps read left to right: resolution, then batch, then runtime (in attnbench's runtime order)."""
    rt = RUNTIMES.index(p.runtime) if p.runtime in RUNTIMES else len(RUNTIMES)
    return p.input_size[0] * p.input_size[1], p.input_size, p.batch_size, rt


def record_order(rec: Record) -> tuple:
    """Suite order: backbone, module variant, metric, point, seed -- the same for every table and the CSV."""
    return rec.position[0], rec.position[1], rec.metric, point_order(record_point(rec)), rec.seed or 0


def at_point(rec: Record, p: Point) -> bool:
    """Whether a record belongs in the table of point ``p``: it matches on the axes its metric depends on."""
    s, q = spec(rec.metric), record_point(rec)
    return all(getattr(q, axis) == getattr(p, axis) for axis in s.axes)


def delta_interval(rec: Record, base: Record) -> Optional[RatioInterval]:
    """Paired Δ% with its 95% interval, from the raw per-round samples both records keep."""
    a, b = rec.stats.get("rounds_ms"), base.stats.get("rounds_ms")
    return paired_ratio_interval(a, b) if a and b else None


def _ci_text(ci: Optional[RatioInterval]) -> str:
    if ci is None or ci.low is None:
        return ""
    return f" [{ci.low:+.1f}, {ci.high:+.1f}]"


def _pct(v: float, base: float) -> str:
    return f"{(v - base) / base * 100:+.2f}%" if base else DASH


def _fmt(metric: str, v: float) -> str:
    scale = spec(metric).scale
    if scale == 1e9:
        return f"{v / 1e9:.3f}" if v >= 1e9 else f"{v / 1e9:.4f}"
    if scale != 1:
        return f"{v / scale:.3f}"
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
    if kind == "delta_ci":
        ci = delta_interval(rec, base)
        return f"{ci.pct:+.2f}%{_ci_text(ci)}" if ci is not None else _pct(v, bv)
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
            extras = [k for k in ("amp", "channels_last") if s.get(k)]
            out.append(f"{s['rounds']} interleaved rounds x >= {s['min_time']} s per variant, warm-up {s['warmup']}"
                       + (f", {', '.join(f'{k} {s[k]}' for k in extras)}" if extras else ""))
        runtimes = _distinct(r.config.get("runtime", "eager") for r in timed)
        out.append(f"runtime {runtimes}")
    text = "Settings: " + ", ".join(out) + "."
    if any(r.stats.get("rounds_ms") for r in timed):
        text += (" Δ latency [95% CI]: paired over the interleaved rounds: per round the ratio of the two medians, "
                 "t interval on the mean log ratio (n-1 df), shown as %.")
    if any(r.stats.get("prepare_s") is not None for r in timed):
        text += (" 'setup s': export / compile / session creation (with the first, compiling call), timed apart and "
                 "never inside the latency; each runtime's output was checked against eager before timing.")
    return text


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


def _columns(metric: str, records) -> Tuple[Tuple[str, str], ...]:
    """A metric's columns, plus its optional ones when some record has that stat (setup time)."""
    extra = tuple(c for c in spec(metric).optional_columns
                  if any(r.metric == metric and r.stats.get(c[1][5:]) is not None for r in records))
    return spec(metric).columns + extra


def _table(rows: Dict[Tuple[str, str], Dict[str, Record]], metrics: List[str]) -> List[str]:
    baselines = {b: cells for (b, _), cells in rows.items() if any(_is_bare_baseline(c) for c in cells.values())}
    records = [r for cells in rows.values() for r in cells.values()]
    columns = {m: _columns(m, records) for m in metrics}
    header = ["backbone", "module", "where"] + [h for m in metrics for h, _ in columns[m]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for (backbone, label), cells in rows.items():
        base = baselines.get(backbone, {})
        vals = [backbone, label + (UNSEEN if unseen_state(cells) else ""), where(cells)]
        for m in metrics:
            vals += [_cell(kind, m, cells.get(m), base.get(m)) for _, kind in columns[m]]
        lines.append("| " + " | ".join(vals) + " |")
    return lines


def render_markdown(records: Sequence[Record], title: Optional[str] = None) -> str:
    """A row per (backbone, module), Δ against that backbone's bare 'none' row; one table per
    backbone when there are three or more backbones, else one table."""
    if not records:
        return f"# {title or 'attnbench'}\n\nNo records.\n"
    records = sorted(records, key=record_order)
    metrics = [m for m in SPECS if any(r.metric == m for r in records) and spec(m).columns]
    lines = [f"# {title or records[0].suite}", "", environment_line(records), settings_line(records)]
    if any(spec(m).scale == 1e9 for m in metrics):
        lines.append(MACS_NOTE)
    if any(m in ("activations", "train_memory") for m in metrics):
        lines.append(MEMORY_NOTE)
    lines.append("Δ: against the same backbone's `none` row, the bare backbone (native attention removed where it has any); "
                 "a `native` row is timm's model as built, so its Δ is what the native attention costs.")
    lines.append("")
    points = sweep_points(records)
    if len(points) <= 1:
        lines += _point_tables(records, metrics, "##")
    else:
        lines += render_pivots(records, metrics)
        for p in points:
            lines += ["", f"## {p.label}", ""] + _point_tables([r for r in records if at_point(r, p)], metrics, "###")
    notes = _notes(records)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _rows(records: Sequence[Record]) -> Dict[Tuple[str, str], Dict[str, Record]]:
    """(backbone, module label) -> metric -> record, in the records' order."""
    rows: Dict[Tuple[str, str], Dict[str, Record]] = {}
    for r in records:
        rows.setdefault((r.backbone, r.label), {})[r.metric] = r
    return rows


def _point_tables(records: Sequence[Record], metrics: List[str], level: str) -> List[str]:
    """The cost table of one point: a row per (backbone, module); one table per backbone from three up."""
    rows = _rows(records)
    metrics = [m for m in metrics if any(r.metric == m for r in records)]
    backbones = list(dict.fromkeys(b for b, _ in rows))
    if len(backbones) < 3:
        return _table(rows, metrics)
    lines = []
    for b in backbones:
        lines += [f"{level} {b}", ""] + _table({k: v for k, v in rows.items() if k[0] == b}, metrics) + [""]
    return lines[:-1]


def sweep_points(records: Sequence[Record]) -> List[Point]:
    """The points a set of records spans, in sweep order (those of timings when there are any)."""
    timed = [r for r in records if "runtime" in spec(r.metric).axes]
    return sorted({record_point(r) for r in (timed or records)}, key=point_order)


def _axis_label(metric: str, p: Point) -> str:
    return p.axes_label(spec(metric).axes)


def _unit_label(metric: str) -> str:
    s = spec(metric)
    if s.scale == 2 ** 20:
        return "MiB"
    return {1e6: "M ", 1e9: "G"}.get(s.scale, "") + s.unit + (" (median)" if s.kind == "timing" else "")


def render_pivots(records: Sequence[Record], metrics: List[str]) -> List[str]:
    """One pivot per metric: a row per (backbone, module), a column per point the metric varies over;
    the `none` row gives the value, the others their Δ% (timings with the paired 95% interval)."""
    lines = ["## Across the sweep", ""]
    for m in metrics:
        recs = [r for r in records if r.metric == m]
        pts = sorted({record_point(r) for r in recs}, key=point_order)
        if len(pts) < 2:
            continue
        header = ["backbone", "module"] + [_axis_label(m, p) for p in pts]
        lines += [f"**{m}**: the `none` row in {_unit_label(m)}, the others Δ% vs `none`"
                  + (" [95% CI]" if spec(m).kind == "timing" else ""), "",
                  "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(pts)]
        index = {(r.backbone, r.label, record_point(r)): r for r in recs}
        for backbone, label in dict.fromkeys((r.backbone, r.label) for r in recs):
            vals = [backbone, label]
            for p in pts:
                rec, base = index.get((backbone, label, p)), index.get((backbone, "none", p))
                if rec is None or rec.value is None:
                    vals.append(rec.status_text() if rec is not None else DASH)
                elif rec.module == "none":
                    vals.append(_fmt(m, rec.value))
                else:
                    vals.append(_cell("delta_ci" if spec(m).kind == "timing" else "delta_pct", m, rec, base))
            lines.append("| " + " | ".join(vals) + " |")
        lines.append("")
    return lines[:-1] if len(lines) > 2 else []


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
    for (backbone, label), cells in _rows(records).items():
        why = unseen_state(cells)
        if why:
            notes.append(f"{UNSEEN} {backbone}/{label}: {why}.")
    several = len(sweep_points(records)) > 1
    for r in records:
        if r.status == "failed":
            at = f" @ {_axis_label(r.metric, record_point(r))}" if several else ""
            notes.append(f"failed {r.backbone}/{r.label}/{r.metric}{at}: {r.error['type']}: {r.error['message']}")
    for status in ("unsupported", "skipped"):
        for note in sorted({r.note for r in records if r.status == status}):
            which = sorted({f"{r.backbone}/{r.label}" if status == "unsupported" else
                            r.metric + (f" @ {_axis_label(r.metric, record_point(r))}" if several else "")
                            for r in records if r.status == status and r.note == note})
            notes.append(f"{status} {', '.join(which)}: {note}")
    return notes


def flat_records(records: Sequence[Record]) -> pd.DataFrame:
    rows = []
    for r in sorted(records, key=record_order):
        m = r.measurement
        p = record_point(r)
        row = {"suite": r.suite, "backbone": r.backbone, "label": r.label, "module": r.module, "metric": r.metric,
               "input_size": f"{p.input_size[0]}x{p.input_size[1]}", "batch_size": p.batch_size, "runtime": p.runtime,
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


@dataclass(frozen=True)
class CompareRow:
    """One cell matched between run A and run B; ``delta`` is B vs A in % with its noise band."""

    backbone: str
    label: str
    metric: str
    point: Point
    a: Optional[Record]
    b: Optional[Record]
    delta: Optional[RatioInterval]

    def regression_above(self, pct: float) -> bool:
        """Worse by more than ``pct`` and beyond the noise band: B's Δ exceeds pct and its interval excludes 0.
        Without a band (exact counts; timings stored before raw samples were kept) Δ > pct is enough.
        Accuracy is never a cost regression here."""
        if self.delta is None or spec(self.metric).kind == "accuracy":
            return False
        if self.delta.low is None:
            return self.delta.pct > pct
        return self.delta.pct > pct and self.delta.low > 0


def compare_rows(a: Sequence[Record], b: Sequence[Record]) -> List[CompareRow]:
    """Cells of two runs matched on (backbone, module label, metric, point, seed)."""
    def index(recs):
        return {(r.backbone, r.label, r.metric, record_point(r), r.seed): r for r in sorted(recs, key=record_order)}

    ia, ib = index(a), index(b)
    rows = []
    for key in [k for k in ia if k in ib] + [k for k in ia if k not in ib] + [k for k in ib if k not in ia]:
        ra, rb = ia.get(key), ib.get(key)
        delta = None
        if ra is not None and rb is not None and ra.value is not None and rb.value is not None and ra.value > 0:
            sa, sb = ra.stats.get("rounds_ms"), rb.stats.get("rounds_ms")
            delta = unpaired_ratio_interval(sb, sa) if sa and sb else None
            if delta is None:  # counts (exact) or records without raw samples: the plain ratio, no band
                delta = RatioInterval((rb.value / ra.value - 1) * 100, None, None, 1,
                                      "exact" if spec(key[2]).kind == "count" else "no raw samples")
        rows.append(CompareRow(key[0], key[1], key[2], key[3], ra, rb, delta))
    return rows


def render_compare(a: Sequence[Record], b: Sequence[Record], name_a: str = "A", name_b: str = "B",
                   fail_above: Optional[float] = None) -> str:
    """Δ between two runs, matched on (backbone, module label, metric, point), with the noise band of
    timings (Welch's 95% interval on the per-round log medians of each run; runs are not paired)."""
    return render_compare_rows(compare_rows(a, b), name_a, name_b, fail_above)


def render_compare_rows(rows: Sequence[CompareRow], name_a: str = "A", name_b: str = "B",
                        fail_above: Optional[float] = None) -> str:
    several = len({r.point for r in rows}) > 1
    lines = [f"# compare {name_a} -> {name_b}", "",
             "Δ % = B vs A; timings carry a 95% noise band from each run's raw per-round samples (Welch's t on the "
             "per-round log medians); counts are exact.", "",
             "| backbone | module | metric |" + (" point |" if several else "") + " unit | A | B | Δ % | noise band |",
             "|---|---|---|" + ("---|" if several else "") + "---|---:|---:|---:|---|"]
    for row in rows:
        unit = next((r.measurement.unit for r in (row.a, row.b) if r is not None and r.measurement is not None), "")
        fa = _fmt(row.metric, row.a.value) if row.a is not None and row.a.value is not None else (row.a.status_text() if row.a else DASH)
        fb = _fmt(row.metric, row.b.value) if row.b is not None and row.b.value is not None else (row.b.status_text() if row.b else DASH)
        d = row.delta
        delta = f"{d.pct:+.2f}%" if d is not None else DASH
        band = (f"[{d.low:+.1f}, {d.high:+.1f}]" if d.low is not None else d.method) if d is not None else DASH
        if fail_above is not None and row.regression_above(fail_above):
            band += f" **regression > {fail_above:g}%**"
        point = f" {_axis_label(row.metric, row.point)} |" if several else ""
        lines.append(f"| {row.backbone} | {row.label} | {row.metric} |{point} {unit} | {fa} | {fb} | {delta} | {band} |")
    return "\n".join(lines) + "\n"

"""The cost tables: the overhead table per point, sweep pivots and per-site tables (pure functions of records)."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from ..core.metrics import SPECS, spec
from ..records.record import Record
from ..suite.model import Point
from .cells import (
    _axis_label,
    _cell,
    _fmt,
    _ms_text,
    _unit_label,
    at_point,
    delta_ms,
    point_order,
    record_order,
    record_point,
    sweep_points,
)
from .markdown import CONTENDED, DASH, FAILS_CHECK, UNCOUNTED, UNSEEN, UNSTABLE, md_row, md_text
from .notes import (
    MACS_NOTE,
    MEMORY_NOTE,
    TRAFFIC_NOTE,
    environment_line,
    failed_check,
    marked,
    origins_note,
    settings_line,
    timing_notes,
    timing_origins,
    unseen_state,
    where,
)


def _is_bare_baseline(rec: Record) -> bool:
    return rec.module == "none"


def _columns(metric: str, records) -> Tuple[Tuple[str, str], ...]:
    """A metric's columns, plus its optional ones when some record has that stat (setup time)."""
    extra = tuple(
        c
        for c in spec(metric).optional_columns
        if any(r.metric == metric and r.stats.get(c[1].split(":", 1)[1]) is not None for r in records)
    )
    return spec(metric).columns + extra


def _table(
    rows: Dict[Tuple[str, str], Dict[str, Record]], metrics: List[str], origins: Optional[Dict[tuple, int]] = None
) -> List[str]:
    baselines = {b: cells for (b, _), cells in rows.items() if any(_is_bare_baseline(c) for c in cells.values())}
    records = [r for cells in rows.values() for r in cells.values()]
    columns = {m: _columns(m, records) for m in metrics}
    header = ["backbone", "module", "where"] + [h for m in metrics for h, _ in columns[m]]
    lines = [md_row(header), "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for (backbone, label), cells in rows.items():
        base = baselines.get(backbone, {})
        vals = [backbone, marked(label, cells, origins), where(cells)]
        for m in metrics:
            vals += [
                _cell("delta_ms", "latency_cpu", cells.get("latency_cpu"), base.get("latency_cpu"))
                if kind == "whole_ms"
                else _cell(kind, m, cells.get(m), base.get(m))
                for _, kind in columns[m]
            ]
        lines.append(md_row(vals))
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
    if any(r.metric == "macs" and r.stats.get("bytes") is not None for r in records):
        lines.append(TRAFFIC_NOTE)
    lines.append(
        "Δ: against the same backbone's `none` row, the bare backbone (native attention removed where it has any); "
        "a `native` row is timm's model as built, so its Δ is what the native attention costs."
    )
    lines.append("")
    points, origins = sweep_points(records), timing_origins(records)
    if len(points) <= 1:
        lines += _point_tables(records, metrics, "##", origins)
    else:
        lines += render_pivots(records, metrics)
        for p in points:
            lines += ["", f"## {p.label}", ""] + _point_tables(
                [r for r in records if at_point(r, p)], metrics, "###", origins
            )
    lines += render_sites(records)
    notes = _notes(records) + ([origins_note(origins)] if origins else [])
    if notes:
        lines += [""] + [f"- {md_text(n)}" for n in notes]
    return "\n".join(lines) + "\n"


def _rows(records: Sequence[Record]) -> Dict[Tuple[str, str], Dict[str, Record]]:
    """(backbone, module label) -> metric -> record, in the records' order."""
    rows: Dict[Tuple[str, str], Dict[str, Record]] = {}
    for r in records:
        rows.setdefault((r.backbone, r.label), {})[r.metric] = r
    return rows


def _point_tables(
    records: Sequence[Record], metrics: List[str], level: str, origins: Optional[Dict[tuple, int]] = None
) -> List[str]:
    """The cost table of one point: a row per (backbone, module); one table per backbone from three up."""
    rows = _rows(records)
    metrics = [m for m in metrics if any(r.metric == m for r in records)]
    backbones = list(dict.fromkeys(b for b, _ in rows))
    if len(backbones) < 3:
        return _table(rows, metrics, origins)
    lines = []
    for b in backbones:
        lines += [f"{level} {b}", ""] + _table({k: v for k, v in rows.items() if k[0] == b}, metrics, origins) + [""]
    return lines[:-1]


def whole_network_ms(records: Sequence[Record], rec: Record):
    """The paired whole-network Δ ms (eager latency_cpu vs the backbone's `none` at the same size and batch)
    that an attention_cpu record's direct time is set beside; None when the suite did not time it."""
    p = record_point(rec)
    lat = {
        (r.backbone, r.label): r
        for r in records
        if r.metric == "latency_cpu" and r.ok and record_point(r) == Point(p.input_size, p.batch_size, "eager")
    }
    v, b = lat.get((rec.backbone, rec.label)), lat.get((rec.backbone, "none"))
    return delta_ms(v, b) if v is not None and b is not None else None


def render_sites(records: Sequence[Record]) -> List[str]:
    """Direct attribution: per (backbone, module) the attached modules' own time, per stage and in total,
    beside the whole network's Δ ms from the latency rows."""
    recs = [r for r in sorted(records, key=record_order) if r.metric == "attention_cpu" and r.ok]
    if not recs:
        return []
    stages = sorted({int(k) for r in recs for k in (r.stats.get("stages") or {})})
    several = len({record_point(r) for r in recs}) > 1
    header = (
        ["backbone", "module"]
        + (["point"] if several else [])
        + [f"stage {k} ms" if k else "stage ? ms" for k in stages]
        + ["direct total ms [95% CI]", "whole network Δ ms [95% CI]", "direct / whole"]
    )
    lines = [
        "",
        "## Attention modules alone, per stage (direct attribution)",
        "",
        "Each attached module timed alone on the input it sees in the model (captured from one forward), every site "
        "of every variant interleaved call by call; per stage the sum of its sites' per-round medians [95% CI over "
        "rounds]. 'whole network' is the paired Δ ms of the latency table (same size and batch, eager).",
        "",
        md_row(header),
        "|---|---|" + ("---|" if several else "") + "---:|" * (len(header) - 2 - several),
    ]
    for r in recs:
        st_ = r.stats.get("stages") or {}
        vals = [r.backbone, r.label] + ([_axis_label(r.metric, record_point(r))] if several else [])
        for k in stages:
            e = st_.get(str(k))
            vals.append(
                DASH
                if not e or e.get("ms") is None
                else f"{e['ms']:.3f}" + (f" (x{e['sites']})" if e.get("sites") else "")
            )
        vals.append(_cell("direct", r.metric, r, None))
        whole = whole_network_ms(records, r)
        if whole is not None and whole[0] != whole[0]:
            vals.append(f"not supported{CONTENDED}")
        else:
            vals.append(
                DASH
                if whole is None
                else _ms_text(whole.mean, whole.low, whole.high) + ("" if whole.paired else " (unpaired)")
            )
        vals.append(f"{r.value / whole[0]:.2f}" if whole is not None and whole[0] > 0 else DASH)
        lines.append(md_row(vals))
    return lines


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
        lines += [
            f"**{m}**: the `none` row in {_unit_label(m)}, the others Δ% vs `none`"
            + (" [95% CI]" if spec(m).kind == "timing" else ""),
            "",
            md_row(header),
            "|---|---|" + "---:|" * len(pts),
        ]
        index = {(r.backbone, r.label, record_point(r)): r for r in recs}
        for backbone, label in dict.fromkeys((r.backbone, r.label) for r in recs):
            vals = [
                backbone,
                label
                + (
                    FAILS_CHECK
                    if failed_check({i: r for i, r in enumerate(recs) if (r.backbone, r.label) == (backbone, label)})
                    else ""
                ),
            ]
            for p in pts:
                rec, base = index.get((backbone, label, p)), index.get((backbone, "none", p))
                if rec is None or rec.value is None:
                    vals.append(rec.status_text() if rec is not None else DASH)
                elif rec.module == "none":
                    vals.append(_fmt(m, rec.value))
                else:
                    vals.append(_cell("delta_ci" if spec(m).kind == "timing" else "delta_pct", m, rec, base))
            lines.append(md_row(vals))
        lines.append("")
    return lines[:-1] if len(lines) > 2 else []


def _notes(records: Sequence[Record]) -> List[str]:
    notes = timing_notes(records)
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
            notes.append(
                f"{UNCOUNTED} {r.backbone}/{r.label}: the two MAC counters differ: {r.stats.get('counter_difference', '?')}."
            )
    for r in records:
        if r.ok and r.stats.get("fvcore_error"):
            why = (str(r.stats["fvcore_error"]).strip().splitlines() or ["?"])[0][:160]
            notes.append(
                f"{r.backbone}/{r.label}/{r.metric}: fvcore could not trace it, so its fvcore column is {DASH} ({why})."
            )
    for (backbone, label), cells in _rows(records).items():
        why = unseen_state(cells)
        if why:
            notes.append(f"{UNSEEN} {backbone}/{label}: {why}.")
    failing: Dict[Tuple[str, str], str] = {}
    for r in records:
        if r.stats.get("check_failed"):
            failing.setdefault((r.label, r.module), r.stats["check_failed"])
    for (label, module), text in failing.items():
        notes.append(
            f"{FAILS_CHECK} {label}: `attnbench check {module}` fails ({text}); its numbers are of a module "
            "that breaks the plugin contract."
        )
    several = len(sweep_points(records)) > 1
    for r in records:
        if r.status == "failed":
            at = f" @ {_axis_label(r.metric, record_point(r))}" if several else ""
            notes.append(f"failed {r.backbone}/{r.label}/{r.metric}{at}: {r.error['type']}: {r.error['message']}")  # type: ignore[index]
    for status in ("unsupported", "skipped"):
        for note in sorted({r.note for r in records if r.status == status}):
            which = sorted(
                {
                    f"{r.backbone}/{r.label}"
                    if status == "unsupported"
                    else r.metric + (f" @ {_axis_label(r.metric, record_point(r))}" if several else "")
                    for r in records
                    if r.status == status and r.note == note
                }
            )
            notes.append(f"{status} {', '.join(which)}: {note}")
    return notes

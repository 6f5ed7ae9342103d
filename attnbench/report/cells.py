"""Table cells from records: points and order, Δ with its interval, stat cells."""

from __future__ import annotations

from typing import List, Optional, Sequence

from ..core.metrics import RUNTIMES, spec
from ..core.stats import (
    CLEAN_WAIT,
    Difference,
    RatioInterval,
    alternating_delta,
    alternating_difference,
    paired_ratio_interval,
    unpaired_ratio_interval,
)
from ..records.record import Record
from ..suite.model import Point
from .markdown import CONTENDED, DASH, UNCOUNTED, UNSTABLE


def record_point(rec: Record) -> Point:
    """The (input size, batch, runtime) a record was measured at (runtime: eager when absent)."""
    size = rec.config.get("input_size") or (224, 224)
    return Point(
        (int(size[0]), int(size[1])), int(rec.config.get("batch_size") or 1), rec.config.get("runtime", "eager")
    )


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


def same_group(rec: Record, base: Record) -> bool:
    """Whether two timing records were interleaved in one process (one timing group): only then is a Δ
    between them paired. Records from before group ids shared their group's start time and process."""
    ga, gb = rec.stats.get("group"), base.stats.get("group")
    if ga or gb:
        return ga == gb
    return (rec.host, rec.pid, rec.started) == (base.host, base.pid, base.started)


def _clean_limit(rec: Record) -> float:
    return float((rec.measurement.settings if rec.measurement else {}).get("clean_wait") or CLEAN_WAIT)


def _batches(rec: Record) -> int:
    """The batch means a timing record's intervals are taken over (stats.batches); 1 (over rounds) for records from
    before batching, so their tables stay what they were."""
    return int(rec.stats.get("batches") or 1)


def delta_interval(rec: Record, base: Record) -> Optional[RatioInterval]:
    """Δ% with its 95% interval from the raw samples both records keep: paired when the two were timed in
    one interleaved group, unpaired (Welch, and labelled so) when they come from different runs."""
    a, b = rec.stats.get("rounds_ms"), base.stats.get("rounds_ms")
    if not a or not b:
        return None
    wa, wb = rec.stats.get("rounds_wait"), base.stats.get("rounds_wait")
    if not same_group(rec, base):
        return unpaired_ratio_interval(a, b, b_waits=wa, a_waits=wb)
    if rec.stats.get("schedule") == "alternating" and base.stats.get("schedule") == "alternating":
        return alternating_delta(a, b, wa, wb, _clean_limit(rec), batches=_batches(rec))
    return paired_ratio_interval(a, b)


def delta_ms(rec: Record, base: Record) -> Optional[Difference]:
    """Added milliseconds (variant - baseline) with the paired interval when the two were interleaved;
    the difference of medians, unpaired and without an interval, otherwise."""
    a, b = rec.stats.get("rounds_ms"), base.stats.get("rounds_ms")
    if a and b and same_group(rec, base) and rec.stats.get("schedule") == "alternating":
        d = alternating_difference(
            a, b, rec.stats.get("rounds_wait"), base.stats.get("rounds_wait"), _clean_limit(rec), batches=_batches(rec)
        )
        return d if d is not None else Difference(float("nan"), None, None)
    if rec.value is None or base.value is None:
        return None
    return Difference(rec.value - base.value, None, None, paired=False)


def contended(rec: Optional[Record]) -> bool:
    return bool(rec is not None and (rec.stats.get("contention") or {}).get("contended"))


def _ci_text(ci: Optional[RatioInterval]) -> str:
    if ci is None or ci.low is None:
        return ""
    return f" [{ci.low:+.1f}, {ci.high:+.1f}]"


def _ms_text(v: float, lo: Optional[float], hi: Optional[float]) -> str:
    digits = 3 if abs(v) < 10 else 2
    return f"{v:+.{digits}f}" + ("" if lo is None else f" [{lo:+.{digits}f}, {hi:+.{digits}f}]")


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
        return (rec.status_text() if rec is not None else DASH) if kind in ("value", "spread", "direct") else DASH
    assert rec is not None  # v is its value
    stats = rec.stats
    if kind == "value":
        return _fmt(metric, v) + (UNCOUNTED if stats.get("unhandled") or stats.get("counters_agree") is False else "")
    if kind == "spread":
        mark = (UNSTABLE if stats.get("unstable") else "") + (CONTENDED if contended(rec) else "")
        return f"{_fmt(metric, v)} ({stats.get('iqr_ms', float('nan')):.2f}){mark}"
    if kind == "direct":
        lo, hi = stats.get("low_ms"), stats.get("high_ms")
        text = f"{v:.3f}" + ("" if lo is None or hi is None else f" [{lo:.3f}, {hi:.3f}]")
        return text + (CONTENDED if contended(rec) else "")
    if kind == "throughput":
        ips = stats.get("images_per_s")
        return DASH if ips is None else f"{ips:.1f}"
    if kind.startswith("part:"):
        part = stats.get(kind[5:])
        return _fmt(metric, part) if part is not None else DASH
    if ":" in kind and kind.split(":")[0] in STAT_KINDS:
        return _stat_cell(kind, rec, base)
    bv = base.value if base is not None else None
    if bv is None or rec is base:
        return DASH
    assert base is not None  # bv is its value
    if kind == "delta_abs":
        return f"{int(v - bv):+,}"
    if kind == "delta_ci":
        ci = delta_interval(rec, base)
        mark = CONTENDED if contended(rec) or contended(base) else ""
        if ci is not None and ci.pct != ci.pct:  # NaN: no round had enough undisturbed pairs
            return f"not supported{mark}"
        text = f"{ci.pct:+.2f}%{_ci_text(ci)}" if ci is not None else _pct(v, bv)
        return text + ("" if ci is None or ci.paired else " (unpaired)") + mark
    if kind == "delta_ms":
        d = delta_ms(rec, base)
        mark = CONTENDED if contended(rec) or contended(base) else ""
        if d is not None and d.mean != d.mean:
            return f"not supported{mark}"
        return DASH if d is None else _ms_text(d.mean, d.low, d.high) + ("" if d.paired else " (unpaired)") + mark
    return _pct(v, bv)


STAT_KINDS = ("mb", "delta_pct", "count", "ratio")


def _stat_cell(kind: str, rec: Record, base: Optional[Record]) -> str:
    """A stats field X of the record: mb:X (bytes as MB), delta_pct:X (Δ% vs the baseline's X),
    count:X (an integer with its Δ vs the baseline), ratio:X (two decimals); a dash where a side lacks it."""
    how, name = kind.split(":", 1)
    v = rec.stats.get(name)
    if v is None:
        return DASH
    b = base.stats.get(name) if base is not None and base is not rec and base.value is not None else None
    if how == "mb":
        return f"{v / 1e6:.1f}"
    if how == "ratio":
        return f"{v:.2f}"
    if how == "count":
        return f"{int(v):,}" + (f" ({int(v - b):+,})" if b is not None else "")
    return DASH if b is None else _pct(v, b)


def sweep_points(records: Sequence[Record]) -> List[Point]:
    """The points a set of records spans, in sweep order (those of timings when there are any)."""
    timed = [r for r in records if "runtime" in spec(r.metric).axes]
    return sorted({record_point(r) for r in (timed or records)}, key=point_order)


def _axis_label(metric: str, p: Point) -> str:
    return p.axes_label(spec(metric).axes)


def _unit_label(metric: str) -> str:
    s = spec(metric)
    if s.scale == 2**20:
        return "MiB"
    return {1e6: "M ", 1e9: "G"}.get(s.scale, "") + s.unit + (" (median)" if s.kind == "timing" else "")

"""``attnbench compare``: Δ per cell between two runs, with the band each run's own precision allows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from ..core.metrics import spec
from ..core.stats import (
    RatioInterval,
    unpaired_ratio_interval,
)
from ..records.record import Record
from ..suite.model import Point
from .cells import _axis_label, _fmt, _unit_label, contended, record_order, record_point
from .markdown import CONTENDED, DASH, md_row


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
    seed: Optional[int] = None  # accuracy: one training run per seed, matched seed by seed

    @property
    def contended(self) -> str:
        """Which side was timed while other processes took the CPU: '', 'A', 'B' or 'A and B'."""
        return " and ".join(n for n, r in (("A", self.a), ("B", self.b)) if contended(r))

    def regression_above(self, pct: float) -> bool:
        """Worse by more than ``pct`` and beyond the noise band: B's Δ exceeds pct and its interval excludes 0.
        Without a band (exact counts; timings stored before raw samples were kept) Δ > pct is enough.
        Accuracy is never a cost regression here, nor a timing from a contended run (the gate says why)."""
        if self.delta is None or spec(self.metric).kind == "accuracy" or self.contended:
            return False
        if self.delta.low is None:
            return self.delta.pct > pct
        return self.delta.pct > pct and self.delta.low > 0


def _rounds(rec: Record):
    """A timing record's per-round samples: its calls (latency), or its per-round totals (attention_cpu)."""
    if rec.stats.get("rounds_ms"):
        return rec.stats["rounds_ms"]
    totals = rec.stats.get("rounds_total_ms")
    return [[t] for t in totals] if totals else None


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
            sa, sb = _rounds(ra), _rounds(rb)
            delta = (
                unpaired_ratio_interval(
                    sb, sa, b_waits=rb.stats.get("rounds_wait"), a_waits=ra.stats.get("rounds_wait")
                )
                if sa and sb
                else None
            )
            if delta is None:  # counts (exact), one training run a side, or no usable raw samples: the plain ratio
                delta = RatioInterval((rb.value / ra.value - 1) * 100, None, None, 1, no_band(ra, rb, sa, sb))
        rows.append(CompareRow(key[0], key[1], key[2], key[3], ra, rb, delta, key[4]))
    return rows


def no_band(ra: Record, rb: Record, sa, sb) -> str:
    """Why a compared cell has no noise band: what the plain ratio is."""
    kind = spec(ra.metric).kind
    if kind == "count":
        return "exact"
    if kind == "accuracy":
        return f"one training run a side (seed {ra.seed}): no band; compare seed means in the accuracy tables"
    if sa and sb:
        return "raw samples kept, but no round of undisturbed calls on one side: no band"
    return "no raw samples" + (f" in {' and '.join(n for n, x in (('A', sa), ('B', sb)) if not x)}" if sa or sb else "")


def render_compare(
    a: Sequence[Record], b: Sequence[Record], name_a: str = "A", name_b: str = "B", fail_above: Optional[float] = None
) -> str:
    """Δ between two runs, matched on (backbone, module label, metric, point), with the noise band of
    timings (Welch's 95% interval on the per-round log medians of each run; runs are not paired)."""
    return render_compare_rows(compare_rows(a, b), name_a, name_b, fail_above)


def render_compare_rows(
    rows: Sequence[CompareRow], name_a: str = "A", name_b: str = "B", fail_above: Optional[float] = None
) -> str:
    several = len({r.point for r in rows}) > 1
    seeds = any(r.seed is not None for r in rows)
    lines = [
        f"# compare {name_a} -> {name_b}",
        "",
        "Δ % = B vs A; timings carry a 95% noise band from each run's raw per-round samples (Welch's t on the "
        "per-round log medians of undisturbed calls); counts are exact. A timing from a run that was contended "
        f"(other processes took the CPU: {CONTENDED} in its table) is never called a regression or an improvement.",
        "",
        "| backbone | module | metric |"
        + (" point |" if several else "")
        + (" seed |" if seeds else "")
        + " unit | A | B | Δ % | noise band |",
        "|---|---|---|" + ("---|" if several else "") + ("---:|" if seeds else "") + "---|---:|---:|---:|---|",
    ]
    for row in rows:
        unit = _unit_label(row.metric)  # the unit of A and B as shown (M parameters, GMACs, ms), not as stored
        fa = (
            _fmt(row.metric, row.a.value)
            if row.a is not None and row.a.value is not None
            else (row.a.status_text() if row.a else DASH)
        )
        fb = (
            _fmt(row.metric, row.b.value)
            if row.b is not None and row.b.value is not None
            else (row.b.status_text() if row.b else DASH)
        )
        d = row.delta
        delta = f"{d.pct:+.2f}%" if d is not None else DASH
        band = (f"[{d.low:+.1f}, {d.high:+.1f}]" if d.low is not None else d.method) if d is not None else DASH
        if row.contended:
            band += f" — not comparable: {row.contended} contended{CONTENDED}"
        elif fail_above is not None and row.regression_above(fail_above):
            band += f" **regression > {fail_above:g}%**"
        point = [_axis_label(row.metric, row.point)] if several else []
        seed = [DASH if row.seed is None else str(row.seed)] if seeds else []
        lines.append(md_row([row.backbone, row.label, row.metric] + point + seed + [unit, fa, fb, delta, band]))
    return "\n".join(lines) + "\n"

"""``compare --fail-above``: when a CI gate may pass. Pure functions of the compared rows.

A gate passes only when it could have seen a regression: both stores hold records of the same suite
measured under the same settings, they share cells, every cell of the reference has an ok number in
the candidate, and no cost got worse beyond the threshold and its noise band. Each check returns
problems as short texts; :func:`gate` joins them into the one line the command prints.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from ..core.metrics import spec
from ..records.record import Record
from .compare import CompareRow


def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def settings_of(rec: Record) -> Dict[str, Any]:
    """The settings a record was measured under, flattened: its whole configuration (input, batch, runtime,
    options, latency or training settings, backbone options: 'latency.rounds': 10) and, for timings, the
    threads it ran with (counts do not depend on them)."""
    threads = {"threads": rec.env.get("threads")} if spec(rec.metric).exclusive and "threads" in rec.env else {}
    return {**_flat(rec.config), **threads}


def _cell(row: CompareRow) -> str:
    return f"{row.backbone}/{row.label}/{row.metric}"


def comparability_problems(a: Sequence[Record], b: Sequence[Record], rows: Sequence[CompareRow]) -> List[str]:
    """Why the two stores cannot be compared at all: other suites, no shared cell, other settings."""
    problems = []
    sa, sb = sorted({r.suite for r in a}), sorted({r.suite for r in b})
    if sa != sb:
        problems.append(f"the stores hold different suites ({', '.join(sa)} vs {', '.join(sb)})")
    shared = [r for r in rows if r.a is not None and r.b is not None]
    if not shared:
        problems.append(
            f"the stores share no cell ({len(a)} vs {len(b)} records, none with the same backbone, "
            "module, metric and point)"
        )
    differ: Dict[str, tuple] = {}
    for row in shared:
        fa, fb = settings_of(row.a), settings_of(row.b)  # type: ignore[arg-type]  # shared rows have both sides
        for k in sorted(set(fa) | set(fb)):
            if fa.get(k) != fb.get(k):
                differ.setdefault(k, (fa.get(k), fb.get(k)))
    if differ:
        shown = ", ".join(f"{k} {va!r} vs {vb!r}" for k, (va, vb) in list(differ.items())[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        problems.append(f"the stores were measured under different settings: {shown}{more}")
    return problems


def candidate_problems(rows: Sequence[CompareRow]) -> List[str]:
    """Cells the candidate did not measure: failed there, missing, or without a number where the reference has one."""
    failed = [
        f"{_cell(r)} ({(r.b.error or {}).get('type', '?')})" for r in rows if r.b is not None and r.b.status == "failed"
    ]
    missing = [_cell(r) for r in rows if r.a is not None and r.b is None]
    unmeasured = [
        f"{_cell(r)} ({r.b.status})"
        for r in rows
        if r.a is not None and r.a.ok and r.b is not None and r.b.status not in ("ok", "failed")
    ]
    problems = []
    for what, cells in (
        ("failed in the candidate", failed),
        ("missing from the candidate", missing),
        ("not measured in the candidate", unmeasured),
    ):
        if cells:
            more = f" and {len(cells) - 3} more" if len(cells) > 3 else ""
            problems.append(f"{len(cells)} cell(s) {what}: {', '.join(cells[:3])}{more}")
    return problems


def contention_problems(rows: Sequence[CompareRow]) -> List[str]:
    """Timings that cannot be judged because one side was measured while other processes took the CPU."""
    bad = [f"{_cell(r)} ({r.contended})" for r in rows if r.contended and r.a is not None and r.b is not None]
    if not bad:
        return []
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return [
        f"{len(bad)} timing(s) measured on a contended machine, so no regression can be called: {', '.join(bad[:3])}"
        f"{more}; rerun on idle cores"
    ]


def regressions(rows: Sequence[CompareRow], pct: float) -> List[CompareRow]:
    return [r for r in rows if r.regression_above(pct)]


def gate(a: Sequence[Record], b: Sequence[Record], rows: Sequence[CompareRow], pct: float) -> Optional[str]:
    """The one line that fails ``--fail-above pct``, or None when the candidate passes."""
    problems = comparability_problems(a, b, rows) + candidate_problems(rows) + contention_problems(rows)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        return f"cannot pass --fail-above {pct:g}: {problems[0]}{more}"
    worse = regressions(rows, pct)
    if worse:
        names = ", ".join(f"{r.backbone}/{r.label}/{r.metric} {r.delta.pct:+.1f}%" for r in worse[:5])  # type: ignore[union-attr]
        more = f" and {len(worse) - 5} more" if len(worse) > 5 else ""
        return f"{len(worse)} regression(s) above {pct:g}% beyond the noise band: {names}{more}"
    return None

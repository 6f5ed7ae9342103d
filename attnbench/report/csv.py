"""The flat CSV: one row per record, every field a column."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..core.metrics import spec
from ..records.record import Record
from .cells import delta_interval, record_order, record_point
from .notes import where


def flat_records(records: Sequence[Record]) -> pd.DataFrame:
    rows = []
    bases = {(r.backbone, r.metric, record_point(r)): r for r in records if r.module == "none"}
    for r in sorted(records, key=record_order):
        m = r.measurement
        p = record_point(r)
        row = {
            "suite": r.suite,
            "backbone": r.backbone,
            "label": r.label,
            "module": r.module,
            "metric": r.metric,
            "input_size": f"{p.input_size[0]}x{p.input_size[1]}",
            "batch_size": p.batch_size,
            "runtime": p.runtime,
            "status": r.status,
            "key": r.key,
            "value": m.value if m else None,
            "unit": m.unit if m else None,
            "method": m.method if m else None,
        }
        for k, v in r.stats.items():
            if not isinstance(v, (dict, list)):
                row[k] = v
        for part in ("stop", "contention"):
            for k, v in (r.stats.get(part) or {}).items():
                if not isinstance(v, (dict, list)):
                    row[f"{part}_{k}"] = v
        base = bases.get((r.backbone, r.metric, p))
        if spec(r.metric).kind == "timing" and r.ok and base is not None and base is not r and base.ok:
            ci = delta_interval(r, base) if r.stats.get("rounds_ms") else None
            if ci is not None:
                row.update(
                    delta_pct=ci.pct,
                    delta_low=ci.low,
                    delta_high=ci.high,
                    delta_paired=ci.paired,
                    delta_method=ci.method,
                )
        row["where"] = where({r.metric: r})
        row["error"] = f"{r.error['type']}: {r.error['message']}" if r.error else ""
        row["note"] = r.note
        row.update({f"env_{k}": v for k, v in r.env.items() if not isinstance(v, dict)})
        rows.append(row)
    return pd.DataFrame(rows)

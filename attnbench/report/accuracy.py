"""Accuracy suites: seed statistics and the accuracy table (pure functions of records)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from .tables import DASH, _pct, environment_line, record_order


def accuracy_rows(records: Sequence[dict], overhead: Sequence[dict] = ()) -> List[dict]:
    """One row per (backbone, module): mean and std over seeds, joined with overhead latency."""
    import statistics

    records = sorted((r for r in records if r["metric"] == "accuracy"), key=record_order)
    latency = {(r["backbone"], r["label"]): r for r in overhead if r["metric"] == "latency_cpu" and r["status"] == "ok"}
    groups: Dict[Tuple[str, str], List[dict]] = {}
    for r in records:
        groups.setdefault((r["backbone"], r["label"]), []).append(r)
    rows = []
    for (backbone, label), recs in groups.items():
        ok = [r["measurement"]["stats"] for r in recs if r["status"] == "ok"]
        row = {"backbone": backbone, "label": label, "module": recs[0]["module"], "seeds": len(recs), "ok": len(ok),
               "failed": [r for r in recs if r["status"] == "failed"]}

        def mean_std(key):
            vals = [s[key] for s in ok if key in s]
            if not vals:
                return None, None
            return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

        for key in ("top1", "top5", "final_train_loss", "train_images_per_s", "params", "wall_s"):
            row[key], row[key + "_std"] = mean_std(key)
        lat = latency.get((backbone, label))
        row["latency_ms"] = lat["measurement"]["value"] if lat else None
        rows.append(row)
    base = {r["backbone"]: r for r in rows if r["module"] == "none"}
    for r in rows:
        b = base.get(r["backbone"])
        r["base"] = b if b is not None and b is not r else None
    return rows


def render_accuracy(records: Sequence[dict], overhead: Sequence[dict] = (), title: Optional[str] = None) -> str:
    rows = accuracy_rows(records, overhead)
    acc = [r for r in records if r["metric"] == "accuracy"]
    first = acc[0]["config"]
    ds, tr = first["dataset"], first["training"]
    lines = [f"# {title or acc[0]['suite']}", "", environment_line(acc),
             f"Training: {ds['name']} (train subset {ds.get('train_subset') or 'all'}, test {ds.get('test_subset') or 'all'}), "
             f"{tr.get('epochs', 1)} epoch(s), batch {tr.get('batch_size', 128)}, {tr.get('optimizer', 'sgd')} lr {tr.get('lr', 0.1)} "
             f"cosine, stem {tr.get('stem')}; mean ± std over seeds.",
             "Δlatency: CPU latency from the overhead suite's records in the same folder (224x224, batch 1), when present.", "",
             "| backbone | module | seeds | top-1 % | Δtop-1 (pp) | top-5 % | final train loss | train img/s | wall s | params (M) | Δparams % | Δlatency % |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = r["base"]
        seeds = f"{r['ok']}/{r['seeds']}" if r["ok"] != r["seeds"] else str(r["seeds"])
        if r["top1"] is None:
            cells = [seeds, f"failed ({r['failed'][0]['error']['type']})"] + [DASH] * 8
        else:
            cells = [
                seeds, f"{r['top1']:.2f} ± {r['top1_std']:.2f}",
                f"{r['top1'] - b['top1']:+.2f}" if b and b["top1"] is not None else DASH,
                f"{r['top5']:.2f}" if r["top5"] is not None else DASH,
                f"{r['final_train_loss']:.4f}", f"{r['train_images_per_s']:.0f}", f"{r['wall_s']:.0f}", f"{r['params'] / 1e6:.3f}",
                _pct(r["params"], b["params"]) if b and b["params"] else DASH,
                _pct(r["latency_ms"], b["latency_ms"]) if b and r["latency_ms"] and b["latency_ms"] else DASH,
            ]
        lines.append(f"| {r['backbone']} | {r['label']} | " + " | ".join(cells) + " |")
    notes = [f"failed {r['backbone']}/{r['label']}/seed {r['config']['seed']}: {r['error']['type']}: {r['error']['message']}"
             for r in acc if r["status"] == "failed"]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"

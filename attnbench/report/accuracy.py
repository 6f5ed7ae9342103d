"""Accuracy suites: seed statistics, learning curves and the accuracy table (pure functions of records).

What a reader needs to believe a Δ: the budget it was measured at, the curve behind it (did the
baseline stop improving?), and what the seeds support (Welch interval, verdict, detectable Δ).
"""
from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from .. import stats as st
from ..records import Record
from .tables import DASH, _cell, _pct, environment_line, record_order

COLUMNS = ["backbone", "module", "seeds", "final top-1 %", "best top-1 %", "best epoch", "Δtop-1 pp [95% CI]", "verdict",
           "MDD pp", "final train loss", "train img/s", "wall s", "params (M)", "Δparams %", "Δlatency % [95% CI]"]


def _mean_std(vals: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def mean_curve(ok: Sequence[Record]) -> Dict[str, list]:
    """Per-epoch mean and std of test top-1 over the seeds that have a curve (epochs all seeds reached)."""
    curves = [s["curve"] for s in ok if s.get("curve")]
    if not curves:
        return {}
    n = min(len(c) for c in curves)
    cols = [[c[i] for c in curves] for i in range(n)]
    out = {"epoch": [col[0]["epoch"] for col in cols], "images_seen": [col[0]["images_seen"] for col in cols]}
    for key in ("test_top1", "test_loss", "train_loss"):
        pairs = [_mean_std([p[key] for p in col]) for col in cols]
        out[key], out[key + "_std"] = [m for m, _ in pairs], [s for _, s in pairs]
    return out


def accuracy_rows(records: Sequence[Record], overhead: Sequence[Record] = ()) -> List[dict]:
    """One row per (backbone, module): mean and std over seeds, the mean curve, Δ vs the baseline
    with Welch's interval, and overhead latency joined in."""
    records = sorted((r for r in records if r.metric == "accuracy"), key=record_order)
    latency = {(r.backbone, r.label): r for r in overhead
               if r.metric == "latency_cpu" and r.ok and r.config.get("runtime", "eager") == "eager"}
    groups: Dict[Tuple[str, str], List[Record]] = {}
    for r in records:
        groups.setdefault((r.backbone, r.label), []).append(r)
    rows = []
    for (backbone, label), recs in groups.items():
        ok = [r.stats for r in recs if r.ok]
        row = {"backbone": backbone, "label": label, "module": recs[0].module, "seeds": len(recs), "ok": len(ok),
               "failed": [r for r in recs if r.status == "failed"], "top1_values": [s["top1"] for s in ok],
               "curve": mean_curve(ok)}
        for key in ("top1", "top5", "final_train_loss", "train_images_per_s", "params", "wall_s"):
            row[key], row[key + "_std"] = _mean_std([s[key] for s in ok if s.get(key) is not None])
        top = row["curve"].get("test_top1")
        row["best_top1"], row["best_epoch"] = (max(top), row["curve"]["epoch"][top.index(max(top))]) if top else (None, None)
        lat = latency.get((backbone, label))
        row["latency_ms"] = lat.value if lat else None
        row["latency_record"] = lat
        rows.append(row)
    base = {r["backbone"]: r for r in rows if r["module"] == "none"}
    for r in rows:
        b = base.get(r["backbone"])
        r["base"] = b if b is not None and b is not r else None
        r["delta"] = st.welch(r["top1_values"], b["top1_values"]) if r["base"] and r["top1_values"] and b["top1_values"] \
            else None
    return rows


def convergence_notes(rows: Sequence[Record]) -> Dict[str, str]:
    """backbone -> one sentence on whether its baseline had stopped improving at the last epoch."""
    notes = {}
    for r in rows:
        if r["module"] != "none" or not r["curve"]:
            continue
        done, gain = st.convergence(r["curve"]["test_top1"])
        if done is None:
            notes[r["backbone"]] = f"{r['backbone']}: a single epoch cannot show convergence; Δ describes this budget."
        elif not done:
            notes[r["backbone"]] = (f"{r['backbone']}: **{st.NOT_CONVERGED}** (the baseline's mean top-1 rose {gain:+.2f} pp "
                                    f"in its last epoch, > {st.CONVERGED_PP} pp).")
        else:
            notes[r["backbone"]] = (f"{r['backbone']}: baseline converged by this rule (last epoch {gain:+.2f} pp, "
                                    f"<= {st.CONVERGED_PP} pp).")
    return notes


def budget_line(acc: Sequence[Record]) -> str:
    first = acc[0].config
    ds, tr = first["dataset"], first["training"]
    ok = [r.stats for r in acc if r.ok]
    seen = f" = {ok[0]['curve'][-1]['images_seen']:,} images seen per cell" if ok and ok[0].get("curve") else ""
    n_train = ok[0]["train_size"] if ok else (ds.get("train_subset") or "all")
    device = tr.get("device", "cpu") + (f", {tr['amp']} autocast" if tr.get("amp") else "")
    return (f"Budget: {ds['name']}, {tr.get('epochs', 1)} epoch(s) x {n_train:,} training images{seen} "
            f"(test {ds.get('test_subset') or 'all'}); batch {tr.get('batch_size', 128)}, {tr.get('optimizer', 'sgd')} "
            f"lr {tr.get('lr', 0.1)} cosine, stem {tr.get('stem')}, {device}. Every Δ below describes this budget; "
            f"the curves plot ({acc[0].suite}-curves.png) shows where each module stood at every epoch.") \
        if isinstance(n_train, int) else f"Budget: {ds['name']}, {tr.get('epochs', 1)} epoch(s), no cell finished."


METHODS = [
    f"- final top-1: mean ± std over seeds at the last epoch (the headline). best top-1 / best epoch: the maximum of the "
    "seed-mean test curve; chosen on the test split, so optimistic.",
    "- Δtop-1: mean(module) - mean(baseline), same backbone; 95% interval by Welch's t (unequal variances, "
    "Welch-Satterthwaite df). verdict: better / worse when the interval excludes 0, else no detectable difference.",
    f"- MDD: the smallest true Δ these seeds would detect with {st.POWER:.0%} power at α = 0.05, two-sided, for the spread "
    "observed: (t(0.975, df) + t(0.80, df)) x se.",
    f"- convergence: a baseline whose mean top-1 still rose by > {st.CONVERGED_PP} pp in its last epoch is "
    f"\"{st.NOT_CONVERGED}\" (‡ in the verdict).",
    "- Δlatency: CPU inference latency from the overhead records passed in (`--latency-from`, default OUT/overhead.jsonl), "
    "at their own input size and batch (see that table's settings line), when present; eager runtime; the 95% interval "
    "is paired over their interleaved rounds, as in the overhead table.",
]


def _delta_cells(r: dict, flag: str) -> List[str]:
    d = r["delta"]
    if d is None:
        return [DASH] * 3
    ci = f" [{d.low:+.2f}, {d.high:+.2f}]" if d.low is not None else ""
    return [f"{d.diff:+.2f}{ci}", d.verdict + flag, f"{d.mdd:.2f}" if d.mdd is not None else DASH]


def _row_cells(r: dict, flag: str) -> List[str]:
    b = r["base"]
    seeds = f"{r['ok']}/{r['seeds']}" if r["ok"] != r["seeds"] else str(r["seeds"])
    if r["top1"] is None:
        status = r["failed"][0].status_text() if r["failed"] else "skipped"
        return [seeds, status] + [DASH] * (len(COLUMNS) - 4)
    best = [f"{r['best_top1']:.2f}", str(r["best_epoch"])] if r["best_top1"] is not None else [DASH, DASH]
    return [seeds, f"{r['top1']:.2f} ± {r['top1_std']:.2f}", *best, *_delta_cells(r, flag),
            f"{r['final_train_loss']:.4f}", f"{r['train_images_per_s']:.0f}", f"{r['wall_s']:.0f}", f"{r['params'] / 1e6:.3f}",
            _pct(r["params"], b["params"]) if b and b["params"] else DASH,
            _cell("delta_ci", "latency_cpu", r["latency_record"], b["latency_record"]) if b and r is not b and r["latency_record"]
            and b["latency_record"] else DASH]


def render_accuracy(records: Sequence[Record], overhead: Sequence[Record] = (), title: Optional[str] = None) -> str:
    rows = accuracy_rows(records, overhead)
    acc = [r for r in records if r.metric == "accuracy"]
    notes = convergence_notes(rows)
    unconverged = {bb for bb, text in notes.items() if st.NOT_CONVERGED in text}
    lines = [f"# {title or acc[0].suite}", "", environment_line(acc), budget_line(acc), "",
             "| " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * (len(COLUMNS) - 2)]
    for r in rows:
        flag = " ‡" if r["backbone"] in unconverged and r["delta"] is not None else ""
        lines.append(f"| {r['backbone']} | {r['label']} | " + " | ".join(_row_cells(r, flag)) + " |")
    lines += [""] + [f"- ‡ {text}" if bb in unconverged else f"- {text}" for bb, text in notes.items()] + METHODS
    failed = [f"failed {r.backbone}/{r.label}/seed {r.seed}: {r.error['type']}: {r.error['message']}"
              for r in acc if r.status == "failed"]
    if failed:
        lines += [""] + [f"- {n}" for n in failed]
    return "\n".join(lines) + "\n"

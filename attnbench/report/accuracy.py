"""Accuracy suites: seed statistics, learning curves and the accuracy table (pure functions of records).

What a reader needs to believe a Δ: the budget it was measured at, the curve behind it (did the
baseline stop improving?), and what the seeds support (Welch interval, verdict, detectable Δ).
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..core import stats as st
from ..records.record import Record
from .cells import _cell, _pct, record_order
from .markdown import DASH, FAILS_CHECK, md_row, md_text
from .notes import environment_line

COLUMNS = [
    "backbone",
    "module",
    "seeds",
    "final top-1 %",
    "best top-1 %",
    "best epoch",
    "Δtop-1 pp [95% CI]",
    "verdict",
    "MDD pp",
    "final train loss",
    "train img/s",
    "wall s",
    "params (M)",
    "Δparams %",
    "Δlatency % [95% CI]",
]


def _mean_std(vals: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def mean_curve(ok: Sequence[Dict[str, Any]]) -> Dict[str, list]:
    """Per-epoch mean and std of test top-1 over the seeds that have a curve (epochs all seeds reached)."""
    curves = [s["curve"] for s in ok if s.get("curve")]
    if not curves:
        return {}
    n = min(len(c) for c in curves)
    cols = [[c[i] for c in curves] for i in range(n)]
    out = {
        "epoch": [col[0]["epoch"] for col in cols],
        "images_seen": [col[0]["images_seen"] for col in cols],
        "lr": [col[0].get("lr") for col in cols],
    }  # the schedule's LR at each epoch's last step (same for every seed)
    for key in ("test_top1", "test_loss", "train_loss"):
        pairs = [_mean_std([p[key] for p in col]) for col in cols]
        out[key], out[key + "_std"] = [m for m, _ in pairs], [s for _, s in pairs]
    return out


def accuracy_rows(records: Sequence[Record], overhead: Sequence[Record] = ()) -> List[dict]:
    """One row per (backbone, module): mean and std over seeds, the mean curve, Δ vs the baseline
    with Welch's interval, and overhead latency joined in."""
    records = sorted((r for r in records if r.metric == "accuracy"), key=record_order)
    latency = {
        (r.backbone, r.label): r
        for r in overhead
        if r.metric == "latency_cpu" and r.ok and r.config.get("runtime", "eager") == "eager"
    }
    groups: Dict[Tuple[str, str], List[Record]] = {}
    for r in records:
        groups.setdefault((r.backbone, r.label), []).append(r)
    rows: List[Dict[str, Any]] = []
    for (backbone, label), recs in groups.items():
        ok = [r.stats for r in recs if r.ok]
        row: Dict[str, Any] = {
            "backbone": backbone,
            "label": label,
            "module": recs[0].module,
            "seeds": len(recs),
            "ok": len(ok),
            "failed": [r for r in recs if r.status == "failed"],
            "top1_values": [s["top1"] for s in ok],
            "curve": mean_curve(ok),
            "training": recipe(recs[0]),
        }
        for key in ("top1", "top5", "final_train_loss", "train_images_per_s", "params", "wall_s"):
            row[key], row[key + "_std"] = _mean_std([s[key] for s in ok if s.get(key) is not None])
        top = row["curve"].get("test_top1")
        row["best_top1"], row["best_epoch"] = (
            (max(top), row["curve"]["epoch"][top.index(max(top))]) if top else (None, None)
        )
        lat = latency.get((backbone, label))
        row["latency_ms"] = lat.value if lat else None
        row["latency_record"] = lat
        rows.append(row)
    base: Dict[str, Dict[str, Any]] = {}
    for row in rows:  # the first `none` row (suite order) is the baseline; others are controls (longer_budget)
        if row["module"] == "none":
            base.setdefault(row["backbone"], row)
    for row in rows:
        b = base.get(row["backbone"])
        row["base"] = b if b is not None and b is not row else None
        row["delta"] = (
            st.welch(row["top1_values"], b["top1_values"])
            if b is not None and row["base"] and row["top1_values"] and b["top1_values"]
            else None
        )
    return rows


def recipe(record: Record) -> Dict[str, Any]:
    """The training settings a record ran with: every setting when the record kept them (``stats.recipe``),
    else the ones its suite named."""
    stats = record.stats if record.ok else {}
    return dict(stats.get("recipe") or record.config.get("training") or {})


def longer_budget(rows: Sequence[dict], base: dict) -> List[dict]:
    """`none` rows of base's backbone trained like the baseline except for more epochs: the plateau check."""
    same = lambda r: {k: v for k, v in r["training"].items() if k != "epochs"}  # noqa: E731
    return [
        r
        for r in rows
        if r is not base
        and r["module"] == "none"
        and r["backbone"] == base["backbone"]
        and r["top1_values"]
        and same(r) == same(base)
        and r["training"].get("epochs", 1) > base["training"].get("epochs", 1)
    ]


# A schedule whose LR at the last epoch is below this share of its peak flattens that epoch by construction.
ANNEALED = 0.1


def convergence_notes(rows: Sequence[dict]) -> Dict[str, str]:
    """backbone -> one sentence on whether its baseline had stopped improving: its last-epoch gain and,
    when the suite trained the baseline longer too (a `none` variant with more epochs, otherwise the same),
    what that longer budget gained. An annealed LR makes any last epoch flat, so without the longer run
    the sentence says the rule alone cannot show a plateau."""
    notes = {}
    for r in rows:
        if r["module"] != "none" or not r["curve"] or r["base"] is not None or r["backbone"] in notes:
            continue
        bb = r["backbone"]
        done, gain = st.convergence(r["curve"]["test_top1"])
        if done is None:
            notes[bb] = f"{bb}: a single epoch cannot show convergence; Δ describes this budget."
            continue
        if not done:
            notes[bb] = (
                f"{bb}: **{st.NOT_CONVERGED}** (the baseline's mean top-1 rose {gain:+.2f} pp "
                f"in its last epoch, > {st.CONVERGED_PP} pp)."
            )
            continue
        text = f"{bb}: baseline's last epoch {gain:+.2f} pp (<= {st.CONVERGED_PP} pp)"
        longer = [x for x in longer_budget(rows, r) if x["delta"] is not None]
        if longer:
            far = max(longer, key=lambda x: x["training"].get("epochs", 1))
            d = far["delta"]
            ci = f" [{d.low:+.2f}, {d.high:+.2f}]" if d.low is not None else ""
            ratio = far["training"].get("epochs", 1) / r["training"].get("epochs", 1)
            if d.diff > st.CONVERGED_PP:
                notes[bb] = (
                    f"{bb}: **{st.NOT_CONVERGED}** (the baseline trained {ratio:g}x as many epochs, "
                    f"`{far['label']}`, scores {d.diff:+.2f} pp{ci} more, > {st.CONVERGED_PP} pp)."
                )
            else:
                notes[bb] = (
                    f"{text}, and trained {ratio:g}x as many epochs (`{far['label']}`) it scores {d.diff:+.2f} "
                    f"pp{ci}: at its plateau (<= {st.CONVERGED_PP} pp)."
                )
            continue
        last_lr, peak = r["curve"]["lr"][-1], r["training"].get("lr")
        if last_lr is not None and peak and last_lr < ANNEALED * peak:
            notes[bb] = (
                f"{text}; but the LR had decayed to {last_lr / peak:.0%} of its peak, which flattens a last "
                "epoch by construction: only a longer run of the baseline (a `none` variant with more "
                "epochs) shows a plateau."
            )
        else:
            notes[bb] = f"{text}: converged by this rule."
    return notes


def recipe_text(tr: Dict[str, Any], threads: Optional[int] = None) -> str:
    """The training settings as a sentence: optimiser, schedule, precision, memory format, compilation, threads."""
    opt = tr.get("optimizer", "sgd")
    momentum = tr.get("momentum", 0.9)
    head = (
        (f"SGD lr {tr.get('lr', 0.1):g}" + (f", Nesterov momentum {momentum:g}" if momentum else ""))
        if opt == "sgd"
        else f"AdamW lr {tr.get('lr', 0.1):g}"
    )
    warm = tr.get("warmup_steps", 0)
    parts = [
        f"batch {tr.get('batch_size', 128)}",
        f"{head}, weight decay {tr.get('weight_decay', 5e-4):g}",
        (f"{warm} warm-up steps then cosine to 0" if warm else "cosine to 0") + " (per step)",
    ]
    if tr.get("label_smoothing"):
        parts.append(f"label smoothing {tr['label_smoothing']:g}")
    parts.append(f"stem {tr.get('stem')}")
    threads = tr.get("threads") or threads
    run = [tr.get("device", "cpu")] + ([f"{threads} threads"] if threads else [])
    run.append(f"{tr['amp']} autocast" if tr.get("amp") else "fp32")
    run.append("channels_last" if tr.get("channels_last") else "contiguous")
    run.append("torch.compile (inductor)" if tr.get("compile") else "eager")
    return "; ".join(parts) + "; " + ", ".join(run)


def budget_line(acc: Sequence[Record]) -> str:
    """The budget and every training setting of the baseline's cells (the first row), then the settings in
    which any other row differs: what a Δ was measured under, and what a rerun must repeat."""
    ordered = sorted(acc, key=record_order)
    ref = next((r for r in ordered if r.ok), ordered[0])
    ds, tr = ref.config["dataset"], recipe(ref)
    if not ref.ok:
        return f"Budget: {ds['name']}, {tr.get('epochs', 1)} epoch(s), no cell finished."
    stats = ref.stats
    seen = f" = {stats['curve'][-1]['images_seen']:,} images seen per cell" if stats.get("curve") else ""
    line = (
        f"Budget: {ds['name']}, {tr.get('epochs', 1)} epoch(s) x {stats['train_size']:,} training images{seen} "
        f"(test {ds.get('test_subset') or 'all'}). Recipe: {recipe_text(tr, stats.get('threads'))}. "
        f"Every Δ below describes this budget; the curves plot ({ref.suite}-curves.png) shows where each module "
        f"stood at every epoch."
    )
    choice = stats.get("recipe_choice")
    if isinstance(choice, dict) and choice.get("why"):  # `amp: auto` / `channels_last: auto`, resolved on the host
        line += f" Precision and memory format: {choice['why']}."
    differs = {}
    for r in ordered:
        other = recipe(r)
        keys = [k for k in sorted(set(other) | set(tr)) if other.get(k) != tr.get(k) and (r.ok or k in other)]
        if keys and r.label not in differs:
            differs[r.label] = ", ".join(f"{k} {other.get(k)}" for k in keys)
    if differs:
        line += " Rows trained otherwise: " + "; ".join(f"{label}: {text}" for label, text in differs.items()) + "."
    return line


METHODS = [
    "- final top-1: mean ± std over seeds at the last epoch (the headline). best top-1 / best epoch: the maximum of the "
    "seed-mean test curve; chosen on the test split, so optimistic.",
    "- Δtop-1: mean(module) - mean(baseline), same backbone; 95% interval by Welch's t (unequal variances, "
    "Welch-Satterthwaite df). verdict: better / worse when the interval excludes 0, else no detectable difference.",
    f"- MDD: the smallest true Δ these seeds would detect with {st.POWER:.0%} power at α = 0.05, two-sided, for the spread "
    "observed: (t(0.975, df) + t(0.80, df)) x se.",
    f"- convergence: a baseline whose mean top-1 still rose by > {st.CONVERGED_PP} pp in its last epoch, or that "
    f"scores > {st.CONVERGED_PP} pp more when trained longer (a `none` row that differs only in more epochs; its Δ is "
    f"that gain), is \"{st.NOT_CONVERGED}\" (‡ in the verdict). The baseline is the first `none` row.",
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
    return [
        seeds,
        f"{r['top1']:.2f} ± {r['top1_std']:.2f}",
        *best,
        *_delta_cells(r, flag),
        f"{r['final_train_loss']:.4f}",
        f"{r['train_images_per_s']:.0f}",
        f"{r['wall_s']:.0f}",
        f"{r['params'] / 1e6:.3f}",
        _pct(r["params"], b["params"]) if b and b["params"] else DASH,
        _cell("delta_ci", "latency_cpu", r["latency_record"], b["latency_record"])
        if b and r is not b and r["latency_record"] and b["latency_record"]
        else DASH,
    ]


def render_accuracy(records: Sequence[Record], overhead: Sequence[Record] = (), title: Optional[str] = None) -> str:
    rows = accuracy_rows(records, overhead)
    acc = sorted((r for r in records if r.metric == "accuracy"), key=record_order)
    notes = convergence_notes(rows)
    unconverged = {bb for bb, text in notes.items() if st.NOT_CONVERGED in text}
    lines = [
        f"# {title or acc[0].suite}",
        "",
        environment_line(acc),
        budget_line(acc),
        "",
        md_row(COLUMNS),
        "|---|---|" + "---:|" * (len(COLUMNS) - 2),
    ]
    failing = {r.label: (r.module, r.stats["check_failed"]) for r in acc if r.stats.get("check_failed")}
    for r in rows:
        flag = " ‡" if r["backbone"] in unconverged and r["delta"] is not None else ""
        mark = FAILS_CHECK if r["label"] in failing else ""
        lines.append(md_row([r["backbone"], r["label"] + mark, *_row_cells(r, flag)]))
    lines += [""] + [f"- ‡ {text}" if bb in unconverged else f"- {text}" for bb, text in notes.items()] + METHODS
    lines += [
        f"- {md_text(f'{FAILS_CHECK} {label}: `attnbench check {module}` fails ({text}).')}"
        for label, (module, text) in failing.items()
    ]
    failed = [
        f"failed {r.backbone}/{r.label}/seed {r.seed}: {r.error['type']}: {r.error['message']}"  # type: ignore[index]
        for r in acc
        if r.status == "failed"
    ]
    if failed:
        lines += [""] + [f"- {md_text(n)}" for n in failed]
    return "\n".join(lines) + "\n"

"""Plots (PNG) drawn from records: accuracy vs cost, and learning curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from ..core.metrics import RUNTIMES, spec
from ..records.record import Record
from .accuracy import accuracy_rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, title: str, path: Path, dpi: int) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def curves_plot(records: Sequence[Record], path: Path) -> Optional[Path]:
    """Test top-1 vs epoch and vs images seen, seed mean with a ± std band per module: shows whether a
    Δ is a budget effect (curves still rising, or crossing) or a steady gap."""
    rows = [r for r in accuracy_rows(records) if r["curve"]]
    if not rows:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
    several = len({r["backbone"] for r in rows}) > 1
    for ax, key, label in zip(axes[0], ("epoch", "images_seen"), ("epoch", "training images seen")):
        for r in rows:
            c = r["curve"]
            x, m, s = c[key], c["test_top1"], c["test_top1_std"]
            name = f"{r['backbone']}/{r['label']}" if several else r["label"]
            (line,) = ax.plot(x, m, "o-", ms=3, lw=1.5, label=f"{name} ({r['ok']} seeds)")
            ax.fill_between(
                x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], color=line.get_color(), alpha=0.2
            )
        ax.set_xlabel(label)
        ax.set_ylabel("test top-1 % (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[0][0].xaxis.get_major_locator().set_params(integer=True)
    return _finish(
        plt, fig, f"{records[0].suite}: learning curves (every Δ in the table is read at the last point)", path, dpi=120
    )


def pareto_plot(records: Sequence[Record], overhead: Sequence[Record], path: Path) -> Optional[Path]:
    """Top-1 vs CPU latency (when overhead records exist) and vs parameters; Pareto fronts drawn."""
    rows = [r for r in accuracy_rows(records, overhead) if r["top1"] is not None]
    if not rows:
        return None
    plt = _pyplot()
    panels = [("params", "parameters (M)", 1e-6)]
    if any(r["latency_ms"] for r in rows):
        panels.insert(0, ("latency_ms", "CPU latency, ms (the overhead records passed in)", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, label, scale) in zip(axes[0], panels):
        pts = [(r[key] * scale, r["top1"], r["top1_std"], f"{r['backbone']}/{r['label']}") for r in rows if r[key]]
        for x, y, e, name in pts:
            ax.errorbar(x, y, yerr=e, fmt="o", capsize=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front, best = [], -math.inf
        for x, y, _, _ in sorted(pts):
            if y > best:
                front.append((x, y))
                best = y
        if len(front) > 1:
            ax.plot(*zip(*front), "--", color="grey", lw=1, label="Pareto front")
            ax.legend(fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 % (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    return _finish(plt, fig, f"{records[0].suite}: accuracy vs cost", path, dpi=120)


def sweep_plot(records: Sequence[Record], path: Path) -> Optional[Path]:
    """Δ% vs resolution and vs batch, one line per module, one row of panels per backbone: Δ CPU/GPU
    latency (with the paired 95% interval as error bars) and Δ MACs. Drawn only for an axis with two or
    more points (eager runtime; the other axes held at their most common value)."""
    from .cells import record_point

    panels = []  # (backbone, metric, axis, fixed point filter)
    backbones = list(dict.fromkeys(r.backbone for r in records))
    timing = [m for m in ("latency_cpu", "latency_gpu") if any(r.metric == m and r.ok for r in records)]
    for axis in ("input_size", "batch_size"):
        for metric in timing + (["macs"] if axis == "input_size" else []):
            recs = [r for r in records if r.metric == metric and r.ok and record_point(r).runtime == "eager"]
            if len({getattr(record_point(r), axis) for r in recs}) >= 2:
                panels.append((metric, axis))
    for metric in timing:  # runtimes: categorical, at the most common (input, batch) among the non-eager points
        if len({record_point(r).runtime for r in records if r.metric == metric and r.ok}) >= 2:
            panels.append((metric, "runtime"))
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(backbones), len(panels), figsize=(4.8 * len(panels), 3.8 * len(backbones)), squeeze=False
    )
    drawn = 0  # panels with at least one Δ: on a busy machine (every timing failed or no baseline) there may be none
    for row, backbone in enumerate(backbones):
        for col, (metric, axis) in enumerate(panels):
            ax = axes[row][col]
            if axis == "runtime":
                drawn += _runtime_panel(
                    ax, [r for r in records if r.backbone == backbone and r.metric == metric and r.ok], backbone, metric
                )
                continue
            recs = [
                r
                for r in records
                if r.backbone == backbone and r.metric == metric and r.ok and record_point(r).runtime == "eager"
            ]
            others = [a for a in ("input_size", "batch_size") if a != axis]
            fixed = {a: _mode(getattr(record_point(r), a) for r in recs) for a in others}
            recs = [
                r
                for r in recs
                if all(getattr(record_point(r), a) == v for a, v in fixed.items() if a in spec(metric).axes)
            ]
            bases = {getattr(record_point(r), axis): r for r in recs if r.module == "none"}
            series = []
            for label in dict.fromkeys(r.label for r in recs if r.module != "none"):
                xs, ys, lo, hi = [], [], [], []
                for r in sorted(
                    (r for r in recs if r.label == label), key=lambda r: _x(getattr(record_point(r), axis))
                ):
                    base = bases.get(getattr(record_point(r), axis))
                    if base is None or not base.value:
                        continue
                    y, below, above = _delta_with_bars(r, base)
                    if not all(map(math.isfinite, (y, below, above))):
                        continue
                    xs.append(_x(getattr(record_point(r), axis)))
                    ys.append(y)
                    lo.append(below)
                    hi.append(above)
                if xs:
                    series.append((label, xs, ys, lo, hi))
            if not series:
                _no_delta(ax, f"{backbone}: {metric}", recs)
                continue
            drawn += 1
            for label, xs, ys, lo, hi in series:
                ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", ms=4, capsize=3, label=label)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({x for _, xs, _, _, _ in series for x in xs}))
            ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel("input resolution (side, px)" if axis == "input_size" else "batch size")
            held = ", ".join(
                f"{'input' if a == 'input_size' else 'batch'} {_show(v)}"
                for a, v in fixed.items()
                if a in spec(metric).axes
            )
            ax.set_ylabel(f"Δ {metric} % vs none")
            ax.set_title(f"{backbone}: {metric}" + (f" ({held})" if held else ""), fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    if not drawn:
        plt.close(fig)
        return None
    return _finish(
        plt,
        fig,
        f"{records[0].suite}: how the cost of each module moves with the regime (error bars: paired 95% CI)",
        path,
        dpi=110,
    )


def _no_delta(ax, title: str, recs: Sequence[Record]) -> None:
    """A panel with no Δ to draw says why, instead of an empty (or unscalable) axis."""
    why = (
        "no ok cell here"
        if not recs
        else "no ok baseline 'none' at these points"
        if not any(r.module == "none" for r in recs)
        else "no ok module row beside the baseline"
    )
    ax.text(0.5, 0.5, f"no Δ to draw:\n{why}", ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _delta_with_bars(rec: Record, base: Record):
    """(Δ%, length of the error bar below, above): the paired interval of timings; counts have none."""
    from .cells import delta_interval

    ci = delta_interval(rec, base) if rec.stats.get("rounds_ms") else None
    if ci is None:
        return (rec.value / base.value - 1) * 100, 0.0, 0.0  # type: ignore[operator]  # plotted rows have values
    if ci.low is None or ci.high is None:
        return ci.pct, 0.0, 0.0
    return ci.pct, ci.pct - ci.low, ci.high - ci.pct


def _runtime_panel(ax, recs, backbone: str, metric: str) -> bool:
    """Δ% of each module under each runtime, at the (input, batch) where the runtimes were compared; False
    (and a note in the panel) when there is no Δ to draw."""
    from .cells import record_point

    others = [r for r in recs if record_point(r).runtime != "eager"]
    where = _mode((record_point(r).input_size, record_point(r).batch_size) for r in (others or recs))
    recs = [r for r in recs if (record_point(r).input_size, record_point(r).batch_size) == where]
    runtimes = sorted({record_point(r).runtime for r in recs}, key=lambda n: RUNTIMES.index(n) if n in RUNTIMES else 99)
    bases = {record_point(r).runtime: r for r in recs if r.module == "none"}
    labels = list(dict.fromkeys(r.label for r in recs if r.module != "none"))
    width = 0.8 / max(1, len(labels))
    series = []
    for i, label in enumerate(labels):
        xs, ys, lo, hi = [], [], [], []
        for j, runtime in enumerate(runtimes):
            rec = next((r for r in recs if r.label == label and record_point(r).runtime == runtime), None)
            base = bases.get(runtime)
            if rec is None or base is None or not base.value:
                continue
            y, below, above = _delta_with_bars(rec, base)
            if not all(map(math.isfinite, (y, below, above))):
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(y)
            lo.append(below)
            hi.append(above)
        if xs:
            series.append((label, xs, ys, lo, hi))
    if not series:
        _no_delta(ax, f"{backbone}: {metric}", recs)
        return False
    for label, xs, ys, lo, hi in series:
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", ms=4, capsize=3, label=label)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(runtimes)))
    ax.set_xticklabels(runtimes)
    ax.set_xlabel("runtime")
    ax.set_ylabel(f"Δ {metric} % vs none (same runtime)")
    ax.set_title(f"{backbone}: {metric} (input {where[0][0]}x{where[0][1]}, batch {where[1]})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return True


def _mode(values):
    values = list(values)
    return max(dict.fromkeys(values), key=values.count) if values else None


def _x(value) -> float:
    return float(value[0]) if isinstance(value, tuple) else float(value)


def _show(value) -> str:
    return f"{value[0]}x{value[1]}" if isinstance(value, tuple) else str(value)


def sites_plot(records: Sequence[Record], path: Path) -> Optional[Path]:
    """Direct attribution, one panel per backbone: each module's own time stacked by stage (bars, with the
    total's 95% interval), beside the whole network's paired Δ ms (diamond, with its interval)."""
    from .cells import record_order
    from .tables import whole_network_ms

    recs = [r for r in sorted(records, key=record_order) if r.metric == "attention_cpu" and r.ok]
    if not recs:
        return None
    plt = _pyplot()
    backbones = list(dict.fromkeys(r.backbone for r in recs))
    stages = sorted({int(k) for r in recs for k in (r.stats.get("stages") or {})})
    colors = plt.get_cmap("viridis")([i / max(1, len(stages) - 1) for i in range(len(stages))])
    fig, axes = plt.subplots(
        1,
        len(backbones),
        figsize=(
            5.2 * len(backbones),
            0.6 + 0.55 * max(len([r for r in recs if r.backbone == b]) for b in backbones) + 1.6,
        ),
        squeeze=False,
    )
    for ax, backbone in zip(axes[0], backbones):
        rows = [r for r in recs if r.backbone == backbone]
        for y, r in enumerate(rows):
            left = 0.0
            for k, color in zip(stages, colors):
                ms = ((r.stats.get("stages") or {}).get(str(k)) or {}).get("ms")
                if ms:
                    ax.barh(y, ms, left=left, color=color, height=0.35, label=f"stage {k} (direct)" if y == 0 else None)
                    left += ms
            lo, hi = r.stats.get("low_ms"), r.stats.get("high_ms")
            if lo is not None and hi is not None:  # (a bar never negative: an interval edited to miss its value)
                ax.errorbar(
                    [r.value],
                    [y],
                    xerr=[[max(0.0, r.value - lo)], [max(0.0, hi - r.value)]],
                    fmt="none",
                    ecolor="black",
                    capsize=3,
                )
            whole = whole_network_ms(records, r)
            if whole is not None:
                err = None if whole.low is None else [[whole.mean - whole.low], [whole.high - whole.mean]]
                ax.errorbar(
                    [whole.mean],
                    [y + 0.32],
                    xerr=err,
                    fmt="D",
                    color="crimson",
                    ms=5,
                    capsize=3,
                    label="whole network Δ (paired)" if y == 0 else None,
                )
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([r.label for r in rows])
        ax.invert_yaxis()
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("added ms per call (95% CI)")
        ax.set_title(backbone, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=7, loc="lower right")
    return _finish(
        plt,
        fig,
        f"{records[0].suite}: what the attention modules add, alone (bars, by stage) and in the network (diamonds)",
        path,
        dpi=110,
    )

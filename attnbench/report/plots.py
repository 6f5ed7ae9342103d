"""Plots (PNG) drawn from records: accuracy vs cost, and learning curves."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from ..records import Record
from .accuracy import accuracy_rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
            line, = ax.plot(x, m, "o-", ms=3, lw=1.5, label=f"{name} ({r['ok']} seeds)")
            ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], color=line.get_color(), alpha=0.2)
        ax.set_xlabel(label)
        ax.set_ylabel("test top-1 % (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[0][0].xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"{records[0].suite}: learning curves (every Δ in the table is read at the last point)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    fig.suptitle(f"{records[0].suite}: accuracy vs cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""Plots (PNG) drawn from records: accuracy vs cost."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from .accuracy import accuracy_rows


def pareto_plot(records: Sequence[dict], overhead: Sequence[dict], path: Path) -> Optional[Path]:
    """Top-1 vs CPU latency (when overhead records exist) and vs parameters; Pareto fronts drawn."""
    rows = [r for r in accuracy_rows(records, overhead) if r["top1"] is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("params", "parameters (M)", 1e-6)]
    if any(r["latency_ms"] for r in rows):
        panels.insert(0, ("latency_ms", "CPU latency, ms (overhead suite, 224x224, batch 1)", 1.0))
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
    fig.suptitle(f"{records[0]['suite']}: accuracy vs cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""From a result store to a paper, in Python: load results/overhead.jsonl, filter it, plot each module's
Δ CPU latency against its ΔMACs with the 95% intervals, and write the LaTeX table.

    python examples/overhead_to_paper.py [STORE] [OUT_FOLDER]

Writes OUT_FOLDER/overhead-latency-vs-macs.png and OUT_FOLDER/overhead-table.tex, and prints the table.
Nothing here imports torch: a store is read, not measured.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a file, no window
import matplotlib.pyplot as plt  # noqa: E402

import attnbench  # noqa: E402

store = Path(sys.argv[1] if len(sys.argv) > 1 else "results/overhead.jsonl")
out = Path(sys.argv[2] if len(sys.argv) > 2 else ".")
out.mkdir(parents=True, exist_ok=True)

results = attnbench.load(store)
df = results.to_pandas()  # one row per cell and metric; Δ vs the backbone's `none` row, with its interval

# Filter: the modules (not the baselines), eager CPU latency and MACs, side by side per (backbone, module).
cells = df[(df.module != "none") & df.metric.isin(["macs", "latency_cpu"]) & (df.runtime == "eager")]
wide = cells.pivot_table(
    index=["backbone", "label"], columns="metric", values=["delta_pct", "delta_pct_low", "delta_pct_high"]
)

fig, ax = plt.subplots(figsize=(5, 3.5))
for backbone, rows in wide.groupby(level="backbone"):
    lat, low, high = (rows[(c, "latency_cpu")] for c in ("delta_pct", "delta_pct_low", "delta_pct_high"))
    ax.errorbar(rows[("delta_pct", "macs")], lat, yerr=[lat - low, high - lat], fmt="o", capsize=3, label=backbone)
    for (_, label), x, y in zip(rows.index, rows[("delta_pct", "macs")], lat):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
ax.set_xlabel("ΔMACs % (exact)")
ax.set_ylabel("Δ CPU latency % [95% CI]")
ax.axhline(0, color="grey", lw=0.5)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "overhead-latency-vs-macs.png", dpi=120)

# The paper's table: the same report, narrowed to three metrics, as booktabs LaTeX (\usepackage{booktabs}).
paper = results.where(metric=["params", "macs", "latency_cpu"])
(out / "overhead-table.tex").write_text(paper.to_latex())
print(paper.table())

"""Records -> tables, CSV and plots: pure functions of the records they are given.

- ``tables``: the cost tables (markdown), the flat CSV, ``compare``;
- ``accuracy``: seed statistics and the accuracy table;
- ``plots``: PNG figures;
- ``predictors``: which count (MACs, parameters, bytes, operators) predicts latency.
``write_outputs`` is the one place that writes files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..core.files import write_atomic
from ..records.record import Record
from . import predictors
from .accuracy import accuracy_rows, render_accuracy
from .cells import record_order
from .compare import render_compare
from .csv import flat_records
from .notes import environment_line
from .plots import curves_plot, pareto_plot, sites_plot, sweep_plot
from .tables import render_markdown

__all__ = [
    "accuracy_rows",
    "curves_plot",
    "environment_line",
    "flat_records",
    "pareto_plot",
    "record_order",
    "render_accuracy",
    "render_compare",
    "render_markdown",
    "sites_plot",
    "sweep_plot",
    "write_outputs",
]


def write_outputs(
    records: Sequence[Record], out_dir: Path | str, name: str, overhead: Sequence[Record] = ()
) -> Dict[str, Path]:
    """<name>.md and .csv; for accuracy suites also the plots, with CPU latency joined from the
    ``overhead`` records the caller passes (none: no latency column is filled).

    Each file is written beside its final name and moved into place, so a reader (or an interrupt)
    never sees half a table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / f"{name}.md", out / f"{name}.csv"
    paths = {"markdown": md, "csv": csv, "records": out / f"{name}.jsonl"}
    if any(r.metric == "accuracy" for r in records):
        write_atomic(md, render_accuracy(records, overhead, name))
        for key, png in (
            ("plot", pareto_plot(records, overhead, out / f"{name}.png")),
            ("curves", curves_plot(records, out / f"{name}-curves.png")),
        ):
            if png:
                paths[key] = png
    else:
        write_atomic(md, render_markdown(records, name))
        for key, png in (
            ("plot", sweep_plot(records, out / f"{name}-sweeps.png")),
            ("sites", sites_plot(records, out / f"{name}-sites.png")),
        ):
            if png:
                paths[key] = png
        if predictors.applies(records):  # counts with memory traffic and timings: which count predicts latency
            paths["predictors"] = out / f"{name}-predictors.md"
            write_atomic(paths["predictors"], predictors.render_predictors(records, name))
            png = predictors.predictors_plot(records, out / f"{name}-predictors.png")
            if png:
                paths["predictors_plot"] = png
    write_atomic(csv, flat_records(records).to_csv(index=False))
    return paths


def write_outputs_safely(
    records: List[Record], out: Path, name: str, overhead: Sequence[Record] = ()
) -> Tuple[Dict[str, Path], List[str]]:
    """Write the tables with Ctrl-C and SIGTERM deferred (a second interrupt during shutdown must not leave
    a half-written table); each file is replaced atomically. Returns (paths, what could not be written)."""
    from ..guard.interrupts import deferred  # signal handling only: no torch

    with deferred():
        try:
            return write_outputs(records, out, name, overhead), []
        except OSError as exc:
            return {"records": out / f"{name}.jsonl"}, [f"{name}.md/.csv ({exc.strerror or exc})"]

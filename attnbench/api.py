"""attnbench from Python: results into pandas, LaTeX and notebooks, and suites run from code.

- :func:`load` reads a result store (or a folder of them) into :class:`Results`: the typed records, a tidy
  data frame (``to_pandas``), the report's tables in markdown, LaTeX, HTML, CSV or JSON (``table``), and
  notebook display. Loading and rendering never import torch: they read records, they measure nothing.
- :func:`run` runs a suite -- a name, a path, or a dict with the YAML's structure -- like ``attnbench run``:
  the same code path (:func:`prepare` and :func:`execute`, which the command line calls too), the same store,
  progress bar, resume and interrupt semantics, and the command line's errors raised as exceptions
  (:class:`attnbench.AttnBenchError` and its subclasses).

The columns of ``to_pandas()`` are documented in docs/python-api.md.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .errors import UsageError
from .records.record import Record

PathLike = Union[str, "os.PathLike[str]"]


class RunWarning(UserWarning):
    """A run finished with failed cells, or with tables it could not write (the records are stored)."""


@dataclasses.dataclass(frozen=True)
class _Part:
    """One store's share of a Results: the selected records, the whole store (the baselines every Δ is taken
    against, so a selection keeps its Δ), and the overhead records an accuracy table joins its latency from."""

    name: str
    path: Optional[Path]
    records: Tuple[Record, ...]
    context: Tuple[Record, ...]
    overhead: Tuple[Record, ...] = ()


class Results:
    """Records of one or more stores, with their tables. ``records`` are the typed records (the newest per cell);
    ``to_pandas()`` is one row per cell and metric; ``table(format)`` is the report ``attnbench report`` writes
    (markdown, byte for byte), or the same report as LaTeX, HTML, CSV or JSON; ``where(...)`` selects.
    A notebook shows a Results as its tables."""

    def __init__(self, parts: Sequence[_Part], run: Any = None):
        self._parts = tuple(parts)
        self.run = run  # the runner's RunResult when this came from attnbench.run (counts, paths, wall time)

    @property
    def records(self) -> List[Record]:
        return [r for p in self._parts for r in p.records]

    @property
    def stores(self) -> List[str]:
        """The stores' names (their file stems, the tables' titles)."""
        return [p.name for p in self._parts]

    @property
    def paths(self) -> List[Optional[Path]]:
        return [p.path for p in self._parts]

    def __len__(self) -> int:
        return sum(len(p.records) for p in self._parts)

    def __repr__(self) -> str:
        parts = ", ".join(f"{p.name}: {len(p.records)} record(s)" for p in self._parts)
        return f"Results({parts or 'empty'})"

    def where(
        self,
        backbone: Any = None,
        module: Any = None,
        metric: Any = None,
        *,
        label: Any = None,
        status: Any = None,
        input_size: Any = None,
        batch_size: Any = None,
        runtime: Any = None,
        baselines: bool = True,
    ) -> "Results":
        """The records that match every filter given; each filter is a value or a collection of values.
        ``module`` matches a module label ('se-r8') or a registry name ('se', which includes 'se-r8');
        ``label`` matches labels only; ``input_size`` is 224, (224, 224) or '224x224'. With ``baselines``
        (default) the bare `none` records the selected ones are compared with stay in, so the tables keep
        their Δ columns; ``to_pandas()`` keeps its Δ either way."""
        from .report.cells import record_point

        sizes = (
            None
            if input_size is None
            else {_size(v) for v in ([input_size] if _is_size_pair(input_size) else _values(input_size))}
        )
        tests: List[Callable[[Record], bool]] = []
        for values, get in (
            (backbone, lambda r: [r.backbone]),
            (module, lambda r: [r.label, r.module]),
            (label, lambda r: [r.label]),
            (metric, lambda r: [r.metric]),
            (status, lambda r: [r.status]),
            (batch_size, lambda r: [record_point(r).batch_size]),
            (runtime, lambda r: [record_point(r).runtime]),
        ):
            if values is not None:
                wanted = set(_values(values))
                tests.append(lambda r, get=get, wanted=wanted: any(v in wanted for v in get(r)))
        if sizes is not None:
            tests.append(lambda r: tuple(record_point(r).input_size) in sizes)

        parts = []
        for p in self._parts:
            chosen = [r for r in p.records if all(t(r) for t in tests)]
            if baselines and tests:
                wanted = {(r.backbone, r.metric, record_point(r)) for r in chosen}
                keep = {id(r) for r in chosen}
                chosen = [
                    r
                    for r in p.records
                    if id(r) in keep or (r.module == "none" and (r.backbone, r.metric, record_point(r)) in wanted)
                ]
            parts.append(dataclasses.replace(p, records=tuple(chosen)))
        return Results(parts, self.run)

    def table(self, format: str = "markdown") -> str:
        """The report in ``format``: 'markdown' (the <store>.md ``attnbench report`` writes, byte for byte),
        'latex', 'html', 'csv' or 'json' (the tidy frame of ``to_pandas()``); one report per store, joined."""
        from .report.formats import check_format, render_report

        check_format(format)
        if format in ("csv", "json"):
            from .report.frame import frame_csv, frame_json

            frame = self.to_pandas()
            return frame_csv(frame) if format == "csv" else frame_json(frame)
        parts = [p for p in self._parts if p.records] or self._parts[:1]
        return "\n".join(render_report(p.records, p.name, format, p.overhead, p.context) for p in parts)

    def to_pandas(self, stats: bool = False):
        """A pandas DataFrame, one row per cell and metric (columns: docs/python-api.md); ``stats`` adds every
        scalar stat of each measurement as a ``stat_<name>`` column."""
        import pandas as pd

        from .report.frame import tidy_frame

        frames = [tidy_frame(p.records, p.context, p.overhead, store=p.name, stats=stats) for p in self._parts]
        if len(frames) == 1:
            return frames[0]
        return pd.concat(frames, ignore_index=True) if frames else tidy_frame([])

    def to_latex(self) -> str:
        """The report as booktabs LaTeX tables (needs ``\\usepackage{booktabs}``)."""
        return self.table("latex")

    def _repr_markdown_(self) -> str:
        return self.table("markdown")

    def _repr_html_(self) -> str:
        return self.table("html")


def _values(v: Any) -> List[Any]:
    return list(v) if isinstance(v, (list, tuple, set, frozenset)) else [v]


def _is_size_pair(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) for x in v)


def _size(v: Any) -> Tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return v, v
    if _is_size_pair(v) or (isinstance(v, list) and len(v) == 2):
        return int(v[0]), int(v[1])
    if isinstance(v, str) and "x" in v:
        h, _, w = v.partition("x")
        if h.strip().isdigit() and w.strip().isdigit():
            return int(h), int(w)
    raise UsageError(f"input_size {v!r} is not a size; give 224, (224, 224) or '224x224'")


# ---- loading -----------------------------------------------------------------------------------


def load(path: Union[PathLike, Iterable[PathLike]], latency_from: Optional[PathLike] = None) -> Results:
    """The stores at ``path``: a ``.jsonl`` store, a folder (every ``*.jsonl`` in it) or a list of either.
    Accuracy stores join CPU latency from ``latency_from``, else from ``overhead.jsonl`` beside them, as
    ``attnbench report`` does. Stores of earlier schemas are migrated on read; lines that are not records are
    skipped with one warning per store."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    stores: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise UsageError(
                    f"{p} holds no result stores (*.jsonl); give a store written by `attnbench run` or a folder of them"
                )
            stores += found
        elif p.is_file():
            stores.append(p)
        else:
            raise UsageError(f"no result store at {p}; give the .jsonl written by `attnbench run`")
    if not stores:
        raise UsageError("no result store given; give a .jsonl written by `attnbench run` or a folder of them")
    parts = []
    for p in stores:
        records = tuple(_read(p))
        overhead: Tuple[Record, ...] = ()
        if any(r.metric == "accuracy" for r in records):
            overhead = tuple(overhead_records(latency_from, p.parent, "latency_from"))
        parts.append(_Part(p.stem, p, records, records, overhead))
    return Results(parts)


def _read(path: Path) -> List[Record]:
    from .records.store import Store

    try:
        return Store(path).latest()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}; give a readable store")


def overhead_records(path: Optional[PathLike], out: Path, flag: str = "--latency-from") -> List[Record]:
    """The latency records an accuracy table joins: ``path`` (named in errors as ``flag``), else OUT/overhead.jsonl
    when it exists, else none."""
    if path is None:
        path = Path(out) / "overhead.jsonl"
        if not path.is_file():
            return []
    elif not Path(path).is_file():
        raise UsageError(f"{flag} {path}: no such result store; give the overhead .jsonl written by `attnbench run`")
    return [r for r in _read(Path(path)) if r.metric == "latency_cpu"]


# ---- running -----------------------------------------------------------------------------------


def suite_from(suite: Any, overrides: Optional[Dict[str, Any]] = None):
    """A Suite from a name in suites/, a path to a .yaml file, a dict with the YAML's structure, or a Suite (a copy);
    ``overrides`` replace top-level fields of a file or dict before it is validated."""
    from .suite.load import load_suite
    from .suite.model import Suite
    from .suite.parse import parse_suite

    if isinstance(suite, Suite):
        if overrides:
            raise UsageError(
                f"overrides {sorted(overrides)} apply to a suite name, file or dict; set the fields of "
                "the Suite object instead"
            )
        return copy.deepcopy(suite)  # subset and dataset options are set on it: the caller's stays as it was
    if isinstance(suite, dict):
        return parse_suite({**suite, **(overrides or {})}, "<suite dict>", default_name="suite")
    if isinstance(suite, (str, os.PathLike)):
        return load_suite(os.fspath(suite), overrides=overrides)
    raise UsageError(f"suite {suite!r} is not a suite; give a name from suites/, a .yaml path or a dict")


def prepare(
    suite: Any,
    out: Path,
    *,
    overrides: Optional[Dict[str, Any]] = None,
    add_modules: Sequence[str] = (),
    only_backbones: Sequence[str] = (),
    only_modules: Sequence[str] = (),
    only_metrics: Sequence[str] = (),
    executor: str = "local",
    scheduler: Optional[str] = None,
    workers: Optional[int] = None,
    slot: Optional[str] = None,
    worker_wait: Optional[float] = None,
    data_root: Optional[str] = None,
    download: bool = False,
):
    """Everything ``attnbench run`` checks before any work, in its order: the executor options (a Dask
    scheduler is probed), the suite, the subset, the dataset folder. Returns (suite, executor or None)."""
    from .harness.dask.coordinator import make_executor

    ex = make_executor(executor, scheduler, workers, slot, (Path(out) / "dask-scratch").resolve(), worker_wait)
    if add_modules:
        from .suite.plugins import with_added_modules

        s = with_added_modules(suite, list(add_modules))
    else:
        s = suite_from(suite, overrides)
    from .suite.plan import subset_suite

    subset_suite(s, only_backbones, only_modules, only_metrics)
    if data_root or download:
        s.dataset.update({k: v for k, v in (("root", data_root), ("download", download)) if v})
    return s, ex


def execute(
    s,
    out: Path,
    resume: bool,
    executor,
    overhead: Sequence[Record],
    *,
    quiet: bool,
    console,
    around: Callable[[], ContextManager] = contextlib.nullcontext,
):
    """Run a prepared suite under a progress bar on ``console`` (none when ``quiet``): a spinner with the cell
    in flight, the counts, elapsed time and ETA; notices (where a previous store was moved) printed above it.
    ``around`` wraps the run itself (the command line sends stdout to stderr there). Returns the RunResult."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column

    from .harness.runner import run_suite
    from .suite.plan import plan

    total = len(plan(s))
    counts = {"done": 0, "failed": 0, "skipped": 0, "unsupported": 0}
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", max_width=56)),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=True,
    )

    def fmt_counts():
        return " ".join(f"{'ok' if k == 'done' else k} {v}" for k, v in counts.items() if v or k != "unsupported")

    with progress:
        bar = progress.add_task(f"{s.name}: {'on dask' if executor else 'starting'}", total=total, counts=fmt_counts())

        def on_start(task):
            progress.update(bar, description=task.name)

        def on_done(task, records):
            for r in records:
                counts["done" if r.status == "ok" else r.status] += 1
            progress.update(bar, advance=len(records), counts=fmt_counts())

        def on_notice(text):
            progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

        if executor is not None:  # Dask: which cells run on which worker, refreshed at every poll of the scheduler
            executor.on_progress = lambda text: progress.update(bar, description=f"{s.name}: {text}")

        with around():
            return run_suite(
                s,
                out,
                resume=resume,
                executor=executor,
                on_start=on_start,
                on_done=on_done,
                overhead=overhead,
                on_notice=on_notice,
            )


def run(
    suite: Any = "overhead",
    out: PathLike = "results",
    resume: bool = False,
    *,
    only_backbones: Sequence[str] = (),
    only_modules: Sequence[str] = (),
    only_metrics: Sequence[str] = (),
    executor: str = "local",
    scheduler: Optional[str] = None,
    workers: Optional[int] = None,
    slot: Optional[str] = None,
    worker_wait: Optional[float] = None,
    data_root: Optional[str] = None,
    download: bool = False,
    latency_from: Optional[PathLike] = None,
    progress: bool = True,
    **overrides: Any,
) -> Results:
    """Run a suite as ``attnbench run`` does and return its Results (the records of this suite's cells).

    ``suite``: a name from suites/, a path to a .yaml file, a dict with the YAML's structure, or a Suite.
    ``overrides``: top-level suite fields that replace the file's or dict's (``metrics=["params", "macs"]``,
    ``input_size=160``), validated like the file. ``only_*`` run a subset, keeping cell keys (``--backbone``,
    ``--module``, ``--metric``); the other keywords are ``run``'s options of the same name; ``progress=False``
    is ``--quiet``. The store OUT/<suite>.jsonl, ``resume``, and the tables written beside it behave as on the
    command line. Bad input raises the command line's error (an AttnBenchError, before any work). Ctrl-C or
    SIGTERM stops after the cell in flight: finished cells are stored, the tables are written, and the
    interrupt is raised (a KeyboardInterrupt) with ``.results`` holding what was stored; a run that cannot go on
    (its Dask scheduler lost, its disk full) raises its RunAborted likewise. Failed cells do not raise: they
    are rows with status 'failed' and a RunWarning."""
    from rich.console import Console

    from .guard import interrupts

    out = Path(out)
    s, ex = prepare(
        suite,
        out,
        overrides=overrides,
        only_backbones=only_backbones,
        only_modules=only_modules,
        only_metrics=only_metrics,
        executor=executor,
        scheduler=scheduler,
        workers=workers,
        slot=slot,
        worker_wait=worker_wait,
        data_root=data_root,
        download=download,
    )
    overhead = overhead_records(latency_from, out, "latency_from")
    with interrupts.handled():
        result = execute(s, out, resume, ex, overhead, quiet=not progress, console=Console(stderr=True))
    records = tuple(result.records)
    results = Results([_Part(s.name, out / f"{s.name}.jsonl", records, records, tuple(overhead))], run=result)
    if result.interrupted:
        exc = interrupts.Interrupted(result.signum)
        exc.args = (
            f"interrupted by {interrupts.NAMES.get(result.signum, result.signum)}: finished cells are stored "
            "and the tables show them; run again with resume=True to continue",
        )
        exc.results = results
        raise exc
    if result.aborted is not None:
        result.aborted.results = results
        raise result.aborted
    for what in result.unwritten:
        warnings.warn(
            f"attnbench: not written: {what}; `attnbench report {result.paths['records']}` rebuilds it",
            RunWarning,
            stacklevel=2,
        )
    if result.failed:
        warnings.warn(
            f"attnbench: {result.failed} cell(s) of {s.name} failed; see the table's notes "
            "(results.where(status='failed'))",
            RunWarning,
            stacklevel=2,
        )
    return results

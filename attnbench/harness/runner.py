"""Running a suite: plan, resolve host-chosen settings, execute locally or on Dask, store, write the tables."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..check.verdicts import suite_verdicts, with_verdict
from ..core.metrics import ACCURACY
from ..errors import OutputError, RunAborted, UsageError
from ..guard.cell import contained
from ..guard.interrupts import deferred, signum_of
from ..records.record import Record, readable
from ..records.store import FolderLock, Store, check_output_dir
from ..report import write_outputs_safely
from ..suite.model import Cell, Suite
from ..suite.plan import plan
from .execute import _no_gpu, execute
from .tasks import Task, cell_keys, executor_threads, make_tasks


@dataclass
class RunResult:
    records: List[Record] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    unsupported: int = 0  # known upstream limits, counted apart from failures
    reused: int = 0
    interrupted: bool = False
    signum: int = 2  # the signal that interrupted it (SIGINT: Ctrl-C, SIGTERM): exit status 128 + signum
    aborted: Optional[RunAborted] = None  # the run as a whole stopped (scheduler lost, disk full)
    archived: Optional[Path] = None  # where the previous store and its tables went (OUT/history/...)
    wall_s: float = 0.0
    paths: Dict[str, Path] = field(default_factory=dict)
    unwritten: List[str] = field(default_factory=list)  # outputs that could not be written

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 128 + self.signum
        if self.aborted is not None:
            return self.aborted.exit_code
        return 1 if self.failed or self.unwritten else 0


def local_executor(tasks: Iterable[Task]):
    for task in tasks:
        yield task, execute(task)


def run_suite(
    suite: Suite,
    out_dir: Path | str = "results",
    resume: bool = False,
    executor: Optional[Callable[[List[Task]], Iterable[Tuple[Task, List[Record]]]]] = None,
    on_start: Optional[Callable[[Task], None]] = None,
    on_done: Optional[Callable[[Task, List[Record]], None]] = None,
    overhead: Sequence[Record] = (),
    on_notice: Optional[Callable[[str], None]] = None,
) -> RunResult:
    """Run every cell not already stored (with ``resume``), store records as they land, write tables.

    The output folder is checked and locked before any work. Without ``resume`` the previous store and
    its tables move to OUT/history/ (``on_notice`` is told where); a store of another suite file with
    the same name is refused. A run that cannot go on as a whole (its scheduler is gone, the disk is
    full) stops with ``result.aborted`` set; an interrupt (Ctrl-C, SIGTERM) with ``result.interrupted``.
    Either way what was stored stays, the table is written from it, and ``--resume`` continues."""
    out = Path(out_dir)
    check_output_dir(out)
    with FolderLock(out):
        try:
            return _run_locked(suite, out, resume, executor, on_start, on_done, overhead, on_notice)
        finally:
            close = getattr(executor, "close", None)
            if close:  # a Dask executor started to learn its threads: shut down even when planning failed
                close()


def check_same_suite(suite: Suite, stored: Sequence[Record], store: Store) -> None:
    """A store holds the cells of one suite: another suite file with the same ``name:`` is refused, never mixed
    into it (``--resume``) or moved over it. Identity travels with the store (no machine path in it): a stored
    record belongs to this suite when its content digest is this suite's, or it was found at the same relative
    place (``suites/overhead.yaml`` in any clone, edited or not). Records written before digests existed are
    compared by file name."""
    clash = next((r for r in stored if not same_suite(r, suite)), None)
    if clash is not None:
        raise UsageError(
            f"{store.path} holds the results of suite {suite.name!r} from {clash.source} "
            f"(content {clash.suite_digest or 'not recorded'}), and {suite.identity or suite.source} "
            f"(content {suite.digest}) has the same name but is another suite; give one of them another "
            "'name:', or run with another --out"
        )


def same_suite(rec: Record, suite: Suite) -> bool:
    """Whether a stored record was planned from this suite (see check_same_suite)."""
    if not rec.source or not suite.identity:
        return True  # nothing recorded (or a suite given as data): nothing to tell apart but the name
    if rec.suite_digest:
        return rec.suite_digest == suite.digest or rec.source == suite.identity
    return Path(rec.source).name == Path(suite.identity).name


def resolve_auto(cells: List[Cell], on_notice: Optional[Callable[[str], None]] = None) -> List[Cell]:
    """Training settings left to the host (``amp: auto``, ``channels_last: auto``) resolved by a short probe
    (attnbench.train.recipe), said once per choice; other cells pass through. Without CUDA a CUDA cell is
    left as it is (it is skipped, not probed)."""
    from ..train.recipe import has_auto, resolve_cells

    todo = [c for c in cells if c.metric == ACCURACY and has_auto(c.training) and not _no_gpu(c)]
    if not todo:
        return cells
    resolved = {id(c): r for c, r in zip(todo, resolve_cells(todo))}
    if on_notice is not None:
        for why in dict.fromkeys(r.recipe_choice["why"] for r in resolved.values()):
            on_notice(f"training recipe: {why}")
    return [resolved.get(id(c), c) for c in cells]


def _check_verdicts(cells) -> Dict[str, str]:
    """label -> the checks its module fails (``attnbench check`` alone, and one real forward in the first backbone
    it is planned on), run once per variant before any cell: every ok record of such a module carries it, so every
    table marks the row."""
    try:
        return suite_verdicts(cells)
    except BaseException as exc:  # the verdict is a mark on rows; it never stops a run (nor does a plugin's sys.exit())
        if not contained(exc):
            raise
        return {}


def _run_locked(suite, out, resume, executor, on_start, on_done, overhead, on_notice=None) -> RunResult:
    t0 = time.time()
    store = Store(out / f"{suite.name}.jsonl")
    if resume:
        store.repair()
    stored = store.latest()
    check_same_suite(suite, stored, store)
    threads = executor_threads(
        executor
    )  # a Dask executor connects and waits for its workers here, before anything moves
    archived = None
    if not resume:
        with deferred(reraise=True):  # moving a store aside is never left half-done
            try:
                archived = store.archive()
            except OSError as exc:
                raise UsageError(
                    f"cannot move the previous {store.path.name} aside into {out / 'history'}: "
                    f"{exc.strerror or exc}; free the folder or run with --resume"
                )
        if archived is not None and on_notice is not None:
            on_notice(f"previous results of {suite.name} moved to {archived}/ (use --resume to add to a store instead)")
    # The whole suite's cells (`amp: auto` chosen on this host before keys say what runs), then the subset asked
    # for (-b/-m/-M): the table shows every stored cell of the suite, the subset adds to it with --resume.
    whole = dataclasses.replace(suite, only_backbones=[], only_modules=[], only_metrics=[])
    all_cells = resolve_auto(plan(whole), on_notice)
    all_keys = cell_keys(all_cells, threads)
    picked = [(c, k) for c, k in zip(all_cells, all_keys) if suite.selected(c.backbone, c.variant, c.metric)]
    cells, keys = [c for c, _ in picked], [k for _, k in picked]
    done = store.done_keys(stored) if resume else set()
    todo = [(c, k) for c, k in zip(cells, keys) if k not in done]
    verdicts = _check_verdicts([c for c, _ in todo])
    result = RunResult(reused=len(cells) - len(todo), archived=archived)
    tasks = make_tasks([c for c, _ in todo], [k for _, k in todo], checkpoint_dir=out / "checkpoints", threads=threads)
    run = executor or local_executor

    def announced(ts):
        for t in ts:
            if on_start:
                on_start(t)
            yield t

    stream = run(announced(tasks) if executor is None else tasks)
    try:
        for task, records in stream:
            try:
                records = [readable(with_verdict(r, verdicts)) for r in records]
                with deferred(reraise=True):  # an interrupt lands between records, never inside a line
                    store.extend(records)
            except OSError as exc:
                raise OutputError(
                    f"could not write {store.path}: {exc.strerror or exc}; {result.ok + result.failed} "
                    "cell(s) are stored; free space and rerun with --resume to continue"
                )
            for r in records:
                setattr(result, r.status, getattr(result, r.status) + 1)
            if on_done:
                on_done(task, records)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (interrupts.Interrupted)
        result.interrupted, result.signum = True, signum_of(exc)
    except RunAborted as exc:
        result.aborted = exc
    finally:
        close = getattr(stream, "close", None)
        if close:
            try:
                close()  # an executor's generator shuts its cluster down now, not at garbage collection
            except KeyboardInterrupt as exc:  # another Ctrl-C while a cluster shuts down: leave it, write the table
                if not result.interrupted:
                    result.interrupted, result.signum = True, signum_of(exc)
    with deferred():  # from here on interrupts are noted, not raised: the table of what is stored gets written
        wanted = set(all_keys)
        result.records = [r for r in store.latest() if r.key in wanted]
        result.paths, result.unwritten = write_outputs_safely(result.records, out, suite.name, overhead)
    result.wall_s = time.time() - t0
    return result

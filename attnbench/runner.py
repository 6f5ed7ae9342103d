"""Run a suite: cells -> tasks -> measurements -> records in the store -> tables.

``execute`` turns one task into records and never raises for a cell's own failure: a bad
plugin, a shape mismatch, NaN or out-of-memory becomes a failed record and the run goes on.
Tasks are plain data so an executor can ship them to other processes (see executors.py).
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .attach import build
from .check import suite_verdicts, with_verdict
from .env import environment, fingerprint
from .errors import AttnBenchError, OutputError, RunAborted, RuntimeMissing, Unsupported
from .interrupts import deferred, signum_of
from .guard import CellTimeout, as_unsupported, check_finite, contained, deadline, escaped, is_out_of_memory
from .process_state import unchanged
from .measures.flops import measure_flops
from .measures.macs_dispatch import measure_train_macs
from .measures.memory import measure_activations, measure_saved_memory
from .measures.record import Measurement
from .measures.latency import LatencySettings, measure_latency, measure_peak_memory, measure_sites
from .measures.params import attention_hidden_state, measure_params
from .records import Record, readable
from .store import FolderLock, Store, check_output_dir
from .metrics import ACCURACY, SITES, spec
from .suite import Cell, Suite, is_reference, plan

# What a cell's boundary catches: every error, and SystemExit too (a plugin's sys.exit() or exit() fails
# its cell, not the run). A real Ctrl-C or SIGTERM passes: it stops the run. What else plugin code raises to
# end a program (a KeyboardInterrupt no signal raised, GeneratorExit) becomes an Exception where it is raised
# (attach.AttentionSlot, guard.deadline), and execute() catches whatever still gets through (guard.contained).
CELL_ERRORS = (Exception, SystemExit)


@dataclass(frozen=True)
class Task:
    """What one worker does at once: a single count, or one interleaved timing group."""

    cells: Tuple[Cell, ...]
    keys: Tuple[str, ...]
    checkpoint_dir: Optional[str] = None  # training cells checkpoint here every epoch (absolute: OUT/checkpoints)
    threads: Optional[int] = None  # torch threads for cells that set none (the executor's share of a node; in their keys)
    pause_after_s: Optional[float] = None  # training: stop at the first epoch end after this long (executors.py ships it on)

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return None if not self.training or self.checkpoint_dir is None else Path(self.checkpoint_dir) / f"{self.keys[0]}.pt"

    def train_kwargs(self) -> Dict[str, object]:
        """What a training cell needs beyond its config: where to checkpoint (and resume from), when to pause."""
        if self.checkpoint_path is None:
            return {}
        pause = {} if self.pause_after_s is None else {"pause_after_s": self.pause_after_s}
        return {"checkpoint_path": self.checkpoint_path, **pause}

    @property
    def exclusive(self) -> bool:
        """Timings (and training, which reports images/s) must not share a machine with other timings."""
        return spec(self.cells[0].metric).exclusive or self.training

    @property
    def training(self) -> bool:
        """Accuracy cells: one training run per cell (may run in parallel, one per worker slot)."""
        return self.cells[0].metric == ACCURACY

    @property
    def grouped(self) -> bool:
        return spec(self.cells[0].metric).grouped

    @property
    def name(self) -> str:
        c = self.cells[0]
        return c.name if len(self.cells) == 1 else f"{c.backbone}/{c.metric} ({len(self.cells)} variants, interleaved)"


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


def error_info(exc: BaseException, model=None) -> Dict[str, str]:
    """Type and one line of message; out-of-memory, timeouts and NaN outputs get their own names and a fix. An
    error raised in ``model`` outside its attached modules leads with where (``attach.failure_site``)."""
    from .attach import failure_site

    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    where = failure_site(model, exc)
    msg = ((f"{where}: " if where else "") + (lines[0] if lines else f"{type(exc).__name__} with no message"))[:300]
    if not lines and exc.__traceback__ is not None:  # a bare assert: say where it fired
        import traceback

        frames = traceback.extract_tb(exc.__traceback__)
        frame = next((f for f in reversed(frames) if "/torch/" not in f.filename), frames[-1])
        msg += f" at {'/'.join(Path(frame.filename).parts[-3:])}:{frame.lineno}"
    if isinstance(exc, CellTimeout):
        return {"type": "Timeout", "message": msg}
    if is_out_of_memory(exc):
        return {"type": "OutOfMemory", "message": f"{msg}; lower batch_size or input_size"}
    return {"type": type(exc).__name__, "message": msg}


def failure(cell: Cell, key: str, started: float, exc: BaseException, model=None) -> Record:
    """The record of a cell that did not measure: ``unsupported`` for a known upstream reason, else ``failed``."""
    if isinstance(exc, Unsupported):
        return make_record(cell, key, "unsupported", started, model=model, note=str(exc))
    if isinstance(exc, RuntimeMissing):  # an optional extra not installed: skipped with the install hint
        return make_record(cell, key, "skipped", started, model=model, note=str(exc))
    return make_record(cell, key, "failed", started, error=error_info(exc, model), model=model)


def cell_threads(cell: Cell, default: Optional[int] = None) -> int:
    """The torch threads a cell runs with: its timing's or training's own ``threads``, else ``default`` (the
    executor's; runner.execute pins it), else this process's. Counts never read a suite's latency threads."""
    kind = spec(cell.metric).kind
    own = cell.training.get("threads") if cell.metric == ACCURACY else \
        cell.latency.get("threads") if kind in ("timing", "memory") else None
    return int(own or default or torch.get_num_threads())


def thread_bound(metric: str) -> bool:
    """Whether a metric's result can depend on the thread count (counts cannot): then its key holds it."""
    return spec(metric).kind != "count"


def make_record(cell: Cell, key: str, status: str, started: float, measurement=None, error=None, model=None,
                note: str = "") -> Record:
    attach = getattr(model, "attnbench_attachment", None)
    return Record(
        key=key, suite=cell.suite, backbone=cell.backbone, label=cell.variant.label, module=cell.variant.module,
        metric=cell.metric, position=tuple(cell.position), config=cell.config(), status=status,
        measurement=measurement, error=error, note=note, attachment=attach.as_dict() if attach is not None else None,
        env={**environment(cell.device, cell.dtype, cell_threads(cell)), "module_package": module_package(cell),
             "plugins": _plugin_packages()},
        host=socket.gethostname(), pid=os.getpid(), started=started, ended=time.time(), source=cell.source,
        suite_digest=cell.suite_digest,
    )


def _plugin_packages() -> Dict[str, str]:
    from .registry import MODULES

    return MODULES.plugin_packages()


def build_cell_model(cell: Cell):
    """The cell's model; a training metric below the module's declared ``min_train_batch`` is ``Unsupported``
    with the module's reason (its ``min_spatial`` is checked by ``build`` against each site)."""
    if spec(cell.metric).train and not is_reference(cell.variant.module):
        from .contract import declared_limits
        from .registry import get_module

        try:
            why = declared_limits(get_module(cell.variant.module)).train_batch(cell.batch_size)
        except ValueError:
            why = None  # a malformed declaration: build() fails the cell with it
        if why:
            raise Unsupported(f"module {cell.variant.module!r} {why}; use batch_size >= 2")
    torch.manual_seed(0)
    return build(cell.backbone, cell.variant.module, backbone_kwargs=cell.backbone_options, input_size=tuple(cell.input_size),
                 **cell.variant.options)


def latency_settings(cell: Cell) -> LatencySettings:
    lat = dict(cell.latency)
    return LatencySettings(batch_size=cell.batch_size, input_size=tuple(cell.input_size), runtime=cell.runtime,
                           train=spec(cell.metric).train, timeout=cell.timeout, in_chans=cell.in_chans, **lat)


def _no_gpu(cell: Cell) -> bool:
    """A GPU metric, or a training cell on a CUDA device, on a machine without CUDA: skipped, not failed."""
    return (spec(cell.metric).gpu or cell.device.startswith("cuda")) and not torch.cuda.is_available()


NO_GPU_NOTE = "no CUDA device here (torch.cuda.is_available() is False); run on a GPU machine"


def execute(task: Task) -> List[Record]:
    """Measure a task's cells; every cell yields exactly one record, whatever happens.

    Everything a cell does -- input allocation, build, warm-up, timing, training -- happens inside
    this boundary, under the cell's deadline, with torch pinned to ``task.threads`` (cells that set their
    own threads pin those inside), so a worker never runs at a count its key does not hold.

    The process is left as it was found (``process_state``): torch's default dtype is the cell's and grad
    mode is on while it runs; a cell whose module changed process-wide state (threads, dtype, grad mode,
    global hooks, working folder, signal handlers, standard streams ...) fails with one line naming the change,
    and the state is put back, so later rows are unaffected. Whatever a module raises to end a program
    (``sys.exit()``, ``KeyboardInterrupt`` no signal raised, ``GeneratorExit``) fails its cell; a real Ctrl-C
    or SIGTERM ends the run (``guard.contained``)."""
    from .interrupts import watching
    from .process_state import Watch, alone, pinned
    from .threads import fixed_threads

    started = time.time()
    with alone() as unit, fixed_threads(task.threads), pinned(task.cells[0].dtype), watching():
        watch = Watch()
        try:
            records = _execute_timed(task) if task.grouped else _execute_one(task)
        except BaseException as exc:  # what the inner boundaries let through: a signal, or a plugin's escape
            if not unit.overlapped:
                watch.check()
            if not contained(exc):
                raise
            records = [failure(c, k, started, escaped(exc, f"cell {c.name}")) for c, k in zip(task.cells, task.keys)]
        # cells overlapping in one process (a Dask worker with several threads) share its state: not told apart
        changes = [] if unit.overlapped else watch.check()
    return _state_blamed(task, records, changes, watch.before.get("torch threads")) if changes else records


def _state_blamed(task: Task, records: List[Record], changes: List[str], threads: Optional[int]) -> List[Record]:
    """A task after which process-wide state differed (now put back): its ok records fail with the change,
    naming the module (in a timing group, the group's modules: each timing ran under the changed state).
    Every record says the thread count the task started with, not the one the module left behind."""
    from .process_state import blame

    modules = list(dict.fromkeys(c.variant.module for c in task.cells if not is_reference(c.variant.module)))
    who = (f"module {modules[0]!r}" if len(modules) == 1 else "this cell" if not modules else
           f"one of the modules {', '.join(map(repr, modules))} (timed together)")
    error = {"type": "StateChanged", "message": blame(changes, who)}
    out = []
    for r, cell in zip(records, task.cells):
        env = {**r.env, "threads": cell_threads(cell, threads)} if threads else r.env
        out.append(dataclasses.replace(r, env=env, **({"status": "failed", "measurement": None, "error": error}
                                                      if r.ok else {})))
    return out


def _execute_one(task: Task) -> List[Record]:
    cell, key = task.cells[0], task.keys[0]
    started, model = time.time(), None
    try:
        with deadline(cell.timeout, f"cell {cell.name}"):
            if cell.metric == ACCURACY:
                from .train import train_cell

                if _no_gpu(cell):
                    return [make_record(cell, key, "skipped", started, note=NO_GPU_NOTE)]

                m = train_cell(cell.backbone, cell.variant.module, cell.variant.options, cell.dataset, cell.training, cell.seed,
                               recipe_choice=cell.recipe_choice, **task.train_kwargs())
                resumed = m.stats.get("resumed_from_epoch") if task.pause_after_s is None else None
                # the checkpoint as OUT/checkpoints/<key>.pt names it: a record never carries a path of this machine
                note = f"resumed from epoch {resumed} (checkpoint checkpoints/{task.checkpoint_path.name})" if resumed else ""
                return [make_record(cell, key, "ok", started, m, note=note)]
            model = build_cell_model(cell)
            return [make_record(cell, key, "ok", started, measure_count(cell, model), model=model)]
    except CELL_ERRORS as exc:
        return [failure(cell, key, started, exc, model)]


def runs_at(model, x: torch.Tensor) -> None:
    """Raise unless ``model`` can do an eval forward at ``x``. Shapes first, on the meta device (meta copies of
    its parameters and buffers through ``functional_call``: no data, no compute, ~2% of a real forward); a real
    forward decides whenever the meta one cannot run (a tensor made on the CPU in forward, data-dependent
    control flow), so only a model that really fails fails."""
    from torch.func import functional_call

    model.eval()
    try:
        meta = {k: v.to("meta") for k, v in [*model.named_parameters(), *model.named_buffers()]}
        with torch.no_grad():
            functional_call(model, meta, (x.to("meta"),))
        return
    except (CellTimeout, KeyboardInterrupt):
        raise
    except Exception:
        pass
    with torch.no_grad():
        model(x)


def measure_count(cell: Cell, model) -> "Measurement":
    """A count metric of one built model: params, or MACs (inference per image, or one training step
    at the suite's batch size), always after a forward at the cell's input: a count of a model that
    cannot run there is not a result. Params need the shapes to flow (checked on the meta device, see
    ``runs_at``); the others run a real forward that must be finite. State the attached modules hide
    from ``parameters()`` is recorded with every count (it inflates saved-for-backward, deflates params)."""
    x = torch.randn(1, cell.in_chans, *cell.input_size)
    if cell.metric == "params":
        runs_at(model, x)
        return measure_params(model)
    with torch.no_grad():
        check_finite(model.eval()(x), f"{cell.backbone} + {cell.variant.label}")
    if cell.metric == "macs":
        m = measure_flops(model, x)
    elif cell.metric == "activations":
        m = measure_activations(model, x)
    else:
        train = {"macs_train": measure_train_macs, "train_memory": measure_saved_memory}.get(cell.metric)
        if train is None:
            raise ValueError(f"no count measure for metric {cell.metric!r}")
        try:
            m = train(model, torch.randn(cell.batch_size, cell.in_chans, *cell.input_size))
        except Exception as exc:  # BatchNorm's own ValueError, or a module's wrapped in ModuleFailed naming it
            known = as_unsupported(exc, cell.batch_size, cell.input_size)
            if known is exc:
                raise
            raise known from None
    hidden = attention_hidden_state(model)
    return dataclasses.replace(m, stats={**m.stats, **hidden}) if hidden else m


def _execute_timed(task: Task) -> List[Record]:
    started = time.time()
    first = task.cells[0]
    if _no_gpu(first):
        return [make_record(c, k, "skipped", started, note=NO_GPU_NOTE) for c, k in zip(task.cells, task.keys)]
    from .runtimes import check_available

    try:
        check_available(first.runtime, first.device)
    except RuntimeMissing as exc:  # an optional extra not installed: skipped with the install hint, not failed
        return [make_record(c, k, "skipped", started, note=str(exc)) for c, k in zip(task.cells, task.keys)]
    records: Dict[str, Record] = {}
    models, by_label = {}, {}
    for cell, key in zip(task.cells, task.keys):
        by_label[cell.variant.label] = (cell, key)
        try:  # a constructor that changes process-wide state fails its own cell (state put back), not the group's
            with unchanged(f"module {cell.variant.module!r}"), deadline(cell.timeout, f"building {cell.name}"):
                models[cell.variant.label] = build_cell_model(cell)
        except CELL_ERRORS as exc:
            records[cell.variant.label] = failure(cell, key, started, exc)

    def on_error(label, exc):
        cell, key = by_label[label]
        records[label] = failure(cell, key, started, exc, models.get(label))

    try:
        settings = latency_settings(first)
        if first.metric == "memory_gpu":
            for label, model in models.items():
                cell, key = by_label[label]
                try:
                    with deadline(cell.timeout, f"cell {cell.name}"):
                        m = measure_peak_memory(model, settings, cell.device)
                    records[label] = make_record(cell, key, "ok", started, m, model=model)
                except CELL_ERRORS as exc:
                    on_error(label, exc)
                torch.cuda.empty_cache()
        elif models:
            if first.metric == SITES:
                measured = measure_sites(models, settings, on_error=on_error)
            else:
                device = first.device if spec(first.metric).gpu else "cpu"
                baseline = next((c.variant.label for c in task.cells if c.variant.module == "none"), None)
                measured = measure_latency(models, settings, device, on_error=on_error, baseline=baseline)
            for label, m in measured.items():
                cell, key = by_label[label]
                records[label] = make_record(cell, key, "ok", started, m, model=models[label])
    except CELL_ERRORS as exc:  # the group's shared input or settings: every cell not yet recorded fails with it
        for label in by_label:
            if label not in records:
                on_error(label, exc)
    return [records[c.variant.label] for c in task.cells]


def make_tasks(cells: List[Cell], keys: List[str], checkpoint_dir: Optional[Path] = None,
               threads: Optional[int] = None) -> List[Task]:
    """Counts and trainings are one task per cell; timings of one backbone and metric form one
    interleaved group. Tasks keep the order in which their first cell was planned. ``checkpoint_dir`` is
    made absolute (a worker started elsewhere must not read it against its own directory)."""
    groups: Dict[object, Tuple[List[Cell], List[str]]] = {}
    for cell, key in zip(cells, keys):
        group = (cell.backbone, cell.metric, cell.point) if spec(cell.metric).grouped else key
        group_cells, group_keys = groups.setdefault(group, ([], []))
        group_cells.append(cell)
        group_keys.append(key)
    ckpt = str(Path(checkpoint_dir).resolve()) if checkpoint_dir is not None else None
    return [Task(tuple(c), tuple(k), ckpt, threads) for c, k in groups.values()]


def module_package(cell: Cell) -> str:
    """The package (and version) that provides a cell's module: plugins are part of what a number means."""
    if is_reference(cell.variant.module):
        return ""
    from .registry import MODULES

    dist, ver = MODULES.provider(cell.variant.module)
    return f"{dist} {ver}".strip()


def cell_keys(cells: List[Cell], threads: Optional[int] = None) -> List[str]:
    """Each cell's key, with the thread count it will run with (``threads``: the executor's default for cells
    that set none) for the metrics that depend on it: a record's ``env`` then agrees with its key."""
    return [c.key({**fingerprint(environment(c.device, c.dtype, cell_threads(c, threads)), thread_bound(c.metric)),
                   "module_package": module_package(c)}) for c in cells]


def executor_threads(executor) -> int:
    """The torch threads an executor gives cells that set none: its ``threads`` (a Dask executor's share of
    a node, known once its workers are there), else this process's."""
    return int(getattr(executor, "threads", None) or torch.get_num_threads())


def local_executor(tasks: Iterable[Task]):
    for task in tasks:
        yield task, execute(task)


def run_suite(
    suite: Suite, out_dir: Path | str = "results", resume: bool = False,
    executor: Optional[Callable[[List[Task]], Iterable[Tuple[Task, List[Record]]]]] = None,
    on_start: Optional[Callable[[Task], None]] = None, on_done: Optional[Callable[[Task, List[Record]], None]] = None,
    overhead: Sequence[Record] = (), on_notice: Optional[Callable[[str], None]] = None,
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
        raise AttnBenchError(f"{store.path} holds the results of suite {suite.name!r} from {clash.source} "
                             f"(content {clash.suite_digest or 'not recorded'}), and {suite.identity or suite.source} "
                             f"(content {suite.digest}) has the same name but is another suite; give one of them another "
                             "'name:', or run with another --out")


def same_suite(rec: Record, suite: Suite) -> bool:
    """Whether a stored record was planned from this suite (see check_same_suite)."""
    if not rec.source or not suite.identity:
        return True  # nothing recorded (or a suite given as data): nothing to tell apart but the name
    if rec.suite_digest:
        return rec.suite_digest == suite.digest or rec.source == suite.identity
    return Path(rec.source).name == Path(suite.identity).name


def resolve_auto(cells: List[Cell], on_notice: Optional[Callable[[str], None]] = None) -> List[Cell]:
    """Training settings left to the host (``amp: auto``, ``channels_last: auto``) resolved by a short probe
    (attnbench.host_recipe), said once per choice; other cells pass through. Without CUDA a CUDA cell is
    left as it is (it is skipped, not probed)."""
    from .host_recipe import has_auto, resolve_cells

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
    threads = executor_threads(executor)  # a Dask executor connects and waits for its workers here, before anything moves
    archived = None
    if not resume:
        with deferred(reraise=True):  # moving a store aside is never left half-done
            try:
                archived = store.archive()
            except OSError as exc:
                raise AttnBenchError(f"cannot move the previous {store.path.name} aside into {out / 'history'}: "
                                     f"{exc.strerror or exc}; free the folder or run with --resume")
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
                raise OutputError(f"could not write {store.path}: {exc.strerror or exc}; {result.ok + result.failed} "
                                  "cell(s) are stored; free space and rerun with --resume to continue")
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


def write_outputs_safely(records: List[Record], out: Path, name: str,
                         overhead: Sequence[Record] = ()) -> Tuple[Dict[str, Path], List[str]]:
    """Write the tables with Ctrl-C and SIGTERM deferred (a second interrupt during shutdown must not leave
    a half-written table); each file is replaced atomically. Returns (paths, what could not be written)."""
    from .report import write_outputs

    with deferred():
        try:
            return write_outputs(records, out, name, overhead), []
        except OSError as exc:
            return {"records": out / f"{name}.jsonl"}, [f"{name}.md/.csv ({exc.strerror or exc})"]

"""Run a suite: cells -> tasks -> measurements -> records in the store -> tables.

``execute`` turns one task into records and never raises for a cell's own failure: a bad
plugin, a shape mismatch, NaN or out-of-memory becomes a failed record and the run goes on.
Tasks are plain data so an executor can ship them to other processes (see executors.py).
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .attach import build
from .env import environment, fingerprint
from .errors import OutputError, RunAborted, RuntimeMissing, Unsupported
from .guard import CellTimeout, check_finite, deadline, is_out_of_memory
from .measures.flops import measure_flops
from .measures.macs_dispatch import measure_train_macs
from .measures.memory import measure_activations, measure_saved_memory
from .measures.record import Measurement
from .measures.latency import LatencySettings, measure_latency, measure_peak_memory
from .measures.params import measure_params
from .records import Record
from .store import FolderLock, Store, check_output_dir
from .metrics import ACCURACY, spec
from .suite import Cell, Suite, is_reference, plan


@dataclass(frozen=True)
class Task:
    """What one worker does at once: a single count, or one interleaved timing group."""

    cells: Tuple[Cell, ...]
    keys: Tuple[str, ...]
    checkpoint_dir: Optional[str] = None  # training cells checkpoint here every epoch (OUT/checkpoints)

    def train_kwargs(self) -> Dict[str, object]:
        """What a training cell needs beyond its config: where to checkpoint (and resume from)."""
        if not self.training or self.checkpoint_dir is None:
            return {}
        return {"checkpoint_path": Path(self.checkpoint_dir) / f"{self.keys[0]}.pt"}

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
    aborted: Optional[RunAborted] = None  # the run as a whole stopped (scheduler lost, disk full)
    wall_s: float = 0.0
    paths: Dict[str, Path] = field(default_factory=dict)
    unwritten: List[str] = field(default_factory=list)  # outputs that could not be written

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if self.aborted is not None:
            return self.aborted.exit_code
        return 1 if self.failed or self.unwritten else 0


def error_info(exc: BaseException) -> Dict[str, str]:
    """Type and one line of message; out-of-memory, timeouts and NaN outputs get their own names and a fix."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    msg = (lines[0] if lines else f"{type(exc).__name__} with no message")[:300]
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
    return make_record(cell, key, "failed", started, error=error_info(exc), model=model)


def cell_threads(cell: Cell) -> int:
    return int(cell.latency.get("threads") or cell.training.get("threads") or torch.get_num_threads())


def make_record(cell: Cell, key: str, status: str, started: float, measurement=None, error=None, model=None,
                note: str = "") -> Record:
    attach = getattr(model, "attnbench_attachment", None)
    return Record(
        key=key, suite=cell.suite, backbone=cell.backbone, label=cell.variant.label, module=cell.variant.module,
        metric=cell.metric, position=tuple(cell.position), config=cell.config(), status=status,
        measurement=measurement, error=error, note=note, attachment=attach.as_dict() if attach is not None else None,
        env={**environment(cell.device, cell.dtype, cell_threads(cell)), "module_package": module_package(cell),
             "plugins": _plugin_packages()},
        host=socket.gethostname(), pid=os.getpid(), started=started, ended=time.time(),
    )


def _plugin_packages() -> Dict[str, str]:
    from .registry import MODULES

    return MODULES.plugin_packages()


def build_cell_model(cell: Cell):
    torch.manual_seed(0)
    return build(cell.backbone, cell.variant.module, backbone_kwargs=cell.backbone_options, input_size=tuple(cell.input_size),
                 **cell.variant.options)


def latency_settings(cell: Cell) -> LatencySettings:
    lat = dict(cell.latency)
    return LatencySettings(batch_size=cell.batch_size, input_size=tuple(cell.input_size), runtime=cell.runtime,
                           train=spec(cell.metric).train, timeout=cell.timeout, **lat)


def _no_gpu(cell: Cell) -> bool:
    """A GPU metric, or a training cell on a CUDA device, on a machine without CUDA: skipped, not failed."""
    return (spec(cell.metric).gpu or cell.device.startswith("cuda")) and not torch.cuda.is_available()


NO_GPU_NOTE = "no CUDA device here (torch.cuda.is_available() is False); run on a GPU machine"


def execute(task: Task) -> List[Record]:
    """Measure a task's cells; every cell yields exactly one record, whatever happens.

    Everything a cell does -- input allocation, build, warm-up, timing, training -- happens inside
    this boundary, under the cell's deadline."""
    if task.grouped:
        return _execute_timed(task)
    cell, key = task.cells[0], task.keys[0]
    started, model = time.time(), None
    try:
        with deadline(cell.timeout, f"cell {cell.name}"):
            if cell.metric == ACCURACY:
                from .train import train_cell

                if _no_gpu(cell):
                    return [make_record(cell, key, "skipped", started, note=NO_GPU_NOTE)]

                m = train_cell(cell.backbone, cell.variant.module, cell.variant.options, cell.dataset, cell.training, cell.seed,
                               **task.train_kwargs())
                return [make_record(cell, key, "ok", started, m)]
            model = build_cell_model(cell)
            return [make_record(cell, key, "ok", started, measure_count(cell, model), model=model)]
    except Exception as exc:
        return [failure(cell, key, started, exc, model)]


def measure_count(cell: Cell, model) -> "Measurement":
    """A count metric of one built model: params, or MACs (inference per image, or one training step
    at the suite's batch size) after a forward that must be finite."""
    if cell.metric == "params":
        return measure_params(model)
    x = torch.randn(1, 3, *cell.input_size)
    with torch.no_grad():
        check_finite(model.eval()(x), f"{cell.backbone} + {cell.variant.label}")
    if cell.metric == "macs":
        return measure_flops(model, x)
    if cell.metric == "activations":
        return measure_activations(model, x)
    train = {"macs_train": measure_train_macs, "train_memory": measure_saved_memory}.get(cell.metric)
    if train is None:
        raise ValueError(f"no count measure for metric {cell.metric!r}")
    try:
        return train(model, torch.randn(cell.batch_size, 3, *cell.input_size))
    except ValueError as exc:
        if "Expected more than 1 value per channel when training" not in str(exc):
            raise
        raise Unsupported(f"BatchNorm cannot train on one value per channel (batch {cell.batch_size} at "
                          f"{cell.input_size[0]}x{cell.input_size[1]} reaches a 1x1 map); use batch_size >= 2 or a larger input_size")


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
        try:
            with deadline(cell.timeout, f"building {cell.name}"):
                models[cell.variant.label] = build_cell_model(cell)
        except Exception as exc:
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
                except Exception as exc:
                    on_error(label, exc)
                torch.cuda.empty_cache()
        elif models:
            device = first.device if spec(first.metric).gpu else "cpu"
            for label, m in measure_latency(models, settings, device, on_error=on_error).items():
                cell, key = by_label[label]
                records[label] = make_record(cell, key, "ok", started, m, model=models[label])
    except Exception as exc:  # the group's shared input or settings: every cell not yet recorded fails with it
        for label in by_label:
            if label not in records:
                on_error(label, exc)
    return [records[c.variant.label] for c in task.cells]


def make_tasks(cells: List[Cell], keys: List[str], checkpoint_dir: Optional[Path] = None) -> List[Task]:
    """Counts and trainings are one task per cell; timings of one backbone and metric form one
    interleaved group. Tasks keep the order in which their first cell was planned."""
    groups: Dict[object, Tuple[List[Cell], List[str]]] = {}
    for cell, key in zip(cells, keys):
        group = (cell.backbone, cell.metric, cell.point) if spec(cell.metric).grouped else key
        group_cells, group_keys = groups.setdefault(group, ([], []))
        group_cells.append(cell)
        group_keys.append(key)
    ckpt = str(checkpoint_dir) if checkpoint_dir is not None else None
    return [Task(tuple(c), tuple(k), ckpt) for c, k in groups.values()]


def module_package(cell: Cell) -> str:
    """The package (and version) that provides a cell's module: plugins are part of what a number means."""
    if is_reference(cell.variant.module):
        return ""
    from .registry import MODULES

    dist, ver = MODULES.provider(cell.variant.module)
    return f"{dist} {ver}".strip()


def cell_keys(cells: List[Cell]) -> List[str]:
    return [c.key({**fingerprint(environment(c.device, c.dtype, cell_threads(c))), "module_package": module_package(c)})
            for c in cells]


def local_executor(tasks: Iterable[Task]):
    for task in tasks:
        yield task, execute(task)


def run_suite(
    suite: Suite, out_dir: Path | str = "results", resume: bool = False,
    executor: Optional[Callable[[List[Task]], Iterable[Tuple[Task, List[Record]]]]] = None,
    on_start: Optional[Callable[[Task], None]] = None, on_done: Optional[Callable[[Task, List[Record]], None]] = None,
    overhead: Sequence[Record] = (),
) -> RunResult:
    """Run every cell not already stored (with ``resume``), store records as they land, write tables.

    The output folder is checked and locked before any work. A run that cannot go on as a whole
    (its scheduler is gone, the disk is full) stops with ``result.aborted`` set; what was stored
    stays, the table is written from it when possible, and ``--resume`` continues."""
    out = Path(out_dir)
    check_output_dir(out)
    with FolderLock(out):
        return _run_locked(suite, out, resume, executor, on_start, on_done, overhead)


def _run_locked(suite, out, resume, executor, on_start, on_done, overhead) -> RunResult:
    t0 = time.time()
    store = Store(out / f"{suite.name}.jsonl")
    if resume:
        store.repair()
    else:
        store.reset()
    cells = plan(suite)
    keys = cell_keys(cells)
    done = store.done_keys() if resume else set()
    todo = [(c, k) for c, k in zip(cells, keys) if k not in done]
    result = RunResult(reused=len(cells) - len(todo))
    tasks = make_tasks([c for c, _ in todo], [k for _, k in todo], checkpoint_dir=out / "checkpoints")
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
                store.extend(records)
            except OSError as exc:
                raise OutputError(f"could not write {store.path}: {exc.strerror or exc}; {result.ok + result.failed} "
                                  "cell(s) are stored; free space and rerun with --resume to continue")
            for r in records:
                setattr(result, r.status, getattr(result, r.status) + 1)
            if on_done:
                on_done(task, records)
    except KeyboardInterrupt:
        result.interrupted = True
    except RunAborted as exc:
        result.aborted = exc
    finally:
        close = getattr(stream, "close", None)
        if close:
            close()  # an executor's generator shuts its cluster down now, not at garbage collection
    wanted = set(keys)
    result.records = [r for r in store.latest() if r.key in wanted]
    result.paths, result.unwritten = write_outputs_safely(result.records, out, suite.name, overhead)
    result.wall_s = time.time() - t0
    return result


def write_outputs_safely(records: List[Record], out: Path, name: str,
                         overhead: Sequence[Record] = ()) -> Tuple[Dict[str, Path], List[str]]:
    """Write the tables with Ctrl-C deferred (a second interrupt during shutdown must not leave a
    half-written table); each file is replaced atomically. Returns (paths, what could not be written)."""
    import signal
    import threading

    from .report import write_outputs

    interrupted = []
    deferring = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *a: interrupted.append(True)) if deferring else None
    try:
        return write_outputs(records, out, name, overhead), []
    except OSError as exc:
        return {"records": out / f"{name}.jsonl"}, [f"{name}.md/.csv ({exc.strerror or exc})"]
    finally:
        if deferring:
            signal.signal(signal.SIGINT, previous)

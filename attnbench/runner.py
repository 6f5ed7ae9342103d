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
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from .attach import build
from .env import environment, fingerprint
from .measures.flops import measure_flops
from .measures.latency import LatencySettings, measure_latency, measure_peak_memory
from .measures.params import measure_params
from .registry import is_baseline
from .store import Store
from .suite import ACCURACY, GPU_METRICS, MODEL_METRICS, Cell, Suite, plan


def is_grouped(metric: str) -> bool:
    """Latency-style metrics: the variants of one backbone are measured together, interleaved."""
    return metric not in MODEL_METRICS + (ACCURACY,)


@dataclass(frozen=True)
class Task:
    """What one worker does at once: a single count, or one interleaved timing group."""

    cells: Tuple[Cell, ...]
    keys: Tuple[str, ...]

    @property
    def exclusive(self) -> bool:
        """Timings (and training, which reports images/s) must not share a machine with other timings."""
        return self.cells[0].metric not in MODEL_METRICS

    @property
    def training(self) -> bool:
        """Accuracy cells: one training run per cell (may run in parallel, one per worker slot)."""
        return self.cells[0].metric == ACCURACY

    @property
    def grouped(self) -> bool:
        return is_grouped(self.cells[0].metric)

    @property
    def name(self) -> str:
        c = self.cells[0]
        return c.name if len(self.cells) == 1 else f"{c.backbone}/{c.metric} ({len(self.cells)} variants, interleaved)"


@dataclass
class RunResult:
    records: List[dict] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    reused: int = 0
    interrupted: bool = False
    wall_s: float = 0.0
    paths: Dict[str, Path] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else (1 if self.failed else 0)


def error_info(exc: BaseException) -> Dict[str, str]:
    """Type and one line of message; out-of-memory gets a fix."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    msg = (lines[0] if lines else f"{type(exc).__name__} with no message")[:300]
    if not lines and exc.__traceback__ is not None:  # a bare assert: say where it fired
        import traceback

        frames = traceback.extract_tb(exc.__traceback__)
        frame = next((f for f in reversed(frames) if "/torch/" not in f.filename), frames[-1])
        msg += f" at {'/'.join(Path(frame.filename).parts[-3:])}:{frame.lineno}"
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in msg.lower():
        return {"type": "OutOfMemoryError", "message": f"{msg}; lower batch_size or input_size"}
    return {"type": type(exc).__name__, "message": msg}


def cell_threads(cell: Cell) -> int:
    return int(cell.latency.get("threads") or cell.training.get("threads") or torch.get_num_threads())


def make_record(cell: Cell, key: str, status: str, started: float, measurement=None, error=None, model=None, note: str = "") -> dict:
    attach = getattr(model, "attnbench_attachment", None)
    return {
        "key": key, "suite": cell.suite, "backbone": cell.backbone, "label": cell.variant.label,
        "module": cell.variant.module, "options": cell.variant.options, "metric": cell.metric,
        "position": list(cell.position), "config": cell.config(), "status": status,
        "measurement": measurement.to_dict() if measurement is not None else None,
        "error": error, "note": note, "attachment": attach.as_dict() if attach is not None else None,
        "env": environment(cell.device, cell.dtype, cell_threads(cell)),
        "host": socket.gethostname(), "pid": os.getpid(), "started": started, "ended": time.time(),
    }


def build_cell_model(cell: Cell):
    torch.manual_seed(0)
    module = None if is_baseline(cell.variant.module) else cell.variant.module
    return build(cell.backbone, module, backbone_kwargs=cell.backbone_options, **cell.variant.options)


def latency_settings(cell: Cell) -> LatencySettings:
    lat = dict(cell.latency)
    return LatencySettings(batch_size=cell.batch_size, input_size=tuple(cell.input_size),
                           train=cell.metric.startswith("train_step"), **lat)


def _no_gpu(cell: Cell) -> bool:
    return cell.metric in GPU_METRICS and not torch.cuda.is_available()


def execute(task: Task) -> List[dict]:
    """Measure a task's cells; every cell yields exactly one record, whatever happens."""
    if task.grouped:
        return _execute_timed(task)
    cell, key = task.cells[0], task.keys[0]
    started, model = time.time(), None
    try:
        if cell.metric == ACCURACY:
            from .train import train_cell

            m = train_cell(cell.backbone, cell.variant.module, cell.variant.options, cell.dataset, cell.training, cell.seed)
            return [make_record(cell, key, "ok", started, m)]
        model = build_cell_model(cell)
        if cell.metric == "params":
            m = measure_params(model)
        else:
            m = measure_flops(model, torch.randn(1, 3, *cell.input_size))
        return [make_record(cell, key, "ok", started, m, model=model)]
    except Exception as exc:
        return [make_record(cell, key, "failed", started, error=error_info(exc), model=model)]


def _execute_timed(task: Task) -> List[dict]:
    started = time.time()
    first = task.cells[0]
    if _no_gpu(first):
        note = "no CUDA device here (torch.cuda.is_available() is False); run on a GPU machine"
        return [make_record(c, k, "skipped", started, note=note) for c, k in zip(task.cells, task.keys)]
    records: Dict[str, dict] = {}
    models, by_label = {}, {}
    for cell, key in zip(task.cells, task.keys):
        by_label[cell.variant.label] = (cell, key)
        try:
            models[cell.variant.label] = build_cell_model(cell)
        except Exception as exc:
            records[cell.variant.label] = make_record(cell, key, "failed", started, error=error_info(exc))

    def on_error(label, exc):
        cell, key = by_label[label]
        records[label] = make_record(cell, key, "failed", started, error=error_info(exc), model=models.get(label))

    settings = latency_settings(first)
    if first.metric == "memory_gpu":
        for label, model in models.items():
            cell, key = by_label[label]
            try:
                records[label] = make_record(cell, key, "ok", started, measure_peak_memory(model, settings, cell.device), model=model)
            except Exception as exc:
                on_error(label, exc)
            torch.cuda.empty_cache()
    elif models:
        device = first.device if first.metric.endswith("_gpu") else "cpu"
        for label, m in measure_latency(models, settings, device, on_error=on_error).items():
            cell, key = by_label[label]
            records[label] = make_record(cell, key, "ok", started, m, model=models[label])
    return [records[c.variant.label] for c in task.cells]


def make_tasks(cells: List[Cell], keys: List[str]) -> List[Task]:
    """Counts and trainings are one task per cell; timings of one backbone and metric form one
    interleaved group. Tasks keep the order in which their first cell was planned."""
    groups: Dict[object, Tuple[List[Cell], List[str]]] = {}
    for cell, key in zip(cells, keys):
        group = (cell.backbone, cell.metric) if is_grouped(cell.metric) else key
        group_cells, group_keys = groups.setdefault(group, ([], []))
        group_cells.append(cell)
        group_keys.append(key)
    return [Task(tuple(c), tuple(k)) for c, k in groups.values()]


def cell_keys(cells: List[Cell]) -> List[str]:
    return [c.key(fingerprint(environment(c.device, c.dtype, cell_threads(c)))) for c in cells]


def local_executor(tasks: Iterable[Task]):
    for task in tasks:
        yield task, execute(task)


def run_suite(
    suite: Suite, out_dir: Path | str = "results", resume: bool = False,
    executor: Optional[Callable[[List[Task]], Iterable[Tuple[Task, List[dict]]]]] = None,
    on_start: Optional[Callable[[Task], None]] = None, on_done: Optional[Callable[[Task, List[dict]], None]] = None,
) -> RunResult:
    """Run every cell not already stored (with ``resume``), store records as they land, write tables."""
    from .report import write_outputs

    t0 = time.time()
    out = Path(out_dir)
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
    tasks = make_tasks([c for c, _ in todo], [k for _, k in todo])
    run = executor or local_executor

    def announced(ts):
        for t in ts:
            if on_start:
                on_start(t)
            yield t

    try:
        for task, records in run(announced(tasks) if executor is None else tasks):
            store.extend(records)
            for r in records:
                result.ok += r["status"] == "ok"
                result.failed += r["status"] == "failed"
                result.skipped += r["status"] == "skipped"
            if on_done:
                on_done(task, records)
    except KeyboardInterrupt:
        result.interrupted = True
    wanted = set(keys)
    result.records = [r for r in store.latest() if r["key"] in wanted]
    result.paths = write_outputs(result.records, out, suite.name)
    result.wall_s = time.time() - t0
    return result

"""Executing cells: build the model, measure, and turn any outcome (ok, failed, unsupported, skipped) into a
record; one failing cell never loses the others."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..attach.backbone import build
from ..core.metrics import ACCURACY, SITES, spec
from ..errors import CellError, RuntimeMissing, Unsupported
from ..guard.cell import CellTimeout, as_unsupported, contained, deadline, escaped, is_out_of_memory, require_finite
from ..guard.process_state import unchanged
from ..measures.flops import measure_flops
from ..measures.macs_dispatch import measure_train_macs
from ..measures.memory import measure_activations, measure_saved_memory
from ..measures.params import attention_hidden_state, measure_params
from ..measures.timing.network import measure_latency, measure_peak_memory
from ..measures.timing.sites import measure_sites
from ..records.measurement import Measurement
from ..records.record import Record
from ..suite.model import Cell, is_reference
from .env import environment
from .tasks import Task, cell_threads, latency_settings, module_package

# What a cell's boundary catches: every error, and SystemExit too (a plugin's sys.exit() or exit() fails
# its cell, not the run). A real Ctrl-C or SIGTERM passes: it stops the run. What else plugin code raises to
# end a program (a KeyboardInterrupt no signal raised, GeneratorExit) becomes an Exception where it is raised
# (attach.AttentionSlot, guard.deadline), and execute() catches whatever still gets through (guard.contained).
CELL_ERRORS = (Exception, SystemExit)


def error_info(exc: BaseException, model=None) -> Dict[str, str]:
    """Type and one line of message; out-of-memory, timeouts and NaN outputs get their own names and a fix. An
    error raised in ``model`` outside its attached modules leads with where (``attach.failure_site``)."""
    from ..attach.backbone import failure_site

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
    """The record of a cell that did not measure, with the status its error family says (errors.CellError):
    ``unsupported`` for a known upstream reason and ``skipped`` for a runtime not installed (each with its reason
    as the note), else ``failed`` with the error's type and one line."""
    status = exc.status if isinstance(exc, CellError) else "failed"
    if status != "failed":
        return make_record(cell, key, status, started, model=model, note=str(exc))
    return make_record(cell, key, "failed", started, error=error_info(exc, model), model=model)


def make_record(
    cell: Cell, key: str, status: str, started: float, measurement=None, error=None, model=None, note: str = ""
) -> Record:
    attach = getattr(model, "attnbench_attachment", None)
    return Record(
        key=key,
        suite=cell.suite,
        backbone=cell.backbone,
        label=cell.variant.label,
        module=cell.variant.module,
        metric=cell.metric,
        position=tuple(cell.position),
        config=cell.config(),
        status=status,
        measurement=measurement,
        error=error,
        note=note,
        attachment=attach.as_dict() if attach is not None else None,
        env={
            **environment(cell.device, cell.dtype, cell_threads(cell)),
            "module_package": module_package(cell),
            "plugins": _plugin_packages(),
        },
        host=socket.gethostname(),
        pid=os.getpid(),
        started=started,
        ended=time.time(),
        source=cell.source,
        suite_digest=cell.suite_digest,
    )


def _plugin_packages() -> Dict[str, str]:
    from ..registry import MODULES

    return MODULES.plugin_packages()


def build_cell_model(cell: Cell):
    """The cell's model; a training metric below the module's declared ``min_train_batch`` is ``Unsupported``
    with the module's reason (its ``min_spatial`` is checked by ``build`` against each site)."""
    if spec(cell.metric).train and not is_reference(cell.variant.module):
        from ..attach.contract import declared_limits
        from ..registry import get_module

        try:
            why = declared_limits(get_module(cell.variant.module)).train_batch(cell.batch_size)
        except ValueError:
            why = None  # a malformed declaration: build() fails the cell with it
        if why:
            raise Unsupported(f"module {cell.variant.module!r} {why}; use batch_size >= 2")
    torch.manual_seed(0)
    return build(
        cell.backbone,
        cell.variant.module,
        backbone_kwargs=cell.backbone_options,
        input_size=tuple(cell.input_size),
        **cell.variant.options,
    )


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
    from ..guard.interrupts import watching
    from ..guard.process_state import Watch, alone, pinned
    from ..guard.threads import fixed_threads

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
    from ..guard.process_state import blame

    modules = list(dict.fromkeys(c.variant.module for c in task.cells if not is_reference(c.variant.module)))
    who = (
        f"module {modules[0]!r}"
        if len(modules) == 1
        else "this cell"
        if not modules
        else f"one of the modules {', '.join(map(repr, modules))} (timed together)"
    )
    error = {"type": "StateChanged", "message": blame(changes, who)}
    out = []
    for r, cell in zip(records, task.cells):
        env = {**r.env, "threads": cell_threads(cell, threads)} if threads else r.env
        out.append(
            dataclasses.replace(
                r, env=env, **({"status": "failed", "measurement": None, "error": error} if r.ok else {})
            )
        )
    return out


def _execute_one(task: Task) -> List[Record]:
    cell, key = task.cells[0], task.keys[0]
    started, model = time.time(), None
    try:
        with deadline(cell.timeout, f"cell {cell.name}"):
            if cell.metric == ACCURACY:
                from ..train.loop import train_cell

                if _no_gpu(cell):
                    return [make_record(cell, key, "skipped", started, note=NO_GPU_NOTE)]

                m = train_cell(
                    cell.backbone,
                    cell.variant.module,
                    cell.variant.options,
                    cell.dataset,
                    cell.training,
                    cell.seed,
                    recipe_choice=cell.recipe_choice,
                    **task.train_kwargs(),
                )
                resumed = m.stats.get("resumed_from_epoch") if task.pause_after_s is None else None
                # the checkpoint as OUT/checkpoints/<key>.pt names it: a record never carries a path of this machine
                note = (
                    f"resumed from epoch {resumed} (checkpoint checkpoints/{task.checkpoint_path.name})"
                    if resumed
                    else ""
                )
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
        require_finite(model.eval()(x), f"{cell.backbone} + {cell.variant.label}")
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
    from ..measures.runtimes import check_available

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

"""Tasks: what one cell needs to run anywhere (in this process or on a Dask worker), and its key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ..core.metrics import ACCURACY, spec
from ..measures.timing.settings import LatencySettings
from ..suite.model import Cell, is_reference
from .env import environment, fingerprint


@dataclass(frozen=True)
class Task:
    """What one worker does at once: a single count, or one interleaved timing group."""

    cells: Tuple[Cell, ...]
    keys: Tuple[str, ...]
    checkpoint_dir: Optional[str] = None  # training cells checkpoint here every epoch (absolute: OUT/checkpoints)
    threads: Optional[int] = (
        None  # torch threads for cells that set none (the executor's share of a node; in their keys)
    )
    pause_after_s: Optional[float] = (
        None  # training: stop at the first epoch end after this long (executors.py ships it on)
    )

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return (
            None
            if not self.training or self.checkpoint_dir is None
            else Path(self.checkpoint_dir) / f"{self.keys[0]}.pt"
        )

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


def cell_threads(cell: Cell, default: Optional[int] = None) -> int:
    """The torch threads a cell runs with: its timing's or training's own ``threads``, else ``default`` (the
    executor's; runner.execute pins it), else this process's. Counts never read a suite's latency threads."""
    kind = spec(cell.metric).kind
    own = (
        cell.training.get("threads")
        if cell.metric == ACCURACY
        else cell.latency.get("threads")
        if kind in ("timing", "memory")
        else None
    )
    return int(own or default or torch.get_num_threads())


def thread_bound(metric: str) -> bool:
    """Whether a metric's result can depend on the thread count (counts cannot): then its key holds it."""
    return spec(metric).kind != "count"


def latency_settings(cell: Cell) -> LatencySettings:
    lat = dict(cell.latency)
    return LatencySettings(
        batch_size=cell.batch_size,
        input_size=tuple(cell.input_size),
        runtime=cell.runtime,
        train=spec(cell.metric).train,
        timeout=cell.timeout,
        in_chans=cell.in_chans,
        **lat,
    )


def make_tasks(
    cells: List[Cell], keys: List[str], checkpoint_dir: Optional[Path] = None, threads: Optional[int] = None
) -> List[Task]:
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
    from ..registry import MODULES

    dist, ver = MODULES.provider(cell.variant.module)
    return f"{dist} {ver}".strip()


def cell_keys(cells: List[Cell], threads: Optional[int] = None) -> List[str]:
    """Each cell's key, with the thread count it will run with (``threads``: the executor's default for cells
    that set none) for the metrics that depend on it: a record's ``env`` then agrees with its key."""
    return [
        c.key(
            {
                **fingerprint(environment(c.device, c.dtype, cell_threads(c, threads)), thread_bound(c.metric)),
                "module_package": module_package(c),
            }
        )
        for c in cells
    ]


def executor_threads(executor) -> int:
    """The torch threads an executor gives cells that set none: its ``threads`` (a Dask executor's share of
    a node, known once its workers are there), else this process's."""
    return int(getattr(executor, "threads", None) or torch.get_num_threads())

"""From a validated Suite to the cells of its grid (backbone x variant x point x metric), and the subset of it that a
command line keeps (`-b`, `-m`, `-M`)."""

from __future__ import annotations

from typing import List, Sequence

from ..core.metrics import ACCURACY, spec
from .model import DEFAULT_ACCURACY_TIMEOUT_S, DEFAULT_TIMEOUT_S, Cell, Suite, is_reference


def plan(suite: Suite) -> List[Cell]:
    """The grid, metric-major within each backbone so cheap counts come before timings."""
    cells = []
    source = suite.identity
    if suite.kind == ACCURACY:
        for bi, backbone in enumerate(suite.backbones):
            for vi, variant in enumerate(suite.variants):
                if not suite.selected(backbone, variant, ACCURACY):
                    continue
                for seed in suite.seeds:
                    training = {**suite.training, **variant.training}
                    cells.append(
                        Cell(
                            suite.name,
                            backbone,
                            variant,
                            ACCURACY,
                            (bi, vi),
                            suite.input_size,
                            suite.batch_size,
                            str(training.get("device", "cpu")),
                            suite.dtype,
                            suite.backbone_options,
                            {},
                            seed,
                            suite.dataset,
                            training,
                            suite.timeout or DEFAULT_ACCURACY_TIMEOUT_S,
                            source=source,
                            suite_digest=suite.digest,
                        )
                    )
        return cells
    swept = len(suite.all_points()) > 1
    for bi, backbone in enumerate(suite.backbones):
        for metric in suite.metrics:
            for point in suite.metric_points(metric):
                for vi, variant in enumerate(suite.variants):
                    if not suite.selected(backbone, variant, metric) or (
                        variant.auto and not has_native_attention(backbone)
                    ):
                        continue
                    if spec(metric).modules_only and is_reference(variant.module):
                        continue  # the bare / native backbone has no attached module to time alone
                    device = suite.device if spec(metric).gpu else "cpu"
                    cells.append(
                        Cell(
                            suite.name,
                            backbone,
                            variant,
                            metric,
                            (bi, vi),
                            point.input_size,
                            point.batch_size,
                            device,
                            suite.dtype,
                            suite.backbone_options,
                            suite.latency,
                            timeout=suite.timeout or DEFAULT_TIMEOUT_S,
                            runtime=point.runtime,
                            swept=swept,
                            source=source,
                            suite_digest=suite.digest,
                        )
                    )
    return cells


def has_native_attention(backbone: str) -> bool:
    from ..attach.backbone import native_attention

    return native_attention(backbone) is not None


def subset_suite(s, backbones: Sequence[str], modules: Sequence[str], metrics: Sequence[str] = ()) -> None:
    """Keep only the named backbones / module labels / metrics of a suite (cells keep their keys, so a later
    full run with --resume reuses them)."""
    from ..core.metrics import ALIASES
    from ..errors import UnknownNameError

    for name in backbones:
        if name not in s.backbones:
            raise UnknownNameError("backbone", name, s.backbones, f"this suite has {', '.join(s.backbones)}")
    labels = [v.label for v in s.variants]
    listed = [v.label for v in s.variants if not v.auto]  # 'native' rows are added only where a backbone has one
    for name in modules:
        if name not in labels:
            raise UnknownNameError(
                "module",
                name,
                listed,
                f"this suite has {', '.join(listed)}; a registered module it lacks joins with --add-module {name}",
            )
    metrics = [ALIASES.get(m, m) for m in metrics]
    for name in metrics:
        if name not in s.metrics:
            raise UnknownNameError(
                "metric", name, s.metrics, f"this suite measures {', '.join(s.metrics) or 'accuracy'}"
            )
    s.only_backbones, s.only_modules, s.only_metrics = list(backbones), list(modules), list(metrics)

"""What each metric is, in one table read by suite validation, the runner, the measures and the report.

Adding a metric is one ``MetricSpec`` here plus its measure function (wired in ``runner.measure_one``
for counts, ``measures.latency`` for timings).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

# Report column kinds: value / delta_abs / delta_pct / spread / throughput / part (a stats field)
Column = Tuple[str, str]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "count" (exact, machine-independent), "timing", "memory" or "accuracy"
    unit: str
    device: str = "cpu"  # "cpu" or "gpu": a gpu metric runs on the suite's CUDA device, skipped without one
    train: bool = False  # measures a training step rather than inference
    columns: Tuple[Column, ...] = ()
    scale: float = 1.0  # value / scale is what the table prints

    @property
    def grouped(self) -> bool:
        """Timings of one backbone's variants are measured together, in interleaved rounds."""
        return self.kind in ("timing", "memory")

    @property
    def exclusive(self) -> bool:
        """Needs the node to itself: timings (and memory peaks); counts share freely."""
        return self.kind in ("timing", "memory")

    @property
    def gpu(self) -> bool:
        return self.device == "gpu"


SPECS: Dict[str, MetricSpec] = {s.name: s for s in (
    MetricSpec("params", "count", "parameters",
               columns=(("params (M)", "value"), ("Δparams", "delta_abs"), ("Δparams %", "delta_pct")), scale=1e6),
    MetricSpec("macs", "count", "MACs",
               columns=(("GMACs", "value"), ("ΔGMACs %", "delta_pct"), ("conv/linear GMACs", "part:conv_linear_matmul")),
               scale=1e9),
    MetricSpec("macs_train", "count", "MACs", train=True,
               columns=(("train GMACs", "value"), ("Δtrain GMACs %", "delta_pct")), scale=1e9),
    MetricSpec("latency_cpu", "timing", "ms",
               columns=(("CPU ms, median (IQR)", "spread"), ("Δ CPU latency %", "delta_pct"), ("CPU img/s", "throughput"))),
    MetricSpec("train_step_cpu", "timing", "ms", train=True,
               columns=(("CPU train step ms (IQR)", "spread"), ("Δ CPU train %", "delta_pct"))),
    MetricSpec("latency_gpu", "timing", "ms", device="gpu",
               columns=(("GPU ms, median (IQR)", "spread"), ("Δ GPU latency %", "delta_pct"), ("GPU img/s", "throughput"))),
    MetricSpec("train_step_gpu", "timing", "ms", device="gpu", train=True,
               columns=(("GPU train step ms (IQR)", "spread"), ("Δ GPU train %", "delta_pct"))),
    MetricSpec("memory_gpu", "memory", "MiB", device="gpu",
               columns=(("peak GPU MiB", "value"), ("Δ GPU memory %", "delta_pct"))),
    MetricSpec("accuracy", "accuracy", "% top-1"),
)}
ACCURACY = "accuracy"
# Names earlier versions wrote (suites and stores): read as today's.
ALIASES = {"flops": "macs", "flops_train": "macs_train"}
SUITE_METRICS = tuple(n for n, s in SPECS.items() if s.kind != "accuracy")


def spec(name: str) -> MetricSpec:
    return SPECS[ALIASES.get(name, name)]

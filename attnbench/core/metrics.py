"""What each metric is, in one table read by suite validation, the runner, the measures and the report.

Adding a metric is one ``MetricSpec`` here plus its measure function (wired in ``runner.measure_one``
for counts, ``measures.latency`` for timings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

# Report column kinds: value / delta_abs / delta_pct / spread / throughput / part (a stats field); of a stats
# field X also mb:X (bytes as MB), delta_pct:X (its Δ% vs the baseline's X), count:X (an integer and its Δ), ratio:X
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
    # The suite axes a value depends on: a cell is planned once per distinct projection of the
    # suite's points onto them (params do not change with batch, MACs per image not with runtime).
    axes: Tuple[str, ...] = ("input_size",)
    runtimes: Tuple[str, ...] = ("eager",)  # runtimes it can be measured under (when "runtime" is an axis)
    optional_columns: Tuple[Column, ...] = ()  # shown only when some record has the stat (e.g. export time)
    modules_only: bool = False  # measures the attached modules themselves: no cell for the none/native rows

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


# attnbench.measures.runtimes implements them; tensorrt is ONNX Runtime's TensorRT provider (CUDA only)
RUNTIMES = ("eager", "compile", "onnxruntime", "openvino", "tensorrt")
CPU_RUNTIMES = ("eager", "compile", "onnxruntime", "openvino")
BATCHED = ("input_size", "batch_size")
TIMED = ("input_size", "batch_size", "runtime")
SPECS: Dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec(
            "params",
            "count",
            "parameters",
            columns=(("params (M)", "value"), ("Δparams", "delta_abs"), ("Δparams %", "delta_pct")),
            scale=1e6,
        ),
        MetricSpec(
            "macs",
            "count",
            "MACs",
            columns=(("GMACs", "value"), ("ΔGMACs %", "delta_pct"), ("conv/linear GMACs", "part:conv_linear_matmul")),
            scale=1e9,
            # memory traffic (records from before it was counted show none of these)
            optional_columns=(
                ("MB moved", "mb:bytes"),
                ("Δbytes %", "delta_pct:bytes"),
                ("operators (Δ)", "count:operators"),
                ("MACs/byte", "ratio:intensity"),
            ),
        ),
        MetricSpec(
            "macs_train",
            "count",
            "MACs",
            train=True,
            columns=(("train GMACs", "value"), ("Δtrain GMACs %", "delta_pct")),
            scale=1e9,
            axes=BATCHED,
        ),
        MetricSpec(
            "activations",
            "count",
            "elements",
            columns=(("act. M/img", "value"), ("Δact. %", "delta_pct"), ("conv/linear act. M (fvcore)", "part:fvcore")),
            scale=1e6,
        ),
        MetricSpec(
            "train_memory",
            "count",
            "bytes",
            train=True,
            columns=(("saved for backward MiB/img", "value"), ("Δsaved %", "delta_pct")),
            scale=2**20,
            axes=BATCHED,
        ),
        MetricSpec(
            "latency_cpu",
            "timing",
            "ms",
            columns=(
                ("CPU ms, median (IQR)", "spread"),
                ("Δ CPU latency % [95% CI]", "delta_ci"),
                ("CPU img/s", "throughput"),
            ),
            axes=TIMED,
            runtimes=CPU_RUNTIMES,
            optional_columns=(("setup s", "part:prepare_s"),),
        ),
        MetricSpec(
            "attention_cpu",
            "timing",
            "ms",
            axes=BATCHED,
            modules_only=True,
            columns=(("added ms, direct [95% CI]", "direct"), ("Δ ms, whole network [95% CI]", "whole_ms")),
        ),
        MetricSpec(
            "train_step_cpu",
            "timing",
            "ms",
            train=True,
            columns=(("CPU train step ms (IQR)", "spread"), ("Δ CPU train % [95% CI]", "delta_ci")),
            axes=TIMED,
            runtimes=("eager", "compile"),
        ),
        MetricSpec(
            "latency_gpu",
            "timing",
            "ms",
            device="gpu",
            columns=(
                ("GPU ms, median (IQR)", "spread"),
                ("Δ GPU latency % [95% CI]", "delta_ci"),
                ("GPU img/s", "throughput"),
            ),
            axes=TIMED,
            runtimes=("eager", "compile", "onnxruntime", "tensorrt"),
            optional_columns=(("setup s", "part:prepare_s"),),
        ),
        MetricSpec(
            "train_step_gpu",
            "timing",
            "ms",
            device="gpu",
            train=True,
            columns=(("GPU train step ms (IQR)", "spread"), ("Δ GPU train % [95% CI]", "delta_ci")),
            axes=TIMED,
            runtimes=("eager", "compile"),
        ),
        MetricSpec(
            "memory_gpu",
            "memory",
            "MiB",
            device="gpu",
            columns=(("peak GPU MiB", "value"), ("Δ GPU memory %", "delta_pct")),
            axes=BATCHED,
        ),
        MetricSpec("accuracy", "accuracy", "% top-1"),
    )
}
ACCURACY = "accuracy"
SITES = "attention_cpu"  # each attached module timed alone at the input it sees (direct attribution)
# Names earlier versions wrote (suites and stores): read as today's.
ALIASES = {"flops": "macs", "flops_train": "macs_train"}
SUITE_METRICS = tuple(n for n, s in SPECS.items() if s.kind != "accuracy")


def spec(name: str) -> MetricSpec:
    return SPECS[ALIASES.get(name, name)]

"""What a stored record's free-form mappings hold: the types of every entry the report, ``compare`` and
``--resume`` read, checked when a store is read (``records.Record.from_dict``).

``config``, ``stats``, ``env``, ``attachment`` and ``executor`` are JSON objects the harness fills; a hand-edited
store can put anything there. Each entry anything downstream reads is declared here with the type the writers
give it (numbers as ``float``: an int is a float too, a bool is neither), nested mappings as :class:`Shape`, so a
line whose entry has another type is refused (counted and skipped) when it is read -- never a crash in a table
minutes later. Entries not listed are kept as they are and read by nothing. Finite-ness and signs are the
readers' to judge (a NaN images/s is what a zero-length timing writes). No torch here: the report layer reads it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union


class Shape(dict):
    """A JSON object whose listed entries, when present, have the listed types (other entries are free);
    ``required`` entries must be present; ``nullable``: null is read as "none" (a failed cell's attachment)."""

    def __init__(self, entries: Dict[str, Any], required: Tuple[str, ...] = (), nullable: bool = False):
        super().__init__(entries)
        self.required, self.nullable = required, nullable

    def admits(self, value: Any, fits: Callable[[Any, Any], bool]) -> bool:
        if value is None:
            return self.nullable
        return (
            isinstance(value, dict)
            and all(k in value for k in self.required)
            and all(fits(value[k], t) for k, t in self.items() if k in value)
        )

    def problem(self, value: Any, fits: Callable[[Any, Any], bool]) -> Optional[str]:
        """The first entry of ``value`` that does not fit, as ``'name' is not a <type>``; None when it fits."""
        if value is None and self.nullable:
            return None
        if not isinstance(value, dict):
            return "is not a JSON object"
        missing = next((k for k in self.required if k not in value), None)
        if missing is not None:
            return f"{missing!r} is missing"
        bad = next((k for k, t in self.items() if k in value and not fits(value[k], t)), None)
        return None if bad is None else f"{bad!r} is not a {describe(self[bad])}"

    def __repr__(self) -> str:
        return "JSON object"


def describe(typ: Any) -> str:
    return "JSON object of known entries" if isinstance(typ, Shape) else str(typ).replace("typing.", "")


class Finite:
    """A number (int or float, not a bool) that is neither NaN nor infinite: what a training run or a timing
    summary stores when it finished (a NaN there is a damaged line, not a result)."""


Number = float  # an int or a float (not a bool); NaN allowed where a writer can write it
# (a list or mapping of Shapes is written list[...] / dict[...]: typing's List[] wants types as arguments)
Counts = Dict[str, Number]  # operator name -> count or bytes

TRAINING = Shape(
    {
        "epochs": int,
        "batch_size": int,
        "optimizer": str,
        "lr": Number,
        "momentum": Number,
        "weight_decay": Number,
        "warmup_steps": Number,
        "stem": Optional[Dict[str, Any]],
        "channels_last": Union[bool, str],
        "threads": Optional[int],
        "eval_batch_size": int,
        "label_smoothing": Number,
        "amp": Optional[str],
        "device": str,
        "compile": bool,
        "checkpoint": bool,
    }
)
LATENCY = Shape(
    {
        "threads": Optional[int],
        "warmup": int,
        "rounds": int,
        "min_time": Number,
        "min_iters": int,
        "target": Optional[Number],
        "max_time": Optional[Number],
        "direct_target": Optional[Number],
        "nice": Optional[int],
        "clean_wait": Number,
        "unstable_threshold": Number,
        "amp": Optional[str],
        "channels_last": bool,
    }
)
DATASET = Shape({"name": str, "train_subset": Optional[int], "test_subset": Optional[int]}, required=("name",))

CONFIG = Shape(
    {
        "backbone": str,
        "module": str,
        "label": str,
        "metric": str,
        "options": Dict[str, Any],
        "input_size": Tuple[int, int],
        "batch_size": int,
        "device": str,
        "dtype": str,
        "backbone_options": Dict[str, Any],
        "latency": LATENCY,
        "runtime": str,
        "seed": Optional[int],
        "dataset": DATASET,
        "training": TRAINING,
    }
)

_MS = Optional[Number]
STATS = Shape(
    {
        # timings (attnbench.measures.timing): summary, the schedule's raw data, and what the machine did
        "median_ms": Finite,
        "iqr_ms": Finite,
        "mean_ms": Finite,
        "min_ms": Finite,
        "images_per_s": Number,
        "runs": int,
        "unstable": bool,
        "rounds_ms": List[List[Number]],
        "rounds_wait": List[List[Optional[Number]]],
        "rounds_total_ms": List[Number],
        "schedule": str,
        "batches": int,
        "group": str,
        "baseline": Optional[str],
        "low_ms": _MS,
        "high_ms": _MS,
        "total_ms": Finite,
        "prepare_s": Optional[Number],
        "runtime_info": Dict[str, Any],
        "threads": int,
        "amp": Optional[str],
        "device": str,
        "stop": Shape(
            {
                "reason": str,
                "rounds": int,
                "seconds": Number,
                "target": Optional[Number],
                "halfwidth": _MS,
                "halfwidth_pct": _MS,
                "max_time": Optional[Number],
                "met": Optional[bool],
            }
        ),
        "contention": Shape(
            {
                "contended": bool,
                "clean": Optional[Number],
                "steal": Optional[Number],
                "others_cpu": Optional[Number],
                "loadavg": Optional[Number],
                "cpu_mhz": Optional[Number],
                "psi_cpu_some": Optional[Number],
                "nivcsw_per_s": Optional[Number],
                "wait_median": Optional[Number],
                "nice": Optional[int],
                "nice_granted": bool,
            }
        ),
        # direct attribution (attention_cpu): per site and per stage
        "sites": list[Shape({"path": str, "stage": int, "median_ms": Number, "calls": int, "shape": List[int]})],  # type: ignore[misc]
        "stages": dict[str, Shape({"ms": Number, "low_ms": _MS, "high_ms": _MS, "sites": int})],  # type: ignore[misc]
        # counts: parameters, MACs (fvcore None when it cannot trace the model: fvcore_error says why), memory
        "attention": Number,
        "trainable": Number,
        "conv_linear_matmul": Number,
        "elementwise": Number,
        "norm": Number,
        "fvcore": Optional[Number],
        "fvcore_error": str,
        "dispatch_total": Number,
        "counters_agree": bool,
        "counter_difference": str,
        "unhandled": Optional[Dict[str, Any]],
        "by_operator": Counts,
        "by_op": Counts,
        "by_dtype": Counts,
        "forward": Number,
        "backward": Number,
        "hidden_numel": Optional[int],
        "hidden_state": Optional[List[str]],
        "bytes_per_image": Number,
        "batch": int,
        "saved_bytes": Number,
        "tensors": int,
        "excluded_param_bytes": Number,
        "input_bytes": Number,
        "init": str,
        # memory traffic and operator calls (attnbench.measures.traffic), stored with the MACs
        "bytes": int,
        "bytes_read": int,
        "bytes_written": int,
        "bytes_params": int,
        "operators": int,
        "operators_no_traffic": int,
        "intensity": Number,
        "bytes_attention": int,
        "operators_attention": int,
        "bytes_sites": Dict[str, int],
        "bytes_by_operator": Dict[str, int],
        # accuracy (attnbench.train.loop): the result, its curve, the recipe and how `amp: auto` resolved
        "top1": Finite,
        "top5": Finite,
        "test_loss": Finite,
        "final_train_loss": Finite,
        "params": Finite,
        "train_size": int,
        "test_size": int,
        "steps": int,
        "seed": int,
        "wall_s": Finite,
        "train_s": Finite,
        "first_step_s": Finite,
        "train_images_per_s": Finite,
        "resumed_from_epoch": int,
        "weights_sha1": str,
        "cpu_capability": str,
        "onednn": str,
        "recipe": TRAINING,
        "recipe_choice": Optional[Dict[str, Any]],
        "curve": list[  # type: ignore[misc]  # a Shape instance: this DSL is read by records.py, not by mypy
            Shape(
                {
                    "epoch": int,
                    "test_top1": Finite,
                    "test_loss": Finite,
                    "train_loss": Finite,
                    "lr": Finite,
                    "images_seen": int,
                    "s": Finite,
                    "eval_s": Finite,
                },
                required=("epoch", "images_seen", "test_top1", "test_loss", "train_loss"),
            )
        ],
        # the module's failed `attnbench check`, kept with its ok rows
        "check_failed": str,
    }
)

ENV = Shape(
    {
        "attnbench": str,
        "torch": str,
        "timm": str,
        "fvcore": str,
        "python": str,
        "platform": str,
        "device": str,
        "device_name": str,
        "cpu": str,
        "cpu_count": Optional[int],
        "threads": int,
        "dtype": str,
        "date": str,
        "cuda": Optional[str],
        "cudnn": Optional[Union[int, str]],
        "module_package": str,
        "plugins": Dict[str, str],
    }
)
ATTACHMENT = Shape(
    {
        "module": str,
        "placement": str,
        "sites": int,
        "stages": Optional[List[int]],
        "native": Optional[str],
        "native_removed": int,
        "native_kept": int,
        "init": str,
        "reinitialised": int,
        "replaced": int,
    },
    required=("placement",),
    nullable=True,
)
EXECUTOR = Shape(
    {
        "kind": str,
        "worker": str,
        "node_share": Optional[int],
        "slot": str,
        "lease_timeout": Optional[Union[str, Number]],
        "slot_wait_s": Number,
        "node_shared": bool,
        "note": str,
        "attempt": int,
    }
)

SETTINGS = Shape(
    {
        "rounds": int,
        "min_time": Number,
        "min_iters": int,
        "warmup": int,
        "target": Optional[Number],
        "max_time": Optional[Number],
        "direct_target": Optional[Number],
        "nice": Optional[int],
        "clean_wait": Number,
        "unstable_threshold": Number,
        "amp": Optional[str],
        "channels_last": bool,
        "schedule": str,
        "batches": int,
        "threads": Optional[int],
        "batch_size": int,
        "input_size": List[int],
        "runtime": str,
        "device": str,
        "dtype": str,
        "batch": int,
        "input": List[int],
    }
)

# Record fields that are free-form mappings: the shape each must have.
RECORD_SHAPES = {"config": CONFIG, "env": ENV, "attachment": ATTACHMENT, "executor": EXECUTOR}
MEASUREMENT_SHAPES = {"settings": SETTINGS, "stats": STATS}

# What a record of a metric must hold (config: any record; stats: an ok one) for its table to be drawn (the rest of
# each shape is optional).
OK_CONFIG = {"accuracy": ("dataset", "training")}
OK_STATS = {"accuracy": ("top1", "train_size", "final_train_loss", "train_images_per_s", "wall_s", "params")}

"""Measurement: a value object (value, unit, method, settings, stats), never a printed string."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict


@dataclass(frozen=True)
class Measurement:
    metric: str  # "params", "flops", "latency_cpu", ...
    value: float  # the headline number, in ``unit``
    unit: str
    method: str  # how it was obtained, in words a reader of the table can check
    settings: Dict[str, Any] = field(default_factory=dict)  # what it depends on (input, threads, ...)
    stats: Dict[str, Any] = field(default_factory=dict)  # breakdowns and spread (median, iqr, fvcore, ...)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Measurement":
        """Read a stored measurement; fields this version does not know are ignored."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def macs_measurement(metric: str, total: int, inputs, stats: dict, method: str) -> Measurement:
    """A MAC count as a Measurement: unit MACs, the input shape it was counted at (both MAC counters
    build theirs here, so neither imports the other's module for it)."""
    return Measurement(metric, total, "MACs", method, {"input_shape": list(inputs.shape)}, stats)
